"""What the MLflow UI shows of a search without opening an artifact: the experiment's kind, the front as the
parent run's description.

MLflow 3's UI opens an experiment without a kind on its GenAI traces page; ``mlflow.experimentKind`` =
``custom_model_development`` makes it open on the runs table, as for any model training. The parent run's
description (the ``mlflow.note.content`` tag, Markdown) holds the current front, so the run's page alone
answers "what is the front now".
"""

from __future__ import annotations

import math

from ..pareto import TrialRecord

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"


def mark_experiment_kind(client, experiment_id: str) -> None:
    """Tag the experiment as model training (idempotent: set only when missing or different)."""
    tags = client.get_experiment(experiment_id).tags or {}
    if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def front_markdown(front: list[TrialRecord], experiment: str, hypervolume: float | None = None) -> str:
    """The front as a Markdown table (by size), with a line saying what it is."""
    hv = "" if hypervolume is None or not math.isfinite(hypervolume) else f", hypervolume {hypervolume:.4f}"
    lines = [f"**Pareto front of search `{experiment}`**: {len(front)} trial(s){hv}, smallest first.", "",
             "| trial | family | params | valid ppl | test ppl | sampled |", "|---:|---|---:|---:|---:|---|"]
    for r in sorted(front, key=lambda r: (r.params, r.number)):
        test = "" if r.test_ppl is None else f"{r.test_ppl:.2f}"
        sampled = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r.sampled.items() if k != "model.cell")
        lines.append(f"| {r.number} | {r.family} | {r.params:,} | {r.valid_ppl:.2f} | {test} | "
                     f"{sampled.replace('|', '/')} |")
    return "\n".join(lines)


__all__ = ["EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "NOTE_TAG", "front_markdown", "mark_experiment_kind"]
