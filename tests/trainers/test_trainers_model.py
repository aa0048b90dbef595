"""The language model: exact parameter counts for every family (per-layer settings, tied decoder), shapes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezelstm.trainers import Config, build_model, count_model_flops, count_model_parameters
from squeezelstm.trainers.config import ModelConfig
from squeezelstm.trainers.dropout import dropout

FAMILY_CONFIGS = [
    dict(cell="lstm"),
    dict(cell="lstm", fast_lstm=False),
    dict(cell="factorized", rank=4),
    dict(cell="grouped", groups=(4, 2)),
    dict(cell="routed", num_cells=2, routing="round_robin"),
    dict(cell="routed", num_cells=4, routing="hidden"),
    dict(cell="restricted", share=0.5),
    dict(cell="hidden", gate_hidden=6),
]


def _numel(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", FAMILY_CONFIGS, ids=lambda d: "-".join(map(str, d.values())))
@pytest.mark.parametrize("tie", [False, True])
def test_count_matches_built_model(family, tie):
    cfg = Config(model=ModelConfig(hidden_size=16, num_layers=2, tie_weights=tie, **family))
    model = build_model(cfg, 37)
    assert count_model_parameters(cfg, 37) == _numel(model)
    assert count_model_flops(cfg, 37) > 16 * 37
    logits, state = model(torch.randint(0, 37, (5, 3)), model.init_state(3))
    assert logits.shape == (5, 3, 37)
    assert len(state) == 2 and state[1][0].shape == (1, 3, 16)


@settings(max_examples=25, deadline=None)
@given(hidden=st.sampled_from([8, 12, 16]), layers=st.integers(1, 3), emb=st.sampled_from([None, 4, 8]),
       vocab=st.integers(2, 30), family=st.sampled_from(["lstm", "factorized", "grouped"]), tie=st.booleans())
def test_count_random_configs(hidden, layers, emb, vocab, family, tie):
    emb_size = emb if emb is not None else hidden
    if tie and emb_size != hidden:
        tie = False
    args = {"factorized": {"rank": 3}, "grouped": {"groups": tuple([4] + [2] * (layers - 1)) if emb_size % 4 == 0 else 2},
            "lstm": {}}[family]
    cfg = Config(model=ModelConfig(cell=family, hidden_size=hidden, num_layers=layers, embedding_size=emb,
                                   tie_weights=tie, **args))
    assert count_model_parameters(cfg, vocab) == _numel(build_model(cfg, vocab))


def test_grouped_flops_shrink_and_tied_decoder_shares_weight():
    dense = Config(model=ModelConfig(hidden_size=64, num_layers=1))
    grouped = Config(model=ModelConfig(cell="grouped", groups=4, hidden_size=64, num_layers=1))
    cell = count_model_flops(dense, 10) - 64 * 10
    assert count_model_flops(grouped, 10) - 64 * 10 == pytest.approx(cell / 4, rel=0.05)
    tied = build_model(Config(model=ModelConfig(hidden_size=8, tie_weights=True)), 11)
    assert tied.decoder.weight is tied.embedding.weight


def test_build_is_seeded_and_leaves_global_rng_alone():
    cfg = Config()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = build_model(cfg, 20), build_model(cfg, 20)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    other = build_model(Config.from_dict({"train": {"seed": 1}}), 20)
    assert not torch.equal(a.embedding.weight, other.embedding.weight)


def test_locked_dropout_shares_mask_over_time():
    g = torch.Generator().manual_seed(0)
    x = torch.ones(6, 4, 10)
    y = dropout(x, 0.5, True, locked=True, generator=g)
    assert torch.equal(y[0], y[5]) and set(y.unique().tolist()) <= {0.0, 2.0}
    z = dropout(x, 0.5, True, locked=False, generator=g)
    assert not torch.equal(z[0], z[5])
    assert torch.equal(dropout(x, 0.5, False), x)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(dropout(x, 0.3, True, generator=g1), dropout(x, 0.3, True, generator=g2))
