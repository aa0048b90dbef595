"""What the MLflow UI shows of a search without opening an artifact: the experiment's kind, the front as the
parent run's description.

MLflow 3's UI opens an experiment without a kind on its GenAI traces page; ``mlflow.experimentKind`` =
``custom_model_development`` makes it open on the runs table, as for any model training. The parent run's
description (the ``mlflow.note.content`` tag, Markdown) holds the current front, so the run's page alone
answers "what is the front now".
"""

from __future__ import annotations

import math

from ..pareto import SIZE_LABELS, TrialRecord

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"
NOTE_MAX_CHARS = 8000  # MLflow's limit on a tag's value (mlflow.utils.validation.MAX_TAG_VAL_LENGTH): it cuts longer ones


def mark_experiment_kind(client, experiment_id: str) -> None:
    """Tag the experiment as model training (idempotent: set only when missing or different)."""
    tags = client.get_experiment(experiment_id).tags or {}
    if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def front_markdown(front: list[TrialRecord], experiment: str, hypervolume: float | None = None,
                   max_chars: int = NOTE_MAX_CHARS) -> str:
    """The front as a Markdown table (by size), with a line saying what it is; at most ``max_chars`` characters.

    A front too long for that (a few hundred trials) keeps its smallest rows and ends with a line saying how
    many more there are and where they all are (``pareto_front.csv``), instead of a row MLflow cut in two.
    """
    hv = "" if hypervolume is None or not math.isfinite(hypervolume) else f", hypervolume {hypervolume:.4f}"
    size = front[0].size if front else "total"
    lines = [f"**Pareto front of search `{experiment}`**: {len(front)} trial(s){hv}, smallest first "
             f"(size objective: {SIZE_LABELS[size]}).", "",
             "| trial | family | params | recurrent | flops | valid ppl | test ppl | sampled |",
             "|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(front, key=lambda r: (r.size_value, r.number)):
        test = "" if r.test_ppl is None else f"{r.test_ppl:.2f}"
        sampled = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in r.sampled.items() if k != "model.cell")
        lines.append(f"| {r.number} | {r.family} | {r.params:,} | {r.recurrent_params:,} | {r.flops:,} | "
                     f"{r.valid_ppl:.2f} | {test} | "
                     f"{sampled.replace('|', '/')} |")
    text = "\n".join(lines)
    if len(text) <= max_chars:
        return text
    header, rows = lines[:4], lines[4:]
    used = sum(len(line) + 1 for line in header)
    kept = 0
    while kept < len(rows) and used + len(rows[kept]) + 1 + 120 <= max_chars:  # 120: room for the last line
        used += len(rows[kept]) + 1
        kept += 1
    more = f"\n... and {len(rows) - kept} larger trial(s) on the front: all {len(rows)} are in `pareto_front.csv`."
    return "\n".join(header + rows[:kept]) + more


__all__ = ["EXPERIMENT_KIND", "EXPERIMENT_KIND_TAG", "NOTE_MAX_CHARS", "NOTE_TAG", "front_markdown", "mark_experiment_kind"]
