"""Embedding dropout, AR/TAR, and every regulariser key off leaving the trainer's output unchanged."""

import pytest
import torch
from torch.nn import functional as F

from squeezelstm.trainers import Config, apply_overrides, build_model, count_model_parameters, model_sizes, train
from squeezelstm.trainers.checkpoint import checkpoint_path, load_checkpoint
from squeezelstm.trainers.corpus import batchify, load_corpus
from squeezelstm.trainers.loop import make_optimizer, train_epoch
from squeezelstm.trainers.regularisers import (activation_penalty, embedding_dropout,
                                               temporal_activation_penalty)

BASE = {"data": {"corpus": "synthetic", "vocab_size": 30, "train_tokens": 1200, "valid_tokens": 200,
                 "test_tokens": 200, "seed": 1},
        "model": {"cell": "lstm", "hidden_size": 16, "num_layers": 2, "dropout": 0.2},
        "train": {"epochs": 2, "batch_size": 4, "bptt": 10, "optimizer": "sgd", "lr": 1.0, "seed": 0,
                  "device": "cpu", "threads": 1}}
FAMILY_ARGS = {"lstm": {}, "factorized": {"model.rank": 4}, "grouped": {"model.groups": 2},
               "routed": {"model.num_cells": 2, "model.routing": "hidden"}, "restricted": {"model.share": 0.5},
               "hidden": {"model.gate_hidden": 4}}
# Valid perplexity written by the trainer as it was before the regularisers existed (commit 4ec9c86),
# same runs. (Not a bitwise digest of the weights: those move with the CPU's kernels and BLAS, and
# routed's compiled loop changed its summation order since; the keys-off equality below is bitwise.)
BEFORE = {
    "lstm": 25.91975963417602,
    "factorized": 25.940599952707647,
    "grouped": 26.070313734690437,
    "routed": 26.156536501542487,
    "restricted": 26.11523558090511,
    "hidden": 25.993936080779353,
}
OFF = {"model.embedding_dropout": 0.0, "model.weight_drop": 0.0, "train.ar_alpha": 0.0, "train.tar_beta": 0.0,
       "train.asgd": False}


def run(tmp_path, name, overrides):
    cfg = apply_overrides(Config.from_dict(BASE), overrides)
    folder = tmp_path / name
    result = train(cfg, checkpoint_dir=folder)
    return result, load_checkpoint(checkpoint_path(folder))


@pytest.mark.parametrize("family", FAMILY_ARGS)
def test_keys_off_leave_the_trainer_unchanged(tmp_path, family):
    absent, ckpt_absent = run(tmp_path, "absent", {"model.cell": family, **FAMILY_ARGS[family]})
    off, ckpt_off = run(tmp_path, "off", {"model.cell": family, **FAMILY_ARGS[family], **OFF})
    assert absent.history == [{**h, "elapsed_s": a["elapsed_s"], "tokens_per_s": a["tokens_per_s"]}
                              for h, a in zip(off.history, absent.history)]
    assert ckpt_absent["model"].keys() == ckpt_off["model"].keys()
    for key, value in ckpt_absent["model"].items():
        assert torch.equal(value, ckpt_off["model"][key]), key
    assert set(ckpt_absent) == set(ckpt_off)  # no new checkpoint entries while the keys are off
    assert absent.valid_ppl == pytest.approx(BEFORE[family], rel=1e-6)


def test_embedding_dropout_drops_whole_words_for_the_window():
    emb = torch.randn(30, 5)
    tokens = torch.tensor([[1, 2], [1, 3], [2, 1], [4, 4]])
    x = F.embedding(tokens, emb)
    out = embedding_dropout(x, tokens, 30, 0.5, True, torch.Generator().manual_seed(0))
    # Equal to a lookup in the row-masked matrix: every occurrence of a word shares its fate.
    keep = torch.empty(30).bernoulli_(0.5, generator=torch.Generator().manual_seed(0)).div_(0.5)
    torch.testing.assert_close(out, F.embedding(tokens, emb * keep[:, None]))
    assert embedding_dropout(x, tokens, 30, 0.5, False) is x


def test_embedding_dropout_in_the_model_is_off_at_eval_and_keeps_counts():
    on = apply_overrides(Config.from_dict(BASE), {"model.embedding_dropout": 0.5, "model.dropout": 0.0})
    off = apply_overrides(on, {"model.embedding_dropout": 0.0})
    assert count_model_parameters(on, 30) == count_model_parameters(off, 30)
    m_on, m_off = build_model(on, 30), build_model(off, 30)
    tokens = torch.randint(0, 30, (8, 3))
    state = m_on.init_state(3)
    m_on.eval(), m_off.eval()
    torch.testing.assert_close(m_on(tokens, state)[0], m_off(tokens, state)[0], rtol=0, atol=0)
    m_on.train(), m_off.train()
    assert not torch.allclose(m_on(tokens, state, generator=torch.Generator().manual_seed(0))[0],
                              m_off(tokens, state, generator=torch.Generator().manual_seed(0))[0])


def test_ar_tar_penalties_follow_their_definitions():
    h = torch.tensor([[[1.0, 2.0]], [[3.0, 5.0]], [[3.0, 4.0]]])  # (T=3, N=1, H=2)
    assert float(activation_penalty(h, 2.0)) == pytest.approx(2.0 * (1 + 4 + 9 + 25 + 9 + 16) / 6)
    assert float(temporal_activation_penalty(h, 1.0)) == pytest.approx((4 + 9 + 0 + 1) / 4)
    assert float(temporal_activation_penalty(h[:1], 1.0)) == 0.0


def test_ar_tar_shape_the_training_step_as_awd_lstm_does():
    # One window of SGD through the trainer equals the hand-written step on
    # CE + alpha * mean(dropped h^2) + beta * mean((h_t - h_{t-1})^2) with the same masks.
    cfg = apply_overrides(Config.from_dict(BASE), {"train.ar_alpha": 2.0, "train.tar_beta": 1.0,
                                                    "train.batch_size": 2, "train.bptt": 10})
    corpus = load_corpus(cfg.data)
    data = batchify(corpus.train[:22], 2)  # (11, 2): exactly one window of 10 steps
    model, by_hand = build_model(cfg, 30), build_model(cfg, 30)
    loss, _, _ = train_epoch(model, data, cfg, make_optimizer(cfg, model), torch.Generator().manual_seed(7),
                             torch.device("cpu"), None)
    by_hand.train()
    logits, _, raw, dropped = by_hand(data[:10], by_hand.init_state(2), generator=torch.Generator().manual_seed(7),
                                      return_last=True)
    ce = F.cross_entropy(logits.reshape(-1, 30), data[1:].reshape(-1))
    (ce + 2.0 * dropped.pow(2).mean() + 1.0 * (raw[1:] - raw[:-1]).pow(2).mean()).backward()
    torch.nn.utils.clip_grad_norm_(by_hand.parameters(), cfg.train.clip)
    with torch.no_grad():
        for p in by_hand.parameters():
            p -= cfg.train.lr * p.grad
    assert loss == pytest.approx(float(ce.detach()))  # the reported loss is the cross-entropy alone
    for (name, a), b in zip(model.named_parameters(), by_hand.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_penalty_keys_are_validated():
    with pytest.raises(ValueError, match="train.ar_alpha"):
        apply_overrides(Config(), {"train.ar_alpha": -1.0})
    with pytest.raises(ValueError, match="model.embedding_dropout"):
        apply_overrides(Config(), {"model.embedding_dropout": 1.0})


@pytest.mark.parametrize("extra,ppl,live", [
    # a tied decoder of the hidden width needs no projection: the model is the one from before it existed
    ({"model.tie_weights": True}, 25.92724439463243, 4862),
    # H-LSTM grow-and-prune, unchanged by the live-size counting and the schedule helpers
    ({"model.cell": "hidden", "model.gate_hidden": 4, "train.epochs": 3, "train.grow_epochs": [1],
      "train.prune_epochs": [2, 3], "train.prune_sparsity": 0.5}, 25.935460958672362, 1918),
])
def test_tied_and_pruned_runs_match_the_pre_change_trainer(extra, ppl, live):
    cfg = apply_overrides(Config.from_dict(BASE), extra)
    result = train(cfg)
    assert result.valid_ppl == pytest.approx(ppl, rel=1e-6)
    assert result.live_params == live == model_sizes(cfg, 30).live_params
