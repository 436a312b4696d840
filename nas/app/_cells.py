"""Running the cells of a comparison, each in a worker process of its own.

Every cell is a search in its own run folder, so a cell's progress lives on disk: a
worker killed at any moment leaves a folder the next attempt continues from its
checkpoints.  The workers are spawned (never forked: torch's threads do not survive a
fork), train with one torch thread each so that ``jobs`` of them share the cores
instead of fighting over them, and, on Linux, die with the harness (a parent-death
signal), so that a killed harness leaves no orphan holding a run folder's lock.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from tqdm.auto import tqdm

from nas.app.grid import Cell
from nas.core.errors import EmbnasError
from recsys.errors import DataError, TrainingDiverged

__all__ = ["Outcome", "run_cells"]

#: The errors a cell raises on purpose (a locked folder, a diverged training, ...): its
#: message says all; any other exception is a fault whose traceback is kept.
EXPECTED = (EmbnasError, DataError, TrainingDiverged)

#: ``prctl`` option that sends a signal to this process when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1

#: What became of a cell that did not finish: the error's type, its message on one line,
#: and the traceback of an unexpected one (``None`` for the errors of :data:`EXPECTED`).
Outcome = tuple[str, str, "str | None"]


def run_cells(
    cells: Sequence[Cell],
    *,
    jobs: int,
    total: int,
    progress: bool,
    failed: Callable[[Cell, Outcome], None],
) -> None:
    """Run ``cells`` (first to last, ``jobs`` at a time), calling ``failed`` for each one that does not finish.

    A worker process that dies (killed, out of memory) fails the cells it and its
    siblings were running; a new pool of workers takes the cells not yet started.

    Args:
        cells: the cells to run.
        jobs: cells run side by side.
        total: the grid's cells, for the progress bar (those finished before count as done).
        progress: draw a bar over the cells.
        failed: called in this process with each cell that failed and its :data:`Outcome`.
    """
    queue = deque(cells)
    bar = tqdm(total=total, initial=total - len(cells), desc="cells", unit="cell", disable=not progress)
    try:
        while queue:
            _run_pool(queue, jobs, bar, failed)
    finally:
        bar.close()


def _run_pool(queue: deque[Cell], jobs: int, bar: Any, failed: Callable[[Cell, Outcome], None]) -> None:
    """Run cells from ``queue`` on one pool of workers until it is empty or the pool breaks."""
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(),))
    running: dict[Future[Outcome | None], Cell] = {}
    taken = 0
    try:
        while queue or running:
            while queue and len(running) < jobs:
                cell = queue.popleft()
                try:
                    running[pool.submit(_run_cell, dict(cell.arguments), str(cell.folder))] = cell
                except BrokenProcessPool:
                    if taken:  # a new pool takes it
                        queue.appendleft(cell)
                    else:  # a pool that cannot take even one cell: fail it, so that every attempt ends
                        failed(cell, _DIED)
                        bar.update()
                    break
                taken += 1
            if not running:
                pool.shutdown(wait=True)
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            broken = False
            for future in done:
                cell = running.pop(future)
                outcome = _outcome(future)
                broken = broken or isinstance(future.exception(), BrokenProcessPool)
                if outcome is not None:
                    failed(cell, outcome)
                bar.update()
            if broken:
                for future in wait(running).done:  # a broken pool fails every cell it was running
                    cell, outcome = running.pop(future), _outcome(future)
                    if outcome is not None:
                        failed(cell, outcome)
                    bar.update()
                pool.shutdown(wait=True)
                return
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)


#: The outcome of a cell whose worker process died under it.
_DIED: Outcome = ("WorkerDied", "the process running it died (killed, or out of memory); run the command again to "
                                "continue it from its checkpoints", None)


def _outcome(future: Future[Outcome | None]) -> Outcome | None:
    """What the cell of a finished ``future`` came to: ``None`` when it finished, else its :data:`Outcome`."""
    try:
        return future.result()
    except BrokenProcessPool:
        return _DIED
    except Exception as error:  # raised in this process while sending or receiving the cell
        return (type(error).__name__, _one_line(error), "".join(traceback.format_exception(error)))


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (an interrupted harness); their run folders continue on the next run."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


def _start_worker(parent: int) -> None:
    """Set a worker up: die with the harness, train with one thread."""
    _die_with_parent(parent)
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel work
        pass


def _die_with_parent(parent: int) -> None:
    """Ask Linux to send this process SIGTERM when its parent dies; nothing elsewhere.

    The harness may have died before the request was made (its signal then never comes):
    the parent's PID tells, and the worker ends at once.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)


def _run_cell(arguments: Mapping[str, Any], folder: str) -> Outcome | None:
    """Run (or continue) one cell's search in its run folder; ``None`` when it finished."""
    from nas.app.api import search

    try:
        search(**arguments, run_dir=folder, progress=False)
    except EXPECTED as error:
        return (type(error).__name__, _one_line(error), None)
    except Exception as error:
        return (type(error).__name__, _one_line(error), traceback.format_exc())
    return None


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).splitlines())
