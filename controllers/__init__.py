"""Controllers: the search algorithms that propose allocations."""

from controllers.baselines import EqualSizes, FrequencyRule, RandomSearch
from controllers.registry import CONTROLLERS, register_controller

__all__ = ["CONTROLLERS", "EqualSizes", "FrequencyRule", "RandomSearch", "register_controller"]
