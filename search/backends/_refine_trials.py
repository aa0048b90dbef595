"""The Ray Tune side of a refinement: ``RefineSearcher`` hands out the (member, seed) runs not yet ended, each as
a trial of the search's ``run_trial``, and writes down how each ended; ``RefineEvent`` is the progress line.

Like the search's ``ControllerSearcher``, the searcher holds only a token: Ray pickles it, and the live
``RefineSession`` (the refinement, the queue, the tracker) stays in the driver, found through the token while
``live_refine_session`` holds it open. Imported when a refinement starts (it imports Ray).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import Searcher

from ..pareto import RefinedMember, Refinement, SeedRun, refine_config
from ._refine import run_dirname


@dataclass(frozen=True)
class RefineEvent:
    """One run of a refinement started or ended, for live progress (``line()`` is the human form)."""

    kind: str  # started | finished | failed | diverged | pruned
    member: RefinedMember
    run: SeedRun
    counts: dict[str, int]

    def line(self) -> str:
        m, r = self.member, self.run
        what = f"member {m.number} ({m.family}) seed {r.seed} {self.kind}"
        if self.kind != "started" and r.valid_ppl is not None:
            what += f": valid ppl {r.valid_ppl:.2f} after {r.epochs} epoch(s)"
        total = sum(self.counts.values())
        return f"{what} | {self.counts.get('finished', 0)} of {total} runs finished, {self.counts.get('running', 0)} running"


@dataclass
class RefineSession:
    """Driver-side state of one ``fit()``: the refinement, the queue of runs to hand out, who listens."""

    refinement: Refinement
    checkpoints: str
    threads: int = 1
    tracker: Any = None
    progress: Callable[[RefineEvent], None] | None = None
    on_change: Callable[[], None] | None = None
    queue: list[tuple[int, int]] = field(default_factory=list)  # (member, seed)
    by_trial: dict[str, tuple[int, int]] = field(default_factory=dict)

    def emit(self, kind: str, member: RefinedMember, run: SeedRun) -> None:
        if self.on_change is not None:
            self.on_change()
        if self.progress is not None:
            self.progress(RefineEvent(kind, member, run, self.refinement.counts()))


_SESSIONS: dict[str, RefineSession] = {}


@contextlib.contextmanager
def live_refine_session(session: RefineSession) -> Iterator[str]:
    """Make ``session`` reachable from pickled searchers for the ``with`` block; yields its token."""
    token = uuid.uuid4().hex
    _SESSIONS[token] = session
    try:
        yield token
    finally:
        _SESSIONS.pop(token, None)


class RefineSearcher(Searcher):
    """Ray searcher over a fixed list of runs: each pending (member, seed) once, then ``FINISHED``."""

    def __init__(self, token: str):
        super().__init__()  # no metric/mode: every run trains its full budget, nothing is compared here
        self._token = token

    def __getstate__(self) -> dict:
        return {"_token": self._token, "_metric": None, "_mode": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def suggest(self, trial_id: str) -> dict | None:
        s = _SESSIONS[self._token]
        if not s.queue:
            return Searcher.FINISHED
        number, seed = s.queue.pop(0)
        s.by_trial[trial_id] = (number, seed)
        member, ref = s.refinement.member(number), s.refinement
        run = member.run(seed)
        run.status = "running"
        spec = {"number": number, "family": member.family, "sampled": member.sampled, "params": member.params,
                "flops": member.flops, "recurrent_params": member.recurrent_params, "size": member.size,
                "config": refine_config(member.config, epochs=ref.epochs, seed=seed, overrides=ref.overrides)}
        logger = s.tracker.seed_logger(number, seed) if s.tracker is not None else None
        s.emit("started", member, run)
        return {"number": number, "spec": spec, "trials_dir": s.checkpoints, "dirname": run_dirname(number, seed),
                "threads": s.threads, "logger": logger}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        s = _SESSIONS[self._token]
        if trial_id not in s.by_trial:
            return
        number, seed = s.by_trial[trial_id]
        member = s.refinement.member(number)
        run = member.run(seed)
        if error:
            run.status = "failed"
        elif result is not None and result.get("final"):
            run.status = str(result.get("trial_status", "finished"))
            run.valid_ppl, run.test_ppl = result.get("valid_ppl"), result.get("test_ppl")
            run.history = list(result.get("history") or [])
            run.epochs = int(result.get("epochs", len(run.history)))
            run.elapsed_s = run.history[-1].get("elapsed_s") if run.history else None
        else:
            return  # stopped by Ray's shutdown (an interruption): it stays unfinished and resumes
        if s.tracker is not None:
            s.tracker.end_seed(member, run)
            s.tracker.update(s.refinement)
        s.emit(run.status, member, run)


__all__ = ["RefineEvent", "RefineSearcher", "RefineSession", "live_refine_session"]
