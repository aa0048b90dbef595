"""Plotly figures and the self-contained HTML Pareto report of a search."""
