"""Pick one Pareto-optimal trial of a finished search and write the config ``squeezelstm train`` reads.

The rules (``pick``): the most accurate trial within ``max_size`` (of the search's size objective:
total parameters, recurrent parameters or FLOPs; ``max_params`` is its old name), the smallest within
``max_ppl``, or the knee of the front (``knee_point``: the point farthest from the straight line
joining the front's two ends in (log params, log perplexity) space). Records come from the local
records file the runner keeps beside the controller state, or from the MLflow store
(``load_search``) when asked for or when no local file exists.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from squeezelstm.trainers import Config
from squeezelstm.trainers.config import save_config

from ..backends import read_live_records, read_records, resolve_paths
from ..pareto import SIZE_LABELS, TrialRecord, objective_values, pareto_front, records_dataframe
from ..tracking import load_search


def knee_point(front: Sequence[TrialRecord]) -> TrialRecord:
    """The front point with the largest distance to the line joining its ends in log-log space of the
    two objectives (``OBJECTIVES``: log params, log ppl).

    With one or two points there is no bend; the best in the second objective (the most accurate) is returned.
    """
    if not front:
        raise ValueError("the Pareto front is empty: no finished trial to export")
    pts = sorted(front, key=lambda r: objective_values(r)[0])
    if len(pts) <= 2:
        return min(pts, key=lambda r: objective_values(r)[::-1])
    xy = [tuple(math.log(v) for v in objective_values(r)) for r in pts]
    (x0, y0), (x1, y1) = xy[0], xy[-1]
    norm = math.hypot(x1 - x0, y1 - y0)
    # Distance of each point to the chord through the two ends (cross product over chord length).
    dist = [abs((x1 - x0) * (y0 - y) - (x0 - x) * (y1 - y0)) / norm for x, y in xy]
    return pts[max(range(len(pts)), key=lambda i: (dist[i], -i))]


def pick(records: Sequence[TrialRecord], *, max_size: int | None = None, max_ppl: float | None = None,
         knee: bool = False, max_params: int | None = None) -> TrialRecord:
    """One Pareto-optimal finished trial chosen by exactly one rule (``knee`` is the default rule).

    ``max_size``: lowest perplexity among front trials of at most that size in the search's size
    objective (``TrialRecord.size``: total parameters, recurrent parameters or FLOPs; ``max_params``
    is the same rule under its old name); ``max_ppl``: the smallest front trial with at most that perplexity.
    """
    if max_params is not None and max_size is not None:
        raise ValueError("give max_size or its old name max_params, not both")
    name = "max_params" if max_params is not None else "max_size"
    max_size = max_params if max_size is None else max_size
    rules = [max_size is not None, max_ppl is not None, bool(knee)]
    if sum(rules) > 1:
        raise ValueError("choose one rule: max_size (max_params), max_ppl or knee")
    front = pareto_front(records)
    if not front:
        raise ValueError("the search has no finished trial, so its Pareto front is empty")
    if max_size is not None:
        if max_size <= 0:
            raise ValueError(f"{name} must be > 0, got {name}={max_size}")
        fits = [r for r in front if r.size_value <= max_size]
        if not fits:
            label = SIZE_LABELS[front[0].size]
            raise ValueError(f"no Pareto-optimal trial has at most {max_size:,} {label} "
                             f"(smallest has {front[0].size_value:,})")
        return min(fits, key=lambda r: (r.valid_ppl, r.size_value))
    if max_ppl is not None:
        if not max_ppl > 0:
            raise ValueError(f"max_ppl must be > 0, got max_ppl={max_ppl}")
        fits = [r for r in front if r.valid_ppl <= max_ppl]
        if not fits:
            best = min(r.valid_ppl for r in front)
            raise ValueError(f"no Pareto-optimal trial reaches perplexity {max_ppl} (best is {best:.2f})")
        return min(fits, key=lambda r: (r.size_value, r.valid_ppl))
    return knee_point(front)


def load_records(experiment: str, *, storage: str | os.PathLike | None = None,
                 tracking_uri: str | None = None) -> tuple[dict, list[TrialRecord]]:
    """``(meta, records)`` of an experiment: the local records (``read_live_records``: live while it runs),
    else the MLflow store.

    An explicit ``tracking_uri`` reads MLflow first. FileNotFoundError when neither knows it.
    """
    paths = resolve_paths(experiment, storage)
    local = paths.records_file
    if tracking_uri is None and local.is_file():
        return read_live_records(paths)
    try:
        return load_search(tracking_uri, experiment)
    except (ValueError, LookupError, FileNotFoundError, ConnectionError) as exc:
        if tracking_uri is not None:
            raise
        if not local.is_file():
            raise FileNotFoundError(f"no search named {experiment!r}: no {local} ({exc})") from None
    if local.is_file():
        return read_records(local)
    raise FileNotFoundError(f"no search named {experiment!r}: no {local} and no MLflow record of it")


def trials_dataframe(experiment: str, *, storage: str | os.PathLike | None = None,
                     tracking_uri: str | None = None) -> pd.DataFrame:
    """A running or finished search's trials as a DataFrame, one row a trial (``records_dataframe``).

    Reads what ``load_records`` reads: the search's records under ``storage`` (its controller's journal, as
    of the last event), else the MLflow store; FileNotFoundError when neither knows the search.
    """
    return records_dataframe(load_records(experiment, storage=storage, tracking_uri=tracking_uri)[1])


def export_trial(record: TrialRecord, out: str | os.PathLike, *, experiment: str = "",
                 checkpoint_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write ``record``'s trainer config to ``out`` (YAML/TOML) with its metrics in a header comment.

    Also writes ``<out>.metrics.json`` (the measured metrics) and, with ``checkpoint_from`` (the
    trial's checkpoint folder), copies it to ``<out stem>_checkpoint/``. Returns a summary dict.
    """
    out = Path(out)
    if out.suffix.lower() not in (".yaml", ".yml", ".toml"):
        raise ValueError(f"--out must end in .yaml, .yml or .toml, got {out}")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"folder for --out does not exist: {out.parent}")
    config = Config.from_dict(record.config)
    summary = {
        "experiment": experiment,
        "trial": record.number,
        "family": record.family,
        "size": record.size,
        "params": record.params,
        "recurrent_params": record.recurrent_params,
        "flops": record.flops,
        "dense": dict(record.dense),
        "valid_ppl": record.valid_ppl,
        "test_ppl": record.test_ppl,
        "epochs": record.epochs,
        "sampled": record.sampled,
        "config": str(out),
    }
    test = "n/a" if record.test_ppl is None else f"{record.test_ppl:.4f}"
    header = (f"squeezelstm export: experiment {experiment or '?'} trial {record.number} ({record.family})\n"
              f"params {record.params:,}  recurrent params {record.recurrent_params:,}  flops {record.flops:,}"
              f"  (size objective: {record.size})  valid ppl {record.valid_ppl:.4f}  test ppl {test}\n"
              f"train it again with: squeezelstm train {out.name}")
    save_config(config, out, header_comment=header)
    metrics_file = out.with_name(out.name + ".metrics.json")
    if checkpoint_from is not None:
        src = Path(checkpoint_from)
        if not src.is_dir():
            raise FileNotFoundError(f"checkpoint of trial {record.number} not found: {src}")
        dest = out.with_name(out.stem + "_checkpoint")
        shutil.copytree(src, dest, dirs_exist_ok=True)
        summary["checkpoint"] = str(dest)
    summary["metrics_file"] = str(metrics_file)
    metrics_file.write_text(json.dumps(summary, indent=2, default=str))
    return summary


def trial_checkpoint_dir(meta: dict, experiment: str, number: int, storage: str | os.PathLike | None = None) -> Path:
    """Where the runner kept trial ``number``'s trainer checkpoint."""
    trials_dir = meta.get("trials_dir") or resolve_paths(experiment, storage).trials_dir
    return Path(trials_dir) / f"trial_{number:04d}"
