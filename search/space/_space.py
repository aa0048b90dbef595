"""Search spaces: which trainer configs a search may try, read from a YAML or TOML file.

A space file mirrors the trainer config (sections ``data``, ``model``, ``train``); every leaf is
either a fixed value or a distribution::

    model:
      cell: {choice: [lstm, grouped, routed]}     # the families to search
      hidden_size: {int: [32, 256], step: 16}
      dropout: {float: [0.0, 0.4]}
    train:
      lr: {float: [1.0e-3, 1.0e-2], log: true}
    families:                                      # each family's own arguments
      grouped: {groups: {choice: [2, 4, 8]}}
      routed: {num_cells: {choice: [2, 4]}, routing: {choice: [hidden, token]}}
      factorized: {rank_fraction: {float: [0.1, 0.5]}}   # rank = fraction x hidden_size
    budget: {max_params: 200000}
    size: recurrent                                # the size objective: total (default), recurrent or flops

The budget bounds the model's dense total parameters (``max_params``) and FLOPs (``max_flops``) whatever
``size`` the search minimises: with ``size: recurrent`` the budget still caps the embedding and decoder.

Conditional sampling: a trial samples ``model.cell`` first and then only its family's arguments,
under per-family names (``grouped.groups``, ``factorized.rank_fraction``), so every name keeps one
fixed distribution across trials (Optuna refuses a distribution that changes between trials).

Validity by construction: the sampled family argument is mapped deterministically onto the
nearest valid value for the sampled sizes (``groups`` onto the nearest divisor of
``gcd(embedding_size, hidden_size)``, ``num_cells`` onto the nearest divisor of ``hidden_size``,
``rank`` clipped to ``[1, min(4n, m + n)]``), so a sampled config is never invalid and nothing is
thrown away (``derive_family_args``, from each argument's rule in the family table, ``spaces/families.py``).
``sampled`` (and the trainer config) hold the values actually used.

This module is core: it imports no Optuna. Sampling goes through the small ``Suggester``
protocol, which an ``optuna.Trial`` satisfies as it is and ``RandomSuggester`` satisfies for tests.
Reading files, the schema checks and overrides live in ``space_file``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from squeezelstm.spaces.families import FAMILY_TABLE, derive_family_args, nearest_divisor
from squeezelstm.trainers import Config, count_model_flops, count_model_parameters
from squeezelstm.trainers.config import TrainConfig
from squeezelstm.trainers.growprune import spread_schedule

from ._distributions import Choice, FloatRange, IntRange, RandomSuggester, Suggester, dist_to_dict, parse_dist
from ._file import FAMILY_ARG_NAMES, SECTIONS, apply_overrides, check_space, locate_space, shipped_spaces

# model keys that do not change the parameter count: the cheapest-config search leaves them at one value
_SIZE_FREE_MODEL_KEYS = ("dropout", "locked_dropout", "fast_lstm")


# ----------------------------------------------------------------------------------------------
# the H-LSTM grow-and-prune keys of a space


def grow_prune_keys(raw: Mapping[str, Any], epochs: int) -> dict:
    """The trainer's H-LSTM grow-and-prune keys from a space's ``prune_sparsity``, ``grow_phases``
    (default 1) and ``prune_phases`` (default 1), the phases spread over ``epochs``."""
    grows, prunes = spread_schedule(epochs, int(raw.get("grow_phases", 1)), int(raw.get("prune_phases", 1)))
    return {"prune_sparsity": float(raw["prune_sparsity"]), "grow_epochs": list(grows), "prune_epochs": list(prunes)}


# ----------------------------------------------------------------------------------------------
# the space


@dataclass(frozen=True)
class SampledConfig:
    """One sampled point: ``config`` is the full nested trainer config dict, ``sampled`` the flat searched values."""

    family: str
    config: dict
    sampled: dict


@dataclass(frozen=True)
class SearchSpace:
    """A parsed space file: fixed trainer settings, searched knobs, per-family arguments and the budget.

    ``fixed`` is a nested ``{section: {key: value}}`` dict of settings every trial shares;
    ``knobs`` maps dotted keys (``model.hidden_size``) to distributions; ``families`` lists the
    searched cell families; ``family_knobs[family]`` maps the family's space keys to a distribution
    or a fixed value.
    """

    name: str
    fixed: dict
    knobs: dict
    families: tuple
    family_knobs: dict
    max_params: int | None = None
    max_flops: int | None = None
    description: str = ""
    source: str = "<dict>"
    size: str = "total"

    def trial_epochs(self, override: int | None = None) -> int:
        """Epochs every trial trains: ``override``, else the space's ``train.epochs``, else the trainer's default.

        The one place that resolves it, so the sampler's view of training progress and the trainer agree.
        """
        if override is not None:
            return int(override)
        return int(self.fixed.get("train", {}).get("epochs", TrainConfig.epochs))

    # -- sampling -------------------------------------------------------------------------------

    def sample(self, suggester: Suggester, epochs: int | None = None) -> SampledConfig:
        """Sample one valid config through ``suggester``; ``epochs`` overrides ``train.epochs``."""
        sampled: dict[str, Any] = {}
        if len(self.families) > 1:
            family = suggester.suggest_categorical("model.cell", list(self.families))
            sampled["model.cell"] = family
        else:
            family = self.families[0]
        values: dict[str, Any] = {}
        for key, dist in self.knobs.items():
            values[key] = dist.sample(suggester, key)
            sampled[key] = values[key]
        config = copy.deepcopy(self.fixed)
        for key, value in values.items():
            section, name = key.split(".", 1)
            config.setdefault(section, {})[name] = value
        model = config.setdefault("model", {})
        model["cell"] = family
        raw = {}
        for key, spec in self.family_knobs.get(family, {}).items():
            raw[key] = spec.sample(suggester, f"{family}.{key}") if isinstance(spec, (Choice, IntRange, FloatRange)) else spec
        hidden = int(model["hidden_size"])
        layers = int(model.get("num_layers", 1))
        # a tied decoder of another width than hidden_size gets a projection (trainers.model)
        emb = model.get("embedding_size")
        input_size = int(emb) if emb else hidden
        for name, value in derive_family_args(family, raw, input_size, hidden, layers).items():
            model[name] = value
            sampled[f"model.{name}"] = value
        if FAMILY_TABLE[family].grows_and_prunes and "prune_sparsity" in raw:
            train = config.setdefault("train", {})
            for name, value in grow_prune_keys(raw, int(epochs or train.get("epochs", TrainConfig.epochs))).items():
                train[name] = value
                sampled[f"train.{name}"] = value
        if epochs is not None:
            config.setdefault("train", {})["epochs"] = int(epochs)
        return SampledConfig(family, config, sampled)

    def enumerate_extremes(self, limit: int = 20000) -> Iterator[SampledConfig]:
        """Every combination of each size-relevant knob's extreme values (and all small choices).

        Used to find the cheapest configuration of the space; knobs that do not change the
        parameter count (train.*, data.*, model.dropout) stay at one value.
        """
        yield from _DecisionTree(self, limit).walk()

    def cheapest(self, measure: Callable[[dict], tuple[int, int]]) -> tuple[int, int, dict]:
        """``(params, flops, config)`` of the space's smallest configuration (fewest parameters)."""
        best: tuple[int, int, dict] | None = None
        for point in self.enumerate_extremes():
            params, flops = measure(point.config)
            if best is None or (params, flops) < best[:2]:
                best = (params, flops, point.config)
        assert best is not None  # a space always has at least one point
        return best

    def check_budget(self, measure: Callable[[dict], tuple[int, int]]) -> tuple[int, int]:
        """ValueError if even the cheapest configuration breaks the budget; returns its (params, flops)."""
        params, flops, _ = self.cheapest(measure)
        if self.max_params is not None and params > self.max_params:
            raise ValueError(
                f"budget max_params={self.max_params} is below the smallest configuration of this space "
                f"({params} params) in {self.source}"
            )
        if self.max_flops is not None and flops > self.max_flops:
            raise ValueError(
                f"budget max_flops={self.max_flops} is below the smallest configuration of this space "
                f"({flops} flops) in {self.source}"
            )
        return params, flops

    def over_budget(self, params: int, flops: int) -> dict[str, float]:
        """Optuna-style constraint values, one per active budget (relative excess): <= 0 is within budget."""
        out = {}
        if self.max_params is not None:
            out["max_params"] = (params - self.max_params) / self.max_params
        if self.max_flops is not None:
            out["max_flops"] = (flops - self.max_flops) / self.max_flops
        return out

    def exceeds_budget(self, params: int, flops: int) -> bool:
        """Whether a model of this size breaks any budget (a search never launches one)."""
        return any(v > 0 for v in self.over_budget(params, flops).values())

    def with_overrides(self, overrides: Mapping[str, Any] | list[str] | None) -> SearchSpace:
        """A copy with dotted keys set (``{"data.path": "..."}`` or ``["data.path=..."]``).

        String values are read as YAML, so ``"model.hidden_size={int: [64, 256]}"`` makes a knob.
        """
        if not overrides:
            return self
        raw = apply_overrides(self.to_dict(), overrides)
        return parse_space(raw, source=f"{self.source} (with overrides)")

    def to_dict(self) -> dict:
        """The space as a plain dict in space-file form (``parse_space(space.to_dict())`` rebuilds it)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.size != "total":  # absent means total: a default space's file form is unchanged
            out["size"] = self.size
        budget = {k: v for k, v in (("max_params", self.max_params), ("max_flops", self.max_flops)) if v is not None}
        if budget:
            out["budget"] = budget
        for section in SECTIONS:
            out[section] = copy.deepcopy(self.fixed.get(section, {}))
        for key, dist in self.knobs.items():
            section, name = key.split(".", 1)
            out[section][name] = dist_to_dict(dist)
        out["model"]["cell"] = {"choice": list(self.families)} if len(self.families) > 1 else self.families[0]
        fams = {}
        for fam, specs in self.family_knobs.items():
            fams[fam] = {k: dist_to_dict(v) if isinstance(v, (Choice, IntRange, FloatRange)) else v for k, v in specs.items()}
        if fams:
            out["families"] = fams
        return out


class _DecisionTree:
    """Depth-first walk over every sequence of candidate answers a ``sample`` call can receive."""

    def __init__(self, space: SearchSpace, limit: int) -> None:
        self.space = space
        self.limit = limit

    def walk(self) -> Iterator[SampledConfig]:
        stack: list[list[int]] = [[]]
        produced = 0
        while stack and produced < self.limit:
            prefix = stack.pop()
            scripted = _ScriptedSuggester(prefix)
            point = self.space.sample(scripted)
            produced += 1
            yield point
            # branch on every decision after the prefix (alternatives of each later decision)
            for depth in range(len(prefix), len(scripted.widths)):
                for alt in range(1, scripted.widths[depth]):
                    stack.append(scripted.taken[:depth] + [alt])


class _ScriptedSuggester:
    """Answers each question with a scripted candidate index (0 past the script), recording widths."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.taken: list[int] = []
        self.widths: list[int] = []

    def _pick(self, name: str, options: tuple) -> Any:
        section = name.split(".", 1)[0]
        size_free = section in ("train", "data") or name in tuple(f"model.{k}" for k in _SIZE_FREE_MODEL_KEYS)
        if size_free:
            options = options[:1]
        i = len(self.taken)
        index = self.script[i] if i < len(self.script) else 0
        self.taken.append(index)
        self.widths.append(len(options))
        return options[index]

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._pick(name, Choice(tuple(choices)).candidates())

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._pick(name, IntRange(low, high, step).candidates())

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self._pick(name, FloatRange(low, high).candidates())


# ----------------------------------------------------------------------------------------------
# parsing and loading


def parse_space(raw: Any, source: str = "<dict>") -> SearchSpace:
    """Build a ``SearchSpace`` from a space-file dict; ValueError naming the key for anything wrong."""
    space = SearchSpace(**check_space(raw, source))
    try:
        # every key and type of the trainer config, checked once on the space's first point
        Config.from_dict(space.sample(_ScriptedSuggester([])).config)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"space {source}: {exc}") from None
    return space


def load_space(name_or_path: str | Path, overrides: Mapping[str, Any] | list[str] | None = None) -> SearchSpace:
    """Load a shipped space by name (``default``, ``ptb``, ``warandpeace``) or a space file by path.

    ``overrides`` sets dotted keys afterwards (see ``SearchSpace.with_overrides``). A missing file
    is a FileNotFoundError naming it; a broken one a one-line ValueError naming the key.
    """
    raw, source = locate_space(name_or_path)
    return parse_space(raw, source=source).with_overrides(overrides)


def model_cost(config: dict, vocab_size: int) -> tuple[int, int]:
    """Exact ``(params, flops)`` of the trainer model a config dict builds, via the trainer's counters."""
    cfg = Config.from_dict(config)
    return int(count_model_parameters(cfg, vocab_size)), int(count_model_flops(cfg, vocab_size))


__all__ = [
    "FAMILY_ARG_NAMES",
    "Choice",
    "FloatRange",
    "IntRange",
    "RandomSuggester",
    "SampledConfig",
    "SearchSpace",
    "Suggester",
    "derive_family_args",
    "load_space",
    "model_cost",
    "nearest_divisor",
    "parse_dist",
    "parse_space",
    "shipped_spaces",
]
