"""``SearchConfig``: everything that defines one search, in one frozen object, validated once.

The CLI and the Python API build one; the runner, the controller and the replay read it. It is
stored with the controller state (``controller.json``), in the records file and on the MLflow
parent run (``search_config.json``), so ``SearchConfig.from_dict`` rebuilds any search from it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..pruners import PRUNERS
from ..samplers import DEFAULT_SAMPLER, SAMPLERS
from ..space import SIZE_NAMES, SearchSpace, load_space, parse_space


@dataclass(frozen=True)
class SearchConfig:
    """One search: the space, the strategy (sampler, pruner and their options), the seed, where it runs.

    ``space`` is a ``SearchSpace`` or a shipped space name / space file (loaded on construction).
    ``epochs`` overrides the space's ``train.epochs``; ``sampler_options`` go to the sampler and
    ``pruner_options`` to the pruner (``squeezelstm.search.pruners.make_pruner``). ``storage`` is a
    folder or a URI for Ray's results; ``tracking_uri`` an MLflow store (``track=False``: none).
    ``experiment`` names the storage folder, the MLflow experiment and the Optuna study.
    ``size`` overrides the space's size objective (``total``, ``recurrent`` or ``flops``; None: the
    space's ``size:``, total when absent); ``size_objective`` is the one the search minimises.
    """

    space: SearchSpace
    experiment: str = "search"
    trials: int = 12
    epochs: int | None = None
    sampler: str = DEFAULT_SAMPLER
    sampler_options: Mapping[str, Any] = field(default_factory=dict)
    pruner: str = "pareto"
    pruner_options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    address: str | None = None
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int | None = None
    max_failures: int = 0
    storage: str | None = None
    tracking_uri: str | None = None
    track: bool = True
    size: str | None = None

    @property
    def size_objective(self) -> str:
        """The size the search minimises: ``size`` if given, else the space's (``objectives(size)``)."""
        return self.size if self.size is not None else self.space.size

    def __post_init__(self) -> None:
        if isinstance(self.space, (str, Path)):
            object.__setattr__(self, "space", load_space(self.space))
        if not isinstance(self.space, SearchSpace):
            raise TypeError(f"space must be a SearchSpace, a shipped space name or a space file, got space={self.space!r}")
        if self.storage is not None:
            object.__setattr__(self, "storage", os.fspath(self.storage))
        for name in ("sampler_options", "pruner_options"):
            options = getattr(self, name)
            if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
                raise TypeError(f"{name} must be a mapping of argument names to values, got {name}={options!r}")
            object.__setattr__(self, name, dict(options))
        _check(self)

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with ``changes`` applied (and validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready data, the space in space-file form."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["space"] = self.space.to_dict()
        out["space_source"] = self.space.source  # where the space came from (not part of the space file)
        out["sampler_options"] = dict(self.sampler_options)
        out["pruner_options"] = dict(self.pruner_options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchConfig:
        """Rebuild a config written by ``to_dict``; ValueError naming an unknown key."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"space_source"})
        if unknown:
            raise ValueError(f"unknown search config keys {unknown}; known: {sorted(names)}")
        values = dict(data)
        space, source = values.pop("space"), values.pop("space_source", "<search config>")
        return cls(space=space if isinstance(space, SearchSpace) else parse_space(space, source=source), **values)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(c: SearchConfig) -> None:
    """Every setting's own check, with a ValueError naming it and its value (the one place they are checked)."""
    if not isinstance(c.experiment, str) or not c.experiment or "/" in c.experiment or c.experiment in (".", ".."):
        raise ValueError(f"experiment must be a plain non-empty name, got experiment={c.experiment!r}")
    if not _is_int(c.trials) or c.trials < 1:
        raise ValueError(f"trials must be an integer >= 1, got trials={c.trials!r}")
    if c.epochs is not None and (not _is_int(c.epochs) or c.epochs < 1):
        raise ValueError(f"epochs must be a positive integer, got epochs={c.epochs!r}")
    if c.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler={c.sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    if c.pruner not in PRUNERS:
        raise ValueError(f"unknown pruner={c.pruner!r}; valid pruners: {', '.join(PRUNERS)}")
    if not _is_int(c.seed):
        raise ValueError(f"seed must be an integer, got seed={c.seed!r}")
    if isinstance(c.cpus_per_trial, bool) or not isinstance(c.cpus_per_trial, (int, float)) or not c.cpus_per_trial > 0:
        raise ValueError(f"cpus_per_trial must be > 0, got cpus_per_trial={c.cpus_per_trial!r}")
    if isinstance(c.gpus_per_trial, bool) or not isinstance(c.gpus_per_trial, (int, float)) or not 0 <= c.gpus_per_trial:
        raise ValueError(f"gpus_per_trial must be >= 0 (fractions such as 0.25 share a GPU), got gpus_per_trial={c.gpus_per_trial!r}")
    if c.gpus_per_trial > 1 and c.gpus_per_trial != int(c.gpus_per_trial):
        raise ValueError(f"gpus_per_trial above 1 must be a whole number, got gpus_per_trial={c.gpus_per_trial!r}")
    if c.max_concurrent is not None and (not _is_int(c.max_concurrent) or c.max_concurrent < 1):
        raise ValueError(f"max_concurrent must be an integer >= 1, got max_concurrent={c.max_concurrent!r}")
    if not _is_int(c.max_failures) or c.max_failures < 0:
        raise ValueError(f"max_failures must be an integer >= 0, got max_failures={c.max_failures!r}")
    for name in ("address", "storage", "tracking_uri"):
        value = getattr(c, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{name} must be a non-empty string or None, got {name}={value!r}")
    if c.size is not None and c.size not in SIZE_NAMES:
        raise ValueError(f"unknown size={c.size!r}; valid sizes: {', '.join(SIZE_NAMES)}")
    if not isinstance(c.track, bool):
        raise ValueError(f"track must be True or False, got track={c.track!r}")


__all__ = ["SearchConfig"]
