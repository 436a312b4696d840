"""Search spaces: how finely embedding sizes are searched.

* ``per-feature``: a size per row (:class:`PerFeatureSpace`);
* ``per-field``: a size per table / field (:class:`PerFieldSpace`);
* ``block``: G frequency groups × B column blocks per table (:class:`BlockSpace`).

All three share the :class:`nas.core.space.SearchSpace` interface, so every
controller works with every space, and enforce the budget in ``project`` alone.
"""

from search_spaces.block import BlockSpace
from search_spaces.per_feature import PerFeatureSpace
from search_spaces.per_field import PerFieldSpace
from nas.core.plugins import SPACES, register_space

__all__ = ["SPACES", "BlockSpace", "PerFeatureSpace", "PerFieldSpace", "register_space"]
