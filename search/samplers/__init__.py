"""What to try next: the exact-size EHVI sampler and its Gaussian process (Optuna's samplers are named in ``controller``)."""

from ._ehvi import (
    DEFAULT_SAMPLER,
    Encoder,
    ExactSizeEHVI,
    Observation,
    expected_hvi,
    local_draw,
    random_draw,
    space_dists,
    staircase,
)
from ._gp import GaussianProcess, fit_gp, fit_gp_ard
from ._proposals import Prefetcher, one_thread

__all__ = [
    "DEFAULT_SAMPLER",
    "Encoder",
    "ExactSizeEHVI",
    "GaussianProcess",
    "Observation",
    "Prefetcher",
    "expected_hvi",
    "fit_gp",
    "fit_gp_ard",
    "local_draw",
    "one_thread",
    "random_draw",
    "space_dists",
    "staircase",
]
