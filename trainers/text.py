"""Reading text corpora: PTB and WikiText-2 format directories, and raw text (word or character level).

PTB / WikiText-2 follow the standard word-level setup (Zaremba et al. 2014; the PyTorch word
language model): whitespace tokens, ``<eos>`` appended to every line, vocabulary from the training
split with no cap. Raw text is tokenised into words (letters/digits with inner apostrophes) and
single punctuation marks, ``<eos>`` at the end of each non-empty line, the vocabulary capped to
the most frequent ``vocab_cap`` training tokens (the rest become ``<unk>``); one file is split
contiguously into train/valid/test. Character level keeps every character of each non-empty
line, with ``<eos>`` for the line break.
"""

from __future__ import annotations

import collections
import pathlib
import re

EOS, UNK = "<eos>", "<unk>"
WORD_RE = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]")

# For each directory format, the file names of (train, valid, test), tried in order.
LAYOUTS = {
    "ptb": [("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"), ("train.txt", "valid.txt", "test.txt")],
    "wikitext2": [("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"), ("train.txt", "valid.txt", "test.txt")],
    "text": [("train.txt", "valid.txt", "test.txt")],
}


def read_text(path: pathlib.Path) -> str:
    """The file's text; a missing file -> FileNotFoundError, an empty one -> ValueError, both naming the path."""
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise ValueError(f"corpus file is empty: {path}")
    return text


def split_files(corpus: str, path: str) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path] | None:
    """The (train, valid, test) files of a corpus directory, or None when ``path`` is one file (raw text only)."""
    p = pathlib.Path(path).expanduser()
    if corpus == "text" and p.is_file():
        return None
    if not p.exists():
        raise FileNotFoundError(f"corpus path not found: {p}")
    if not p.is_dir():
        raise ValueError(f"data.path for corpus {corpus!r} must be a directory, got file {p}")
    for names in LAYOUTS[corpus]:
        files = tuple(p / n for n in names)
        if any(f.exists() for f in files):
            for f in files:
                if not f.is_file():
                    raise FileNotFoundError(f"corpus file not found: {f}")
            return files  # type: ignore[return-value]
    wanted = " or ".join("/".join(names) for names in LAYOUTS[corpus])
    raise FileNotFoundError(f"no {corpus} files ({wanted}) in {p}")


def whitespace_tokens(text: str) -> list[str]:
    """PTB-style tokens: split on whitespace, ``<eos>`` after every line (blank lines included)."""
    out: list[str] = []
    for line in text.splitlines():
        out.extend(line.split())
        out.append(EOS)
    return out


def word_tokens(text: str, lowercase: bool = False) -> list[str]:
    """Raw-text word tokens: words and punctuation marks, ``<eos>`` after each non-empty line."""
    out: list[str] = []
    for line in text.splitlines():
        if lowercase:
            line = line.lower()
        words = WORD_RE.findall(line)
        if words:
            out.extend(words)
            out.append(EOS)
    return out


def char_tokens(text: str, lowercase: bool = False) -> list[str]:
    """Character tokens of each non-empty line (stripped), ``<eos>`` for the line break."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if lowercase:
            line = line.lower()
        if line:
            out.extend(line)
            out.append(EOS)
    return out


def build_vocab(tokens: list[str], cap: int = 0) -> list[str]:
    """Tokens by falling training frequency (ties by first appearance), capped to ``cap`` entries including ``<unk>``."""
    counts = collections.Counter(tokens)
    order = sorted(counts, key=lambda t: -counts[t])  # stable: ties keep first-seen order
    if cap and len(order) > cap:
        order = [t for t in order if t != UNK][: cap - 1] + [UNK]
    return order


def encode(tokens: list[str], index: dict[str, int]) -> list[int]:
    """Token ids; tokens outside ``index`` map to ``<unk>`` (which must be in it)."""
    unk = index.get(UNK)
    if unk is None:
        return [index[t] for t in tokens]
    return [index.get(t, unk) for t in tokens]
