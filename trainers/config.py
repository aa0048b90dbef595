"""The one typed config of a training run: ``data``, ``model`` and ``train`` sections.

A ``Config`` is frozen and rebuilds a run exactly: it is stored in every checkpoint, written by
``export`` after a search, and loaded from YAML or TOML. ``from_dict`` checks every key and type
(an unknown key or a wrong type names the dotted key); ``validate`` adds the cross-field checks and
the cell family's own argument checks. Lists in files become tuples here so configs stay hashable.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from squeezelstm.spaces.families import FAMILY_ARG_NAMES, FAMILY_ARGS, FAMILY_NAMES, FAMILY_TABLE

from .toml_writer import to_toml

CORPORA = ("synthetic", "ptb", "wikitext2", "text")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "epoch", "plateau")
PRECISIONS = ("fp32", "bf16", "fp16")
LEVELS = ("word", "char")
# Family arguments (FAMILY_ARG_NAMES, from the family table) live directly in ``model``; each may be
# one value or one value per layer.
# Spellings of "no value" accepted for optional fields in overrides (``--set data.path=null``).
NULLS = ("null", "none", "~")

IntOrPerLayer = Union[int, tuple[int, ...], None]
FloatOrPerLayer = Union[float, tuple[float, ...], None]


def _check(ok: bool, key: str, value: Any, want: str) -> None:
    if not ok:
        raise ValueError(f"{key} must be {want}, got {key}={value!r}")



@functools.lru_cache(maxsize=None)
def _type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints`` of a config section, once per class (it re-evaluates every annotation on each call)."""
    return typing.get_type_hints(cls)


@dataclass(frozen=True)
class DataConfig:
    """Which corpus to train on and how to read or generate it."""

    corpus: str = "synthetic"
    path: str | None = None
    # Synthetic corpus (an order-1 Markov chain with Zipf-like rows; see ``synthetic.py``).
    vocab_size: int = 200
    train_tokens: int = 60_000
    valid_tokens: int = 10_000
    test_tokens: int = 10_000
    zipf_exponent: float = 1.1
    mix: float = 0.3
    seed: int = 0
    # Raw text corpora.
    level: str = "word"
    vocab_cap: int = 10_000
    lowercase: bool = False
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    # Text corpora: train on the first ``max_train_tokens`` training tokens only (0 = all); the
    # vocabulary is built from those, valid/test stay whole. Makes a big book affordable on a CPU.
    max_train_tokens: int = 0

    def __post_init__(self) -> None:
        _check(self.corpus in CORPORA, "data.corpus", self.corpus, f"one of {CORPORA}")
        _check(self.vocab_size >= 2, "data.vocab_size", self.vocab_size, ">= 2")
        for name in ("train_tokens", "valid_tokens", "test_tokens"):
            v = getattr(self, name)
            _check(v >= 2, f"data.{name}", v, ">= 2")
        _check(self.zipf_exponent > 0, "data.zipf_exponent", self.zipf_exponent, "> 0")
        _check(0.0 <= self.mix <= 1.0, "data.mix", self.mix, "in [0, 1]")
        _check(self.level in LEVELS, "data.level", self.level, f"one of {LEVELS}")
        _check(self.vocab_cap >= 0, "data.vocab_cap", self.vocab_cap, ">= 0 (0 = no cap)")
        _check(self.max_train_tokens == 0 or self.max_train_tokens >= 2, "data.max_train_tokens",
               self.max_train_tokens, "0 (all) or >= 2")
        _check(self.max_train_tokens == 0 or self.corpus != "synthetic", "data.max_train_tokens",
               self.max_train_tokens, "0 for data.corpus='synthetic' (use data.train_tokens)")
        for name in ("valid_fraction", "test_fraction"):
            v = getattr(self, name)
            _check(0.0 < v < 0.5, f"data.{name}", v, "in (0, 0.5)")


@dataclass(frozen=True)
class ModelConfig:
    """The language model: embedding, a stack of one cell family, dropout and decoder.

    Family arguments may be one value or a list with one value per layer (``groups: [4, 2]``).
    ``embedding_size`` None means ``hidden_size``. ``dropout`` applies to the embedding output,
    between layers and before the decoder (Zaremba et al. 2014); ``locked_dropout`` reuses one mask
    over all time steps of a window (variational dropout, Gal & Ghahramani 2016).
    ``embedding_dropout`` drops whole words (embedding rows) and ``weight_drop`` applies DropConnect
    to the recurrent weights, one mask per window (AWD-LSTM; ``regularisers.py``, ``weight_drop.py``).
    ``tie_weights`` shares the embedding with the decoder; when ``embedding_size`` differs from
    ``hidden_size`` a bias-free projection (hidden -> embedding width) feeds the tied decoder.
    """

    cell: str = FAMILY_NAMES[0]  # the reference LSTM
    hidden_size: int = 128
    num_layers: int = 2
    embedding_size: int | None = None
    bias: bool = True
    dropout: float = 0.0
    locked_dropout: bool = False
    embedding_dropout: float = 0.0
    weight_drop: float = 0.0
    tie_weights: bool = False
    # Use torch.nn.LSTM (fused kernels, same maths and parameter count) for the plain LSTM.
    fast_lstm: bool = True
    rank: IntOrPerLayer = None
    groups: IntOrPerLayer = None
    num_cells: IntOrPerLayer = None
    routing: str | None = None
    share: FloatOrPerLayer = None
    gate_hidden: IntOrPerLayer = None

    def __post_init__(self) -> None:
        _check(bool(self.cell), "model.cell", self.cell, "a family name")
        _check(self.hidden_size >= 1, "model.hidden_size", self.hidden_size, ">= 1")
        _check(self.num_layers >= 1, "model.num_layers", self.num_layers, ">= 1")
        if self.embedding_size is not None:
            _check(self.embedding_size >= 1, "model.embedding_size", self.embedding_size, ">= 1 or null")
        for name in ("dropout", "embedding_dropout", "weight_drop"):
            v = getattr(self, name)
            _check(0.0 <= v < 1.0, f"model.{name}", v, "in [0, 1)")

    @property
    def input_size(self) -> int:
        """Embedding width (``embedding_size`` or ``hidden_size``)."""
        return self.embedding_size if self.embedding_size is not None else self.hidden_size

    def family_args(self) -> dict[str, Any]:
        """The family arguments that are set (not None), as given (scalars or per-layer tuples)."""
        return {k: getattr(self, k) for k in FAMILY_ARG_NAMES if getattr(self, k) is not None}

    def layer_family_args(self, layer: int) -> dict[str, Any]:
        """The family arguments of layer ``layer`` (per-layer tuples resolved to that layer's value)."""
        return {k: (v[layer] if isinstance(v, tuple) else v) for k, v in self.family_args().items()}


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: truncated BPTT, optimizer, schedule, device and grow-and-prune phases.

    Schedules: ``epoch`` multiplies the lr by ``lr_decay`` after every epoch past ``decay_start``
    (Zaremba et al.); ``plateau`` multiplies it when valid perplexity does not improve (the PyTorch
    word-LM example); ``none`` keeps it. ``grow_epochs``/``prune_epochs`` (1-based) run H-LSTM
    grow and prune phases after those epochs; pruning ramps to ``prune_sparsity`` over the prune
    phases. ``ar_alpha``/``tar_beta`` add AWD-LSTM's activation and temporal activation penalties to
    the training loss; ``asgd`` switches SGD to averaged SGD once validation stalls for
    ``asgd_nonmono`` epochs (NT-ASGD, ``asgd.py``). ``threads`` 0 picks a sensible CPU thread count; ``eval_batch_size`` 0 means
    ``max(batch_size, 64)``.
    """

    epochs: int = 4
    batch_size: int = 20
    eval_batch_size: int = 0
    bptt: int = 20
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip: float = 0.25
    schedule: str = "plateau"
    lr_decay: float = 0.5
    decay_start: int = 0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    threads: int = 0
    log_interval: int = 200
    grow_epochs: tuple[int, ...] = ()
    prune_epochs: tuple[int, ...] = ()
    prune_sparsity: float = 0.0
    ar_alpha: float = 0.0
    tar_beta: float = 0.0
    asgd: bool = False
    asgd_nonmono: int = 5

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "bptt", "log_interval"):
            v = getattr(self, name)
            _check(v >= 1, f"train.{name}", v, ">= 1")
        _check(self.eval_batch_size >= 0, "train.eval_batch_size", self.eval_batch_size, ">= 0")
        _check(self.optimizer in OPTIMIZERS, "train.optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        _check(math.isfinite(self.lr) and self.lr > 0, "train.lr", self.lr, "a finite number > 0")
        _check(self.momentum >= 0, "train.momentum", self.momentum, ">= 0")
        _check(self.weight_decay >= 0, "train.weight_decay", self.weight_decay, ">= 0")
        _check(self.clip >= 0, "train.clip", self.clip, ">= 0 (0 = no clipping)")
        _check(self.schedule in SCHEDULES, "train.schedule", self.schedule, f"one of {SCHEDULES}")
        _check(0 < self.lr_decay <= 1, "train.lr_decay", self.lr_decay, "in (0, 1]")
        _check(self.decay_start >= 0, "train.decay_start", self.decay_start, ">= 0")
        _check(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
               "train.device", self.device, "'auto', 'cpu' or 'cuda[:N]'")
        _check(self.precision in PRECISIONS, "train.precision", self.precision, f"one of {PRECISIONS}")
        _check(self.threads >= 0, "train.threads", self.threads, ">= 0 (0 = auto)")
        for name in ("grow_epochs", "prune_epochs"):
            for e in getattr(self, name):
                _check(e >= 1, f"train.{name}", getattr(self, name), "a list of epochs >= 1")
        _check(0.0 <= self.prune_sparsity < 1.0, "train.prune_sparsity", self.prune_sparsity, "in [0, 1)")
        for name in ("ar_alpha", "tar_beta"):
            v = getattr(self, name)
            _check(math.isfinite(v) and v >= 0, f"train.{name}", v, "a finite number >= 0")
        _check(self.asgd_nonmono >= 1, "train.asgd_nonmono", self.asgd_nonmono, ">= 1")
        _check(not self.asgd or self.optimizer == "sgd", "train.asgd", self.asgd,
               f"false unless train.optimizer='sgd' (NT-ASGD averages SGD; got train.optimizer={self.optimizer!r})")

    @property
    def resolved_eval_batch_size(self) -> int:
        return self.eval_batch_size or max(self.batch_size, 64)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


@dataclass(frozen=True)
class Config:
    """A whole run: ``Config(data=DataConfig(...), model=ModelConfig(...), train=TrainConfig(...))``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict (tuples as lists), safe for JSON, YAML and ``torch.load(weights_only=True)``."""
        return {name: {f.name: _plain(getattr(getattr(self, name), f.name)) for f in dataclasses.fields(cls)}
                for name, cls in SECTIONS.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a nested dict; missing keys take defaults, unknown keys or wrong types raise."""
        if not isinstance(data, dict):
            raise TypeError(f"config must be a mapping with sections {tuple(SECTIONS)}, got {type(data).__name__}")
        unknown = [k for k in data if k not in SECTIONS]
        if unknown:
            raise ValueError(f"unknown config section {unknown[0]!r} (known: {', '.join(SECTIONS)})")
        sections = {}
        for name, section_cls in SECTIONS.items():
            raw = data.get(name) or {}
            if not isinstance(raw, dict):
                raise TypeError(f"config section {name!r} must be a mapping, got {type(raw).__name__}")
            hints = _type_hints(section_cls)
            known = {f.name for f in dataclasses.fields(section_cls)}
            kwargs = {}
            for key, value in raw.items():
                if key not in known:
                    raise ValueError(f"unknown config key {name}.{key}")
                kwargs[key] = coerce(f"{name}.{key}", hints[key], value)
            sections[name] = section_cls(**kwargs)
        return cls(**sections)

    def fingerprint(self) -> str:
        """Canonical JSON of the config (used to tell checkpoints of different configs apart)."""
        return json.dumps(self.to_dict(), sort_keys=True)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce(key: str, tp: Any, value: Any) -> Any:
    """Check ``value`` against the field type ``tp`` and convert it (lists -> tuples, ints -> floats).

    Strings are parsed for numeric fields so that ``--set train.lr=1e-3`` works; anything else
    that does not fit raises TypeError naming the key, the expected type and the value.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if type(None) in options and (value is None or (isinstance(value, str) and value.strip().lower() in NULLS)):
            return None
        # Try scalars before tuples so that "4" becomes 4, not an error about lists.
        for option in sorted((o for o in options if o is not type(None)), key=lambda o: typing.get_origin(o) is tuple):
            try:
                return coerce(key, option, value)
            except (TypeError, ValueError):
                continue
        raise TypeError(f"{key} must be {_type_name(tp)}, got {key}={value!r}")
    if origin is tuple:
        (elem, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            value = _parse_scalar(value)
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{key} must be a list of {_type_name(elem)}, got {key}={value!r}")
        return tuple(coerce(f"{key}[{i}]", elem, v) for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise TypeError(f"{key} must be bool, got {key}={value!r}")
        return value
    if tp in (int, float):
        # text from an override is parsed; an int field takes a whole float (YAML's 1e3), a float field an int
        if isinstance(value, str):
            try:
                value = tp(value.strip())
            except ValueError:
                raise TypeError(f"{key} must be {tp.__name__}, got {key}={value!r}") from None
        if tp is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int if tp is int else (int, float)):
            raise TypeError(f"{key} must be {tp.__name__}, got {key}={value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"{key} must be str, got {key}={value!r}")
        return value
    raise TypeError(f"{key}: unsupported field type {_type_name(tp)}")  # pragma: no cover - config bug


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path: str | pathlib.Path) -> Config:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file.

    Missing file -> FileNotFoundError naming the path; unparsable or ill-typed content -> ValueError
    or TypeError naming the path or the key.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text)
        else:
            raise ValueError(f"config file {p} must end in .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"cannot parse config file {p}: {str(exc).splitlines()[0]}") from None
    if data is None:
        raise ValueError(f"config file {p} is empty")
    return Config.from_dict(data)


def save_config(config: Config, path: str | pathlib.Path, header_comment: str | None = None) -> None:
    """Write ``config`` as YAML or TOML (by extension) with an optional ``#`` comment header."""
    p = pathlib.Path(path)
    suffix = p.suffix.lower()
    header = "".join(f"# {line}\n" for line in header_comment.splitlines()) if header_comment else ""
    data = config.to_dict()
    if suffix == ".toml":
        body = to_toml(data)
    elif suffix in (".yaml", ".yml"):
        body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    else:
        raise ValueError(f"config file {p} must end in .yaml, .yml or .toml")
    p.write_text(header + body, encoding="utf-8")


def apply_overrides(config: Config, overrides: dict[str, Any] | list[str] | tuple[str, ...]) -> Config:
    """Return ``config`` with dotted-key overrides applied (``{"model.hidden_size": 128}`` or ``["model.hidden_size=128"]``).

    String values are parsed to the field's type (``"[4, 2]"`` -> ``(4, 2)``, ``"null"`` -> None).
    """
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = []
        for text in overrides:
            if not isinstance(text, str) or "=" not in text:
                raise ValueError(f"override must look like section.key=value, got {text!r}")
            key, value = text.split("=", 1)
            # Keep the text: ``coerce`` parses it to the field's type (so a str field keeps "123").
            items.append((key.strip(), value.strip()))
    data = config.to_dict()
    for key, value in items:
        parts = key.split(".")
        if len(parts) != 2 or parts[0] not in data:
            raise ValueError(f"override key must be section.key with section in {tuple(SECTIONS)}, got {key!r}")
        if parts[1] not in data[parts[0]]:
            raise ValueError(f"unknown config key {key}")
        data[parts[0]][parts[1]] = value
    return Config.from_dict(data)


def validate(config: Config) -> Config:
    """Cross-field and family checks beyond the per-section ones; returns ``config`` unchanged.

    Raises ValueError naming the key: a corpus that needs ``data.path`` without one, per-layer
    lists of the wrong length, family arguments the cell does not take or rejects.
    """
    from squeezelstm.spaces import validate_family_args

    d, m = config.data, config.model
    if d.corpus != "synthetic" and not d.path:
        raise ValueError(f"data.path is required for data.corpus={d.corpus!r}")
    if m.cell not in FAMILY_ARGS:
        raise ValueError(f"model.cell={m.cell!r} is not a known family (known: {', '.join(FAMILY_ARGS)})")
    takes = FAMILY_ARGS[m.cell]
    for key, value in m.family_args().items():
        if key not in takes:
            raise ValueError(f"model.{key}={_plain(value)!r} is not an argument of cell {m.cell!r} "
                             f"(it takes: {', '.join(takes) or 'none'})")
        if isinstance(value, tuple) and len(value) != m.num_layers:
            raise ValueError(f"model.{key}={list(value)!r} must have one value per layer "
                             f"(model.num_layers={m.num_layers})")
    for i in range(m.num_layers):
        in_size = m.input_size if i == 0 else m.hidden_size
        validate_family_args(m.cell, in_size, m.hidden_size, 1, **m.layer_family_args(i))
    t = config.train
    if (t.grow_epochs or t.prune_epochs) and not FAMILY_TABLE[m.cell].grows_and_prunes:
        prunable = " or ".join(repr(f.name) for f in FAMILY_TABLE.values() if f.grows_and_prunes)
        raise ValueError(f"train.grow_epochs/prune_epochs need model.cell={prunable}, got model.cell={m.cell!r}")
    return config
