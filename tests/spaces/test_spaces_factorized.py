"""F-LSTM: fast path vs reference, full rank reduces to the LSTM, argument checks, counts."""

import pytest
import torch

from squeezelstm.spaces import LSTM, FactorizedLSTM


def copy_lstm_into_factorized(lstm, flstm):
    """Set W2 W1 = [W_ih W_hh] exactly: identity W1 if m + n <= 4n, else an SVD split."""
    with torch.no_grad():
        for dense, fact in zip(lstm.layers, flstm.layers):
            w = torch.cat([dense.weight_ih, dense.weight_hh], dim=1)  # (4n, m + n)
            if w.size(1) <= w.size(0):
                fact.weight_in.copy_(torch.eye(w.size(1), dtype=w.dtype))
                fact.weight_out.copy_(w)
            else:
                u, s, vh = torch.linalg.svd(w, full_matrices=False)  # rank 4n
                fact.weight_out.copy_(u * s)
                fact.weight_in.copy_(vh)
            fact.bias.copy_(dense.bias_ih + dense.bias_hh)


@pytest.mark.parametrize("m,n", [(5, 8), (20, 3)])
def test_full_rank_is_the_lstm(m, n, assert_same_function):
    torch.manual_seed(1)
    lstm = LSTM(m, n, 2, dtype=torch.float64)
    ranks = [min(4 * n, m + n), min(4 * n, 2 * n)]
    flstm = FactorizedLSTM(m, n, 2, rank=ranks, dtype=torch.float64)
    copy_lstm_into_factorized(lstm, flstm)
    assert_same_function(flstm, lstm, m, n, 2, atol=1e-8)


@pytest.mark.parametrize(
    "rank,match",
    [
        (0, "rank=0"),
        (-2, "rank=-2"),
        (True, "rank=True"),
        (2.5, "rank=2.5"),
        (None, "rank"),
        (14, "rank=14"),  # min(4*8, 5+8) = 13 on layer 0
        ([4], "rank"),  # wrong length
        ([4, 17], "rank=17 on layer 1"),  # min(32, 16) = 16 on layer 1
    ],
)
def test_invalid_rank(rank, match):
    with pytest.raises(ValueError, match=match):
        FactorizedLSTM(5, 8, 2, rank=rank)
    with pytest.raises(ValueError, match=match):
        FactorizedLSTM.count_parameters(5, 8, 2, rank=rank)


def test_check_args_normalises():
    assert FactorizedLSTM.check_args(5, 8, 2, rank=4) == {"rank": 4}
    assert FactorizedLSTM.check_args(5, 8, 2, rank=[4, 16]) == {"rank": (4, 16)}
    assert FactorizedLSTM.check_args(5, 8, 1, rank=13) == {"rank": 13}


def test_single_bias_and_counts():
    model = FactorizedLSTM(5, 8, 1, rank=3)
    assert [n for n, _ in model.named_parameters()] == ["layers.0.weight_in", "layers.0.weight_out", "layers.0.bias"]
    assert model.layers[0].bias.shape == (32,)
    assert FactorizedLSTM.count_parameters(5, 8, 1, rank=3) == 3 * 13 + 4 * 8 * 3 + 4 * 8
    assert FactorizedLSTM.count_parameters(5, 8, 1, bias=False, rank=3) == 3 * 13 + 4 * 8 * 3
    assert FactorizedLSTM.count_flops(5, 8, 1, rank=3) == 3 * 13 + 4 * 8 * 3
    # A low rank costs fewer multiply-adds than the dense LSTM, full rank (m + n <= 4n) more.
    assert FactorizedLSTM.count_flops(64, 64, 2, rank=16) < LSTM.count_flops(64, 64, 2)
