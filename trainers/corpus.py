"""``load_corpus(data_config) -> Corpus``: every corpus as three id streams, cached per process."""

from __future__ import annotations

import json
import math
import pathlib
from dataclasses import asdict, dataclass

import torch

from . import synthetic
from .config import DataConfig
from .text import (EOS, UNK, build_vocab, char_tokens, encode, read_text, split_files, whitespace_tokens,
                   word_tokens)


@dataclass(frozen=True)
class Corpus:
    """Token id streams (1-D LongTensors) with the vocabulary and reference perplexities.

    ``unigram_ppl`` is the perplexity of the training split's own unigram distribution (what a
    context-free model reaches); ``entropy_rate`` (nats) and ``optimal_ppl = exp(entropy_rate)``
    are the source's exact optimum for the synthetic corpus and None for real text.
    """

    name: str
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocab: tuple[str, ...]
    entropy_rate: float | None = None
    optimal_ppl: float | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def unigram_ppl(self) -> float:
        counts = torch.bincount(self.train, minlength=self.vocab_size).double()
        p = counts[counts > 0] / counts.sum()
        return float(torch.exp(-(p * p.log()).sum()))

    def summary(self) -> str:
        s = (f"{self.name}: vocab {self.vocab_size}, tokens train {len(self.train)} / valid {len(self.valid)}"
             f" / test {len(self.test)}, unigram ppl {self.unigram_ppl:.1f}")
        if self.optimal_ppl is not None:
            s += f", optimal ppl {self.optimal_ppl:.2f}"
        return s


_CACHE: dict[str, Corpus] = {}


def load_corpus(data: DataConfig) -> Corpus:
    """Generate or read the corpus that ``data`` describes (cached per process by config and file stamps).

    A missing file or directory -> FileNotFoundError naming the path; an empty file -> ValueError.
    """
    if not isinstance(data, DataConfig):
        raise TypeError(f"load_corpus expects a DataConfig, got {type(data).__name__}")
    key = _cache_key(data)
    if key not in _CACHE:
        if len(_CACHE) >= 8:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = _synthetic(data) if data.corpus == "synthetic" else _text(data)
    return _CACHE[key]


def _cache_key(data: DataConfig) -> str:
    relevant = asdict(data)
    stamp = None
    if data.corpus != "synthetic" and data.path:
        p = pathlib.Path(data.path).expanduser()
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        stamp = [(str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.is_file()]
    return json.dumps([relevant, stamp], sort_keys=True, default=str)


def _synthetic(data: DataConfig) -> Corpus:
    source = synthetic.make_source(data.vocab_size, data.zipf_exponent, data.mix, seed=data.seed)
    n_train, n_valid = data.train_tokens, data.valid_tokens
    total = n_train + n_valid + data.test_tokens
    # A separate stream seed so that the chain and its samples are independent draws.
    ids = torch.from_numpy(synthetic.sample(source, total, seed=data.seed + 1_000_003))
    vocab = tuple(f"w{i}" for i in range(data.vocab_size))
    return Corpus(f"synthetic-v{data.vocab_size}-s{data.seed}", ids[:n_train].clone(),
                  ids[n_train:n_train + n_valid].clone(), ids[n_train + n_valid:].clone(), vocab,
                  source.entropy_rate, source.optimal_ppl)


def _text(data: DataConfig) -> Corpus:
    files = split_files(data.corpus, data.path)
    if data.corpus in ("ptb", "wikitext2"):
        tokenize = whitespace_tokens
        cap = 0
    else:
        level = char_tokens if data.level == "char" else word_tokens
        tokenize = lambda text: level(text, data.lowercase)  # noqa: E731
        cap = data.vocab_cap
    if files is None:
        path = pathlib.Path(data.path).expanduser()
        tokens = tokenize(read_text(path))
        n = len(tokens)
        n_test = max(1, int(n * data.test_fraction))
        n_valid = max(1, int(n * data.valid_fraction))
        if n - n_valid - n_test < 2:
            raise ValueError(f"corpus file {path} is too short to split ({n} tokens)")
        splits = [tokens[: n - n_valid - n_test], tokens[n - n_valid - n_test: n - n_test], tokens[n - n_test:]]
        name = path.stem
    else:
        splits = [tokenize(read_text(f)) for f in files]
        name = f"{data.corpus}:{pathlib.Path(data.path).name}"
    for f, toks in zip(files or (data.path,) * 3, splits):
        if len(toks) < 2:
            raise ValueError(f"corpus split {f} has fewer than 2 tokens")
    if data.max_train_tokens:
        # before the vocabulary: a word seen only past the cap is <unk>, as for a model trained on less text
        splits[0] = splits[0][: data.max_train_tokens]
        name += f"[:{data.max_train_tokens}]"
    vocab = build_vocab(splits[0], cap)
    known = set(vocab)
    if UNK not in known and any(t not in known for t in splits[1] + splits[2]):
        vocab.append(UNK)
    if EOS not in known and EOS not in vocab:
        vocab.append(EOS)
    index = {t: i for i, t in enumerate(vocab)}
    tensors = [torch.tensor(encode(s, index), dtype=torch.long) for s in splits]
    return Corpus(name, *tensors, tuple(vocab))


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Lay a stream out as ``batch_size`` contiguous columns: (T, batch_size), the remainder dropped."""
    n = ids.numel() // batch_size
    if n < 2:
        raise ValueError(f"a stream of {ids.numel()} tokens is too short for batch_size={batch_size}")
    return ids[: n * batch_size].view(batch_size, n).t().contiguous()


def entropy_to_ppl(nats: float) -> float:
    """``exp(nats)``, inf on overflow."""
    try:
        return math.exp(nats)
    except OverflowError:
        return math.inf


__all__ = ["Corpus", "load_corpus", "batchify", "entropy_to_ppl"]
