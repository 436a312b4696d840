"""Precision in the core: names, row codes, budgets held in bits, and allocations that carry a precision per row."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas.core.accounting import precision_fixed_bytes
from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.errors import BudgetError, ConfigError
from nas.core.precision import (
    DEFAULT_PRECISIONS, PRECISIONS, SCALE_BITS, SCALES, code_dtype, decode_codes, encode_codes, parse_precisions,
)

ROWS = {"user": 300, "item": 500}
PRECISION_LISTS = st.lists(st.sampled_from(list(PRECISIONS)), min_size=1, max_size=5, unique=True)


def test_precisions_are_read_widest_first_and_unknown_names_are_refused():
    assert parse_precisions("int4, fp32,int8") == ("fp32", "int8", "int4")
    assert parse_precisions(["FP16", "fp16"]) == ("fp16",)
    with pytest.raises(ConfigError, match="unknown precision 'int3'; choose from fp32, fp16, int8, int4, int2"):
        parse_precisions("fp32,int3")
    with pytest.raises(ConfigError, match="at least one precision"):
        parse_precisions(" , ")


def test_a_row_costs_its_values_at_their_width_and_an_integer_row_its_scale():
    assert PRECISIONS["fp32"].row_bits(10) == 320
    assert PRECISIONS["fp16"].row_bits(10) == 160
    assert PRECISIONS["int8"].row_bits(10) == 80 + SCALE_BITS
    assert PRECISIONS["int4"].row_bits(np.array([0, 3])).tolist() == [16, 28]
    assert [PRECISIONS[p].levels for p in ("int8", "int4", "int2")] == [127, 7, 1]
    with pytest.raises(ValueError, match="not an integer precision"):
        PRECISIONS["fp16"].levels


@given(d_min=st.integers(0, 4), width=st.integers(0, 300), n=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_row_codes_round_trip_in_the_smallest_dtype(d_min, width, n, seed):
    d_max = d_min + width
    rng = np.random.default_rng(seed)
    dims, precision = rng.integers(d_min, d_max + 1, 50), rng.integers(0, n, 50)
    codes = encode_codes(dims, precision, d_min, d_max, n)
    assert codes.dtype == code_dtype(d_min, d_max, n)
    assert (width + 1) * n - 1 <= np.iinfo(codes.dtype).max
    assert codes.dtype == np.uint8 or (width + 1) * n - 1 > np.iinfo(np.uint8).max
    back = decode_codes(codes, d_min, n)
    assert np.array_equal(back[0], dims) and np.array_equal(back[1], precision)


def test_the_default_search_codes_a_row_in_one_byte_as_a_size_alone_did():
    assert code_dtype(1, 64, len(DEFAULT_PRECISIONS)) == np.uint8


@settings(max_examples=300)
@given(precisions=PRECISION_LISTS, d_min=st.integers(0, 3), extra=st.integers(0, 60), nbytes=st.integers(0, 200_000),
       scales=st.sampled_from(SCALES))
def test_a_byte_budget_with_precisions_is_held_in_bits_and_refuses_below_its_named_minimum(precisions, d_min, extra, nbytes,
                                                                                          scales):
    d_max = d_min + max(extra, 1)
    fixed = precision_fixed_bytes(ROWS, d_min, d_max, parse_precisions(precisions), scales)
    cheapest = min(int(PRECISIONS[p].row_bits(d_min, scales)) for p in precisions)
    least_bits = sum(ROWS.values()) * cheapest
    feasible = (nbytes - fixed) * 8 >= least_bits
    if not feasible:
        with pytest.raises(BudgetError, match="infeasible") as raised:
            Budget.from_bytes(nbytes, ROWS, d_max, d_min, precisions=precisions, scales=scales)
        minimum = int(str(raised.value).rsplit("budget is ", 1)[1].split(" bytes")[0].replace(",", ""))
        assert minimum == fixed + math.ceil(least_bits / 8)
        Budget.from_bytes(minimum, ROWS, d_max, d_min, precisions=precisions, scales=scales)  # the minimum it names is feasible
        return
    budget = Budget.from_bytes(nbytes, ROWS, d_max, d_min, precisions=precisions, scales=scales)
    assert budget.unit == "bits" and budget.min_cost == least_bits
    per_value, per_row = budget.prices()
    assert list(zip(per_value.tolist(), per_row.tolist())) == [budget.row_cost(p) for p in budget.precisions]
    assert budget.max_cost == budget.max_bits == (nbytes - fixed) * 8
    assert fixed + budget.max_bits // 8 == budget.max_bytes <= nbytes
    assert Budget.from_dict(budget.to_dict()) == budget


def test_shared_scales_are_paid_once_a_size_and_make_one_percent_of_gowallas_bytes_feasible():
    rows, precisions = {"user": 29_858, "item": 40_981}, ("fp32", "fp16", "int8", "int4")
    one_percent = 70_839 * 64 * 4 // 100
    with pytest.raises(BudgetError, match="smallest feasible budget is 219,173 bytes"):
        Budget.from_bytes(one_percent, rows, 64, 1, precisions=precisions)
    budget = Budget.from_bytes(one_percent, rows, 64, 1, precisions=precisions, scales="shared")
    assert precision_fixed_bytes(rows, 1, 64, precisions, "shared") - precision_fixed_bytes(rows, 1, 64, precisions) \
        == 2 * 2 * 64 * 2  # two tables, two integer precisions, 64 sizes, an fp16 each
    assert budget.row_cost("int4") == (4, 0) and budget.row_cost("fp16") == (16, 0)
    assert budget.cheapest_precision == "int4" and budget.max_bits // 70_839 == 11  # about 11 bits a row for values
    assert Budget.from_dict(budget.to_dict()) == budget and budget.to_dict()["scales"] == "shared"
    assert "scales" not in Budget.from_bytes(one_percent * 5, rows, 64, 1, precisions=precisions).to_dict()
    with pytest.raises(BudgetError, match="unknown scales 'block'"):
        Budget.from_bytes(one_percent, rows, 64, 1, precisions=precisions, scales="block")
    with pytest.raises(BudgetError, match="needs precisions"):
        Budget.from_bytes(one_percent * 5, rows, 64, 1, scales="shared")


def test_value_budgets_keep_counting_values_whatever_the_precision():
    budget = Budget.parse("0.9", ROWS, 16, 1, precisions=["int8", "fp32"])
    plain = Budget.parse("0.9", ROWS, 16, 1)
    assert budget.unit == "values" and budget.precisions == ("fp32", "int8")
    assert budget.max_cost == budget.max_values == plain.max_values
    assert budget.row_cost("int8") == (1, 0)
    assert [a.tolist() for a in budget.prices()] == [[1, 1], [0, 0]]
    assert Budget.from_dict(budget.to_dict()) == budget


def test_a_budget_without_precisions_reads_and_writes_as_before():
    budget = Budget.parse("2MB", ROWS, 16, 1)
    assert budget.unit == "values" and budget.max_cost == budget.max_values
    assert set(budget.to_dict()) == {"max_values", "rows", "d_min", "d_max", "kind", "amount", "dtype"}
    assert budget.row_cost() == (1, 0) and budget.cheapest_precision is None
    assert [a.tolist() for a in budget.prices()] == [[1], [0]]


def allocation(rng: np.random.Generator, precisions: tuple[str, ...], d_max: int = 16) -> Allocation:
    dims = {name: rng.integers(1, d_max + 1, n) for name, n in ROWS.items()}
    index = {name: rng.integers(0, len(precisions), n) for name, n in ROWS.items()}
    return Allocation(dims, row_precisions=index, precisions=precisions)


@given(precisions=PRECISION_LISTS, seed=st.integers(0, 2**32 - 1))
def test_an_allocation_costs_each_row_at_its_precision_and_keeps_them_through_its_file(precisions, seed):
    chosen = allocation(np.random.default_rng(seed), tuple(precisions))
    expected = sum(
        int(PRECISIONS[precisions[k]].row_bits(int(d)))
        for name in ROWS for d, k in zip(chosen.row_dims[name], chosen.row_precisions[name])
    )
    assert chosen.bits() == expected
    back = Allocation.from_bytes(chosen.to_bytes())
    assert back.precisions == tuple(precisions) and back.fingerprint() == chosen.fingerprint() and back.bits() == expected
    counts = chosen.summary()["user"]["rows_at"]
    assert list(counts) == list(precisions) and sum(counts.values()) == ROWS["user"]


def test_validate_holds_an_allocation_with_precisions_to_the_bits_it_takes():
    chosen = allocation(np.random.default_rng(0), DEFAULT_PRECISIONS)
    fixed = precision_fixed_bytes(ROWS, 1, 16, DEFAULT_PRECISIONS)
    exact = Budget.from_bytes(fixed + chosen.bits() // 8, ROWS, 16, 1, precisions=DEFAULT_PRECISIONS)
    if exact.max_bits >= chosen.bits():
        chosen.validate(exact)
    tight = Budget.from_bytes(fixed + chosen.bits() // 8 - 1, ROWS, 16, 1, precisions=DEFAULT_PRECISIONS)
    with pytest.raises(BudgetError, match="bits, .* over the budget"):
        chosen.validate(tight)
    narrower = Budget.from_bytes(10**7, ROWS, 16, 1, precisions=("fp32", "int8"))
    with pytest.raises(BudgetError, match="stores rows at fp16, int4, not among the budget's precisions fp32, int8"):
        chosen.validate(narrower)
    plain = Allocation(chosen.row_dims)
    with pytest.raises(BudgetError, match="this allocation has none"):
        plain.validate(exact)


def test_an_allocation_without_precisions_is_unchanged_by_them():
    dims = {"user": np.array([3, 2]), "item": np.array([1])}
    plain = Allocation(dims)
    assert plain.row_precisions is None and plain.precisions == ()
    assert "rows_at" not in plain.summary()["user"]
    digest = hashlib.sha256()
    for name, values in dims.items():
        digest.update(name.encode() + b"\0" + values.astype(np.int64).tobytes())
    assert Allocation.from_bytes(plain.to_bytes()).fingerprint() == plain.fingerprint() == digest.hexdigest()[:16]
    with pytest.raises(ValueError, match="counted in values"):
        plain.bits()


@pytest.mark.parametrize("kwargs, message", [
    ({"row_precisions": {"user": [0, 0], "item": [0]}}, "need the precision names"),
    ({"precisions": ("fp32",)}, "no row_precisions"),
    ({"row_precisions": {"user": [0, 2], "item": [0]}, "precisions": ("fp32", "int8")}, "must index the 2 precisions"),
    ({"row_precisions": {"user": [0, 0]}, "precisions": ("fp32",)}, "must cover every table"),
    ({"row_precisions": {"user": [0, 0], "item": [0]}, "precisions": ("fp32", "fp32")}, "one precision twice"),
    ({"row_precisions": {"user": [0, 0], "item": [0]}, "precisions": ("fp8",)}, "unknown precisions"),
])
def test_inconsistent_precisions_are_refused(kwargs, message):
    kwargs = {key: ({k: np.asarray(v) for k, v in value.items()} if key == "row_precisions" else value)
              for key, value in kwargs.items()}
    with pytest.raises(ValueError, match=message):
        Allocation({"user": np.array([3, 2]), "item": np.array([1])}, **kwargs)
