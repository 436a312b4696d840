"""A budget held as a constraint during training: an augmented Lagrangian with dual ascent.

One-shot controllers (``darts``, ``pep``) keep a differentiable quantity at a target
(the expected cost at the budget, the kept share at its schedule) without a penalty
weight to tune.  With ``e`` the relative excess (quantity / target − 1) the loss gains
``λ · e + ρ/2 · e²`` and after each step ``λ ← λ + η · e``: the multiplier grows until the
constraint holds, whatever the scale of the loss, and the quadratic term damps the
oscillation plain dual ascent shows when the parameters move faster than ``λ``.
"""

from __future__ import annotations

import torch

__all__ = ["DualAscent"]


class DualAscent:
    """The multiplier ``λ`` of one equality constraint, and the loss term it adds.

    Args:
        step: dual step ``η``.
        penalty: weight ``ρ`` of the quadratic term (0 for the plain Lagrangian).
    """

    def __init__(self, step: float, penalty: float) -> None:
        self.step, self.penalty = float(step), float(penalty)
        self.multiplier = 0.0

    def term(self, excess: torch.Tensor) -> torch.Tensor:
        """``λ · e + ρ/2 · e²`` for the relative excess ``e`` (a tensor with gradients)."""
        return self.multiplier * excess + 0.5 * self.penalty * excess.square()

    def update(self, excess: float) -> None:
        """One dual-ascent step after the parameters' step."""
        self.multiplier += self.step * excess
