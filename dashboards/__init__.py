"""Plotly figures and the self-contained HTML Pareto report of a search."""

from .figures import (
    draw_family_table,
    draw_hypervolume,
    draw_learning_curves,
    draw_parallel_coordinates,
    draw_pareto,
    family_budget_table,
    hypervolume_data,
    learning_curve_data,
    parallel_coordinates_data,
    pareto_data,
)
from .report import report_figures, write_report
from .tables import format_table, front_rows, rows_to_csv

__all__ = [
    "draw_family_table",
    "draw_hypervolume",
    "draw_learning_curves",
    "draw_parallel_coordinates",
    "draw_pareto",
    "family_budget_table",
    "format_table",
    "front_rows",
    "hypervolume_data",
    "learning_curve_data",
    "parallel_coordinates_data",
    "pareto_data",
    "report_figures",
    "rows_to_csv",
    "write_report",
]
