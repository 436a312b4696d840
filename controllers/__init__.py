"""Controllers: the search algorithms that propose allocations."""

from controllers.baselines import EqualSizes, FrequencyRule, RandomSearch
from controllers.bet import BET
from controllers.darts import DifferentiableSizes
from controllers.evolutionary import Evolutionary
from controllers.optuna_search import OptunaSearch
from controllers.policy_gradient import PolicyGradient
from controllers.pruning import LearnableThresholds, MagnitudePruning
from controllers.shape import FrequencyShape
from nas.core.plugins import CONTROLLERS, register_controller

__all__ = [
    "BET",
    "CONTROLLERS",
    "DifferentiableSizes",
    "EqualSizes",
    "Evolutionary",
    "FrequencyRule",
    "FrequencyShape",
    "LearnableThresholds",
    "MagnitudePruning",
    "OptunaSearch",
    "PolicyGradient",
    "RandomSearch",
    "register_controller",
]
