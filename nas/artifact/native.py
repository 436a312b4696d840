"""The packed layout's row gather in C, compiled on first use with the system's C compiler.

Serving a packed table copies, for every id, a row of its own size and zero-pads it to
``d_max``.  No tensor operation does that in one pass on a CPU: eager PyTorch gathers
whole ``d_max``-wide windows and clears what lies past each row in a second pass, which
costs about half the throughput of a dense table (docs/results.md, section 3).
``gather.c`` copies each row and zero-fills its tail in one pass, at the speed of a dense
``nn.Embedding``.  It is plain C99 that includes only the C library, so any C compiler
builds it in well under a second: this module compiles it once per process into a
private temporary folder and calls it through :mod:`ctypes`, and the serving loader still
imports only torch, safetensors and the standard library.

Where it cannot be built (no compiler, a platform without shared libraries, a failed
self-check), :func:`row_gather` returns ``None``, :func:`unavailable_reason` says why, and
the packed layout serves the same vectors through its eager path.  ``CC`` picks the
compiler (it may carry arguments, ``CC="ccache gcc"``); the build tries ``-O3
-march=native`` first (the library never leaves the process, so it may use every
instruction of this CPU), then plain ``-O3``.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

__all__ = ["BLOCK", "SOURCE", "RowGather", "row_gather", "unavailable_reason"]

#: The C source this module compiles.
SOURCE = Path(__file__).with_name("gather.c")
#: Rows per stored offset in the packed layout, as ``BLOCK`` in ``gather.c``.
BLOCK = 16
#: Compiler flags tried in turn.
_FLAG_SETS = (("-O3", "-march=native"), ("-O3",))
#: Seconds a compiler may take before the build is given up.
_COMPILE_TIMEOUT_S = 120

_lock = threading.Lock()
_built: RowGather | None = None
_reason: str | None = None


class RowGather:
    """The compiled gather: ``gather(ids, rows, base, sizes, values, d_max)`` is a zero-padded ``(len(ids), d_max)`` tensor.

    The table is the packed layout of :mod:`nas.artifact.serving`: ``values`` back to back,
    ``sizes`` one a row (uint8, or int16 for tables wider than 255 values) padded to a
    multiple of :data:`BLOCK`, and ``base`` the int32 or int64 offset of every ``BLOCK``-th
    row.  Every tensor must be contiguous and on the CPU, ``ids`` int64; out-of-range ids
    raise ``IndexError``.
    """

    #: (sizes dtype, offsets dtype) -> the C function that reads them.
    ENTRY_POINTS = {
        (torch.uint8, torch.int32): "embnas_gather_8_32", (torch.uint8, torch.int64): "embnas_gather_8_64",
        (torch.int16, torch.int32): "embnas_gather_16_32", (torch.int16, torch.int64): "embnas_gather_16_64",
    }

    def __init__(self, library: ctypes.CDLL) -> None:
        self._functions = {}
        for dtypes, name in self.ENTRY_POINTS.items():
            function = getattr(library, name)
            function.restype = ctypes.c_int64
            function.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                                 ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
            self._functions[dtypes] = function

    def __call__(self, ids: torch.Tensor, rows: int, base: torch.Tensor, sizes: torch.Tensor, values: torch.Tensor,
                 d_max: int) -> torch.Tensor:
        n = len(ids)
        out = torch.empty(n, d_max, dtype=values.dtype)
        bad = self._functions[sizes.dtype, base.dtype](ids.data_ptr(), n, rows, base.data_ptr(), sizes.data_ptr(),
                                                      values.data_ptr(), values.element_size(), d_max, out.data_ptr())
        if bad >= 0:
            raise IndexError(f"index {int(ids[bad])} is out of range for a table of {rows:,} rows")
        return out


def row_gather() -> RowGather | None:
    """The compiled gather, built on the first call in this process; ``None`` where it cannot be built."""
    global _built, _reason
    with _lock:
        if _built is None and _reason is None:
            try:
                gather = RowGather(_compile())
                _self_check(gather)
                _built = gather
            except _BuildError as error:
                _reason = str(error)
        return _built


def unavailable_reason() -> str | None:
    """Why :func:`row_gather` returned ``None`` (``None`` while it has not been tried, or when it works)."""
    return _reason


class _BuildError(Exception):
    """The gather could not be built or failed its check; the message says why, in one line."""


def _compile() -> ctypes.CDLL:
    if os.name != "posix":
        raise _BuildError(f"the compiled gather is built on POSIX systems only, not {os.name!r}")
    candidates = [shlex.split(os.environ["CC"])] if os.environ.get("CC", "").strip() else [["cc"], ["gcc"], ["clang"]]
    compiler = next((command for command in candidates if shutil.which(command[0])), None)
    if compiler is None:
        raise _BuildError("no C compiler found (install one, such as gcc, or name it in CC)")
    errors = []
    with tempfile.TemporaryDirectory(prefix="embnas-gather-") as folder:
        target = Path(folder) / "gather.so"
        for flags in _FLAG_SETS:
            command = [*compiler, *flags, "-std=c99", "-shared", "-fPIC", "-o", str(target), str(SOURCE)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=_COMPILE_TIMEOUT_S, check=False)
            except (OSError, subprocess.TimeoutExpired) as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            if done.returncode == 0:
                try:  # the mapping outlives the file, which goes with the folder
                    return ctypes.CDLL(str(target))
                except OSError as error:
                    errors.append(f"cannot load the library: {error}")
                    continue
            lines = (done.stderr or done.stdout).strip().splitlines()
            errors.append(lines[-1] if lines else f"exit status {done.returncode}")
    raise _BuildError(f"{shlex.join(compiler)} could not build {SOURCE.name}: {errors[-1]}")


def _self_check(gather: RowGather) -> None:
    """Gather a small table whose answer is known, with every entry point, before trusting the build."""
    sizes = torch.tensor([3, 0, 2, 1] + [1] * 14 + [0] * 14, dtype=torch.int64)  # row 17 is in the second block
    starts = torch.cumsum(sizes, 0) - sizes
    values = torch.arange(1, int(sizes.sum()) + 1, dtype=torch.float32)
    ids = torch.tensor([2, 0, 1, 17, 3], dtype=torch.int64)
    expected = torch.zeros(len(ids), 4)
    for position, row in enumerate(ids.tolist()):
        expected[position, : sizes[row]] = values[starts[row] : starts[row] + sizes[row]]
    for size_dtype, base_dtype in RowGather.ENTRY_POINTS:
        stored, base = sizes.to(size_dtype), starts[::BLOCK].to(base_dtype).contiguous()
        if not torch.equal(gather(ids, 18, base, stored, values, 4), expected):
            raise _BuildError(f"the compiled gather failed its self-check ({size_dtype} sizes, {base_dtype} offsets)")
        try:
            gather(torch.tensor([18]), 18, base, stored, values, 4)
        except IndexError:
            continue
        raise _BuildError("the compiled gather did not refuse an out-of-range id")
