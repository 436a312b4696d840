"""Test helpers anyone can import: the search-space conformance suite and synthetic multi-field data.

Third-party search spaces run :func:`check_search_space` from their own tests, as
scikit-learn estimators run ``check_estimator``.  Needs ``hypothesis`` (a dev extra).
"""

from typing import Any

from nas.testing.data import SyntheticFields, power_law_counts, synthetic_fields

_SUITE = {"BUILTIN_OPTIONS", "Layout", "check_projection", "check_search_space", "fill_rule_violation", "layouts",
          "row_order_violation"}


def __getattr__(name: str) -> Any:
    """Load the conformance suite (which needs hypothesis) only when it is asked for."""
    if name in _SUITE:
        from nas.testing import spaces

        return getattr(spaces, name)
    raise AttributeError(f"module 'nas.testing' has no attribute {name!r}")


__all__ = [
    "BUILTIN_OPTIONS",
    "Layout",
    "SyntheticFields",
    "check_projection",
    "check_search_space",
    "fill_rule_violation",
    "layouts",
    "power_law_counts",
    "row_order_violation",
    "synthetic_fields",
]
