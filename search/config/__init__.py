"""``SearchConfig``: the one frozen object that defines a search and rebuilds it."""

from ._config import SearchConfig

__all__ = ["SearchConfig"]
