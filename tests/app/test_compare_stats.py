"""The statistics of ``embnas compare`` against numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from nas.app.stats import higher_is_better, paired_difference, spread

#: Student's t quantile t(2, 0.975), from a printed table.
T_2_975 = 4.302653


def test_a_difference_whose_interval_excludes_zero_is_better():
    # Differences 0.010, 0.014, 0.012: mean 0.012; deviations -0.002, +0.002, 0, so sd = sqrt(8e-6 / 2) = 0.002;
    # half width t(2, 0.975) * 0.002 / sqrt(3) = 0.0049682...; the interval [0.00703, 0.01697] excludes zero.
    arm = {0: 0.110, 1: 0.114, 2: 0.112}
    base = {0: 0.100, 1: 0.100, 2: 0.100}
    diff = paired_difference(arm, base)
    half = T_2_975 * 0.002 / math.sqrt(3)
    assert half == pytest.approx(0.0049682, abs=1e-7)
    assert diff.n == 3 and diff.seeds == (0, 1, 2)
    assert diff.mean == pytest.approx(0.012, abs=1e-12)
    assert diff.sd == pytest.approx(0.002, abs=1e-12)
    assert diff.low == pytest.approx(0.012 - half, abs=1e-8)
    assert diff.high == pytest.approx(0.012 + half, abs=1e-8)
    assert diff.percent == pytest.approx(12.0)  # 0.012 of the baseline's mean 0.100
    assert diff.verdict == "better"
    assert paired_difference(base, arm).verdict == "worse"  # the mirror image


def test_an_interval_that_holds_zero_is_level():
    # Differences 0.010, -0.008, 0.004: mean 0.002; deviations 0.008, -0.010, 0.002, so
    # sd = sqrt(1.68e-4 / 2) = 0.0091652; half width 4.302653 * 0.0091652 / sqrt(3) = 0.022768 > 0.002.
    diff = paired_difference({0: 0.510, 1: 0.492, 2: 0.504}, {0: 0.500, 1: 0.500, 2: 0.500})
    assert diff.mean == pytest.approx(0.002, abs=1e-12)
    assert diff.sd == pytest.approx(math.sqrt(1.68e-4 / 2), rel=1e-9)
    assert diff.high - diff.mean == pytest.approx(T_2_975 * math.sqrt(8.4e-5) / math.sqrt(3), rel=1e-6)
    assert diff.low < 0 < diff.high and diff.verdict == "level"


def test_log_loss_is_better_lower():
    assert not higher_is_better("logloss") and higher_is_better("auc") and higher_is_better("ndcg@20")
    base = {0: 0.500, 1: 0.500, 2: 0.500}
    higher = {0: 0.510, 1: 0.514, 2: 0.512}  # the differences of the first case: its interval is above zero
    lower = {0: 0.490, 1: 0.486, 2: 0.488}
    assert paired_difference(higher, base, higher_better=False).verdict == "worse"
    assert paired_difference(lower, base, higher_better=False).verdict == "better"
    assert paired_difference(lower, base, higher_better=False).mean == pytest.approx(-0.012)


def test_fewer_than_two_pairs_give_no_verdict():
    one = paired_difference({0: 0.3, 1: 0.4}, {1: 0.2, 2: 0.1})  # only seed 1 is in both
    assert one.n == 1 and one.seeds == (1,) and one.verdict == "n/a"
    assert one.mean == pytest.approx(0.2) and one.percent == pytest.approx(100.0)
    assert math.isnan(one.sd) and math.isnan(one.low) and math.isnan(one.high)
    none = paired_difference({0: 0.3}, {1: 0.2})
    assert none.n == 0 and none.verdict == "n/a" and math.isnan(none.mean)


def test_only_seeds_finished_and_finite_in_both_are_paired():
    arm = {0: 0.30, 1: 0.32, 2: float("nan"), 3: 0.31}
    base = {0: 0.20, 1: 0.21, 2: 0.22, 4: 0.5}
    diff = paired_difference(arm, base)
    assert diff.seeds == (0, 1) and diff.n == 2
    assert diff.mean == pytest.approx(0.105) and diff.sd == pytest.approx(math.sqrt(0.00005))


def test_spread_is_the_mean_and_the_sample_sd():
    assert spread([1.0, 2.0, 3.0]) == spread([3.0, 1.0, 2.0])
    values = spread([1.0, 2.0, 3.0])
    assert values.n == 3 and values.mean == 2.0 and values.sd == pytest.approx(1.0)  # ddof=1: sqrt(2 / 2)
    single = spread([0.5, float("nan")])
    assert single.n == 1 and single.mean == 0.5 and math.isnan(single.sd)
    empty = spread([])
    assert empty.n == 0 and math.isnan(empty.mean)
