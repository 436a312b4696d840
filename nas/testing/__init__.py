"""Test helpers anyone can import: the search-space and controller conformance suites, synthetic data.

Third-party search spaces run :func:`check_search_space` and controllers
:func:`check_controller` from their own tests, as scikit-learn estimators run
``check_estimator``.  The space suite needs ``hypothesis`` (a dev extra).
"""

from typing import Any

from nas.testing.data import SyntheticFields, power_law_counts, synthetic_fields

_SUITE = {"BUILTIN_OPTIONS", "Layout", "check_projection", "check_search_space", "fill_rule_violation", "layouts",
          "row_order_violation"}


_CONTROLLER_SUITE = {"check_controller", "check_fallbacks", "check_proposals", "check_resume", "conformance_cases",
                     "synthetic_fitness"}


def __getattr__(name: str) -> Any:
    """Load the conformance suites (hypothesis, torch) only when they are asked for."""
    if name in _SUITE:
        from nas.testing import spaces

        return getattr(spaces, name)
    if name in _CONTROLLER_SUITE:
        from nas.testing import controllers

        return getattr(controllers, name)
    raise AttributeError(f"module 'nas.testing' has no attribute {name!r}")


__all__ = [
    "BUILTIN_OPTIONS",
    "Layout",
    "SyntheticFields",
    "check_controller",
    "check_fallbacks",
    "check_projection",
    "check_proposals",
    "check_resume",
    "check_search_space",
    "conformance_cases",
    "fill_rule_violation",
    "layouts",
    "power_law_counts",
    "row_order_violation",
    "synthetic_fields",
    "synthetic_fitness",
]
