"""Controllers: the search algorithms that propose allocations."""

from controllers.baselines import EqualSizes, FrequencyRule, RandomSearch
from controllers.bet import BET
from controllers.registry import CONTROLLERS, register_controller

__all__ = ["BET", "CONTROLLERS", "EqualSizes", "FrequencyRule", "RandomSearch", "register_controller"]
