"""Statistics of a comparison: a metric's spread over seeds, and paired differences between arms.

Two allocations searched with the same seed share the data split, the initialisations
and the full reference model, so their difference on that seed is free of the noise
they share.  :func:`paired_difference` therefore compares arms seed by seed (a paired
t interval) rather than comparing two means: it needs far fewer seeds to tell a real
difference from the spread of training.  A claim "better" or "worse" is made only
when the 95 % interval of the mean difference excludes zero.

Pure numpy, with :mod:`scipy.stats` for one number, the quantile of Student's t.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LOWER_IS_BETTER", "VERDICTS", "PairedDifference", "Spread", "higher_is_better", "paired_difference", "spread"]

#: Metrics where a smaller value is the better model (the verdict's sign flips for them).
LOWER_IS_BETTER = frozenset({"logloss"})

#: The verdicts of :func:`paired_difference`: the interval above zero, below zero, across it,
#: or too few paired seeds to say.
VERDICTS = ("better", "worse", "level", "n/a")


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is the better model (all but :data:`LOWER_IS_BETTER`)."""
    return metric not in LOWER_IS_BETTER


@dataclass(frozen=True)
class Spread:
    """A metric over seeds.

    Attributes:
        n: the finite values.
        mean: their mean (``nan`` with none).
        sd: their sample standard deviation (``ddof=1``; ``nan`` with fewer than two).
    """

    n: int
    mean: float
    sd: float


def spread(values: Sequence[float]) -> Spread:
    """The :class:`Spread` of ``values``; values that are not finite (a metric that could not be computed) are left out."""
    array = np.asarray(list(values), dtype=np.float64)
    array = array[np.isfinite(array)]
    n = int(array.size)
    mean = float(array.mean()) if n else math.nan
    sd = float(array.std(ddof=1)) if n >= 2 else math.nan
    return Spread(n, mean, sd)


@dataclass(frozen=True)
class PairedDifference:
    """An arm minus a baseline, seed by seed.

    Attributes:
        n: seeds with a finite value in both (the pairs).
        mean: mean of the differences (arm minus baseline, in the metric's units).
        sd: sample standard deviation of the differences (``ddof=1``).
        low: lower end of the confidence interval of ``mean``.
        high: upper end of it.
        percent: ``mean`` as a percentage of the baseline's mean over the same seeds.
        verdict: ``"better"`` or ``"worse"`` when the interval excludes zero (judged by
            the metric's direction), ``"level"`` when it holds zero, ``"n/a"`` with fewer
            than two pairs (no interval).
        seeds: the paired seeds.
    """

    n: int
    mean: float
    sd: float
    low: float
    high: float
    percent: float
    verdict: str
    seeds: tuple[int, ...] = ()


def paired_difference(
    values: Mapping[int, float],
    baseline: Mapping[int, float],
    *,
    higher_better: bool = True,
    confidence: float = 0.95,
) -> PairedDifference:
    """The mean of ``values[s] - baseline[s]`` over the seeds ``s`` both hold, with its t interval.

    The interval is ``mean ± t(n-1, (1 + confidence) / 2) · sd / sqrt(n)``: Student's t
    with ``n - 1`` degrees of freedom (the quantile from :func:`scipy.stats.t.ppf`), as the
    spread of the differences is estimated from the same ``n`` pairs.

    Args:
        values: the arm's metric by seed.
        baseline: the baseline's metric by seed.
        higher_better: whether a larger metric is better; ``False`` flips the verdict
            (a negative difference of log loss is ``"better"``).
        confidence: the interval's coverage.

    Returns:
        The :class:`PairedDifference`; its numbers are ``nan`` where they need more pairs
        (the mean with none, the rest with fewer than two).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    seeds = tuple(sorted(s for s in set(values) & set(baseline)
                         if math.isfinite(values[s]) and math.isfinite(baseline[s])))
    arm = np.asarray([values[s] for s in seeds], dtype=np.float64)
    base = np.asarray([baseline[s] for s in seeds], dtype=np.float64)
    n = len(seeds)
    if n == 0:
        return PairedDifference(0, math.nan, math.nan, math.nan, math.nan, math.nan, "n/a", seeds)
    differences = arm - base
    mean = float(differences.mean())
    base_mean = float(base.mean())
    percent = 100.0 * mean / base_mean if base_mean else math.nan
    if n < 2:
        return PairedDifference(n, mean, math.nan, math.nan, math.nan, percent, "n/a", seeds)
    from scipy.stats import t as student_t

    sd = float(differences.std(ddof=1))
    half = float(student_t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if low > 0.0:
        verdict = "better" if higher_better else "worse"
    elif high < 0.0:
        verdict = "worse" if higher_better else "better"
    else:
        verdict = "level"
    return PairedDifference(n, mean, sd, low, high, percent, verdict, seeds)
