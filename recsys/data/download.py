"""Fetching public files into a local cache: streamed, resumable, checked by sha256.

Only the standard library talks to the network (:mod:`urllib.request`), so
downloading adds no dependency. A file is streamed to ``<dest>.part`` while its
sha256 is computed; a ``.part`` left by an interrupted download is continued
with an HTTP ``Range: bytes=N-`` request (a server that ignores the range and
answers ``200`` makes the download start again from zero). The hash is checked
before the ``.part`` is renamed to its final name with :func:`os.replace`, so a
file under its final name is always complete and verified; a mismatch deletes
the ``.part``, because resuming a wrong prefix can never give the right file.

Where files come from and where they go:

* the cache folder is an argument, else the ``EMBNAS_CACHE`` environment
  variable, else ``~/.cache/embnas``;
* a mirror (an argument, else ``EMBNAS_MIRROR``) replaces every upstream URL by
  ``<mirror>/<path>``, where ``<path>`` is the file's place in the cache
  (``<dataset>/<file>``): a cache folder served by any static web server, or
  given as a local folder, is a mirror for other machines, and tests point every
  download at a local server this way.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from recsys.data._io import PathLike
from recsys.errors import DataError

__all__ = [
    "CACHE_ENV",
    "MIRROR_ENV",
    "DownloadError",
    "cache_dir",
    "download",
    "file_sha256",
    "mirror_base",
    "mirror_url",
]

CACHE_ENV = "EMBNAS_CACHE"
"""Environment variable naming the cache folder when no folder is given."""

MIRROR_ENV = "EMBNAS_MIRROR"
"""Environment variable naming a mirror base URL (or local folder) when none is given."""

_CHUNK = 1 << 16
"""Bytes read from the network and from disk at a time (64 KiB)."""

_USER_AGENT = "embnas-download (python urllib)"
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class DownloadError(DataError):
    """A file that could not be fetched, or whose content is not the one expected.

    A :class:`~recsys.errors.DataError` whose ``path`` is the URL, so the
    command line reports it as one line, ``url: what went wrong``.
    """


class _Interrupted(Exception):
    """A transfer that stopped early; the ``.part`` keeps what arrived, so the next try resumes."""


def cache_dir(cache: PathLike | None = None) -> Path:
    """The cache folder: ``cache``, else ``$EMBNAS_CACHE``, else ``~/.cache/embnas`` (not created here)."""
    if cache is None:
        cache = os.environ.get(CACHE_ENV) or Path("~/.cache/embnas")
    return Path(cache).expanduser()


def mirror_base(mirror: str | None = None) -> str | None:
    """The mirror base URL: ``mirror``, else ``$EMBNAS_MIRROR``, else ``None`` (the upstream URLs).

    A local folder is accepted and turned into a ``file://`` URL.

    Raises:
        DownloadError: the mirror is neither an http(s)/file URL nor an existing folder.
    """
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    if mirror is None:
        return None
    scheme = urllib.parse.urlsplit(mirror).scheme.lower()
    if scheme in ("http", "https", "file"):
        return mirror.rstrip("/")
    folder = Path(mirror).expanduser()
    if folder.is_dir():
        return folder.resolve().as_uri()
    raise DownloadError("a mirror is an http://, https:// or file:// URL, or an existing folder", mirror)


def mirror_url(base: str, path: str) -> str:
    """The URL of ``path`` (``"<dataset>/<file>"``, as laid out in the cache) on the mirror ``base``."""
    return base.rstrip("/") + "/" + urllib.parse.quote(path.lstrip("/"))


def file_sha256(path: PathLike) -> str:
    """Hex sha256 of a file, read in chunks so large files need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK * 16):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url: str,
    dest: PathLike,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
    mismatch_hint: str = "the server sent other content than the one pinned: check the URL or the mirror",
) -> str:
    """Fetch ``url`` to ``dest`` through ``dest.part``, resuming a ``.part`` left by an earlier try.

    ``dest`` is always fetched (callers skip files already complete); on
    success it is replaced atomically, so it never holds a partial file.

    Args:
        url: an http(s) or file URL.
        dest: the final path; its folder must exist.
        sha256: expected hex digest; ``None`` accepts any content (the caller
            records the returned digest to check later downloads against it).
        size: expected size in bytes, for the progress bar when the server does
            not announce one.
        progress: show a tqdm progress bar (on stderr).
        retries: how often an interrupted transfer is resumed within this
            call; the next try starts at once after progress, and waits
            longer each time while no byte arrives.
        timeout: seconds without an answer or a byte before a try fails.
        mismatch_hint: what the user should do about a hash mismatch, which
            depends on where ``sha256`` came from (pinned or recorded).

    Returns:
        The hex sha256 of the file now at ``dest``.

    Raises:
        DownloadError: an HTTP error, a transfer still interrupted after
            ``retries`` tries (the ``.part`` is kept, so running again resumes),
            or a hash mismatch (the ``.part`` is deleted).
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    failures = stalled = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            digest = _attempt(url, part, sha256, size, progress, timeout)
            break
        except _Interrupted as exc:
            now = part.stat().st_size if part.exists() else 0
            failures += 1
            if failures > retries:
                raise DownloadError(
                    f"download interrupted ({exc}) with {now:,} bytes received; "
                    f"run the same command again to resume from {part}", url
                ) from None
            stalled = 0 if now > before else stalled + 1
            if stalled:  # resume at once after progress; back off while nothing arrives
                time.sleep(min(2.0 ** (stalled - 1), 10.0))
    if sha256 is not None and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch: expected {sha256.lower()}, got {digest}; the partial file was deleted; {mismatch_hint}", url
        )
    os.replace(part, dest)
    return digest


def _attempt(url: str, part: Path, sha256: str | None, size: int | None, progress: bool, timeout: float) -> str:
    """One request: continue ``part`` from its length (or start over) and return the digest of the whole file."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # nothing after the offset: the .part may already be whole
            return _whole_part_or_restart(part, sha256, exc.headers.get("Content-Range", ""))
        hint = "check the URL or the mirror" if exc.code in (403, 404, 410) else "try again later"
        raise DownloadError(f"HTTP {exc.code} {exc.reason}; {hint}", url) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, FileNotFoundError):  # a file:// mirror without the file: retrying cannot help
            raise DownloadError("not found; check the mirror", url) from None
        raise _Interrupted(f"no connection: {reason}") from None
    with response:
        status = response.status or 200  # file:// answers carry no status
        digest = hashlib.sha256()
        if offset and status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                part.unlink()  # a range other than the one asked for: start over
                raise _Interrupted("the server answered another range than asked for")
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK * 16):
                    digest.update(chunk)
            mode = "ab"
        else:  # 200: the whole file, whether or not a range was asked for
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else size
        received = 0
        with open(part, mode) as f, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name[: -len(".part")], disable=not progress,
        ) as bar:
            try:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise _Interrupted(f"connection lost: {exc}") from None
            finally:
                f.flush()
                os.fsync(f.fileno())
    if length and length.isdigit() and received < int(length):
        raise _Interrupted(f"connection closed after {received:,} of {int(length):,} bytes")
    return digest.hexdigest()


def _whole_part_or_restart(part: Path, sha256: str | None, content_range: str) -> str:
    """After a 416 answer: the digest of ``part`` if it is the whole file, else delete it and try again."""
    digest = file_sha256(part)
    match = re.fullmatch(r"bytes \*/(\d+)", content_range.strip())
    whole = digest == sha256.lower() if sha256 is not None else match is not None and int(match.group(1)) == part.stat().st_size
    if whole:
        return digest
    part.unlink()
    raise _Interrupted("the partial file is not a prefix of the file on the server; starting over")
