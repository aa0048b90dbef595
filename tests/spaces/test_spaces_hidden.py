"""HiddenLayerLSTM (H-LSTM): fast path vs reference when pruned, LSTM reduction, grow-and-prune, FLOPs (the
interface, counts and unpruned fast path every family keeps are in test_spaces_contract.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from squeezelstm.spaces import count_flops, count_parameters
from squeezelstm.spaces.hidden import MASKED, HiddenLayerLSTM

M, N_HID, D = 5, 8, 3


def make(seed=0, num_layers=1, gate_hidden=D, **kw):
    torch.manual_seed(seed)
    return HiddenLayerLSTM(M, N_HID, num_layers, gate_hidden=gate_hidden, **kw)


def numel(module):
    return sum(p.numel() for p in module.parameters())


def loss_of(model, x):
    out, (h, c) = model(x)
    return out.square().sum() + c.sum()


@pytest.mark.parametrize("bias", [True, False])
def test_pruned_fast_path_matches_reference_forward_and_gradients(bias):
    m = make(bias=bias).double()
    m.prune(0.4)
    layer = m.layers[0]
    x = torch.randn(6, 3, M, dtype=torch.double)
    state = (torch.randn(3, N_HID, dtype=torch.double), torch.randn(3, N_HID, dtype=torch.double))
    results = []
    for fn in (layer.forward, layer.forward_reference):
        m.zero_grad()
        out, (h, c) = fn(x, state)
        (out.square().sum() + (c * torch.linspace(-1, 1, N_HID, dtype=torch.double)).sum()).backward()
        results.append([out, h, c] + [p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_wide_identity_gate_layers_reduce_to_the_plain_lstm(assert_same_function):
    # relu(z) - relu(-z) = z: with W1_k = [I; -I] and W2_k = [W_k, -W_k] each gate is W_k [x; h] + b_k.
    m_in, n = M, N_HID
    d = 2 * (m_in + n)
    model = HiddenLayerLSTM(m_in, n, gate_hidden=d).double()
    ref = torch.nn.LSTM(m_in, n).double()
    eye = torch.eye(m_in + n, dtype=torch.double)
    w_all = torch.cat([ref.weight_ih_l0, ref.weight_hh_l0], 1).detach()  # (4n, m + n)
    layer = model.layers[0]
    with torch.no_grad():
        w1 = torch.cat([eye, -eye]).repeat(4, 1)  # (4d, m + n)
        layer.w1_ih.copy_(w1[:, :m_in])
        layer.w1_hh.copy_(w1[:, m_in:])
        layer.b1.zero_()
        for k in range(4):
            wk = w_all[k * n:(k + 1) * n]
            layer.w2[k].copy_(torch.cat([wk, -wk], 1))
        layer.b2.copy_(ref.bias_ih_l0 + ref.bias_hh_l0)
    assert_same_function(model, ref, m_in, n, 1, rtol=1e-7, atol=1e-7)


def test_invalid_arguments_name_the_problem():
    with pytest.raises(ValueError, match="gate_hidden=0"):
        HiddenLayerLSTM(M, N_HID, gate_hidden=0)
    with pytest.raises(ValueError, match="rank"):
        HiddenLayerLSTM.check_args(M, N_HID, rank=2)
    with pytest.raises(ValueError, match="gate_hidden"):
        count_parameters("hidden", M, N_HID, gate_hidden=-1)
    m = make()
    for bad in (1.0, -0.1, "half"):
        with pytest.raises(ValueError, match="sparsity"):
            m.prune(bad)
    assert m.grow() == 0  # nothing dormant: no gradients needed
    m.prune(0.5)
    with pytest.raises(ValueError, match="loss.backward"):
        m.grow(3)
    loss_of(m, torch.randn(3, 2, M)).backward()
    with pytest.raises(ValueError, match="amount"):
        m.grow(1.5)
    with pytest.raises(ValueError, match="amount"):
        m.grow(-2)
    with pytest.raises(TypeError, match="amount"):
        m.grow("all")


def test_prune_to_half_halves_the_live_weights_and_keeps_the_largest():
    m = make(num_layers=2)
    weights = {q: getattr(layer, name).detach().clone() for q, layer, name in m._masked()}
    total, dense = m.num_weights(), m.live_parameters()
    assert dense == numel(m) == m.count_parameters(M, N_HID, 2, gate_hidden=D)
    assert m.prune(0.5) == round(total / 2)
    assert m.live_weights() == total - round(total / 2)
    assert m.live_parameters() == dense - round(total / 2)
    assert numel(m) == dense  # the dense count does not change
    assert abs(m.sparsity() - 0.5) < 1e-3
    assert m.live_flops() == m.live_weights() < count_flops("hidden", M, N_HID, 2, gate_hidden=D)
    # Global magnitude pruning: every kept weight is at least as large as every pruned one.
    kept = torch.cat([w[getattr(l, f"mask_{n}").bool()].abs() for (q, l, n), w in zip(m._masked(), weights.values())])
    gone = torch.cat([w[~getattr(l, f"mask_{n}").bool()].abs() for (q, l, n), w in zip(m._masked(), weights.values())])
    assert kept.min() >= gone.max()
    assert m.prune(0.3) == 0  # never revives


def test_masks_stay_applied_through_optimizer_steps_and_state_dict():
    m = make(num_layers=2)
    opt = torch.optim.Adam(m.parameters(), lr=0.05, weight_decay=0.1)
    x = torch.randn(6, 3, M)
    for _ in range(2):  # momentum from before pruning would move masked weights if masks were not applied
        opt.zero_grad()
        loss_of(m, x).backward()
        opt.step()
    m.prune(0.6)
    for _ in range(3):
        opt.zero_grad()
        loss_of(m, x).backward()
        for _, layer, name in m._masked():
            assert (getattr(layer, name).grad[getattr(layer, f"mask_{name}") == 0] == 0).all()
        opt.step()
    for _, layer, name in m._masked():
        assert (layer.effective(name)[getattr(layer, f"mask_{name}") == 0] == 0).all()
    # Whatever the raw masked weights drifted to, the function only sees weight * mask.
    before = m(x)[0]
    with torch.no_grad():
        for _, layer, name in m._masked():
            getattr(layer, name).add_(1 - getattr(layer, f"mask_{name}"))
    torch.testing.assert_close(m(x)[0], before)
    copy_ = make(seed=9, num_layers=2)
    copy_.load_state_dict(m.state_dict())
    assert copy_.live_weights() == m.live_weights()
    torch.testing.assert_close(copy_(x)[0], before)


def test_grow_revives_the_dormant_weights_with_the_largest_dense_gradient():
    m = make(num_layers=2)
    m.prune(0.7)
    x = torch.randn(6, 3, M)
    # Expected dense gradients: the same function with all masks 1 (masked weights are already zero).
    dense = copy.deepcopy(m)
    for _, layer, name in dense._masked():
        getattr(layer, f"mask_{name}").fill_(1.0)
    loss_of(dense, x).backward()
    expected = {q: getattr(layer, name).grad for q, layer, name in dense._masked()}
    loss_of(m, x).backward()
    for q, layer, name in m._masked():
        torch.testing.assert_close(layer.growth_grads[name], expected[q])
    dormant_scores = torch.cat([
        torch.where(getattr(l, f"mask_{n}").bool(), -1.0, expected[q].abs()).flatten() for q, l, n in m._masked()
    ])
    live_before = m.live_parameters()
    old_masks = [getattr(l, f"mask_{n}").clone() for _, l, n in m._masked()]
    assert m.grow(10) == 10
    assert m.live_parameters() == live_before + 10
    revived = torch.cat([(getattr(l, f"mask_{n}") > old).flatten() for (_, l, n), old in zip(m._masked(), old_masks)])
    assert revived.sum() == 10
    assert dormant_scores[revived].min() >= dormant_scores[~revived & (dormant_scores >= 0)].max()
    for (_, l, n), old in zip(m._masked(), old_masks):
        assert (getattr(l, n)[getattr(l, f"mask_{n}") > old] == 0).all()  # revived weights start at zero
    assert all(not layer.growth_grads for layer in m.layers)  # consumed
    m.layers[0].record_growth_grads = False
    loss_of(m, x).backward()
    assert not m.layers[0].growth_grads and m.layers[1].growth_grads
    m.layers[0].record_growth_grads = True
    # Explicit gradients and a fraction.
    grads = {q: torch.rand_like(getattr(l, n)) for q, l, n in m._masked()}
    dormant = m.num_weights() - m.live_weights()
    assert m.grow(0.5, grads=grads) == round(0.5 * dormant)
    # The default (what the trainer's grow phase calls) revives half the dormant weights.
    dormant = m.num_weights() - m.live_weights()
    loss_of(m, x).backward()
    assert m.grow() == round(0.5 * dormant)


def test_count_flops_are_sane():
    m, n, d = 32, 64, 16
    assert count_flops("hidden", m, n, gate_hidden=d) == 4 * (d * (m + n) + n * d)
    # Narrow gate layers are cheaper than the LSTM; d ~ n(m+n)/(m+2n) breaks even.
    assert count_flops("hidden", m, n, gate_hidden=d) < count_flops("lstm", m, n)
    assert count_flops("hidden", m, n, 2, gate_hidden=d) == 4 * (d * (m + n) + n * d) + 4 * (d * 2 * n + n * d)
    assert MASKED == ("w1_ih", "w1_hh", "w2")


def test_masks_follow_the_dtype_and_count_as_live():
    m64 = make(dtype=torch.float64)
    assert m64.layers[0].mask_w2.dtype == torch.float64
    assert m64.live_parameters() == numel(m64) == count_parameters("hidden", M, N_HID, gate_hidden=D)

