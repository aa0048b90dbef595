"""A search's trials as a ``pandas.DataFrame``: one row a trial, as a notebook user expects
(Optuna's ``study.trials_dataframe()``, MLflow's ``search_runs()``)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ._records import TrialRecord, pareto_front

# leading columns, in this order; then every searched value, the counts, the curve, ``on_front``
LEAD_COLUMNS = ("trial", "status", "family")


def records_dataframe(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """One row per trial, in trial order: ``trial``, ``status``, ``family``, every searched value
    under its flat key (``model.hidden_size``, ``model.rank``, ``train.lr``; missing where a trial's
    family does not search it), ``params``, ``recurrent_params``, ``flops``, the final ``valid_ppl`` and ``test_ppl``,
    ``epochs``, one ``<metric>_epoch_<n>`` column per perplexity a trial reported at epoch ``n``
    (``valid_ppl_epoch_1``, ``train_ppl_epoch_1``, ...), and ``on_front`` (on the Pareto front of
    ``records``). A running trial's row holds what it has reported so far.
    """
    records = sorted(records, key=lambda r: r.number)
    front = {r.number for r in pareto_front(records)}
    searched = sorted({k for r in records for k in r.sampled})
    curve: dict[str, tuple[int, str]] = {}  # column -> (epoch, metric) for ordering
    rows = []
    for r in records:
        row = {"trial": r.number, "status": r.status, "family": r.family}
        row.update({k: r.sampled.get(k) for k in searched})
        row.update({"params": r.params, "recurrent_params": r.recurrent_params, "flops": r.flops, "valid_ppl": r.valid_ppl, "test_ppl": r.test_ppl,
                    "epochs": r.epochs})
        for entry in r.history:
            for metric, value in entry.items():
                if metric.endswith("_ppl"):
                    column = f"{metric}_epoch_{int(entry['epoch'])}"
                    curve[column] = (int(entry["epoch"]), metric)
                    row[column] = value
        row["on_front"] = r.number in front
        rows.append(row)
    columns = [*LEAD_COLUMNS, *searched, "params", "recurrent_params", "flops", "valid_ppl", "test_ppl", "epochs",
               *sorted(curve, key=lambda c: (curve[c][0], curve[c][1] != "valid_ppl", curve[c][1])), "on_front"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"trial": "int64", "params": "int64", "recurrent_params": "int64", "flops": "int64", "epochs": "int64", "on_front": bool})
