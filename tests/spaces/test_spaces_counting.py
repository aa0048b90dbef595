"""Exact counts: analytic count_parameters equals module numel, the papers' formulas hold literally, and the registry dispatches."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezelstm.spaces import (
    FAMILIES,
    FAMILY_ARGS,
    LSTM,
    FactorizedLSTM,
    GroupedLSTM,
    RestrictedLSTM,
    build_cell,
    count_flops,
    count_parameters,
    validate_family_args,
)
from squeezelstm.spaces.families import ROUTINGS

SETTINGS = settings(max_examples=100, deadline=None)


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


@st.composite
def sizes(draw):
    return draw(st.integers(1, 24)), draw(st.integers(1, 24)), draw(st.integers(1, 3)), draw(st.booleans())


@st.composite
def factorized_configs(draw):
    m, n, layers, bias = draw(sizes())
    limits = [min(4 * n, mi + n) for mi in [m] + [n] * (layers - 1)]
    if draw(st.booleans()):
        rank = [draw(st.integers(1, lim)) for lim in limits]
    else:
        rank = draw(st.integers(1, min(limits)))
    return m, n, layers, bias, {"rank": rank}


@st.composite
def grouped_configs(draw):
    g = draw(st.integers(1, 4))
    m, n = g * draw(st.integers(1, 6)), g * draw(st.integers(1, 6))
    layers, bias = draw(st.integers(1, 3)), draw(st.booleans())
    if layers > 1 and draw(st.booleans()):
        groups = [g] + [draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0])) for _ in range(layers - 1)]
        return m, n, layers, bias, {"groups": groups}
    return m, n, layers, bias, {"groups": g}


@st.composite
def restricted_configs(draw):
    m, n, layers, bias = draw(sizes())
    share = st.floats(0.0, 1.0, allow_nan=False)
    value = [draw(share) for _ in range(layers)] if draw(st.booleans()) else draw(share)
    return m, n, layers, bias, {"share": value}


@st.composite
def routed_configs(draw):
    k, s = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    m, layers, bias = draw(st.integers(1, 12)), draw(st.integers(1, 3)), draw(st.booleans())
    return m, s * k, layers, bias, {"num_cells": k, "routing": draw(st.sampled_from(ROUTINGS))}


@st.composite
def hidden_configs(draw):
    m, n, layers, bias = draw(sizes())
    return m, n, layers, bias, {"gate_hidden": draw(st.integers(1, 6))}


@pytest.mark.parametrize(
    "cell,strategy",
    [("factorized", factorized_configs()), ("grouped", grouped_configs()), ("restricted", restricted_configs()),
     ("routed", routed_configs()), ("hidden", hidden_configs())],
)
def test_count_parameters_equals_numel(cell, strategy):
    @SETTINGS
    @given(strategy)
    def check(config):
        m, n, layers, bias, args = config
        model = build_cell(cell, m, n, layers, bias, **args)
        assert count_parameters(cell, m, n, layers, bias, **args) == numel(model)
        assert count_flops(cell, m, n, layers, **args) > 0

    check()


@SETTINGS
@given(sizes())
def test_lstm_count_equals_numel_and_torch(config):
    m, n, layers, bias = config
    assert count_parameters("lstm", m, n, layers, bias) == numel(LSTM(m, n, layers, bias)) == numel(
        torch.nn.LSTM(m, n, layers, bias)
    )


@pytest.mark.parametrize("m,n,r", [(64, 64, 16), (200, 100, 37), (10, 3, 12), (7, 50, 57)])
def test_factorized_paper_formula(m, n, r):
    assert FactorizedLSTM.count_parameters(m, n, 1, rank=r) == r * (m + n) + 4 * n * r + 4 * n


@pytest.mark.parametrize("m,n,g", [(64, 64, 2), (128, 64, 4), (30, 60, 3), (8, 8, 8)])
def test_grouped_paper_formula(m, n, g):
    assert GroupedLSTM.count_parameters(m, n, 1, groups=g) == 4 * n * (m + n) / g + 4 * n


@pytest.mark.parametrize("m,n,r", [(64, 64, 0.5), (100, 60, 0.25), (30, 200, 0.9), (10, 10, 0.0), (10, 10, 1.0), (33, 17, 0.37)])
def test_restricted_authors_formula(m, n, r):
    s = round(r * n)
    assert RestrictedLSTM.count_parameters(m, n, 1, share=r) == (s + 2 * 4 * (n - s)) * (max(m, n) + 1)


def test_lstm_formula():
    assert LSTM.count_parameters(30, 20, 1) == 4 * 20 * (30 + 20) + 8 * 20


def test_flops_sanity():
    dense = count_flops("lstm", 128, 128, 2)
    assert dense == 2 * 4 * 128 * 256
    for g in (2, 4, 8):
        assert count_flops("grouped", 128, 128, 2, groups=g) == dense // g
    assert count_flops("factorized", 128, 128, 2, rank=32) == 2 * (32 * 256 + 4 * 128 * 32)
    assert count_flops("restricted", 128, 128, 2, share=0.5) == dense


def test_registry_tables():
    assert set(FAMILIES) == set(FAMILY_ARGS) == {"lstm", "factorized", "grouped", "routed", "restricted", "hidden"}
    assert FAMILIES["grouped"] is GroupedLSTM and FAMILIES["lstm"] is LSTM
    for name in ("lstm", "factorized", "grouped", "restricted"):
        assert FAMILIES[name].family == name


@pytest.mark.parametrize("cell,args", [("lstm", {}), ("factorized", {"rank": 3}), ("grouped", {"groups": 2}), ("restricted", {"share": 0.5})])
def test_build_cell_dispatches(cell, args):
    model = build_cell(cell, 6, 8, 2, batch_first=True, dropout=0.1, **args)
    assert isinstance(model, FAMILIES[cell])
    assert model.batch_first and model.dropout == 0.1 and model.num_layers == 2
    assert count_parameters(cell, 6, 8, 2, **args) == numel(model)


def test_registry_errors():
    with pytest.raises(ValueError, match="known families: lstm, factorized, grouped, routed, restricted, hidden"):
        build_cell("gru", 4, 4)
    with pytest.raises(ValueError, match="cell='gru'"):
        count_parameters("gru", 4, 4)
    with pytest.raises(ValueError, match="does not take argument groups=2"):
        count_flops("factorized", 4, 4, rank=2, groups=2)
    with pytest.raises(ValueError, match="does not take argument rank=2"):
        build_cell("lstm", 4, 4, rank=2)
    with pytest.raises(ValueError, match="rank=99"):
        validate_family_args("factorized", 4, 4, rank=99)
    with pytest.raises(ValueError, match="input_size=0"):
        validate_family_args("grouped", 0, 4, groups=2)


def test_validate_family_args_normalises():
    assert validate_family_args("lstm", 4, 4) == {}
    assert validate_family_args("grouped", 8, 8, 2, groups=[2, 4]) == {"groups": (2, 4)}
    assert validate_family_args("restricted", 8, 8, share=1) == {"share": 1.0}


def test_numpy_scalars_from_samplers_are_accepted():
    np = pytest.importorskip("numpy")
    assert validate_family_args("grouped", 8, 8, 2, groups=[np.int64(2), 4]) == {"groups": (2, 4)}
    assert validate_family_args("factorized", 8, 8, rank=np.int32(3)) == {"rank": 3}
    assert validate_family_args("restricted", 8, 8, share=np.float32(0.5)) == {"share": 0.5}
    with pytest.raises(ValueError, match="share=nan"):
        validate_family_args("restricted", 8, 8, share=float("nan"))
