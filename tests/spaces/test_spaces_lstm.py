"""The reference LSTM against torch.nn.LSTM, and the nn.LSTM-shaped contract run by every family of cells part A."""

import pytest
import torch
from torch import nn

from squeezelstm.spaces import LSTM, build_cell

# (family, family args) for the shared contract; sizes below keep every config valid.
CONTRACT_CASES = [
    ("lstm", {}),
    ("factorized", {"rank": 5}),
    ("factorized", {"rank": [3, 7]}),
    ("grouped", {"groups": 2}),
    ("grouped", {"groups": [2, 4]}),
    ("restricted", {"share": 0.5}),
    ("restricted", {"share": [0.0, 1.0]}),
]
IDS = [f"{c}-{a}" for c, a in CONTRACT_CASES]
M, H, L = 6, 8, 2


def make(cell, args, seed=0, **kw):
    torch.manual_seed(seed)
    return build_cell(cell, M, H, L, **kw, **args)


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


@pytest.mark.parametrize("cell,args", CONTRACT_CASES, ids=IDS)
def test_contract_shapes(cell, args):
    model = make(cell, args)
    out, (h, c) = model(torch.randn(7, 3, M))
    assert out.shape == (7, 3, H) and h.shape == (L, 3, H) and c.shape == (L, 3, H)
    bf = make(cell, args, batch_first=True)
    out, (h, c) = bf(torch.randn(3, 7, M))
    assert out.shape == (3, 7, H) and h.shape == (L, 3, H)
    out, (h, c) = model(torch.randn(7, M))
    assert out.shape == (7, H) and h.shape == (L, H) and c.shape == (L, H)
    with pytest.raises(ValueError, match="input_size"):
        model(torch.randn(7, 3, M + 1))
    with pytest.raises(ValueError, match="h_0"):
        model(torch.randn(7, 3, M), (torch.zeros(L, 2, H), torch.zeros(L, 3, H)))


@pytest.mark.parametrize("cell,args", CONTRACT_CASES, ids=IDS)
def test_contract_hx_and_batch_first_agree(cell, args):
    model = make(cell, args)
    x = torch.randn(6, 2, M)
    zeros = (torch.zeros(L, 2, H), torch.zeros(L, 2, H))
    out_none, _ = model(x)
    out_zero, _ = model(x, zeros)
    torch.testing.assert_close(out_none, out_zero)
    bf = make(cell, args, batch_first=True)
    bf.load_state_dict(model.state_dict())
    hx = (torch.randn(L, 2, H), torch.randn(L, 2, H))
    out_t, (h_t, c_t) = model(x, hx)
    out_b, (h_b, c_b) = bf(x.transpose(0, 1), hx)
    torch.testing.assert_close(out_b.transpose(0, 1), out_t)
    torch.testing.assert_close(h_b, h_t)
    # Unbatched input is the batch of one.
    out_u, (h_u, _) = model(x[:, 0], (hx[0][:, 0], hx[1][:, 0]))
    torch.testing.assert_close(out_u, out_t[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_u, h_t[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell,args", CONTRACT_CASES, ids=IDS)
def test_contract_gradients_reach_every_parameter(cell, args):
    model = make(cell, args)
    out, (h, c) = model(torch.randn(5, 3, M), (torch.randn(L, 3, H), torch.randn(L, 3, H)))
    (out.pow(2).sum() + c.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cell,args", CONTRACT_CASES, ids=IDS)
def test_contract_two_halves_equal_whole(cell, args):
    model = make(cell, args, dropout=0.3).eval()
    x = torch.randn(10, 2, M)
    whole, (h, c) = model(x)
    first, state = model(x[:4])
    second, (h2, c2) = model(x[4:], state)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h2, h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c2, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell,args", CONTRACT_CASES, ids=IDS)
def test_contract_same_seed_same_result(cell, args):
    x = torch.randn(5, 2, M)
    a, b, other = make(cell, args, seed=3), make(cell, args, seed=3), make(cell, args, seed=4)
    torch.testing.assert_close(a(x)[0], b(x)[0], rtol=0, atol=0)
    assert not torch.allclose(a(x)[0], other(x)[0])


@pytest.mark.parametrize("cell,args", CONTRACT_CASES, ids=IDS)
def test_contract_dtype_and_repr(cell, args):
    model = make(cell, args, dtype=torch.float64)
    out, _ = model(torch.randn(3, 2, M, dtype=torch.float64))
    assert out.dtype == torch.float64
    for key, value in args.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert f"{key}={expected}" in repr(model)
