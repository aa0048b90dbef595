"""The driver-side brain of a search: suggest, report, complete (Optuna's study; no Ray, no MLflow)."""

from ._controller import SearchController, TrialSpec
from ._sizes import corpus_vocab_size, record_sizes, size_reference

__all__ = ["SearchController", "TrialSpec", "corpus_vocab_size", "record_sizes", "size_reference"]
