"""Plotly figures and the self-contained HTML Pareto report of a search.

Names are imported on first use, so ``squeezelstm --help`` (which registers the ``pareto`` command)
does not pay for importing plotly.
"""

import importlib

_EXPORTS = {
    "figures": (
        "draw_family_table", "draw_hypervolume", "draw_learning_curves", "draw_parallel_coordinates",
        "draw_pareto", "family_budget_table", "hypervolume_data", "learning_curve_data",
        "parallel_coordinates_data", "pareto_data",
    ),
    "report": ("REFINED_REPORT_FILE", "REPORT_FILE", "report_figures", "write_front_files", "write_refined_files",
               "write_report"),
    "tables": ("format_refined_table", "format_table", "front_rows", "refined_rows", "rows_to_csv"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_WHERE)
