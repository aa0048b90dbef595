"""Parameter-efficient LSTM-family cells, each shaped like ``torch.nn.LSTM``, with exact counts.

See ``spaces/README.md`` for every family's equations and parameter formula.
"""

from ._base import RecurrentLayer, RecurrentStack
from .lstm import LSTM

__all__ = ["LSTM", "RecurrentLayer", "RecurrentStack"]
