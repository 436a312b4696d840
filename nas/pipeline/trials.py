"""The search loop: ask the controller, measure fitness, log, tell; resumable at any point.

Every evaluated candidate leaves, in this order, its allocation in
``candidates/<fingerprint>.npz`` and one ``trial`` line in ``events.jsonl``
(round, index in the round, fingerprint, cost, fitness, seconds, and the controller's
note on how it picked the candidate, if it keeps one); the controller is
then told, and its whole state is saved after each round
(``checkpoints/controller.safetensors``).

Resuming needs nothing else.  The saved controller state says how many rounds it has
seen; the rounds logged after it are *replayed*: the controller is asked again (it is
seeded, so it proposes the same candidates, which is checked against the log) and
told the logged fitness instead of measuring it again.  A round cut short by a crash
measures only its missing candidates.  So a killed search continues exactly where
the uninterrupted one would be.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from nas.core.allocation import Allocation
from nas.core.budget import Budget
from nas.core.controller import Controller, OneShotController
from nas.core.errors import ResumeError
from nas.core.evaluator import Evaluator
from nas.core.space import SearchSpace
from nas.pipeline.runs import Run

__all__ = ["Candidate", "ranked_candidates", "record_one_shot_choice", "run_trials", "save_controller_state"]

_STATE = "controller.safetensors"


@dataclass(frozen=True)
class Candidate:
    """One evaluated allocation of the search, as logged."""

    fingerprint: str
    fitness: float
    cost: int
    trial: int

    def load(self, run: Run) -> Allocation:
        """The candidate's allocation, from the run folder."""
        return run.load_allocation(f"candidates/{self.fingerprint}.npz")


def run_trials(
    run: Run,
    controller: Controller,
    space: SearchSpace,
    budget: Budget,
    evaluator: Evaluator,
    trials: int,
    ask_batch: int = 1,
    *,
    progress: bool = True,
) -> None:
    """Evaluate ``trials`` candidates in rounds of ``ask_batch``, continuing a partial search.

    Raises:
        ResumeError: when the controller, asked again, proposes other candidates than
            the log holds (it is not deterministic under its seed, or the code changed).
    """
    logged: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for event in run.events("trial"):
        logged[int(event["round"])][int(event["index"])] = event
    first_round = 0
    if run.has(f"checkpoints/{_STATE}"):
        state = run.load_state(_STATE)
        controller.load_state_dict(state["controller"])
        first_round = int(state["rounds"])
    rounds = -(-trials // ask_batch)
    done = min(first_round * ask_batch, trials)
    bar = tqdm(total=trials, initial=done, desc=f"search ({controller.name})", unit="trial", disable=not progress)
    for round_ in range(first_round, rounds):
        n = min(ask_batch, trials - round_ * ask_batch)
        decisions = controller.ask(n)
        notes = controller.notes()
        allocations = [space.allocation(row) for row in decisions]
        fitness = np.empty(n)
        previous = logged.get(round_, {})
        for index, event in previous.items():
            if index >= n or event["fingerprint"] != allocations[index].fingerprint():
                raise ResumeError(
                    f"{run.folder}: resuming round {round_}, the {controller.name} controller proposed another "
                    f"allocation than the log holds (candidate {index}); it is not deterministic under its seed, "
                    "or the code changed since the run started: start a new run"
                )
            fitness[index] = float(event["fitness"])
        missing = [i for i in range(n) if i not in previous]
        if missing:
            tic = time.perf_counter()
            for i in missing:
                allocations[i].validate(budget)
            values = evaluator.fitness([allocations[i] for i in missing])
            seconds = (time.perf_counter() - tic) / len(missing)
            for i, value in zip(missing, values):
                fitness[i] = float(value)
                note = notes[i] if i < len(notes) else {}
                _record(run, allocations[i], round_, i, round_ * ask_batch + i, float(value), seconds, note)
        controller.tell(decisions, fitness)
        save_controller_state(run, controller, rounds=round_ + 1)
        bar.update(n)
        bar.set_postfix(fitness=f"{fitness.max():.4f}", best=f"{controller.best_fitness:.4f}")
    bar.close()


def record_one_shot_choice(
    run: Run, controller: OneShotController, model: Any, budget: Budget, evaluator: Evaluator | None
) -> None:
    """Log a trained one-shot controller's choice as the search's only trial (measured once, when there is an evaluator).

    The controller's state is the one its training left in the run folder; :meth:`finish`
    reads the trained supernet ``model`` before the choice.  A choice already logged is
    not measured again.
    """
    if run.has(f"checkpoints/{_STATE}"):
        controller.load_state_dict(run.load_state(_STATE)["controller"])
    controller.finish(model)
    allocation = controller.allocation()
    allocation.validate(budget)
    if any(True for _ in run.events("trial")):
        return
    tic = time.perf_counter()
    fitness = float(evaluator.fitness([allocation])[0]) if evaluator is not None else float("nan")
    notes = controller.notes()
    _record(run, allocation, 0, 0, 0, fitness, time.perf_counter() - tic, notes[0] if notes else {})


def save_controller_state(run: Run, controller: Controller, rounds: int) -> None:
    """Save the controller's whole state after ``rounds`` told rounds (where :func:`run_trials` resumes)."""
    run.save_state(_STATE, {"rounds": rounds, "controller": controller.state_dict()})


def _record(
    run: Run, allocation: Allocation, round_: int, index: int, trial: int, fitness: float, seconds: float,
    note: dict[str, Any],
) -> None:
    """Keep the candidate's allocation, then log it: a logged trial always has its allocation."""
    name = f"candidates/{allocation.fingerprint()}.npz"
    if not run.has(name):
        run.save_allocation(name, allocation)
    run.log_event(
        "trial", round=round_, index=index, trial=trial, fingerprint=allocation.fingerprint(),
        cost=allocation.cost, fitness=fitness, seconds=round(seconds, 4), **({"note": note} if note else {}),
    )


def ranked_candidates(run: Run) -> list[Candidate]:
    """The distinct logged candidates, best fitness first (ties: the earlier trial first)."""
    best: dict[str, Candidate] = {}
    for event in run.events("trial"):
        candidate = Candidate(event["fingerprint"], float(event["fitness"]), int(event["cost"]), int(event["trial"]))
        if candidate.fingerprint not in best:
            best[candidate.fingerprint] = candidate
    return sorted(best.values(), key=lambda c: (-c.fitness, c.trial))
