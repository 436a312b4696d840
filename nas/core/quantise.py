"""Rows at their precision: what the export stores, and the quantisation the model trains through (torch).

One function, :func:`quantise_rows`, turns rows of float32 values into what their
precision keeps (:mod:`nas.core.precision`): ``fp32`` as it is, ``fp16`` rounded to half
precision, an integer precision as integers ``q`` in ``[-levels, levels]`` and an fp16
scale: the row's own, from its largest kept value, or with shared scales
(:func:`shared_peaks`) one from the largest value of every row of the table with the same
size and precision.  The model's lookups (fake quantisation, :func:`fake_quantise`) and the
export call the same function on the same values, so the loader's ``q * scale`` is the
model's vector bit for bit:

* the scale is rounded up to fp16 *before* the values are divided by it (so no value
  is clipped), and both the model and the loader multiply an exact integer by that
  scale in float32;
* ``-0.0`` never appears: ``q`` and fp16 values are normalised to ``+0.0``, and a row
  whose scale is zero (all its kept values zero) keeps ``q = 0``;
* fp16 values and scales are clipped to fp16's finite range first, so nothing becomes
  infinite.

Gradients pass straight through (:func:`fake_quantise`): the forward pass sees the
stored vector, the backward pass treats the rounding as the identity, as
quantisation-aware training usually does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nas.core.precision import PRECISIONS

__all__ = ["FP16_MAX", "RowPrecision", "fake_quantise", "quantise_rows", "shared_peaks"]

#: The largest finite fp16 value.
FP16_MAX = float(torch.finfo(torch.float16).max)


class RowPrecision:
    """Per-row precision parameters of a table, as tensors a lookup can index.

    Args:
        index: each row's index into ``precisions`` (int tensor).
        precisions: the precision names.

    Attributes:
        levels: per row, the largest integer an integer precision stores (0 for floats), float32.
        half: per row, whether the row is stored at fp16.
    """

    def __init__(self, index: torch.Tensor, precisions: Sequence[str]) -> None:
        chosen = [PRECISIONS[name] for name in precisions]
        levels = torch.tensor([float(p.levels) if p.integer else 0.0 for p in chosen], dtype=torch.float32)
        half = torch.tensor([p.name == "fp16" for p in chosen], dtype=torch.bool)
        index = index.to(torch.int64)
        self.levels = levels.to(index.device)[index]
        self.half = half.to(index.device)[index]


def shared_peaks(row_peaks: torch.Tensor, levels: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """Per row, the largest ``|value|`` over every row of its table with its size and precision.

    What a shared scale is computed from (``scales="shared"``): one scale per table,
    precision and size.  Pass every row of the table, so a row's peak does not depend on
    which rows a batch happens to look up.

    Args:
        row_peaks: ``(..., rows)`` each row's own largest ``|value|`` among its kept values
            (leading dimensions: independent variants of the table).
        levels: ``(..., rows)`` the largest integer of each row's precision (tells integer
            precisions apart; float rows get a peak too, unused).
        dims: ``(..., rows)`` each row's size.
    """
    peak = row_peaks.detach()
    variants, rows = peak.numel() // max(peak.shape[-1], 1), peak.shape[-1]
    # A row's group within its variant: its size and its precision's levels (at most 127).
    key = dims.to(torch.int64) * 128 + levels.to(torch.int64)
    width = int(key.max()) + 1 if key.numel() else 1
    key = (key.reshape(variants, rows) + torch.arange(variants, device=key.device).unsqueeze(1) * width).reshape(-1)
    group = torch.zeros(variants * width, dtype=peak.dtype, device=peak.device)
    group = group.scatter_reduce(0, key, peak.reshape(-1), reduce="amax", include_self=True)
    return group.index_select(0, key).reshape(peak.shape)


def quantise_rows(values: torch.Tensor, levels: torch.Tensor, half: torch.Tensor,
                  peak: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What each row's precision stores: the integers (or float values) and the integer rows' scales.

    Args:
        values: ``(..., d)`` float32 rows, zero past each row's size.
        levels: ``(...)`` the largest integer of each row's precision, 0 for a float row.
        half: ``(...)`` whether a float row is stored at fp16.
        peak: ``(...)`` the magnitude each integer row's scale covers (:func:`shared_peaks`);
            ``None``: the row's own largest ``|value|``.

    Returns:
        ``(stored, scale)``: ``stored`` is ``(..., d)`` float32 holding, for an integer row,
        its integers (exact in float32), for an fp16 row its values rounded to fp16, for
        an fp32 row its values; ``scale`` is ``(...)`` float32, exact in fp16, zero for
        float rows.  An integer row's vector is ``stored * scale``.
    """
    return _stored(values, levels, half, peak, dequantise=False)


def fake_quantise(values: torch.Tensor, levels: torch.Tensor, half: torch.Tensor,
                  peak: torch.Tensor | None = None) -> torch.Tensor:
    """The vectors the stored rows give back, with straight-through gradients to ``values`` (``peak`` as :func:`quantise_rows`)."""
    served, _ = _stored(values.detach(), levels, half, peak, dequantise=True)
    return _StraightThrough.apply(values, served)


def _stored(values: torch.Tensor, levels: torch.Tensor, half: torch.Tensor, peak: torch.Tensor | None, *,
            dequantise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantise_rows`, or with ``dequantise`` the integer rows' vectors ``q * scale`` instead of ``q``.

    Each precision's arithmetic runs on its own rows only (gathered, then written back),
    not on every row with the other rows' results selected away: a sandwich step's
    variants mix the precisions, so this saves most of the elementwise passes.
    """
    leading = values.shape[:-1]
    scale = torch.zeros(leading, dtype=torch.float32, device=values.device)
    levels = levels.expand(leading).reshape(-1)
    integer = levels > 0
    half = half.expand(leading).reshape(-1)
    has_integer, has_half = bool(integer.any()), bool(half.any())
    if not (has_integer or has_half):
        return values, scale
    flat = values.reshape(-1, values.shape[-1])
    stored = flat.clone()
    if has_half:
        rows = half.nonzero().squeeze(1)
        rounded = flat.index_select(0, rows).clamp_(-FP16_MAX, FP16_MAX).to(torch.float16).to(torch.float32).add_(0.0)
        stored.index_copy_(0, rows, rounded)
    if has_integer:
        rows = integer.nonzero().squeeze(1)
        kept = flat.index_select(0, rows)
        row_levels = levels.index_select(0, rows)
        row_peak = kept.abs().amax(dim=-1) if peak is None else peak.expand(leading).reshape(-1).index_select(0, rows)
        row_scale = _fp16_at_least((row_peak / row_levels).clamp(max=FP16_MAX))
        bound = row_levels.unsqueeze(-1)
        q = kept.div_(torch.where(row_scale > 0, row_scale, 1.0).unsqueeze(-1)).round_().clamp_(-bound, bound).add_(0.0)
        if dequantise:
            q = q.mul_(row_scale.unsqueeze(-1))
        stored.index_copy_(0, rows, q)
        scale.view(-1).index_copy_(0, rows, row_scale)
    return stored.view(values.shape), scale


def _fp16_at_least(scale: torch.Tensor) -> torch.Tensor:
    """The smallest fp16 value at or above each (non-negative) scale, as float32.

    Rounding the scale up keeps every kept value within ``levels * scale``, so nothing is
    clipped and each value is within half a step of what is stored.
    """
    half = scale.to(torch.float16)
    up = torch.nextafter(half, torch.full_like(half, FP16_MAX))
    return torch.where(half.to(torch.float32) < scale, up, half).to(torch.float32)


class _StraightThrough(torch.autograd.Function):
    """``served`` forwards (exactly: no ``x + (y - x)`` rounding), the gradient flows to ``values`` unchanged."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, served: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        return served

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return grad, None
