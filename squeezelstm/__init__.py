"""squeezelstm: find the smallest LSTM-family language model that reaches a target perplexity.

Sub-packages:
- ``squeezelstm.spaces``: the recurrent cell families and their exact parameter / FLOP counts.
- ``squeezelstm.trainers``: corpora, the language model and its training loop.
- ``squeezelstm.search``: the search space, Pareto maths, pruners, and the Ray / Optuna / MLflow adapters.
- ``squeezelstm.dashboards``: plotly figures and the HTML Pareto report.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
