"""Search spaces: how finely embedding sizes are searched."""

from search_spaces.per_feature import PerFeatureSpace
from search_spaces.registry import SPACES, register_space

__all__ = ["SPACES", "PerFeatureSpace", "register_space"]
