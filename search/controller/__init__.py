"""The driver-side brain of a search: suggest, report, complete (Optuna's study; no Ray, no MLflow)."""

from ._controller import SAMPLERS, SearchController, TrialSpec, corpus_vocab_size, make_sampler

__all__ = ["SAMPLERS", "SearchController", "TrialSpec", "corpus_vocab_size", "make_sampler"]
