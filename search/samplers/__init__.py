"""What to try next: Optuna's samplers by name and, as their equal, the exact-size EHVI with its Gaussian process."""

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
from ._optuna import EHVI_OPTIONS, SAMPLERS, make_sampler
from ._proposals import Prefetcher, one_thread

__all__ = [
    "DEFAULT_SAMPLER",
    "EHVI_OPTIONS",
    "Encoder",
    "ExactSizeEHVI",
    "GaussianProcess",
    "Observation",
    "Prefetcher",
    "SAMPLERS",
    "expected_hvi",
    "fit_gp",
    "fit_gp_ard",
    "local_draw",
    "make_sampler",
    "one_thread",
    "random_draw",
    "space_dists",
    "staircase",
]
