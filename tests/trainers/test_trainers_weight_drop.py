"""Weight drop (DropConnect on the recurrent weights): one mask per window, recurrent entries only, off at eval."""

import pytest
import torch
from torch.func import functional_call

from squeezelstm.trainers import Config, apply_overrides, build_model, count_model_parameters
from squeezelstm.trainers.weight_drop import call_with_weight_drop, drop_connect, recurrent_region

FAMILIES = {
    "lstm": {"model.fast_lstm": False},
    "lstm-fast": {"model.fast_lstm": True},
    "factorized": {"model.rank": 4},
    "grouped": {"model.groups": 2},
    "routed": {"model.num_cells": 2, "model.routing": "hidden"},
    "restricted": {"model.share": 0.0},
    "hidden": {"model.gate_hidden": 4},
}


def config(name, **extra):
    cell = name.split("-")[0]
    return apply_overrides(Config(), {"model.cell": cell, "model.hidden_size": 8, "model.num_layers": 2,
                                      "model.embedding_size": 6, **FAMILIES[name], **extra})


def layer_call(model, layer, x, state, seed):
    kwargs = {"offset": 0, "generator": torch.Generator().manual_seed(99)} if model.stream_position else {}
    return layer, (x, state), kwargs


def second_layer(name, **overrides):
    """``(config, model, layer)``: a model of family ``name`` in training mode and its second layer."""
    cfg = config(name, **overrides)
    model = build_model(cfg, 20).train()
    return cfg, model, model.layers[1]


@pytest.mark.parametrize("name", FAMILIES)
def test_one_mask_serves_the_whole_window(name):
    cfg, model, layer = second_layer(name, **{"model.weight_drop": 0.5})
    x = torch.randn(7, 3, 8)
    state = (torch.randn(1, 3, 8), torch.randn(1, 3, 8))
    _, args, kwargs = layer_call(model, layer, x, state, 0)
    out, _ = call_with_weight_drop(layer, cfg.model.cell, 0.5, torch.Generator().manual_seed(5), args, kwargs)
    # The same draw done by hand, applied once as a fixed weight for all seven steps.
    param, region = recurrent_region(cfg.model.cell, layer)
    fixed = drop_connect(layer.get_parameter(param), 0.5, torch.Generator().manual_seed(5), region)
    _, args, kwargs = layer_call(model, layer, x, state, 0)
    want, _ = functional_call(layer, {param: fixed}, args, kwargs)
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    plain, _ = layer(*layer_call(model, layer, x, state, 0)[1], **layer_call(model, layer, x, state, 0)[2])
    assert not torch.allclose(out, plain)


@pytest.mark.parametrize("name", FAMILIES)
def test_only_the_recurrence_is_dropped(name):
    # From a zero state a single step never reads the recurrent weights: dropping them changes nothing.
    cfg, model, layer = second_layer(name)
    x = torch.randn(1, 3, 8)
    zero = (torch.zeros(1, 3, 8), torch.zeros(1, 3, 8))
    _, args, kwargs = layer_call(model, layer, x, zero, 0)
    dropped, _ = call_with_weight_drop(layer, cfg.model.cell, 0.9, torch.Generator().manual_seed(1), args, kwargs)
    _, args, kwargs = layer_call(model, layer, x, zero, 0)
    plain, _ = layer(*args, **kwargs)
    torch.testing.assert_close(dropped, plain)
    # ... and the region has the recurrent matrix's size (so it is not empty either).
    param, region = recurrent_region(cfg.model.cell, layer)
    n_region = layer.get_parameter(param).numel() if region is None else int(region.sum())
    inner = model.config
    expected = {"lstm": 4 * 8 * 8, "factorized": 4 * 8, "grouped": 2 * 16 * 4, "routed": 2 * 16 * 4,
                "restricted": 4 * 8 * 8, "hidden": 16 * 8}[inner.cell]
    assert n_region == expected


@pytest.mark.parametrize("name", FAMILIES)
def test_model_drops_in_training_only_and_keeps_counts(name):
    tokens = torch.randint(0, 20, (6, 2))
    on, off = config(name, **{"model.weight_drop": 0.4}), config(name)
    m_on, m_off = build_model(on, 20), build_model(off, 20)
    assert count_model_parameters(on, 20) == sum(p.numel() for p in m_on.parameters()) == count_model_parameters(off, 20)
    assert list(m_on.state_dict()) == list(m_off.state_dict())
    m_on.eval(), m_off.eval()
    state = m_on.init_state(2)
    torch.testing.assert_close(m_on(tokens, state)[0], m_off(tokens, state)[0], rtol=0, atol=0)
    m_on.train(), m_off.train()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    logits, _ = m_on(tokens, state, generator=g1)
    assert not torch.allclose(logits, m_off(tokens, state, generator=g2)[0])
    # The gradient reaches the stored recurrent weight through the mask.
    logits.sum().backward()
    param, _ = recurrent_region(on.model.cell, m_on.layers[0])
    assert m_on.layers[0].get_parameter(param).grad.abs().sum() > 0


def test_factorized_region_is_the_h_half_of_the_bottleneck():
    cfg = config("factorized")
    layer = build_model(cfg, 20).layers[0]
    name, region = recurrent_region("factorized", layer)
    w = layer.get_parameter(name)
    dropped = drop_connect(w, 0.5, torch.Generator().manual_seed(0), region)
    torch.testing.assert_close(dropped[:, :6], w[:, :6], rtol=0, atol=0)  # the x half (m = 6) untouched
    kept = dropped[:, 6:] != 0
    torch.testing.assert_close(dropped[:, 6:][kept], 2 * w[:, 6:][kept])
    assert 0 < int(kept.sum()) < kept.numel()


def test_weight_drop_is_validated():
    with pytest.raises(ValueError, match="model.weight_drop"):
        apply_overrides(Config(), {"model.weight_drop": 1.0})
