"""G-LSTM: fast batched path vs reference, groups as independent LSTMs, g = 1 is the LSTM, checks, counts."""

import pytest
import torch

from squeezelstm.spaces import LSTM, GroupedLSTM


def test_each_group_is_an_independent_lstm():
    """Group j's units equal a small LSTM run on x's and h's j-th slices with that group's weights."""
    torch.manual_seed(1)
    g, m, n = 3, 6, 9
    model = GroupedLSTM(m, n, 1, groups=g)
    layer = model.layers[0]
    x = torch.randn(5, 2, m)
    hx = (torch.randn(1, 2, n), torch.randn(1, 2, n))
    out, (h, c) = model(x, hx)
    mg, ng = m // g, n // g
    bias = layer.bias.view(4, g, ng)  # i, f, g, o over all units
    for j in range(g):
        small = LSTM(mg, ng)
        with torch.no_grad():
            small.layers[0].weight_ih.copy_(layer.weight_ih[j])
            small.layers[0].weight_hh.copy_(layer.weight_hh[j])
            small.layers[0].bias_ih.copy_(bias[:, j].reshape(-1))
            small.layers[0].bias_hh.zero_()
        sl = slice(j * ng, (j + 1) * ng)
        out_j, (h_j, c_j) = small(x[..., j * mg:(j + 1) * mg], (hx[0][..., sl], hx[1][..., sl]))
        torch.testing.assert_close(out[..., sl], out_j, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c[..., sl], c_j, rtol=1e-5, atol=1e-6)


def test_one_group_is_the_lstm(assert_same_function):
    torch.manual_seed(2)
    lstm = LSTM(5, 7, 2)
    glstm = GroupedLSTM(5, 7, 2, groups=1)
    with torch.no_grad():
        for dense, grouped in zip(lstm.layers, glstm.layers):
            grouped.weight_ih[0].copy_(dense.weight_ih)
            grouped.weight_hh[0].copy_(dense.weight_hh)
            grouped.bias.copy_(dense.bias_ih + dense.bias_hh)
    assert_same_function(glstm, lstm, 5, 7, 2)


@pytest.mark.parametrize(
    "m,n,layers,groups,match",
    [
        (64, 64, 1, 3, "groups=3 must divide both input_size=64 and hidden_size=64"),
        (6, 8, 1, 4, "groups=4 must divide both input_size=6 and hidden_size=8"),
        (8, 8, 2, [2, 3], "groups=3 on layer 1"),
        (8, 8, 2, [2], "groups"),
        (8, 8, 1, 0, "groups=0"),
        (8, 8, 1, None, "groups"),
        (8, 8, 1, "2", "groups='2'"),
    ],
)
def test_invalid_groups(m, n, layers, groups, match):
    with pytest.raises(ValueError, match=match):
        GroupedLSTM(m, n, layers, groups=groups)
    with pytest.raises(ValueError, match=match):
        GroupedLSTM.count_flops(m, n, layers, groups=groups)


def test_counts_and_layout():
    model = GroupedLSTM(12, 8, 1, groups=4)
    layer = model.layers[0]
    assert layer.weight_ih.shape == (4, 8, 3) and layer.weight_hh.shape == (4, 8, 2) and layer.bias.shape == (32,)
    assert GroupedLSTM.count_parameters(12, 8, 1, groups=4) == 4 * 8 * 20 // 4 + 32
    assert GroupedLSTM.check_args(12, 8, 2, groups=[4, 2]) == {"groups": (4, 2)}
    for g in (1, 2, 4, 8):
        # g groups do 1/g of the LSTM's matmul multiply-adds.
        assert GroupedLSTM.count_flops(64, 64, 2, groups=g) * g == LSTM.count_flops(64, 64, 2)
