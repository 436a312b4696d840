"""Reading data files, plain or gzipped, and parsing integer ids fast.

Parsing is the one place where the loaders touch raw text, so it is also the
place that turns every malformed byte into a :class:`~recsys.errors.DataError`
naming the file and the 1-based line. The happy path is vectorised (a
``bytes.translate`` check that only digits and whitespace occur, then
``np.fromstring``); the line of a fault is located only once a fault is known.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import NoReturn

import numpy as np

from recsys.errors import DataError

__all__ = ["GZIP_MAGIC", "PathLike", "read_bytes", "decode_text", "line_at", "parse_int_lines"]

PathLike = str | os.PathLike[str]

GZIP_MAGIC = b"\x1f\x8b"
"""First two bytes of every gzip stream; a file starting with them is gunzipped whatever its name."""

_ALLOWED = b"0123456789 \t\r\n"
_INT64_MAX = int(np.iinfo(np.int64).max)


def read_bytes(path: PathLike) -> bytes:
    """The decompressed content of ``path``.

    A file is gunzipped when its name ends in ``.gz`` or when it starts with the
    gzip magic bytes, so a compressed file without the suffix still loads, and a
    ``.gz`` file that is not gzip is reported rather than parsed as text.

    Raises:
        DataError: the file does not exist, is not a regular file, cannot be
            read, or is not a readable gzip stream.
    """
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", p)
    if not p.is_file():
        raise DataError("not a regular file", p)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read file ({exc.strerror or exc})", p) from exc
    if raw[:2] == GZIP_MAGIC or p.name.endswith(".gz"):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"unreadable gzip ({exc})", p) from exc
    return raw


def line_at(data: bytes, pos: int) -> int:
    """1-based line number of byte offset ``pos`` in ``data`` (lines end at ``\\n``)."""
    return data.count(b"\n", 0, pos) + 1


def decode_text(data: bytes, path: PathLike) -> str:
    """``data`` as UTF-8 text (a leading byte-order mark is dropped).

    Raises:
        DataError: naming the line of the first byte that is not UTF-8.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text (byte {data[exc.start]:#04x})", path, line_at(data, exc.start)) from exc


def parse_int_lines(
    data: bytes, path: PathLike, line_numbers: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every whitespace-separated non-negative integer of ``data``, and how many each line holds.

    Args:
        data: ASCII text, lines separated by ``\\n`` (a ``\\r`` before it is
            whitespace, so CRLF files load).
        path: the file the text came from, for error messages.
        line_numbers: the 1-based line in ``path`` of each ``\\n``-separated line
            of ``data``, when ``data`` is not the file itself (e.g. one CSV
            column joined by newlines); default ``1, 2, ...``.

    Returns:
        ``(values, counts)``: int64 ids in reading order, and int64 number of
        ids on each ``\\n``-separated line (``data.count(b"\\n") + 1`` entries).

    Raises:
        DataError: naming the line of the first token that is not a
            non-negative integer below ``2**63 - 1``.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = b"   " + data[3:]  # same length: byte offsets and lines stay put
    if data.translate(None, _ALLOWED):
        _raise_bad_token(data, path, line_numbers)
    lines = data.split(b"\n")
    counts = np.fromiter(map(len, map(bytes.split, lines)), dtype=np.int64, count=len(lines))
    total = int(counts.sum())
    values = np.fromstring(data, dtype=np.int64, sep=" ") if total else np.zeros(0, dtype=np.int64)
    if values.size != total:  # cannot happen after the checks above; never return misaligned ids
        raise DataError(f"parsed {values.size} ids but counted {total} tokens", path)
    if total and values.max() == _INT64_MAX:  # np.fromstring saturates ids beyond int64
        k = int(np.searchsorted(np.cumsum(counts), int(np.argmax(values)), side="right")) + 1
        token = next(t for t in lines[k - 1].split() if int(t) >= _INT64_MAX).decode()
        raise DataError(f"id {token} is too large (at most 2**63 - 2)", path, _physical(k, line_numbers))
    return values, counts


def _physical(k: int, line_numbers: np.ndarray | None) -> int:
    """Line ``k`` of the parsed text (1-based) as a line of the file."""
    return k if line_numbers is None else int(line_numbers[k - 1])


def _raise_bad_token(data: bytes, path: PathLike, line_numbers: np.ndarray | None) -> NoReturn:
    """Raise a :class:`DataError` for the first byte that is neither a digit nor whitespace."""
    allowed = np.zeros(256, dtype=bool)
    allowed[np.frombuffer(_ALLOWED, dtype=np.uint8)] = True
    pos = int(np.argmin(allowed[np.frombuffer(data, dtype=np.uint8)]))
    k = line_at(data, pos)
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    line = data[start : len(data) if end < 0 else end]
    bad = [tok for tok in line.split() if not tok.isdigit()]
    if not bad:
        reason = f"unexpected character {chr(data[pos])!r}"
    else:
        token = bad[0].decode("utf-8", errors="replace")
        if token.startswith("-") and token[1:].isdigit():
            reason = f"negative id {token}"
        else:
            reason = f"not a non-negative integer id: {token!r}"
    raise DataError(reason, path, _physical(k, line_numbers))
