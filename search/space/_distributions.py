"""Distributions a space file declares, and the small ``Suggester`` protocol that samples them.

``Choice``, ``IntRange`` and ``FloatRange`` mirror Optuna's categorical, int and float
distributions, so an ``optuna.Trial`` samples them as it is; ``RandomSuggester`` samples them from
an explicit seeded ``numpy.random.Generator`` (tests, replays) without Optuna. No Optuna import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Suggester(Protocol):
    """What a space needs to sample a config; ``optuna.Trial`` satisfies it as it is."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...


class RandomSuggester:
    """Independent uniform (or log-uniform) draws from an explicit seeded ``numpy.random.Generator``."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.params: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        value = choices[int(self.rng.integers(len(choices)))]
        self.params[name] = value
        return value

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        if log:
            value = int(math.floor(math.exp(self.rng.uniform(math.log(low), math.log(high + 1)))))
            value = min(max(value, low), high)
        else:
            value = low + step * int(self.rng.integers((high - low) // step + 1))
        self.params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        if log:
            value = float(math.exp(self.rng.uniform(math.log(low), math.log(high))))
        else:
            value = float(self.rng.uniform(low, high))
        value = min(max(value, low), high)
        self.params[name] = value
        return value


class LocalSuggester(RandomSuggester):
    """Draws near a known configuration ``base`` (Optuna names -> values): a mutation for local search.

    Each parameter keeps its ``base`` value except with probability ``p_change`` (a parameter
    ``base`` lacks, such as an argument of a family the mutation switched to, is drawn uniformly).
    A changed number moves by a normal step of ``scale`` times its (log-)range, clipped and put back
    on its grid; a changed choice becomes another of its values. ``p_change`` defaults to two
    parameters' worth of ``base``, and one parameter of ``base``, drawn at construction, always
    changes, so a mutation is never ``base`` itself by construction.
    """

    def __init__(self, base: Mapping[str, Any], seed: int = 0, *, p_change: float | None = None,
                 scale: float = 0.15) -> None:
        super().__init__(seed)
        self.base = dict(base)
        self.p_change = min(1.0, 2.0 / max(len(self.base), 1)) if p_change is None else float(p_change)
        self.scale = float(scale)
        names = sorted(self.base)
        self._forced = names[int(self.rng.integers(len(names)))] if names else None

    def _keep(self, name: str) -> bool:
        return name in self.base and name != self._forced and self.rng.random() >= self.p_change

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        choices = list(choices)
        known = name in self.base and self.base[name] in choices
        if known and (self._keep(name) or len(choices) == 1):
            value = self.base[name]
        elif known:
            others = [c for c in choices if c != self.base[name]]
            value = others[int(self.rng.integers(len(others)))]
        else:
            value = choices[int(self.rng.integers(len(choices)))]
        self.params[name] = value
        return value

    def _step(self, name: str, low: float, high: float, log: bool) -> float | None:
        """A normal step from ``base[name]`` in the (log-)scaled range, or None to draw uniformly."""
        if name not in self.base or not isinstance(self.base[name], (int, float)):
            return None
        if log:
            lo, hi, v = math.log(low), math.log(high), math.log(max(float(self.base[name]), low))
        else:
            lo, hi, v = float(low), float(high), float(self.base[name])
        v = min(max(v + self.rng.normal(0.0, self.scale) * (hi - lo), lo), hi)
        return math.exp(v) if log else v

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        if name in self.base and self._keep(name) and low <= int(self.base[name]) <= high:
            value = int(self.base[name])
        else:
            moved = self._step(name, low, high + (1 if log else 0), log)
            if moved is None:
                return super().suggest_int(name, low, high, step=step, log=log)
            top = low + (high - low) // step * step
            value = min(max(low + step * int(round((moved - low) / step)), low), top)
            if value == self.base[name] and top > low:  # the step rounded back: move one grid point
                value = value + step if value == low or (value < top and self.rng.random() < 0.5) else value - step
        self.params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        if name in self.base and self._keep(name) and low <= float(self.base[name]) <= high:
            value = float(self.base[name])
        else:
            moved = self._step(name, low, high, log)
            if moved is None:
                return super().suggest_float(name, low, high, log=log)
            value = min(max(float(moved), low), high)
            for _ in range(8):  # clipped onto the base at a bound: step again
                if value != self.base[name] or high <= low:
                    break
                value = min(max(float(self._step(name, low, high, log)), low), high)
        self.params[name] = value
        return value


@dataclass(frozen=True)
class Choice:
    """One of a fixed tuple of scalar values."""

    choices: tuple

    def sample(self, suggester: Suggester, name: str) -> Any:
        return suggester.suggest_categorical(name, list(self.choices))

    def candidates(self) -> tuple:
        numeric = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in self.choices)
        if numeric and len(self.choices) > 4:
            return (min(self.choices), max(self.choices))
        return self.choices


@dataclass(frozen=True)
class IntRange:
    """An int in ``[low, high]`` on a grid of ``step`` (or log-uniform, step 1)."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def sample(self, suggester: Suggester, name: str) -> int:
        return int(suggester.suggest_int(name, self.low, self.high, step=self.step, log=self.log))

    def candidates(self) -> tuple:
        top = self.low + (self.high - self.low) // self.step * self.step
        return (self.low, top) if top != self.low else (self.low,)


@dataclass(frozen=True)
class FloatRange:
    """A float in ``[low, high]``, uniform or log-uniform."""

    low: float
    high: float
    log: bool = False

    def sample(self, suggester: Suggester, name: str) -> float:
        return float(suggester.suggest_float(name, self.low, self.high, log=self.log))

    def candidates(self) -> tuple:
        return (self.low, self.high) if self.high != self.low else (self.low,)


Dist = Choice | IntRange | FloatRange


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int and not a bool (YAML's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """Whether ``value`` is an int or a float and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_dist(raw: Any, key: str) -> Dist | None:
    """Return the distribution a space-file leaf declares, or None if it is a fixed value.

    ValueError naming ``key`` for a malformed distribution (empty choices, min > max, a log range
    that reaches 0, wrong types, unknown fields).
    """
    if not isinstance(raw, Mapping) or not ({"choice", "int", "float"} & set(raw)):
        return None
    kinds = [k for k in ("choice", "int", "float") if k in raw]
    if len(kinds) > 1:
        raise ValueError(f"{key}: give one of choice/int/float, got {sorted(raw)}")
    kind = kinds[0]
    allowed = {"choice": {"choice"}, "int": {"int", "step", "log"}, "float": {"float", "log"}}[kind]
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ValueError(f"{key}: unknown field {extra[0]!r} in a {kind} distribution (allowed: {', '.join(sorted(allowed))})")
    if kind == "choice":
        choices = raw["choice"]
        if not isinstance(choices, (list, tuple)) or not choices:
            raise ValueError(f"{key}: choice must be a non-empty list, got {choices!r}")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise ValueError(f"{key}: choices must be scalars (bool, int, float, str), got {c!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError(f"{key}: choice has repeated values {list(choices)!r}")
        return Choice(tuple(choices))
    bounds = raw[kind]
    if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
        raise ValueError(f"{key}: {kind} must be a [low, high] pair, got {bounds!r}")
    low, high = bounds
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{key}: log must be true or false, got {log!r}")
    if kind == "int":
        if not (is_int(low) and is_int(high)):
            raise ValueError(f"{key}: int range bounds must be integers, got {list(bounds)!r}")
        step = raw.get("step", 1)
        if not is_int(step) or step < 1:
            raise ValueError(f"{key}: step must be a positive integer, got step={step!r}")
        if log and step != 1:
            raise ValueError(f"{key}: a log int range cannot have step={step} (use step 1)")
        if (high - low) % step:
            raise ValueError(f"{key}: high - low must be a multiple of step={step}, got {list(bounds)!r}")
        dist: Dist = IntRange(int(low), int(high), int(step), log)
    else:
        if not (is_number(low) and is_number(high)):
            raise ValueError(f"{key}: float range bounds must be numbers, got {list(bounds)!r}")
        dist = FloatRange(float(low), float(high), log)
    if dist.low > dist.high:
        raise ValueError(f"{key}: min > max in {kind} range {list(bounds)!r}")
    if log and dist.low <= 0:
        raise ValueError(f"{key}: a log range needs low > 0, got {list(bounds)!r}")
    return dist


def dist_to_dict(dist: Dist) -> dict:
    """Space-file form of a distribution."""
    if isinstance(dist, Choice):
        return {"choice": list(dist.choices)}
    if isinstance(dist, IntRange):
        out: dict[str, Any] = {"int": [dist.low, dist.high]}
        if dist.step != 1:
            out["step"] = dist.step
    else:
        out = {"float": [dist.low, dist.high]}
    if dist.log:
        out["log"] = True
    return out


__all__ = ["Choice", "Dist", "FloatRange", "IntRange", "LocalSuggester", "RandomSuggester", "Suggester", "dist_to_dict", "is_int", "is_number",
           "parse_dist"]
