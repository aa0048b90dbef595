"""The parent run's front, kept in memory so a finished trial costs MLflow a few calls, however long the search.

What the store shows (each child's ``pareto`` tag, the parent's ``hypervolume`` steps and its description) is
read once, when a search's tracking first needs it (resumed: from the store; new: nothing to read), and from
then on changed by diffs: a closed trial either leaves the front as it is (no call) or enters it, and the
trials it dominates leave it (one ``set_tag`` and one ``delete_tag`` each: MLflow batches tags per run, not
across runs; each trial enters and leaves the front at most once, so this is O(1) per trial amortised).
The hypervolume of the new front is logged as the next step together with the new description, in one
``log_batch``; the history the report draws is the one kept here, never read back.
"""

from __future__ import annotations

import math
import time

from ..pareto import TrialRecord, log_hypervolume, pareto_front
from ._runs import PARETO_TAG, _find_child, child_runs, hypervolume_history
from ._ui import NOTE_TAG, front_markdown


def _finished(record: TrialRecord) -> bool:
    return record.status == "finished" and record.valid_ppl is not None and math.isfinite(record.valid_ppl)


class ParentFront:
    """The front of one search's parent run as last written to MLflow, and the trials' child run ids.

    ``resumed``: the parent existed before this driver (its children, tags and hypervolume steps are read
    from the store on the first ``sync``); otherwise it is new and nothing is read.
    """

    def __init__(self, client, experiment_id: str, parent: str, experiment: str, start_ms: int, *,
                 resumed: bool) -> None:
        self.client, self.experiment_id, self.parent, self.experiment = client, experiment_id, parent, experiment
        self.start_s = (start_ms or 0) / 1000.0
        self.resumed = resumed
        self.runs: dict[int, str] = {}  # trial number -> child run id, as far as known
        self.tagged: set[int] = set()   # trial numbers whose child carries pareto=true
        self.front: list[TrialRecord] = []
        self.history: list[dict[str, float]] = []  # the hypervolume steps, as ``hypervolume_history`` reads them
        self.closed: set[int] = set()   # trial numbers already taken into the front and the steps
        self.pending: dict[int, TrialRecord] = {}  # closed trials not taken in yet (``end_trial``)
        self.ready = False
        self.step = 0  # the last hypervolume step logged
        self.ref: tuple[float, float] | None = None
        self.calls = 0  # MLflow calls made by ``sync`` (tests count them)

    def note_run(self, number: int, run_id: str) -> None:
        self.runs[int(number)] = run_id

    def add(self, record: TrialRecord) -> None:
        """A closed trial (``end_trial``) for the next ``sync``."""
        if record.status != "running" and record.number not in self.closed:
            self.pending[record.number] = record

    def sync(self, records: list[TrialRecord] | None, ref: tuple[float, float], all_records) -> bool:
        """Take the closed trials in (``records``' unseen ones, and those ``add`` gave) and write what changed.

        ``all_records()`` gives every record; it is called only the first time (to rebuild the front).
        Returns whether the front changed.
        """
        if not self.ready:
            return self._start(records if records is not None else list(all_records()), ref)
        for r in records or ():
            self.add(r)
        if ref != self.ref:  # a new reference point: every step so far stays as it was logged
            self.ref = ref
        new = sorted(self.pending.values(), key=lambda r: (r.ended_at or math.inf, r.number))
        self.pending.clear()
        before = {r.number for r in self.front}
        metrics = []
        for r in new:
            self.closed.add(r.number)
            if not _finished(r):
                continue
            self.front = pareto_front(self.front + [r])
            self.step += 1
            metrics.append(self._step(r, self.step))
        after = {r.number for r in self.front}
        if after == before and not metrics:
            return False
        self._write(metrics, changed=after != before)
        return after != before

    def _start(self, records: list[TrialRecord], ref: tuple[float, float]) -> bool:
        """First sync: what the store holds (if resumed), then every step not logged yet (a crash's gap)."""
        self.ref = ref
        logged: set[int] = set()
        if self.resumed:
            children = child_runs(self.client, self.experiment_id, self.parent)
            self.runs.update({n: run.info.run_id for n, run in children.items()})
            self.tagged = {n for n, run in children.items() if run.data.tags.get(PARETO_TAG) == "true"}
            self.history = hypervolume_history(self.client, self.parent)
            self.calls += 3
            logged = {int(h["finished"]) for h in self.history}
        done = sorted((r for r in records if _finished(r)), key=lambda r: (r.ended_at or math.inf, r.number))
        metrics = []
        for k, r in enumerate(done, start=1):
            self.front = pareto_front(self.front + [r])
            if k not in logged:
                metrics.append(self._step(r, k))
        self.step = max(logged | {len(done)})
        self.history.sort(key=lambda h: h["finished"])
        self.closed = {r.number for r in records if r.status != "running"}
        self.pending.clear()
        self.ready = True
        self._write(metrics, changed=True)
        return True

    def _step(self, record: TrialRecord, step: int):
        """The hypervolume of the front as it is now, as step ``step`` (kept in ``history`` too)."""
        from mlflow.entities import Metric

        value = log_hypervolume(self.front, *self.ref)
        stamp = int((record.ended_at or time.time()) * 1000)
        self.history.append({"finished": step, "hypervolume": float(value),
                             "wall_s": max(0.0, stamp / 1000.0 - self.start_s)})
        return Metric("hypervolume", value, stamp, step)

    def _write(self, metrics: list, *, changed: bool) -> None:
        """The new steps and, if the front changed, the description and the tags that differ."""
        from mlflow.entities import RunTag

        tags = []
        if changed:
            hv = log_hypervolume(self.front, *self.ref)
            tags = [RunTag(NOTE_TAG, front_markdown(self.front, self.experiment, hv))]
        for i in range(0, max(len(metrics), 1), 900):
            if metrics[i:i + 900] or tags:
                self.client.log_batch(self.parent, metrics=metrics[i:i + 900], tags=tags)
                self.calls += 1
                tags = []
        if changed:
            self._retag({r.number for r in self.front})

    def _retag(self, members: set[int]) -> None:
        for number in sorted(self.tagged - members):
            if number in self.runs:
                self.client.delete_tag(self.runs[number], PARETO_TAG)
                self.calls += 1
            self.tagged.discard(number)
        for number in sorted(members - self.tagged):
            run_id = self.runs.get(number)
            if run_id is None:
                run = _find_child(self.client, self.experiment_id, self.parent, number)
                self.calls += 1
                if run is None:
                    continue  # no child run (a record from elsewhere): nothing to tag
                run_id = self.runs[number] = run.info.run_id
            self.client.set_tag(run_id, PARETO_TAG, "true")
            self.calls += 1
            self.tagged.add(number)



__all__ = ["ParentFront"]
