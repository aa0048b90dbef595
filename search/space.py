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

Conditional sampling: a trial samples ``model.cell`` first and then only its family's arguments,
under per-family names (``grouped.groups``, ``factorized.rank_fraction``), so every name keeps one
fixed distribution across trials (Optuna refuses a distribution that changes between trials).

Validity by construction: the sampled family argument is mapped deterministically onto the
nearest valid value for the sampled sizes (``groups`` onto the nearest divisor of
``gcd(embedding_size, hidden_size)``, ``num_cells`` onto the nearest divisor of ``hidden_size``,
``rank`` clipped to ``[1, min(4n, m + n)]``), so a sampled config is never invalid and nothing is
thrown away. ``sampled`` (and the trainer config) hold the values actually used.

This module is core: it imports no Optuna. Sampling goes through the small ``Suggester``
protocol, which an ``optuna.Trial`` satisfies as it is and ``RandomSuggester`` satisfies for tests.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .distributions import (Choice, Dist, FloatRange, IntRange, RandomSuggester, Suggester, _is_int, _is_number,
                            dist_to_dict, parse_dist)

SECTIONS = ("data", "model", "train")
TOP_KEYS = ("name", "description", "budget") + SECTIONS + ("families",)
BUDGET_KEYS = ("max_params", "max_flops")
KNOWN_FAMILIES = ("lstm", "factorized", "grouped", "routed", "restricted", "hidden")
# family -> the argument names a space file may give for it (absolute or as a fraction of hidden_size)
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    "lstm": (),
    "factorized": ("rank", "rank_fraction"),
    "grouped": ("groups", "groups_fraction"),
    "routed": ("num_cells", "num_cells_fraction", "routing"),
    "restricted": ("share",),
    "hidden": ("gate_hidden", "gate_hidden_fraction"),
}
# family -> its trainer argument and the space keys that set it (exactly one of them is required)
FAMILY_REQUIRED: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "lstm": (),
    "factorized": (("rank", ("rank", "rank_fraction")),),
    "grouped": (("groups", ("groups", "groups_fraction")),),
    "routed": (("num_cells", ("num_cells", "num_cells_fraction")), ("routing", ("routing",))),
    "restricted": (("share", ("share",)),),
    "hidden": (("gate_hidden", ("gate_hidden", "gate_hidden_fraction")),),
}
FAMILY_ARG_NAMES = ("rank", "groups", "num_cells", "routing", "share", "gate_hidden")
# model keys that do not change the parameter count: the cheapest-config search leaves them at one value
_SIZE_FREE_MODEL_KEYS = ("dropout", "locked_dropout", "fast_lstm")


# ----------------------------------------------------------------------------------------------
# deterministic mapping of a sampled family argument onto a valid one


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def nearest_divisor(n: int, target: float) -> int:
    """The divisor of ``n`` closest to ``target`` in log ratio (ties to the smaller): always valid."""
    target = max(float(target), 1e-9)
    return min(_divisors(n), key=lambda d: (abs(math.log(d / target)), d))


def derive_family_args(family: str, raw: Mapping[str, Any], input_size: int, hidden_size: int, num_layers: int) -> dict:
    """Turn a family's sampled space values into valid trainer arguments for these sizes.

    ``raw`` maps space keys (``groups`` or ``groups_fraction``, ...) to sampled values; the result
    maps trainer argument names (``groups``, ...) to values that satisfy the family's validity
    rules by construction.
    """
    inputs = [input_size] + [hidden_size] * (num_layers - 1)
    args: dict[str, Any] = {}
    if family == "factorized":
        rank = raw["rank"] if "rank" in raw else raw["rank_fraction"] * hidden_size
        top = min(min(4 * hidden_size, m + hidden_size) for m in inputs)
        args["rank"] = int(min(max(round(rank), 1), top))
    elif family == "grouped":
        groups = raw["groups"] if "groups" in raw else raw["groups_fraction"] * hidden_size
        args["groups"] = nearest_divisor(math.gcd(hidden_size, *inputs), groups)
    elif family == "routed":
        cells = raw["num_cells"] if "num_cells" in raw else raw["num_cells_fraction"] * hidden_size
        args["num_cells"] = nearest_divisor(hidden_size, cells)
        args["routing"] = raw["routing"]
    elif family == "restricted":
        args["share"] = float(raw["share"])
    elif family == "hidden":
        width = raw["gate_hidden"] if "gate_hidden" in raw else raw["gate_hidden_fraction"] * hidden_size
        args["gate_hidden"] = int(max(round(width), 1))
    return args


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
        if model.get("tie_weights") is True and model.get("embedding_size") not in (None, hidden):
            # a tied decoder needs embedding_size == hidden_size: derived, not sampled and thrown away
            model["embedding_size"] = hidden
            if "model.embedding_size" in sampled:
                sampled["model.embedding_size"] = hidden
        emb = model.get("embedding_size")
        input_size = int(emb) if emb else hidden
        for name, value in derive_family_args(family, raw, input_size, hidden, layers).items():
            model[name] = value
            sampled[f"model.{name}"] = value
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
        raw = self.to_dict()
        for key, value in _override_items(overrides):
            parts = key.split(".")
            if parts[0] == "budget" and len(parts) == 2:
                raw.setdefault("budget", {})[parts[1]] = value
            elif parts[0] in SECTIONS and len(parts) == 2:
                raw.setdefault(parts[0], {})[parts[1]] = value
            elif parts[0] == "families" and len(parts) == 3:
                raw.setdefault("families", {}).setdefault(parts[1], {})[parts[2]] = value
            else:
                raise ValueError(f"cannot override {key!r}: use section.key (data/model/train/budget) or families.<family>.<key>")
        return parse_space(raw, source=f"{self.source} (with overrides)")

    def to_dict(self) -> dict:
        """The space as a plain dict in space-file form (``parse_space(space.to_dict())`` rebuilds it)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
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


def _override_items(overrides: Mapping[str, Any] | list[str]) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        items = list(overrides.items())
    else:
        items = []
        for item in overrides:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"override must look like key=value, got {item!r}")
            key, value = item.split("=", 1)
            items.append((key.strip(), value))
    out = []
    for key, value in items:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value) if value.strip() else value
            except yaml.YAMLError:
                pass
        out.append((key, value))
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

    def fail(key: str, problem: str) -> ValueError:
        return ValueError(f"space {source}: {key}: {problem}")

    if not isinstance(raw, Mapping):
        raise ValueError(f"space {source}: expected a mapping at the top level, got {type(raw).__name__}")

    def dist_of(value: Any, key: str) -> Dist | None:
        try:
            return parse_dist(value, key)
        except ValueError as exc:
            raise ValueError(f"space {source}: {exc}") from None

    for key in raw:
        if key not in TOP_KEYS:
            raise fail(str(key), f"unknown key (allowed: {', '.join(TOP_KEYS)})")
    name = raw.get("name", Path(source).stem if source != "<dict>" else "space")
    if not isinstance(name, str) or not name:
        raise fail("name", f"must be a non-empty string, got {name!r}")
    description = raw.get("description", "") or ""
    if not isinstance(description, str):
        raise fail("description", f"must be a string, got {description!r}")

    budget = raw.get("budget") or {}
    if not isinstance(budget, Mapping):
        raise fail("budget", f"must be a mapping, got {budget!r}")
    limits: dict[str, int | None] = {}
    for key, value in budget.items():
        if key not in BUDGET_KEYS:
            raise fail(f"budget.{key}", f"unknown key (allowed: {', '.join(BUDGET_KEYS)})")
        if value is not None and (not _is_number(value) or value <= 0 or int(value) != value):
            raise fail(f"budget.{key}", f"must be a positive integer, got {value!r}")
        limits[key] = None if value is None else int(value)

    fixed: dict[str, dict] = {}
    knobs: dict[str, Dist] = {}
    for section in SECTIONS:
        body = raw.get(section) or {}
        if not isinstance(body, Mapping):
            raise fail(section, f"must be a mapping, got {body!r}")
        fixed[section] = {}
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if not isinstance(key, str):
                raise fail(dotted, "keys must be strings")
            if section == "model" and key in FAMILY_ARG_NAMES:
                raise fail(dotted, "family arguments go under families.<family>.<key>")
            if section == "model" and key == "cell":
                continue
            dist = dist_of(value, dotted)
            if dist is not None and section == "data":
                raise fail(dotted, "data settings are fixed for a whole search (one corpus, one vocabulary)")
            if dist is None:
                fixed[section][key] = copy.deepcopy(value)
            else:
                knobs[dotted] = dist

    cell = (raw.get("model") or {}).get("cell")
    if cell is None:
        raise fail("model.cell", f"is required: a family or {{choice: [...]}} of {', '.join(KNOWN_FAMILIES)}")
    cell_dist = dist_of(cell, "model.cell")
    if cell_dist is None:
        families: tuple = (cell,)
    elif isinstance(cell_dist, Choice):
        families = cell_dist.choices
    else:
        raise fail("model.cell", "must be a family name or a choice of families")
    for fam in families:
        if fam not in KNOWN_FAMILIES:
            raise fail("model.cell", f"unknown family {fam!r} (known: {', '.join(KNOWN_FAMILIES)})")

    hidden = knobs.get("model.hidden_size", fixed["model"].get("hidden_size"))
    if hidden is None:
        raise fail("model.hidden_size", "is required (a value or a distribution)")
    for key in ("hidden_size", "num_layers", "embedding_size"):
        dist = knobs.get(f"model.{key}")
        if isinstance(dist, FloatRange):
            raise fail(f"model.{key}", "must be an int or a choice of ints, not a float range")
        if isinstance(dist, Choice):
            values: tuple = dist.choices
        elif isinstance(dist, IntRange):
            values = (dist.low,)
        else:
            values = (fixed["model"][key],) if fixed["model"].get(key) is not None else ()
        for v in values:
            if not _is_int(v) or v < 1:
                raise fail(f"model.{key}", f"must be positive integers, got {v!r}")

    families_raw = raw.get("families") or {}
    if not isinstance(families_raw, Mapping):
        raise fail("families", f"must be a mapping of family -> arguments, got {families_raw!r}")
    family_knobs: dict[str, dict] = {}
    for fam, body in families_raw.items():
        if fam not in KNOWN_FAMILIES:
            raise fail(f"families.{fam}", f"unknown family (known: {', '.join(KNOWN_FAMILIES)})")
        if fam not in families:
            raise fail(f"families.{fam}", f"family is not searched (model.cell has {', '.join(families)})")
        body = body or {}
        if not isinstance(body, Mapping):
            raise fail(f"families.{fam}", f"must be a mapping of arguments, got {body!r}")
        specs: dict[str, Any] = {}
        for key, value in body.items():
            dotted = f"families.{fam}.{key}"
            if key not in FAMILY_KEYS[fam]:
                allowed = ", ".join(FAMILY_KEYS[fam]) or "no arguments"
                raise fail(dotted, f"unknown key for family {fam} (allowed: {allowed})")
            dist = dist_of(value, dotted)
            specs[key] = dist if dist is not None else value
            _check_family_value(fam, key, specs[key], lambda problem, k=dotted: fail(k, problem))
        family_knobs[fam] = specs
    for fam in families:
        specs = family_knobs.get(fam, {})
        for arg, keys in FAMILY_REQUIRED[fam]:
            given = [k for k in keys if k in specs]
            if not given:
                raise fail(f"families.{fam}.{keys[0]}", f"is required for family {fam} (give one of {', '.join(keys)})")
            if len(given) > 1:
                raise fail(f"families.{fam}.{given[1]}", f"give only one of {', '.join(given)}")

    space = SearchSpace(
        name=name,
        fixed=fixed,
        knobs=knobs,
        families=tuple(families),
        family_knobs=family_knobs,
        max_params=limits.get("max_params"),
        max_flops=limits.get("max_flops"),
        description=description,
        source=source,
    )
    try:
        from squeezelstm.trainers import Config

        # every key and type of the trainer config, checked once on the space's first point
        Config.from_dict(space.sample(_ScriptedSuggester([])).config)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"space {source}: {exc}") from None
    return space


def _check_family_value(family: str, key: str, spec: Any, fail: Callable[[str], ValueError]) -> None:
    """Type and range checks of one family argument's values (every choice, or a range's ends)."""
    if isinstance(spec, Choice):
        values = spec.choices
    elif isinstance(spec, (IntRange, FloatRange)):
        values = (spec.low, spec.high)
    else:
        values = (spec,)
    for v in values:
        if key == "routing":
            from squeezelstm.spaces.routed import ROUTINGS

            if v not in ROUTINGS:
                raise fail(f"routing must be one of {', '.join(ROUTINGS)}, got {v!r}")
        elif key in ("rank", "groups", "num_cells", "gate_hidden"):
            if not _is_int(v) or v < 1:
                raise fail(f"must be positive integers, got {v!r}")
            if isinstance(spec, FloatRange):
                raise fail("must be an int range or a choice of ints, not a float range")
        elif key == "share":
            if not _is_number(v) or not 0.0 <= v <= 1.0:
                raise fail(f"share must be in [0, 1], got {v!r}")
        elif key.endswith("_fraction"):
            if not _is_number(v) or v <= 0:
                raise fail(f"a fraction of hidden_size must be > 0, got {v!r}")


def shipped_spaces() -> list[str]:
    """Names of the spaces that ship with the package (``default``, ``ptb``, ...)."""
    folder = resources.files("squeezelstm.search") / "space_files"
    return sorted(Path(p.name).stem for p in folder.iterdir() if p.name.endswith((".yaml", ".yml", ".toml")))


def read_space_file(path: str | Path) -> dict:
    """Raw dict of a YAML or TOML space file; ValueError with the path for unreadable content."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"space {path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {first}") from None
    if data is None:
        raise ValueError(f"space {path}: file is empty")
    return data


def load_space(name_or_path: str | Path, overrides: Mapping[str, Any] | list[str] | None = None) -> SearchSpace:
    """Load a shipped space by name (``default``, ``ptb``, ``warandpeace``) or a space file by path.

    ``overrides`` sets dotted keys afterwards (see ``SearchSpace.with_overrides``). A missing file
    is a FileNotFoundError naming it; a broken one a one-line ValueError naming the key.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        space = parse_space(read_space_file(path), source=str(path))
    elif path.suffix or "/" in text or "\\" in text:
        raise FileNotFoundError(f"space file not found: {text}")
    else:
        folder = resources.files("squeezelstm.search") / "space_files"
        for suffix in (".yaml", ".yml", ".toml"):
            entry = folder / f"{text}{suffix}"
            if entry.is_file():
                with resources.as_file(entry) as real:
                    space = parse_space(read_space_file(real), source=f"{text} (shipped)")
                break
        else:
            raise FileNotFoundError(
                f"no space file or shipped space named {text!r} (shipped: {', '.join(shipped_spaces())})"
            )
    return space.with_overrides(overrides)


def model_cost(config: dict, vocab_size: int) -> tuple[int, int]:
    """Exact ``(params, flops)`` of the trainer model a config dict builds, via the trainer's counters."""
    from squeezelstm.trainers import Config, count_model_flops, count_model_parameters

    cfg = Config.from_dict(config)
    return int(count_model_parameters(cfg, vocab_size)), int(count_model_flops(cfg, vocab_size))


__all__ = [
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
