"""The space-file format: reading YAML/TOML files and shipped spaces, the schema checks, overrides.

``check_space`` turns a space-file dict into the fields of a ``space.SearchSpace`` and raises a
one-line ValueError naming the key for anything wrong; ``locate_space`` finds a file by path or a
shipped space by name; ``apply_overrides`` sets dotted keys. ``space.parse_space`` and
``space.load_space`` put these together. Core: no Optuna, no torch.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from squeezelstm.spaces.families import FAMILY_ARG_NAMES, FAMILY_NAMES, FAMILY_TABLE

from ._distributions import Choice, Dist, FloatRange, IntRange, is_int, is_number, parse_dist

SECTIONS = ("data", "model", "train")
TOP_KEYS = ("name", "description", "size", "budget") + SECTIONS + ("families",)
BUDGET_KEYS = ("max_params", "max_flops")
# the size objectives a space may choose (``search.pareto.SIZES`` maps them to the records; a test keeps
# the two in step, since ``space`` imports no other search package)
SIZE_NAMES = ("total", "recurrent", "flops")
KNOWN_FAMILIES = FAMILY_NAMES
# family -> the argument names a space file may give for it (absolute or as a fraction of hidden_size)
FAMILY_KEYS: dict[str, tuple[str, ...]] = {
    f.name: tuple(key for arg in f.args for key in arg.space_keys) + f.schedule_keys for f in FAMILY_TABLE.values()
}
# family -> its trainer argument and the space keys that set it (exactly one of them is required)
FAMILY_REQUIRED: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    f.name: tuple((arg.name, arg.space_keys) for arg in f.args) for f in FAMILY_TABLE.values()
}


def check_space(raw: Any, source: str = "<dict>") -> dict[str, Any]:
    """The ``SearchSpace`` fields of a space-file dict: every key checked, ValueError naming the key for anything wrong.

    Checks the file's own schema (keys, distributions, families and their arguments, the budget);
    the trainer config a sampled point builds is checked by ``space.parse_space``.
    """

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
    size = raw.get("size", "total")
    if size not in SIZE_NAMES:
        raise fail("size", f"unknown size objective {size!r} (allowed: {', '.join(SIZE_NAMES)})")

    budget = raw.get("budget") or {}
    if not isinstance(budget, Mapping):
        raise fail("budget", f"must be a mapping, got {budget!r}")
    limits: dict[str, int | None] = {}
    for key, value in budget.items():
        if key not in BUDGET_KEYS:
            raise fail(f"budget.{key}", f"unknown key (allowed: {', '.join(BUDGET_KEYS)})")
        if value is not None and (not is_number(value) or value <= 0 or int(value) != value):
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
            if not is_int(v) or v < 1:
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

    return {
        "name": name,
        "fixed": fixed,
        "knobs": knobs,
        "families": tuple(families),
        "family_knobs": family_knobs,
        "max_params": limits.get("max_params"),
        "max_flops": limits.get("max_flops"),
        "description": description,
        "size": size,
        "source": source,
    }


def _check_family_value(family: str, key: str, spec: Any, fail: Callable[[str], ValueError]) -> None:
    """Type and range checks of one family argument's values (every choice, or a range's ends)."""
    if isinstance(spec, Choice):
        values = spec.choices
    elif isinstance(spec, (IntRange, FloatRange)):
        values = (spec.low, spec.high)
    else:
        values = (spec,)
    arg = next((a for a in FAMILY_TABLE[family].args if key == a.name), None)
    for v in values:
        if arg is not None and arg.kind == "choice":
            if v not in arg.choices:
                raise fail(f"{key} must be one of {', '.join(arg.choices)}, got {v!r}")
        elif arg is not None and arg.kind == "int":
            if not is_int(v) or v < 1:
                raise fail(f"must be positive integers, got {v!r}")
            if isinstance(spec, FloatRange):
                raise fail("must be an int range or a choice of ints, not a float range")
        elif arg is not None and arg.kind == "float":
            if not is_number(v) or not arg.low <= v <= arg.high:
                raise fail(f"{key} must be in [{arg.low}, {arg.high}], got {v!r}")
        elif key == "prune_sparsity":
            if not is_number(v) or not 0.0 <= v < 1.0:
                raise fail(f"prune_sparsity must be in [0, 1), got {v!r}")
        elif key in ("grow_phases", "prune_phases"):
            if not is_int(v) or v < 0 or isinstance(spec, FloatRange):
                raise fail(f"{key} must be integers >= 0, got {v!r}")
        elif key.endswith("_fraction"):
            if not is_number(v) or v <= 0:
                raise fail(f"a fraction of hidden_size must be > 0, got {v!r}")


def shipped_spaces() -> list[str]:
    """Names of the spaces that ship with the package (``default``, ``ptb``, ...)."""
    folder = resources.files("squeezelstm.search.space") / "files"
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


def locate_space(name_or_path: str | Path) -> tuple[dict, str]:
    """The raw dict and a source label of a shipped space (by name) or a space file (by path).

    A missing file is a FileNotFoundError naming it; unreadable content a one-line ValueError.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_file():
        return read_space_file(path), str(path)
    if path.suffix or "/" in text or "\\" in text:
        raise FileNotFoundError(f"space file not found: {text}")
    folder = resources.files("squeezelstm.search.space") / "files"
    for suffix in (".yaml", ".yml", ".toml"):
        entry = folder / f"{text}{suffix}"
        if entry.is_file():
            with resources.as_file(entry) as real:
                return read_space_file(real), f"{text} (shipped)"
    raise FileNotFoundError(f"no space file or shipped space named {text!r} (shipped: {', '.join(shipped_spaces())})")


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any] | list[str]) -> dict:
    """A copy of a space-file dict with dotted keys set: ``section.key`` (data/model/train/budget) or
    ``families.<family>.<key>``; ValueError for any other key."""
    raw = copy.deepcopy(dict(raw))
    for key, value in override_items(overrides):
        parts = key.split(".")
        if parts[0] == "budget" and len(parts) == 2:
            raw.setdefault("budget", {})[parts[1]] = value
        elif parts[0] in SECTIONS and len(parts) == 2:
            raw.setdefault(parts[0], {})[parts[1]] = value
        elif parts[0] == "families" and len(parts) == 3:
            raw.setdefault("families", {}).setdefault(parts[1], {})[parts[2]] = value
        else:
            raise ValueError(f"cannot override {key!r}: use section.key (data/model/train/budget) or families.<family>.<key>")
    return raw


def override_items(overrides: Mapping[str, Any] | list[str]) -> list[tuple[str, Any]]:
    """``(dotted key, value)`` pairs of overrides given as a mapping or as ``key=value`` strings (values read as YAML)."""
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


__all__ = ["BUDGET_KEYS", "FAMILY_ARG_NAMES", "FAMILY_KEYS", "FAMILY_REQUIRED", "KNOWN_FAMILIES", "SECTIONS", "SIZE_NAMES", "TOP_KEYS",
           "apply_overrides", "check_space", "locate_space", "override_items", "read_space_file", "shipped_spaces"]
