"""A refinement in MLflow: one parent run of its own, tagged as a refinement of the search's parent run, and one
nested child run per (member, seed).

- parent: ``squeezelstm.role=refine``, ``squeezelstm.search=<experiment>``, ``squeezelstm.refines=<the search's
  parent run id>`` (where the search was tracked); ``refined.json`` (the refinement, ``pareto.Refinement``) and
  the report are its artifacts, rewritten as seeds finish; ``--resume`` reopens it.
- child: ``mlflow.parentRunId=<refine parent>``, ``squeezelstm.member=<search trial>``, ``squeezelstm.seed``,
  the status, family and config tags of a search's trial, and ``pareto=true`` on the runs of the refined front.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..pareto import REFINED_FILE, RefinedMember, Refinement, SeedRun
from ._runs import (FAMILY_TAG, PARENT_TAG, PARETO_TAG, ROLE_TAG, SEARCH_TAG, STATUS_TAG, _log, flatten,
                    quote_filter_value, search_all_runs)
from ._store import check_tracking_uri, mlflow_client, sqlite_path
from ._tracker import SearchTracker, TrialLogger, code_version
from ._ui import NOTE_TAG

REFINES_TAG = "squeezelstm.refines"
MEMBER_TAG = "squeezelstm.member"
SEED_TAG = "squeezelstm.seed"
# Writes the refinement's report files into a folder and returns their names (the CLI wires in the dashboards').
RefinedFiles = Callable[[Refinement, Path], list[str]]


def refined_markdown(refinement: Refinement) -> str:
    """The refinement as a Markdown table for the parent run's description: each member's mean +- std over seeds."""
    epochs = f"{refinement.epochs} epochs" if refinement.epochs else "the search's epochs"
    front = {m.number for m in refinement.front()}
    lines = [f"**Refinement of search `{refinement.experiment}`**: {len(refinement.members)} member(s) "
             f"({refinement.selection}) x {refinement.seeds} seeds, {epochs}; refined front marked *.", "",
             "| trial | family | params | recurrent | flops | valid ppl (mean ± std) | test ppl (mean ± std) | seeds | front |",
             "|---:|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for m in sorted(refinement.members, key=lambda m: (m.size_value, m.number)):
        valid = "" if m.valid is None else f"{m.valid.mean:.2f} ± {m.valid.std:.2f}"
        test = "" if m.test is None else f"{m.test.mean:.2f} ± {m.test.std:.2f}"
        lines.append(f"| {m.number} | {m.family} | {m.params:,} | {m.recurrent_params:,} | {m.flops:,} | {valid} | "
                     f"{test} | {m.seeds_finished}/{len(m.runs)} | {'*' if m.number in front else ''} |")
    return "\n".join(lines)


def _find_seed_run(client, experiment_id: str, parent_run_id: str, member: int, seed: int):
    runs = search_all_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}' and "
                                                  f"tags.`{MEMBER_TAG}` = '{int(member)}' and tags.`{SEED_TAG}` = '{int(seed)}'")
    return max(runs, key=lambda r: r.info.start_time or 0) if runs else None


class RefineLogger(TrialLogger):
    """Logs one (member, seed) run of a refinement to its child run; picklable, like a search trial's logger."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, member: int, seed: int) -> None:
        super().__init__(tracking_uri, experiment_id, parent_run_id, member)
        self.seed = int(seed)

    def _ensure_run(self, family: str | None = None) -> str:
        if self.run_id is not None:
            return self.run_id
        run = _find_seed_run(self.client, self.experiment_id, self.parent_run_id, self.number, self.seed)
        if run is None:
            tags = {PARENT_TAG: self.parent_run_id, MEMBER_TAG: str(self.number), SEED_TAG: str(self.seed),
                    STATUS_TAG: "running"}
            if family:
                tags[FAMILY_TAG] = family
            run = self.client.create_run(self.experiment_id, tags=tags,
                                         run_name=f"member-{self.number:04d}-seed-{self.seed}")
        else:
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
            # a resumed run replays its checkpoint's epochs: those logged before are not logged twice
            self._logged = {(key, m.step) for key in run.data.metrics if key not in ("params", "recurrent_params", "flops")
                            and not key.startswith("final_")
                            for m in self.client.get_metric_history(run.info.run_id, key)}
        self.run_id = run.info.run_id
        return self.run_id


class RefineTracker(SearchTracker):
    """Driver-side MLflow adapter of one refinement: its parent run, a child per (member, seed), the results on it.

    ``refined_files(refinement, folder) -> [names]`` writes the report files logged on the parent (none without it).
    """

    def __init__(self, tracking_uri: str | None, experiment: str, refined_files: RefinedFiles | None = None) -> None:
        super().__init__(tracking_uri, experiment)
        self.refined_files = refined_files

    def search_run_id(self) -> str | None:
        """The search's latest parent run in this store (None where the search was not tracked here)."""
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return None
        runs = search_all_runs(self.client, found.experiment_id,
                               f"tags.`{ROLE_TAG}` = 'search' and tags.`{SEARCH_TAG}` = '{quote_filter_value(self.experiment)}'")
        return max(runs, key=lambda r: r.info.start_time or 0).info.run_id if runs else None

    def start_refine(self, refinement: Refinement) -> str:
        """Open the refinement's parent run (reopened where ``refinement.run_id`` names one) and return its id;
        ``refinement.search_run_id`` and ``run_id`` are filled in."""
        experiment_id = self._experiment_id()
        if refinement.search_run_id is None:
            refinement.search_run_id = self.search_run_id()
        run = None
        if refinement.run_id:
            try:
                run = self.client.get_run(refinement.run_id)
            except Exception:  # noqa: BLE001 - MLflow raises its own types for an unknown run id
                run = None
        tags = {**code_version(), ROLE_TAG: "refine", SEARCH_TAG: self.experiment,
                REFINES_TAG: refinement.search_run_id or ""}
        params = {"selection": refinement.selection, "epochs": refinement.epochs or "search's",
                  "members": len(refinement.members), **{f"set.{k}": v for k, v in flatten(refinement.overrides).items()}}
        if run is None:
            run = self.client.create_run(experiment_id, tags={k: str(v) for k, v in tags.items()},
                                         run_name=f"refine-{self.experiment}")
            _log(self.client, run.info.run_id, params=params)
        else:
            self.client.update_run(run.info.run_id, status="RUNNING")
        # the seeds may grow on --resume: a tag, not an (immutable) param
        _log(self.client, run.info.run_id, tags={**{k: str(v) for k, v in tags.items()},
                                                  "squeezelstm.seeds": str(refinement.seeds)})
        self.parent_run_id = refinement.run_id = run.info.run_id
        return self.parent_run_id

    def seed_logger(self, member: int, seed: int) -> RefineLogger:
        """A picklable logger for the child run of ``member`` trained with ``seed`` (created on its ``start``)."""
        return RefineLogger(self.tracking_uri, self._experiment_id(), self._require_parent(), member, seed)

    def end_seed(self, member: RefinedMember, run: SeedRun) -> None:
        """Driver side, authoritative: the child of (member, seed) carries the run's final status and metrics, and
        is ended (a run that failed before it reached a worker still gets its child here)."""
        logger = self.seed_logger(member.number, run.seed)
        logger._client = self.client
        run_id = logger._ensure_run(member.family)
        if "params" not in self.client.get_run(run_id).data.metrics:
            logger.start(member.config, member.params, member.flops, member.sampled,
                         recurrent_params=member.recurrent_params, size=member.size)
        if run.ended:
            result = {"valid_ppl": run.valid_ppl, "test_ppl": run.test_ppl, "history": run.history}
            logger.finish(run.status, {k: v for k, v in result.items() if v is not None})

    def update(self, refinement: Refinement) -> None:
        """The parent's results: ``refined.json``, per-member mean and std metrics, pareto tags on the front's
        children, and the report files."""
        parent = self._require_parent()
        client = self.client
        metrics = {}
        for m in refinement.members:
            for name, value in (("valid", m.valid), ("test", m.test)):
                if value is not None:
                    metrics[f"member_{m.number}.{name}_ppl_mean"] = value.mean
                    metrics[f"member_{m.number}.{name}_ppl_std"] = value.std
        front = {m.number for m in refinement.front()}
        metrics["refined_front"] = float(len(front))
        _log(client, parent, metrics=metrics, tags={"squeezelstm.refined_front": ",".join(map(str, sorted(front))),
                                                    NOTE_TAG: refined_markdown(refinement)})
        for m in refinement.members:
            for r in m.runs:
                child = _find_seed_run(client, self._experiment_id(), parent, m.number, r.seed)
                if child is None:
                    continue
                tagged = child.data.tags.get(PARETO_TAG) == "true"
                if m.number in front and not tagged:
                    client.set_tag(child.info.run_id, PARETO_TAG, "true")
                elif m.number not in front and tagged:
                    client.delete_tag(child.info.run_id, PARETO_TAG)
        client.log_dict(parent, refinement.to_dict(), REFINED_FILE)
        if self.refined_files is None:
            return
        with tempfile.TemporaryDirectory(prefix="squeezelstm-refined-") as tmp:
            for name in self.refined_files(refinement, Path(tmp)):
                client.log_artifact(parent, str(Path(tmp) / name))


def load_refinement(tracking_uri: str | None, experiment: str) -> tuple[dict[str, Any], Refinement] | None:
    """The latest refinement of search ``experiment`` in the tracking store: ``(info, refinement)`` with the parent
    run's ``run_id`` and ``status`` in ``info``; None where the store has no refinement of it."""
    from mlflow.artifacts import load_dict

    uri = check_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        return None
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        return None
    runs = search_all_runs(client, found.experiment_id,
                           f"tags.`{ROLE_TAG}` = 'refine' and tags.`{SEARCH_TAG}` = '{quote_filter_value(experiment)}'")
    for run in sorted(runs, key=lambda r: r.info.start_time or 0, reverse=True):
        try:
            data = load_dict(f"{run.info.artifact_uri}/{REFINED_FILE}")
        except Exception:  # noqa: BLE001 - no artifact yet: a refinement stopped before its first seed ended
            continue
        info = {"run_id": run.info.run_id, "status": run.info.status, "tracking_uri": uri,
                "refines": run.data.tags.get(REFINES_TAG) or None}
        return info, Refinement.from_dict(data)
    return None


__all__ = ["MEMBER_TAG", "REFINES_TAG", "SEED_TAG", "RefineLogger", "RefineTracker", "RefinedFiles", "load_refinement",
           "refined_markdown"]
