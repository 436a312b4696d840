"""The lock that keeps a run folder to one writer: an exclusive ``flock`` on ``<run>/lock``.

The lock belongs to an open file, so the operating system releases it when the process
ends, however it ends; the file holds the writer's PID, so a second writer is told who
holds the folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nas.core._atomic import current_umask
from nas.core.errors import RunLockedError

try:  # POSIX; elsewhere run folders are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "FolderLock"]

#: The lock file of a run folder.
LOCK_FILE = "lock"


class FolderLock:
    """An exclusive ``flock`` on ``<run>/lock``, held by one open file until :meth:`release`.

    The lock belongs to the open file, so closing it (explicitly, when the object is
    collected, or when the process dies, SIGKILL included) releases it; the file itself
    stays, and holds the PID of the process writing the folder.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(
        cls, folder: Path, storage: Callable[[Path], Any], *, wait: Callable[[int | None], None] | None = None
    ) -> FolderLock | None:
        """Lock ``folder``; when another process holds it, raise :class:`RunLockedError`, or
        with ``wait`` call ``wait(holder_pid)`` once and block until the holder is done."""
        if fcntl is None:  # pragma: no cover - no flock on this platform
            return None
        path = folder / LOCK_FILE
        with storage(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if wait is None:
                    raise RunLockedError(_locked_message(folder, holder)) from None
                wait(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the PID is for the message only; the lock is what counts
        return cls(fd)

    @staticmethod
    def probe(folder: Path) -> None:
        """Raise :class:`RunLockedError` when a writer holds ``folder``'s lock (a shared lock taken and dropped)."""
        if fcntl is None:  # pragma: no cover
            return
        try:
            fd = os.open(folder / LOCK_FILE, os.O_RDONLY)
        except OSError:  # no lock file: never written by a version that locks, or not a run
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLockedError(_locked_message(folder, _holder(fd))) from None
        except OSError:
            return
        finally:
            os.close(fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)  # still held: nobody reads a half-cleared PID
        except OSError:
            pass
        os.close(fd)  # closing the file drops the lock

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def _holder(fd: int) -> int | None:
    """The PID written in a lock file, if it reads as one."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _locked_message(folder: Path, pid: int | None) -> str:
    who = ("this process" if pid == os.getpid() else f"process {pid}") if pid is not None else "another process"
    return (f"{folder} is being written by {who} (it holds {folder / LOCK_FILE}); two writers would interleave its "
            f"files: wait for it to finish (or stop it), then continue with `embnas resume {folder}`")
