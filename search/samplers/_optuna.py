"""Optuna's samplers by name, seeded; ``ehvi`` (``ExactSizeEHVI``) stands beside them as an equal.

The controller asks for a sampler by name; for ``ehvi`` the study gets a random sampler and the
proposals come from ``ExactSizeEHVI`` through ``enqueue_trial``, so all five run behind one study.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna

SAMPLERS = ("ehvi", "tpe", "nsga2", "gp", "random")
EHVI_OPTIONS = ("n_startup", "pool_size", "ref_margin", "refit_growth", "kernel", "n_local", "max_rows")


def make_sampler(name: str, seed: int, **kwargs: Any) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler called ``name`` (one of ``SAMPLERS``).

    Budget constraints reach every sampler through ``Trial.set_constraint`` (optuna 5 reads them
    from the trials; the older ``constraints_func`` argument is deprecated there).
    ``tpe`` is multivariate and grouped (the space is conditional) with the constant liar, so
    parallel workers do not all sample the same point; ``nsga2`` uses a population of 16 unless
    ``population_size`` is given; ``gp`` is Optuna's GP sampler (log-EHVI for two objectives).
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got seed={seed!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            if name == "tpe":
                options = {"multivariate": True, "group": True, "constant_liar": True}
                options.update(kwargs)
                return optuna.samplers.TPESampler(seed=seed, **options)
            if name == "nsga2":
                options = {"population_size": 16}
                options.update(kwargs)
                return optuna.samplers.NSGAIISampler(seed=seed, **options)
            if name == "gp":
                # the space is conditional: family arguments outside the shared space are sampled at random
                options = {"warn_independent_sampling": False}
                options.update(kwargs)
                return optuna.samplers.GPSampler(seed=seed, **options)
            if name == "random":
                return optuna.samplers.RandomSampler(seed=seed, **kwargs)
            if name == "ehvi":
                unknown = sorted(set(kwargs) - set(EHVI_OPTIONS))
                if unknown:
                    raise TypeError(f"unexpected options {unknown}; ehvi takes {', '.join(EHVI_OPTIONS)}")
                return optuna.samplers.RandomSampler(seed=seed)
        except TypeError as exc:
            raise ValueError(f"bad argument for sampler {name!r}: {exc}") from None
    raise ValueError(f"unknown sampler={name!r}; valid samplers: {', '.join(SAMPLERS)}")


__all__ = ["EHVI_OPTIONS", "SAMPLERS", "make_sampler"]
