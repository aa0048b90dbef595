"""RoutedLSTM (SqueezeLSTM): routing semantics, its fast paths' corner cases, reduction to LSTM, FLOPs (the
interface, counts and fast path every family keeps are in test_spaces_contract.py)."""

from __future__ import annotations

import pytest
import torch

from squeezelstm.spaces import LSTM, count_flops, count_parameters
from squeezelstm.spaces.routed import ROUTINGS, RoutedLSTM

M, N_HID = 5, 8


def make(routing, k=2, seed=0, **kw):
    torch.manual_seed(seed)
    return RoutedLSTM(M, N_HID, num_cells=k, routing=routing, **kw)


def numel(module):
    return sum(p.numel() for p in module.parameters())


def _outputs_and_grads(fn, layer, x, state):
    """``fn``'s outputs, and the gradients of a fixed loss w.r.t. the input, the initial state and every
    parameter of ``layer`` (zeros where none reach it: the argmax router in eval), Gumbel noise seeded."""
    layer.generator = torch.Generator().manual_seed(7)
    layer.zero_grad(set_to_none=True)
    xi, hi, ci = (t.clone().requires_grad_(True) for t in (x, *state))
    out, (h, c) = fn(xi, (hi, ci))
    (out.square().sum() + (c * torch.linspace(-1, 1, N_HID, dtype=torch.double)).sum() + h.sum()).backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in layer.parameters()]
    return [out, h, c, xi.grad, hi.grad, ci.grad] + grads


@pytest.mark.parametrize("routing", ["hidden", "token"])
def test_single_sequence_slice_path_matches_reference(routing):
    m = make(routing, k=4).double().eval()
    layer = m.layers[0]
    x = torch.randn(9, 1, M, dtype=torch.double)
    state = (torch.randn(1, N_HID, dtype=torch.double), torch.randn(1, N_HID, dtype=torch.double))
    torch.testing.assert_close(layer(x, state), layer.forward_reference(x, state), rtol=1e-5, atol=1e-8)


def test_round_robin_without_offset_differs_so_offset_matters():
    m = make("round_robin", k=4).eval()
    x = torch.randn(6, 2, M)
    with torch.no_grad():
        whole, _ = m(x)
        first, hx = m(x[:3])
        wrong, _ = m(x[3:], hx)  # offset left at 0: routes step 3 to sub-cell 0 instead of 3
    assert not torch.allclose(wrong, whole[3:])


def test_hard_routing_updates_exactly_one_sub_cell_per_sequence():
    for routing in ("hidden", "round_robin", "token"):
        m = make(routing, k=4).eval()
        x = torch.randn(1, 5, M)
        h0, c0 = torch.randn(1, 5, N_HID), torch.randn(1, 5, N_HID)
        with torch.no_grad():
            _, (h1, c1) = m(x, (h0, c0), offset=2)
        changed = (c1 != c0).view(5, 4, 2).any(-1)  # (N, k)
        assert (changed.sum(-1) == 1).all(), routing
        if routing == "round_robin":
            assert changed[:, 2].all()


def test_hidden_routing_eval_is_deterministic_and_training_gives_router_gradients():
    m = make("hidden", k=4).eval()
    x = torch.randn(8, 4, M)
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], m(x)[0], rtol=0, atol=0)
    m.train()
    out, _ = m(x, generator=torch.Generator().manual_seed(0))
    out.sum().backward()
    assert m.layers[0].router_weight.grad.abs().sum() > 0
    # Without a generator the Gumbel noise comes from torch's default generator.
    torch.manual_seed(1)
    a = m(x)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(m(x)[0], a, rtol=0, atol=0)
    assert not torch.allclose(m(x)[0], a)


def test_token_routing_is_a_fixed_hash_and_state_dict_round_trips():
    m = make("token", k=4)
    layer = m.layers[0]
    x = torch.randn(50, M)
    choices = layer.token_choices(x)
    assert choices.min() >= 0 and choices.max() < 4 and len(set(choices.tolist())) > 1
    torch.testing.assert_close(layer.token_choices(x.clone()), choices)
    assert "layers.0.hash_proj" in m.state_dict()
    assert numel(m) == RoutedLSTM.count_parameters(M, N_HID, num_cells=4, routing="token")
    other = make("token", k=4, seed=99)
    other.load_state_dict(m.state_dict())
    xs = torch.randn(6, 2, M)
    torch.testing.assert_close(other(xs)[0], m(xs)[0])


@pytest.mark.parametrize("routing", ROUTINGS)
def test_one_cell_reduces_to_the_plain_lstm(routing, assert_same_function):
    m = make(routing, k=1, num_layers=2)
    assert numel(m) == LSTM.count_parameters(M, N_HID, 2)
    ref = torch.nn.LSTM(M, N_HID, 2)
    with torch.no_grad():
        for i, layer in enumerate(m.layers):
            layer.weight_ih.copy_(getattr(ref, f"weight_ih_l{i}"))
            layer.weight_hh[0].copy_(getattr(ref, f"weight_hh_l{i}"))
            layer.bias_ih.copy_(getattr(ref, f"bias_ih_l{i}"))
            layer.bias_hh.copy_(getattr(ref, f"bias_hh_l{i}"))
    assert_same_function(m, ref, M, N_HID, 2)


def test_invalid_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"num_cells=3.*hidden_size=8"):
        RoutedLSTM(M, N_HID, num_cells=3)
    with pytest.raises(ValueError, match=r"routing.*round_robin.*'bogus'"):
        RoutedLSTM(M, N_HID, routing="bogus")
    with pytest.raises(ValueError, match="num_cells"):
        RoutedLSTM(M, N_HID, num_cells=0)
    with pytest.raises(ValueError, match="groups"):
        RoutedLSTM.check_args(M, N_HID, groups=2)
    with pytest.raises(ValueError, match="routing"):
        count_parameters("routed", M, N_HID, num_cells=2, routing="random")
    with pytest.raises(ValueError, match="offset"):
        make("round_robin")(torch.randn(3, 1, M), offset=-1)


def test_count_flops_are_sane():
    m, n = 32, 64
    lstm = count_flops("lstm", m, n)
    assert count_flops("routed", m, n, num_cells=1, routing="round_robin") == lstm
    for k in (2, 4, 8):
        s = n // k
        # The recurrent matmul shrinks by k^2 (one sub-cell of width n/k). Routings chosen before the step
        # (round_robin, token) project the input for the chosen sub-cell only; hidden/soft for all.
        assert count_flops("routed", m, n, num_cells=k, routing="round_robin") == 4 * s * m + 4 * s * s
        assert count_flops("routed", m, n, num_cells=k, routing="token") == 4 * s * m + 4 * s * s
        assert count_flops("routed", m, n, num_cells=k, routing="hidden") == 4 * n * m + 4 * s * s + n * k
        assert count_flops("routed", m, n, num_cells=k, routing="soft") == 4 * n * m + 4 * n * n // k + n * k


@pytest.mark.parametrize("pattern", ["one_sub_cell", "uneven"])
def test_token_routing_fast_path_with_idle_and_crowded_sub_cells(pattern):
    """Token routing's compacted fast path when the batch leaves sub-cells idle (all tokens hash to one)
    or spreads very unevenly: forward and every gradient equal the per-step reference."""
    m = make("token", k=4).double().train()
    layer = m.layers[0]
    gen = torch.Generator().manual_seed(3)
    if pattern == "one_sub_cell":
        x = torch.randn(1, 1, M, generator=gen, dtype=torch.double).expand(9, 5, M).clone()
    else:  # a few distinct input vectors, drawn with very unequal frequencies
        vocab = torch.randn(6, M, generator=gen, dtype=torch.double)
        ids = torch.multinomial(torch.tensor([50.0, 20, 5, 2, 1, 1]), 9 * 5, replacement=True, generator=gen)
        x = vocab[ids].view(9, 5, M)
    counts = torch.bincount(layer.token_choices(x).flatten(), minlength=4)
    assert (counts == 0).any() if pattern == "one_sub_cell" else counts.max() > 2 * counts.float().mean()
    h0 = torch.randn(5, N_HID, generator=gen, dtype=torch.double)
    c0 = torch.randn(5, N_HID, generator=gen, dtype=torch.double)
    for a, b in zip(*(_outputs_and_grads(fn, layer, x, (h0, c0)) for fn in (layer.forward, layer.forward_reference))):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
