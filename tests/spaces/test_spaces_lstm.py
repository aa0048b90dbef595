"""The reference LSTM against torch.nn.LSTM (the interface every family keeps is in test_spaces_contract.py)."""

import pytest
import torch
from torch import nn

from squeezelstm.spaces import LSTM

M, H = 6, 8


def copy_into_ours(ours: LSTM, ref: nn.LSTM) -> None:
    with torch.no_grad():
        for i, layer in enumerate(ours.layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(layer, name).copy_(getattr(ref, f"{name}_l{i}"))


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_hx", [False, True])
def test_lstm_matches_torch(batch_first, with_hx):
    torch.manual_seed(1)
    ref = nn.LSTM(M, H, num_layers=3, batch_first=batch_first)
    ours = LSTM(M, H, num_layers=3, batch_first=batch_first)
    copy_into_ours(ours, ref)
    x = torch.randn((4, 7, M) if batch_first else (7, 4, M), requires_grad=True)
    hx = (torch.randn(3, 4, H), torch.randn(3, 4, H)) if with_hx else None
    out_r, (h_r, c_r) = ref(x, hx)
    out_o, (h_o, c_o) = ours(x, hx)
    for a, b in ((out_r, out_o), (h_r, h_o), (c_r, c_o)):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    (out_r.sum() + h_r.sum()).backward()
    g_ref = x.grad.clone()
    x.grad = None
    (out_o.sum() + h_o.sum()).backward()
    torch.testing.assert_close(x.grad, g_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.layers[1].weight_hh.grad, ref.weight_hh_l1.grad, rtol=1e-5, atol=1e-6)


def test_lstm_matches_torch_unbatched():
    torch.manual_seed(2)
    ref, ours = nn.LSTM(M, H, 2), LSTM(M, H, 2)
    copy_into_ours(ours, ref)
    x = torch.randn(5, M)
    out_r, (h_r, _) = ref(x)
    out_o, (h_o, _) = ours(x)
    torch.testing.assert_close(out_o, out_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_o, h_r, rtol=1e-5, atol=1e-6)


def test_lstm_classmethods():
    assert LSTM.check_args(M, H, 2) == {}
    assert LSTM.count_parameters(M, H, 2) == sum(p.numel() for p in nn.LSTM(M, H, 2).parameters())
    assert LSTM.count_parameters(M, H, 1, bias=False) == 4 * H * (M + H)
    assert LSTM.count_flops(M, H, 2) == 4 * H * (M + H) + 4 * H * (2 * H)
    with pytest.raises(ValueError, match="rank=3"):
        LSTM.check_args(M, H, 1, rank=3)
    with pytest.raises(ValueError, match="hidden_size=0"):
        LSTM(M, 0)

