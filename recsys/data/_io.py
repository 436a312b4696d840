"""Reading data files, plain or gzipped, and parsing integer ids fast.

Parsing is the one place where the loaders touch raw text, so it is also the
place that turns every malformed byte into a :class:`~recsys.errors.DataError`
naming the file and the 1-based line. The happy path is vectorised (a
``bytes.translate`` check that only digits and whitespace occur, then
``np.fromstring``); the line of a fault is located only once a fault is known.

Error messages quote the offending text through :func:`quote`, which keeps a
bounded prefix: a malformed field of megabytes must give a readable one-line
error, and quickly.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from pathlib import Path
from typing import NoReturn

import numpy as np

from recsys.errors import DataError

__all__ = [
    "GZIP_MAGIC",
    "QUOTE_LIMIT",
    "PathLike",
    "check_line_ends",
    "decode_text",
    "line_at",
    "parse_int_lines",
    "quote",
    "read_bytes",
]

PathLike = str | os.PathLike[str]

GZIP_MAGIC = b"\x1f\x8b"
"""First two bytes of every gzip stream; a file starting with them is gunzipped whatever its name."""

QUOTE_LIMIT = 80
"""Most characters of a field, line or token an error message quotes; longer ones are cut (see :func:`quote`)."""

_ALLOWED = b"0123456789 \t\r\n"
_INT64_MAX = int(np.iinfo(np.int64).max)
_INT64_DIGITS = len(str(_INT64_MAX))
_LONE_CR = re.compile(rb"(?<!\r)\r+(?=[^\r\n])")  # a run of \r inside a line (one start per run: linear)


def quote(text: str | bytes, limit: int = QUOTE_LIMIT, *, bare: bool = False) -> str:
    """``text`` for an error message: its ``repr``, or a prefix of ``limit`` characters, ``…`` and the full length.

    A megabyte field gives ``'1111…1111'… (5,000,000 characters)``, not a megabyte
    line; the shown part stays within about ``limit`` characters even when escapes
    widen it. ``bytes`` are decoded (invalid UTF-8 replaced) after the cut, so only
    the prefix is ever copied.

    Args:
        text: the field, line or token.
        limit: most characters shown.
        bare: show the text as it is instead of its ``repr`` (for ids: digits only).
    """
    size = len(text)
    unit = "bytes" if isinstance(text, bytes) else "characters"
    head = text[:limit]
    if isinstance(head, bytes):
        head = head.decode("utf-8", errors="replace")
    shown = head if bare else repr(head)
    while len(shown) > limit + 2 and len(head) > 1:  # escapes (``\\x00``) widen a repr: keep fewer characters
        head = head[: len(head) * 3 // 4]
        shown = head if bare else repr(head)
    return shown if len(head) >= size else f"{shown}… ({size:,} {unit})"


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


def check_line_ends(data: bytes, path: PathLike, first_line: int = 1) -> None:
    """Refuse a carriage return that does not end a CRLF line.

    Lines are split at ``\\n`` only, so an old Mac file (lines ending in ``\\r``)
    would read as one long line: a header with no rows, or one user holding every
    id of the file. CRLF files are fine, and so are carriage returns just before
    a line's end (``\\r\\r\\n``, or the end of the file), which stripping removes.

    Args:
        data: raw text, or a run of whole lines of it.
        path: the file, for the message.
        first_line: the 1-based line of the first line of ``data`` in ``path``.

    Raises:
        DataError: at the line of the first ``\\r`` inside a line.
    """
    if data.count(b"\r") == data.count(b"\r\n"):  # the common case, at memchr speed
        return
    found = _LONE_CR.search(data)
    if found is None:
        return
    pos = found.start()
    if b"\n" in data.rstrip(b"\r\n"):
        reason = "a carriage return (\\r) inside a line (mixed line endings?); remove it or convert it to \\n"
    else:
        reason = "lines end with \\r only (old Mac line endings); convert them to \\n"
    raise DataError(reason, path, first_line + data.count(b"\n", 0, pos))


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
        token = next(t for t in lines[k - 1].split() if _too_large(t))
        raise DataError(f"id {quote(token, bare=True)} is too large (at most 2**63 - 2)", path, _physical(k, line_numbers))
    return values, counts


def _too_large(token: bytes) -> bool:
    """Whether the digits ``token`` are at least ``2**63 - 1``, without ``int()`` on thousands of digits."""
    digits = token.lstrip(b"0")
    return len(digits) > _INT64_DIGITS or (len(digits) == _INT64_DIGITS and int(digits) >= _INT64_MAX)


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
    token = next((tok for tok in line.split() if not tok.isdigit()), None)
    if token is None:
        reason = f"unexpected character {chr(data[pos])!r}"
    elif token.startswith(b"-") and token[1:].isdigit():
        reason = f"negative id {quote(token, bare=True)}"
    else:
        reason = f"not a non-negative integer id: {quote(token)}"
    raise DataError(reason, path, _physical(k, line_numbers))
