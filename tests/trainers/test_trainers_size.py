"""Exact sizes: tied decoders at any width (the projection), and live sizes after grow-and-prune."""

import pytest
import torch

from squeezelstm.search.export import export_trial
from squeezelstm.search.pareto import TrialRecord
from squeezelstm.spaces import hidden as hidden_family
from squeezelstm.trainers import (Config, apply_overrides, build_model, count_model_flops, count_model_parameters,
                                  model_sizes, train, validate)
from squeezelstm.trainers.checkpoint import checkpoint_path, load_checkpoint
from squeezelstm.trainers.size import GROW_FRACTION, live_masked, prunable_weights

FAMILIES = {"lstm": {}, "factorized": {"model.rank": 4}, "grouped": {"model.groups": 2},
            "routed": {"model.num_cells": 2, "model.routing": "hidden"}, "restricted": {"model.share": 0.5},
            "hidden": {"model.gate_hidden": 4}}
TINY = {"data": {"corpus": "synthetic", "vocab_size": 30, "train_tokens": 1200, "valid_tokens": 200,
                 "test_tokens": 200, "seed": 1},
        "model": {"cell": "hidden", "hidden_size": 16, "num_layers": 2, "gate_hidden": 4, "embedding_size": 12},
        "train": {"epochs": 4, "batch_size": 4, "bptt": 10, "optimizer": "adam", "lr": 0.01, "seed": 0,
                  "device": "cpu", "threads": 1}}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("emb", [8, 16, 24])
def test_tied_decoder_at_any_width_is_counted_exactly(family, emb):
    cfg = validate(apply_overrides(Config(), {"model.cell": family, "model.hidden_size": 16, "model.num_layers": 2,
                                              "model.embedding_size": emb, "model.tie_weights": True,
                                              **FAMILIES[family]}))
    model = build_model(cfg, 50)
    assert model.decoder.weight is model.embedding.weight
    assert count_model_parameters(cfg, 50) == sum(p.numel() for p in model.parameters())
    assert hasattr(model, "projection") == (emb != 16)
    sizes = model_sizes(cfg, 50)
    untied = count_model_parameters(apply_overrides(cfg, {"model.tie_weights": False}), 50)
    assert sizes.params == untied - 16 * 50 + (16 * emb if emb != 16 else 0)
    assert count_model_flops(cfg, 50) == sizes.flops == (
        count_model_flops(apply_overrides(cfg, {"model.tie_weights": False}), 50) - 16 * 50 + emb * 50
        + (16 * emb if emb != 16 else 0))
    logits, _ = model(torch.randint(0, 50, (5, 3)), model.init_state(3))
    assert logits.shape == (5, 3, 50)


def test_tied_projection_trains():
    cfg = apply_overrides(Config.from_dict(TINY), {"model.cell": "grouped", "model.groups": 2,
                                                   "model.gate_hidden": None, "model.tie_weights": True,
                                                   "data.train_tokens": 3000, "train.epochs": 3})
    result = train(cfg)
    assert result.status == "finished" and result.params == count_model_parameters(cfg, 30)
    assert result.valid_ppl < result.unigram_ppl


def test_recurrent_params_are_the_cells_alone():
    cfg = apply_overrides(Config.from_dict(TINY), {"model.cell": "factorized", "model.rank": 4,
                                                   "model.gate_hidden": None})
    model = build_model(cfg, 30)
    sizes = model_sizes(cfg, 30)
    assert sizes.recurrent_params == sum(p.numel() for p in model.layers.parameters())
    assert sizes.live_params == sizes.params and sizes.live_flops == sizes.flops


def test_grow_fraction_matches_the_family():
    assert GROW_FRACTION == hidden_family.GROW_FRACTION


def test_live_masked_replays_the_schedule():
    cfg = apply_overrides(Config.from_dict(TINY), {"train.epochs": 5, "train.grow_epochs": [1, 3],
                                                   "train.prune_epochs": [2, 4], "train.prune_sparsity": 0.6})
    # epoch 2: prune to round(0.3 W); 3: grow half back; 4: prune to round(0.6 W); 5: nothing.
    assert live_masked(cfg, 1000) == 600
    early = apply_overrides(cfg, {"train.epochs": 3})
    assert live_masked(early, 1000) == 300 - 150
    assert live_masked(apply_overrides(cfg, {"train.prune_sparsity": 0.0}), 1000) == 0


@pytest.mark.parametrize("schedule", [
    {"train.prune_epochs": [2, 4], "train.prune_sparsity": 0.7},
    {"train.grow_epochs": [1, 3], "train.prune_epochs": [2], "train.prune_sparsity": 0.55},
])
def test_live_sizes_are_exact_before_training(tmp_path, schedule):
    cfg = apply_overrides(Config.from_dict(TINY), schedule)
    predicted = model_sizes(cfg, 30)
    result = train(cfg, checkpoint_dir=tmp_path)
    assert result.status == "finished"
    assert result.params == predicted.params
    assert result.live_params == predicted.live_params < predicted.params
    model = build_model(cfg, 30)
    saved = load_checkpoint(checkpoint_path(tmp_path))
    model.load_state_dict(saved["model"])
    # The pruner left exactly the predicted number per layer, and the live FLOPs follow.
    for i, layer in enumerate(model.layers):
        in_size = 12 if i == 0 else 16
        weights = prunable_weights(in_size, 16, 4)
        assert layer.num_weights() == weights
        assert weights - layer.live_weights() == live_masked(cfg, weights)
    decoder = 16 * 30
    assert sum(layer.live_flops() for layer in model.layers) + decoder == predicted.live_flops
    assert predicted.live_recurrent_params == sum(layer.live_parameters() for layer in model.layers)

    # export --checkpoint copies the checkpoint whole: the masks come with it.
    record = TrialRecord(number=3, family="hidden", config=cfg.to_dict(), params=result.params,
                         flops=predicted.flops, valid_ppl=result.valid_ppl, test_ppl=result.test_ppl,
                         status="finished")
    summary = export_trial(record, tmp_path / "best.yaml", checkpoint_from=tmp_path)
    exported = load_checkpoint(checkpoint_path(summary["checkpoint"]))
    fresh = build_model(cfg, 30)
    fresh.load_state_dict(exported["model"])
    assert fresh.live_parameters() == predicted.live_params
