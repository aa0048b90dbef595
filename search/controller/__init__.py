"""The driver-side brain of a search: suggest, report, complete (Optuna's study; no Ray, no MLflow)."""

from ._controller import SearchController, TrialSpec
from ._journal import LOG_FILE, SNAPSHOT_FILE, JournalState, RecordJournal, read_journal
from ._sizes import corpus_vocab_size, record_sizes, size_reference

__all__ = ["LOG_FILE", "SNAPSHOT_FILE", "JournalState", "RecordJournal", "SearchController", "TrialSpec",
           "corpus_vocab_size", "read_journal", "record_sizes", "size_reference"]
