"""Corpus loaders on files the tests write, and the synthetic source's exact entropy rate."""

import math

import numpy as np
import pytest
import torch

from squeezelstm.trainers import load_corpus
from squeezelstm.trainers.config import DataConfig
from squeezelstm.trainers.corpus import batchify
from squeezelstm.trainers.synthetic import make_source, sample, sequence_log_loss

LINES = ["the cat sat on the mat", "the dog sat", "a cat and a dog"]


def test_synthetic_entropy_matches_monte_carlo():
    source = make_source(50, zipf_exponent=1.1, mix=0.3, seed=3)
    tokens = sample(source, 200_000, seed=4)
    mc = sequence_log_loss(source, tokens)
    # Standard error of the mean log-loss is well under 0.01 nats at this length.
    assert mc == pytest.approx(source.entropy_rate, abs=0.02)
    assert np.allclose(source.transition.sum(1), 1.0)
    assert np.allclose(source.stationary @ source.transition, source.stationary, atol=1e-10)
    # Empirical unigram frequencies follow the stationary distribution.
    freq = np.bincount(tokens, minlength=50) / len(tokens)
    assert np.abs(freq - source.stationary).max() < 0.01


def test_synthetic_corpus_is_seeded_and_learnable():
    cfg = DataConfig(vocab_size=60, train_tokens=5000, valid_tokens=600, test_tokens=700, seed=7)
    a = load_corpus(cfg)
    b = load_corpus(DataConfig(vocab_size=60, train_tokens=5000, valid_tokens=600, test_tokens=700, seed=7))
    assert a is b  # cached per process
    assert (len(a.train), len(a.valid), len(a.test), a.vocab_size) == (5000, 600, 700, 60)
    assert a.optimal_ppl == pytest.approx(math.exp(a.entropy_rate))
    assert a.optimal_ppl < 0.8 * a.unigram_ppl
    c = load_corpus(DataConfig(vocab_size=60, train_tokens=5000, valid_tokens=600, test_tokens=700, seed=8))
    assert not torch.equal(a.train, c.train)
    default = load_corpus(DataConfig())
    assert default.optimal_ppl < 0.5 * default.unigram_ppl


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("corpus, names", [
    ("ptb", ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt")),
    ("wikitext2", ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens")),
    ("ptb", ("train.txt", "valid.txt", "test.txt")),
])
def test_ptb_and_wikitext_directories(tmp_path, corpus, names):
    _write(tmp_path / names[0], LINES)
    _write(tmp_path / names[1], ["the cat sat", "a zebra"])
    _write(tmp_path / names[2], ["the dog", ""])
    c = load_corpus(DataConfig(corpus=corpus, path=str(tmp_path)))
    vocab = list(c.vocab)
    assert vocab[0] == "<eos>" or vocab[0] == "the"
    assert len(c.train) == sum(len(line.split()) + 1 for line in LINES)
    # "zebra" never appears in train: it becomes <unk>.
    assert c.vocab[int(c.valid[-2])] == "<unk>"
    # A blank line still ends with <eos> (the standard PTB/WikiText reading).
    assert [c.vocab[int(i)] for i in c.test] == ["the", "dog", "<eos>", "<eos>"]
    assert c.entropy_rate is None and c.optimal_ppl is None


def test_raw_text_single_file_split_and_cap(tmp_path):
    text = tmp_path / "book.txt"
    rng = np.random.default_rng(0)
    words = [f"w{int(k)}" for k in rng.zipf(1.5, size=3000) % 200]
    _write(text, [" ".join(words[i:i + 10]) + "." for i in range(0, 3000, 10)])
    c = load_corpus(DataConfig(corpus="text", path=str(text), vocab_cap=50, valid_fraction=0.1, test_fraction=0.1))
    assert c.vocab_size == 50 and "<unk>" in c.vocab and "<eos>" in c.vocab and "." in c.vocab
    n = len(c.train) + len(c.valid) + len(c.test)
    assert n == 3000 + 300 + 300  # words, full stops, <eos>
    assert len(c.test) == int(n * 0.1) and len(c.valid) == int(n * 0.1)


def test_raw_text_word_tokens_and_char_level(tmp_path):
    _write(tmp_path / "train.txt", ["Hello, world! It's fine.", "", "hello again"])
    _write(tmp_path / "valid.txt", ["hello world"])
    _write(tmp_path / "test.txt", ["again?"])
    c = load_corpus(DataConfig(corpus="text", path=str(tmp_path), lowercase=True))
    words = [c.vocab[int(i)] for i in c.train]
    assert words == ["hello", ",", "world", "!", "it's", "fine", ".", "<eos>", "hello", "again", "<eos>"]
    ch = load_corpus(DataConfig(corpus="text", path=str(tmp_path), level="char"))
    chars = [ch.vocab[int(i)] for i in ch.valid]
    assert chars == list("hello world") + ["<eos>"]


def test_max_train_tokens_caps_training_text_and_its_vocabulary(tmp_path):
    _write(tmp_path / "train.txt", ["the cat sat", "the dog ran", "a zebra sang"])
    _write(tmp_path / "valid.txt", ["the zebra sat", "a cat"])
    _write(tmp_path / "test.txt", ["the dog"])
    full = load_corpus(DataConfig(corpus="text", path=str(tmp_path)))
    capped = load_corpus(DataConfig(corpus="text", path=str(tmp_path), max_train_tokens=6))
    assert len(full.train) == 12 and len(capped.train) == 6
    assert len(capped.valid) == len(full.valid)  # valid and test stay whole
    assert [capped.vocab[int(i)] for i in capped.train] == ["the", "cat", "sat", "<eos>", "the", "dog"]
    # the vocabulary comes from the capped text: words only seen later are <unk> in valid
    assert "zebra" in full.vocab and "zebra" not in capped.vocab
    assert [capped.vocab[int(i)] for i in capped.valid] == ["the", "<unk>", "sat", "<eos>", "<unk>", "cat", "<eos>"]
    assert len(capped.test) == len(full.test)
    # a cap past the end keeps everything; the synthetic corpus has its own length knob
    assert len(load_corpus(DataConfig(corpus="text", path=str(tmp_path), max_train_tokens=10_000)).train) == 12
    with pytest.raises(ValueError, match="data.max_train_tokens"):
        DataConfig(corpus="text", max_train_tokens=-1)
    with pytest.raises(ValueError, match="data.max_train_tokens"):
        DataConfig(corpus="text", max_train_tokens=1)
    with pytest.raises(ValueError, match="data.train_tokens"):
        DataConfig(corpus="synthetic", max_train_tokens=100)


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_corpus(DataConfig(corpus="ptb", path=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="ptb.train.txt"):
        load_corpus(DataConfig(corpus="ptb", path=str(tmp_path)))
    _write(tmp_path / "ptb.train.txt", LINES)
    _write(tmp_path / "ptb.valid.txt", LINES)
    with pytest.raises(FileNotFoundError, match="ptb.test.txt"):
        load_corpus(DataConfig(corpus="ptb", path=str(tmp_path)))
    (tmp_path / "ptb.test.txt").write_text("  \n")
    with pytest.raises(ValueError, match="ptb.test.txt"):
        load_corpus(DataConfig(corpus="ptb", path=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="book.txt"):
        load_corpus(DataConfig(corpus="text", path=str(tmp_path / "book.txt")))


def test_batchify_columns_are_contiguous():
    ids = torch.arange(23)
    b = batchify(ids, 4)
    assert b.shape == (5, 4)
    assert b[:, 1].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match="batch_size"):
        batchify(torch.arange(3), 4)
