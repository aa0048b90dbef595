"""One self-contained HTML report per search: plotly.js inlined, so it opens offline and in the MLflow UI."""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from squeezelstm.search.pareto import TrialRecord, pareto_front, status_counts
from squeezelstm.trainers.files import json_safe

from . import figures
from .tables import COLUMNS, cell_text, front_rows, rows_to_csv

REPORT_FILE = "pareto_report.html"

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; }
.summary { color: #555; margin-bottom: 12px; }
table.front { border-collapse: collapse; font-size: 13px; }
table.front th, table.front td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: left; }
table.front td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figure { margin: 8px 0 24px 0; }
"""


def _front_table_html(records: Sequence[TrialRecord]) -> str:
    rows = front_rows(pareto_front(records))
    if not rows:
        return "<p>No finished trial yet: the front is empty.</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = []
    for row in rows:
        cells = []
        for c in COLUMNS:
            cls = ' class="num"' if c in ("trial", "params", "valid_ppl", "test_ppl") else ""
            cells.append(f"<td{cls}>{html.escape(cell_text(row.get(c)))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="front"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _summary(records: Sequence[TrialRecord]) -> str:
    counts = status_counts(records)
    parts = [f"{len(records)} trials"] + [f"{n} {status}" for status, n in sorted(counts.items())]
    front = pareto_front(records)
    if front:
        best = min(front, key=lambda r: r.valid_ppl)
        parts.append(f"best valid ppl {best.valid_ppl:.3f} (trial {best.number}, {best.params:,} params)")
    return " · ".join(parts)


def report_figures(records: Iterable[TrialRecord], *, optimal_ppl: float | None = None,
                   hypervolume_history: Sequence[dict] | None = None,
                   reference: tuple[float, float] | None = None,
                   budgets: Sequence[float] | None = None) -> list[tuple[str, Any]]:
    """The report's (heading, figure) pairs, in page order."""
    records = list(records)
    return [
        ("Pareto front", figures.draw_pareto(figures.pareto_data(records, optimal_ppl))),
        ("Hypervolume", figures.draw_hypervolume(
            figures.hypervolume_data(records, history=hypervolume_history, reference=reference))),
        ("Learning curves", figures.draw_learning_curves(figures.learning_curve_data(records))),
        ("Searched arguments", figures.draw_parallel_coordinates(figures.parallel_coordinates_data(records))),
        ("Best perplexity per parameter budget", figures.draw_family_table(figures.family_budget_table(records, budgets))),
    ]


def write_report(records: Iterable[TrialRecord], path: str | Path, *, title: str,
                 optimal_ppl: float | None = None, hypervolume_history: Sequence[dict] | None = None,
                 reference: tuple[float, float] | None = None, budgets: Sequence[float] | None = None) -> Path:
    """Write the search's HTML report to ``path`` (plotly.js inlined once) and return the path.

    ``hypervolume_history`` is the parent run's logged curve; without it the curve is recomputed
    from ``records`` against ``reference`` (ref_params, ref_ppl), or a reference derived from the data.
    """
    path = Path(path)
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"report path {path} is a directory")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"folder of the report path {path} does not exist")
    records = list(records)
    parts = []
    for i, (heading, fig) in enumerate(report_figures(records, optimal_ppl=optimal_ppl,
                                                      hypervolume_history=hypervolume_history,
                                                      reference=reference, budgets=budgets)):
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{i}",
                          config={"responsive": True, "displaylogo": False})
        parts.append(f'<h2>{html.escape(heading)}</h2>\n<div class="figure">{div}</div>')
        if i == 0:
            parts.append(f"<h2>Front members</h2>\n{_front_table_html(records)}")
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<div class=\"summary\">{html.escape(_summary(records))} · written {stamp}</div>\n"
        + "\n".join(parts) + "\n</body>\n</html>\n"
    )
    path.write_text(page, encoding="utf-8")
    return path


def write_front_files(records: Iterable[TrialRecord], folder: str | Path, *, title: str,
                      optimal_ppl: float | None = None, hypervolume_history: Sequence[dict] | None = None,
                      report: bool = True) -> list[str]:
    """Write the front's ``pareto_front.csv`` and ``.json`` (and, with ``report``, the HTML report) into ``folder``.

    Returns the names written: what the search's tracking logs on its parent run after every finished trial.
    """
    records, folder = list(records), Path(folder)
    rows = front_rows(pareto_front(records))
    (folder / "pareto_front.csv").write_text(rows_to_csv(rows))
    (folder / "pareto_front.json").write_text(json.dumps(json_safe(rows), indent=2, default=str))
    names = ["pareto_front.csv", "pareto_front.json"]
    if report:
        write_report(records, folder / REPORT_FILE, title=title, optimal_ppl=optimal_ppl,
                     hypervolume_history=hypervolume_history)
        names.append(REPORT_FILE)
    return names
