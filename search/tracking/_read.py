"""Reading a search back from its tracking store: ``load_search`` rebuilds the parent run's info and
every trial's ``TrialRecord`` (config, learning curve, status) from MLflow alone, for ``squeezelstm
pareto``, ``export`` and the dashboards. The writing side is ``tracking.py``.
"""

from __future__ import annotations

import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
import math
import sys
from typing import Any

from ..pareto import SIZES, STATUSES, TrialRecord
from ._runs import (CONFIG_TAG, FAMILY_TAG, FINAL_PREFIX, REF_TAGS, ROLE_TAG, SAMPLED_TAG, SEARCH_TAG, SIZE_TAG, STATUS_TAG,
                       STEP0_METRICS, TRIAL_TAG, child_runs, hypervolume_history, quote_filter_value, search_all_runs)
from ._store import check_tracking_uri, mlflow_client, sqlite_path


def _unclamp(value: float | None) -> float | None:
    """MLflow stores +-inf as +-float max: give back the infinity a diverged trial reported."""
    if value is not None and abs(value) >= sys.float_info.max:
        return math.copysign(math.inf, value)
    return value


def _record_from_run(client, run) -> TrialRecord:
    tags, metrics = run.data.tags, run.data.metrics
    config: dict[str, Any] = {}
    if CONFIG_TAG in tags:
        with contextlib.suppress(ValueError):
            config = json.loads(tags[CONFIG_TAG])
    if not config:
        with contextlib.suppress(Exception):  # no artifact: a trial that failed before it started
            from mlflow.artifacts import load_dict

            config = load_dict(f"{run.info.artifact_uri}/config.json")
    sampled = {}
    with contextlib.suppress(ValueError):
        sampled = json.loads(tags.get(SAMPLED_TAG, "{}"))
    history_by_step: dict[int, dict[str, Any]] = {}
    for key in sorted(metrics):
        if key in STEP0_METRICS or key.startswith(FINAL_PREFIX):
            continue
        for m in client.get_metric_history(run.info.run_id, key):
            history_by_step.setdefault(int(m.step), {"epoch": int(m.step)})[key] = _unclamp(float(m.value))
    history = [history_by_step[s] for s in sorted(history_by_step)]
    status = tags.get(STATUS_TAG, "running")
    if status not in STATUSES:
        status = "failed"
    valid = _unclamp(metrics.get(f"{FINAL_PREFIX}valid_ppl"))
    if valid is None and history:
        valid = history[-1].get("valid_ppl")
    family = tags.get(FAMILY_TAG) or str(config.get("model", {}).get("cell", "unknown"))
    return TrialRecord(
        number=int(tags[TRIAL_TAG]), family=family, params=int(metrics.get("params", 0)),
        flops=int(metrics.get("flops", 0)), recurrent_params=int(metrics.get("recurrent_params", 0)),
        size=tags.get(SIZE_TAG, "total") if tags.get(SIZE_TAG) in SIZES else "total", status=status, valid_ppl=valid,
        test_ppl=_unclamp(metrics.get(f"{FINAL_PREFIX}test_ppl")), config=config, sampled=sampled, history=history,
        started_at=(run.info.start_time / 1000.0) if run.info.start_time else None,
        ended_at=(run.info.end_time / 1000.0) if run.info.end_time else None,
    )


def load_search(tracking_uri: str | None, experiment: str) -> tuple[dict, list[TrialRecord]]:
    """Rebuild a search from the tracking store alone: the latest parent run's info and its trials' records.

    The info dict has ``run_id``, ``experiment_id``, ``experiment``, ``status``, ``params``, ``tags``,
    ``ref_params``/``ref_ppl``/``optimal_ppl`` (None where never logged) and ``hypervolume_history``.
    """
    uri = check_tracking_uri(tracking_uri)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        # MlflowClient would silently create an empty database here
        raise FileNotFoundError(f"tracking store {uri} does not exist")
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None or found.lifecycle_stage != "active":
        raise ValueError(f"experiment {experiment!r} not found in tracking store {uri}")
    parents = search_all_runs(client, found.experiment_id,
                          f"tags.`{ROLE_TAG}` = 'search' and tags.`{SEARCH_TAG}` = '{quote_filter_value(experiment)}'")
    if not parents:
        raise ValueError(f"experiment {experiment!r} in {uri} has no squeezelstm search run")
    parent = max(parents, key=lambda r: r.info.start_time or 0)
    tags, params = dict(parent.data.tags), dict(parent.data.params)

    def reference(name: str) -> float | None:
        # our tag, else our param, else a plain param of that name (the runner logs ``ref_params``)
        raw = tags.get(REF_TAGS[name], params.get(f"hypervolume.{name}", params.get(name)))
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None

    info = {
        "run_id": parent.info.run_id, "experiment_id": found.experiment_id, "experiment": experiment,
        "status": parent.info.status, "params": params, "tags": tags,
        "ref_params": reference("ref_params"), "ref_ppl": reference("ref_ppl"),
        "optimal_ppl": reference("optimal_ppl"),
        "hypervolume_history": hypervolume_history(client, parent.info.run_id),
        "tracking_uri": uri,
    }
    children = child_runs(client, found.experiment_id, parent.info.run_id)
    runs = [children[n] for n in sorted(children)]
    if uri.startswith(("http://", "https://")) and len(runs) > 1:
        # one metric-history request per key and trial: overlap the round trips to a server
        with ThreadPoolExecutor(max_workers=8) as pool:
            records = list(pool.map(lambda run: _record_from_run(client, run), runs))
    else:
        records = [_record_from_run(client, run) for run in runs]
    return info, records

