"""One self-contained HTML report per search: plotly.js inlined, so it opens offline and in the MLflow UI."""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from squeezelstm.search.pareto import SIZE_LABELS, SIZES, Refinement, TrialRecord, pareto_front, status_counts
from squeezelstm.trainers.files import json_safe

from . import figures
from .tables import NUMERIC, cell_text, columns, front_rows, refined_rows, rows_to_csv

REPORT_FILE = "pareto_report.html"
REFINED_REPORT_FILE = "refined_report.html"

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
    names = columns(rows)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in names)
    body = []
    for row in rows:
        cells = []
        for c in names:
            cls = ' class="num"' if c in NUMERIC else ""
            cells.append(f"<td{cls}>{html.escape(cell_text(row.get(c)))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="front"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _refined_summary(refined: Refinement) -> str:
    epochs = f"{refined.epochs} epochs" if refined.epochs else "the search's epochs"
    return f"{len(refined.members)} members ({refined.selection}) x {refined.seeds} seeds, {epochs}"


def _refined_table_html(refined: Refinement) -> str:
    rows = refined_rows(refined)
    if not rows:
        return "<p>No member.</p>"
    size = SIZES[rows[0]["size"]]
    head = ("trial", "family", "key args", size, "valid ppl (mean ± std)", "valid min – max", "test ppl (mean ± std)",
            "seeds", "search valid ppl", "refined front")

    def pm(r: dict, name: str) -> str:
        return "" if r[f"{name}_mean"] is None else f"{r[f'{name}_mean']:.3f} ± {r[f'{name}_std']:.3f}"

    body = []
    for r in rows:
        span = "" if r["valid_min"] is None else f"{r['valid_min']:.3f} – {r['valid_max']:.3f}"
        search = "" if r["search_valid_ppl"] is None else f"{r['search_valid_ppl']:.3f} ({r['search_epochs']} epochs)"
        cells = (str(r["member"]), r["family"], r["key_args"], f"{r[size]:,}", pm(r, "valid"), span, pm(r, "test"),
                 f"{r['seeds']}/{r['seeds_total']}", search, "yes" if r["on_front"] else "")
        body.append("<tr>" + "".join(f'<td{"" if i in (1, 2) else " class=num"}>{html.escape(c)}</td>'
                                     for i, c in enumerate(cells)) + "</tr>")
    header = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    return f'<table class="front"><thead><tr>{header}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _summary(records: Sequence[TrialRecord]) -> str:
    counts = status_counts(records)
    parts = [f"{len(records)} trials"] + [f"{n} {status}" for status, n in sorted(counts.items())]
    front = pareto_front(records)
    if front:
        best = min(front, key=lambda r: r.valid_ppl)
        parts.append(f"best valid ppl {best.valid_ppl:.3f} (trial {best.number}, {best.params:,} params, "
                     f"{best.recurrent_params:,} recurrent, {best.flops:,} flops)")
        parts.append(f"size objective: {SIZE_LABELS[best.size]}")
    return " · ".join(parts)


def report_figures(records: Iterable[TrialRecord], *, optimal_ppl: float | None = None,
                   hypervolume_history: Sequence[dict] | None = None,
                   reference: tuple[float, float] | None = None,
                   budgets: Sequence[float] | None = None, refined: Refinement | None = None) -> list[tuple[str, Any]]:
    """The report's (heading, figure) pairs, in page order (the Pareto plot with ``refined``'s error bars)."""
    records = list(records)
    return [
        ("Pareto front", figures.draw_pareto(figures.pareto_data(records, optimal_ppl, refined))),
        ("Hypervolume", figures.draw_hypervolume(
            figures.hypervolume_data(records, history=hypervolume_history, reference=reference))),
        ("Learning curves", figures.draw_learning_curves(figures.learning_curve_data(records))),
        ("Searched arguments", figures.draw_parallel_coordinates(figures.parallel_coordinates_data(records))),
        ("Best perplexity per parameter budget", figures.draw_family_table(figures.family_budget_table(records, budgets))),
    ]


def write_report(records: Iterable[TrialRecord], path: str | Path, *, title: str,
                 optimal_ppl: float | None = None, hypervolume_history: Sequence[dict] | None = None,
                 reference: tuple[float, float] | None = None, budgets: Sequence[float] | None = None,
                 refined: Refinement | None = None) -> Path:
    """Write the search's HTML report to ``path`` (plotly.js inlined once) and return the path.

    With ``refined`` (a refinement of the search's front) the Pareto plot also shows the refined members, mean
    validation perplexity over seeds with the std as error bars, and the report lists them after the front.

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
                                                      reference=reference, budgets=budgets, refined=refined)):
        div = fig.to_html(full_html=False, include_plotlyjs=(i == 0), div_id=f"figure-{i}",
                          config={"responsive": True, "displaylogo": False})
        parts.append(f'<h2>{html.escape(heading)}</h2>\n<div class="figure">{div}</div>')
        if i == 0:
            parts.append(f"<h2>Front members</h2>\n{_front_table_html(records)}")
            if refined is not None:
                parts.append(f"<h2>Refined front ({html.escape(_refined_summary(refined))})</h2>\n"
                             f"{_refined_table_html(refined)}")
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


def write_refined_files(refined: Refinement, folder: str | Path, *, records: Iterable[TrialRecord] = (),
                        title: str | None = None, optimal_ppl: float | None = None) -> list[str]:
    """Write a refinement's report (``refined_report.html``: the search's ``records`` and the refined members with
    error bars) into ``folder``; returns the names written (what a refinement logs on its MLflow parent run)."""
    write_report(records, Path(folder) / REFINED_REPORT_FILE, optimal_ppl=optimal_ppl, refined=refined,
                 title=title or f"Refined front of search {refined.experiment}")
    return [REFINED_REPORT_FILE]
