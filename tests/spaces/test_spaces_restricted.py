"""Restricted LSTM: the authors' shared row pool, fast path vs reference, share = 0 is the LSTM, checks, counts."""

import pytest
import torch

from squeezelstm.spaces import LSTM, RestrictedLSTM
from squeezelstm.spaces.restricted import pool_row_indices, shared_rows


def test_pool_structure_follows_the_authors():
    n, share = 10, 0.3
    s = shared_rows(share, n)
    rows_x, rows_h = pool_row_indices(share, n)
    assert s == 3 and rows_x.shape == rows_h.shape == (4 * n,)
    private = set()
    for rows in (rows_x, rows_h):
        for gate in rows.view(4, n):
            # Every (side, gate) block starts with the same s shared rows 0..s-1 ...
            assert gate[:s].tolist() == list(range(s))
            # ... then n - s private rows no other block uses.
            block = set(gate[s:].tolist())
            assert not block & private and min(block) >= s
            private |= block
    assert sorted(private) == list(range(s, s + 8 * (n - s)))


def test_share_one_makes_every_gate_read_the_same_rows():
    model = RestrictedLSTM(4, 6, share=1.0)
    layer = model.layers[0]
    assert layer.weight.shape == (6, 6)
    w_x, w_h, _ = layer.gate_weights()
    for k in range(1, 4):
        torch.testing.assert_close(w_x[6 * k:6 * (k + 1)], w_x[:6])
        torch.testing.assert_close(w_h[6 * k:6 * (k + 1)], w_h[:6])


@pytest.mark.parametrize("m,n", [(8, 8), (5, 8), (12, 8)])
def test_share_zero_is_the_lstm(m, n, assert_same_function):
    torch.manual_seed(1)
    lstm = LSTM(m, n, 2)
    rlstm = RestrictedLSTM(m, n, 2, share=0.0)
    with torch.no_grad():
        for dense, restricted in zip(lstm.layers, rlstm.layers):
            mi, ni = dense.input_size, dense.hidden_size
            pool = restricted.weight
            pool.zero_()
            pool[: 4 * ni, :mi].copy_(dense.weight_ih)  # private x rows, gates i, f, g, o
            pool[4 * ni:, :ni].copy_(dense.weight_hh)  # private h rows
            restricted.bias.copy_(torch.cat([dense.bias_ih, dense.bias_hh]))
    assert_same_function(rlstm, lstm, m, n, 2)
    if m == n:
        assert RestrictedLSTM.count_parameters(m, n, 2, share=0.0) == LSTM.count_parameters(m, n, 2)


def test_narrow_side_columns_are_the_only_dead_parameters():
    """With m < n the x-side private rows have n - m unread columns; everything else gets gradient."""
    torch.manual_seed(2)
    m, n = 3, 5
    model = RestrictedLSTM(m, n, share=0.4)
    s = shared_rows(0.4, n)
    out, (h, c) = model(torch.randn(4, 2, m), (torch.randn(1, 2, n), torch.randn(1, 2, n)))
    out.pow(2).sum().backward()
    grad = model.layers[0].weight.grad
    dead = torch.zeros_like(grad, dtype=torch.bool)
    dead[s: s + 4 * (n - s), m:] = True
    assert (grad[dead] == 0).all()
    assert (grad[~dead] != 0).all()


@pytest.mark.parametrize("share,match", [(-0.1, "share=-0.1"), (1.5, "share=1.5"), ("half", "share='half'"),
                                         (True, "share=True"), (None, "share"), ([0.5], "share")])
def test_invalid_share(share, match):
    with pytest.raises(ValueError, match=match):
        RestrictedLSTM(6, 8, 2, share=share)
    with pytest.raises(ValueError, match=match):
        RestrictedLSTM.count_parameters(6, 8, 2, share=share)


def test_counts_and_state_dict():
    model = RestrictedLSTM(5, 8, 1, share=0.5)
    assert set(model.state_dict()) == {"layers.0.weight", "layers.0.bias"}
    s = 4
    assert RestrictedLSTM.count_parameters(5, 8, 1, share=0.5) == (s + 8 * (8 - s)) * (8 + 1)
    assert RestrictedLSTM.count_parameters(5, 8, 1, bias=False, share=0.5) == (s + 8 * (8 - s)) * 8
    assert RestrictedLSTM.check_args(5, 8, 2, share=[0, 1]) == {"share": (0.0, 1.0)}
    # Sharing saves parameters, not multiply-adds.
    assert RestrictedLSTM.count_flops(5, 8, 2, share=0.7) == LSTM.count_flops(5, 8, 2)
    assert RestrictedLSTM.count_parameters(32, 32, 1, share=0.9) < LSTM.count_parameters(32, 32, 1)
