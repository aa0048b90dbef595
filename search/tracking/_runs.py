"""How a search lives in MLflow: the tags that identify its runs, batched logging within MLflow's limits,
and finding a search's runs again (children by trial number)."""

from __future__ import annotations

import json
import time
from typing import Any

ROLE_TAG = "squeezelstm.role"
SEARCH_TAG = "squeezelstm.search"
TRIAL_TAG = "squeezelstm.trial"
STATUS_TAG = "squeezelstm.status"
FAMILY_TAG = "squeezelstm.family"
CONFIG_TAG = "squeezelstm.config"
SAMPLED_TAG = "squeezelstm.sampled"
SIZE_TAG = "squeezelstm.size"  # the search's size objective: total, recurrent or flops
PARETO_TAG = "pareto"
PARENT_TAG = "mlflow.parentRunId"
# current hypervolume reference and optimum: tags (mutable) mirror the first-logged params
REF_TAGS = {"ref_params": "squeezelstm.ref_params", "ref_ppl": "squeezelstm.ref_ppl",
            "optimal_ppl": "squeezelstm.optimal_ppl"}
# metrics that are not per-epoch learning-curve values
STEP0_METRICS = ("params", "recurrent_params", "flops")
FINAL_PREFIX = "final_"
SEARCH_CONFIG_FILE = "search_config.json"

_MAX_PARAM_VALUE = 6000      # MLflow's limit on a param value
_MAX_TAG_VALUE = 8000        # ... and on a tag value
_BATCH = 100                 # params / tags per log_batch call


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"cell": "lstm"}}`` -> ``{"model.cell": "lstm"}`` (lists and other leaves kept as they are)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM_VALUE]


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalar numeric entries of ``metrics`` (NaN/inf kept: a diverged trial should show them)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[str(key)] = float(value)
    return out


def _log(client, run_id: str, *, params: dict | None = None, metrics: dict | None = None,
         step: int = 0, tags: dict | None = None) -> None:
    """Batch-log params, metrics (one step) and tags in as few requests as MLflow's limits allow."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    p = [Param(k[:250], _param_value(v)) for k, v in (params or {}).items()]
    t = [RunTag(k, str(v)[:_MAX_TAG_VALUE]) for k, v in (tags or {}).items()]
    m = [Metric(k, v, now, int(step)) for k, v in (metrics or {}).items()]
    while p or t or m:
        client.log_batch(run_id, metrics=m[:900], params=p[:_BATCH], tags=t[:_BATCH])
        p, t, m = p[_BATCH:], t[_BATCH:], m[900:]


def search_all_runs(client, experiment_id: str, filter_string: str) -> list:
    """Every run matching ``filter_string`` (search_runs pages at 1000)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def child_runs(client, experiment_id: str, parent_run_id: str) -> dict[int, Any]:
    """Trial number -> child run (the most recently started one if a trial was ever logged twice)."""
    runs = search_all_runs(client, experiment_id, f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    by_number: dict[int, Any] = {}
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        number = run.data.tags.get(TRIAL_TAG)
        if number is not None and number.lstrip("-").isdigit():
            by_number[int(number)] = run
    return by_number


def _find_child(client, experiment_id: str, parent_run_id: str, number: int):
    runs = search_all_runs(client, experiment_id,
                       f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{int(number)}'")
    return max(runs, key=lambda r: r.info.start_time or 0) if runs else None


def quote_filter_value(value: str) -> str:
    """``value`` quoted for a single-quoted string in an MLflow filter."""
    return value.replace("'", "\\'")


def hypervolume_history(client, parent_run_id: str) -> list[dict[str, float]]:
    """The parent's ``hypervolume`` metric as ``[{"finished", "hypervolume", "wall_s"}]`` ordered by step."""
    run = client.get_run(parent_run_id)
    start = (run.info.start_time or 0) / 1000.0
    points = sorted(client.get_metric_history(parent_run_id, "hypervolume"), key=lambda m: (m.step, m.timestamp))
    out, seen = [], set()
    for m in points:
        if m.step in seen:
            continue
        seen.add(m.step)
        out.append({"finished": int(m.step), "hypervolume": float(m.value),
                    "wall_s": max(0.0, m.timestamp / 1000.0 - start)})
    return out


__all__ = ["CONFIG_TAG", "FAMILY_TAG", "FINAL_PREFIX", "PARENT_TAG", "PARETO_TAG", "REF_TAGS", "ROLE_TAG", "SAMPLED_TAG",
           "SEARCH_CONFIG_FILE", "SEARCH_TAG", "STATUS_TAG", "STEP0_METRICS", "TRIAL_TAG", "child_runs", "flatten",
           "hypervolume_history", "quote_filter_value", "search_all_runs"]
