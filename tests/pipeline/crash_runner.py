"""Run a small search in this process and, on request, die by SIGKILL at a chosen point.

    python crash_runner.py RUNS NAME [--config random|bet|darts|click|finetune] [--die-at-rename N | --die-mid-write N | --die-mid-event N] [--ddp N]

* ``--die-at-rename N``: during the N-th atomic file write, after the temporary file is
  complete and before it is renamed over the target;
* ``--die-mid-write N``: during the N-th atomic file write, after half of its first chunk;
* ``--die-mid-event N``: while appending the N-th event line, after half of it.

Without an option it runs to the end.  Used by ``test_resume.py``; the configurations
are ``CONFIGS`` below (random search; BET with successive-halving retraining; the
one-shot DARTS controller; random search over DeepFM on click data; BET with the fine-tune
selection), shared with the test.
"""

from __future__ import annotations

import argparse
import os
import signal
import types
from pathlib import Path
from dataclasses import replace

from nas.pipeline.config import SearchConfig, TrainingOptions
from nas.pipeline.data import DataSpec

CONFIG = SearchConfig(
    data=DataSpec("synthetic", extra={"n_users": 400, "n_items": 500, "mean_items_per_user": 20.0}),
    budget="0.8",
    controller="random",
    trials=6,
    ask_batch=2,
    retrain_top=2,
    fitness_users=0,
    threads=1,
    train=TrainingOptions(epochs=4, batch_size=512, eval_every=1, patience=10),
)

BET_CONFIG = replace(
    CONFIG, controller="bet", controller_options={"candidates": 8}, retrain_top=3, retrain="halving",
    train=replace(CONFIG.train, epochs=6),
)


DARTS_CONFIG = replace(CONFIG, controller="darts", controller_options={"warmup": 1}, trials=1, ask_batch=1, retrain_top=1)

CLICK_CONFIG = replace(
    CONFIG, data=DataSpec("synthetic-ctr", extra={"n_rows": 3000}), model="deepfm", d_max=8,
    train=TrainingOptions(epochs=4, batch_size=256, lr=1e-2, reg=1e-5, eval_every=1, patience=10),
)

#: BET whose top 3 are judged by a short fine-tune from the supernet, the best retrained from scratch.
FINETUNE_CONFIG = replace(BET_CONFIG, retrain="finetune", train=replace(CONFIG.train, epochs=6, checkpoint_every=1))

CONFIGS = {"random": CONFIG, "bet": BET_CONFIG, "darts": DARTS_CONFIG, "click": CLICK_CONFIG, "finetune": FINETUNE_CONFIG}


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _count_to(n: int):  # noqa: ANN202 - a tiny closure factory
    calls = {"n": 0}

    def reached() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    return reached


def arm(die_at_rename: int | None, die_mid_write: int | None, die_mid_event: int | None) -> None:
    import nas.core._atomic as atomic
    import nas.pipeline.runs as runs

    fake_os = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    if die_at_rename:
        reached = _count_to(die_at_rename)

        def replace(src, dst):  # noqa: ANN001, ANN202
            if reached():
                _die()
            return os.replace(src, dst)

        fake_os.replace = replace
    if die_mid_write:
        reached = _count_to(die_mid_write)

        def fdopen(fd, mode="r", *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            handle = os.fdopen(fd, mode, *args, **kwargs)
            if not reached():
                return handle
            write = handle.write

            def half_then_die(data):  # noqa: ANN001, ANN202
                write(data[: max(1, len(data) // 2)])
                handle.flush()
                _die()

            handle.write = half_then_die
            return handle

        fake_os.fdopen = fdopen
    atomic.os = fake_os
    if die_mid_event:
        reached = _count_to(die_mid_event)
        log_event = runs.Run.log_event

        def torn(self, kind, **fields):  # noqa: ANN001, ANN003, ANN202
            if reached():
                with open(self.path("events.jsonl"), "ab") as handle:
                    handle.write(b'{"event":"' + kind.encode() + b'","half')
                _die()
            return log_event(self, kind, **fields)

        runs.Run.log_event = torn


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs")
    parser.add_argument("name")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="random")
    parser.add_argument("--die-at-rename", type=int)
    parser.add_argument("--die-mid-write", type=int)
    parser.add_argument("--die-mid-event", type=int)
    parser.add_argument("--ddp", type=int, default=1, help="processes per training (data-parallel)")
    args = parser.parse_args()
    arm(args.die_at_rename, args.die_mid_write, args.die_mid_event)
    from nas.pipeline.search import run_search

    run_search(CONFIGS[args.config], run_dir=Path(args.runs) / args.name, progress=False, ddp=args.ddp)


if __name__ == "__main__":
    main()
