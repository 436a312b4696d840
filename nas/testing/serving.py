"""Every way :class:`~nas.artifact.serving.PackedEmbedding` can serve an export, for parity tests.

Each way is the keyword arguments of :meth:`PackedEmbedding.load`; a parity test loads the
same export every way and checks that all serve the same bits.  The compiled gather is one
of them where it builds on this machine (:mod:`nas.artifact.native`).
"""

from __future__ import annotations

from typing import Any

from nas.artifact.native import row_gather


def serving_ways() -> dict[str, dict[str, Any]]:
    """``{name: load keyword arguments}``: the packed layout in eager torch and compiled, tiered, dense."""
    ways: dict[str, dict[str, Any]] = {"packed": {"layout": "packed", "native": False}}
    if row_gather() is not None:
        ways["packed-native"] = {"layout": "packed", "native": True}
    ways["dense"] = {"layout": "dense"}
    ways["tiered"] = {"layout": "tiered"}
    return ways
