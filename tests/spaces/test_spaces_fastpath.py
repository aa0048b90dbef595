"""Fast paths (fused kernels, custom autograd recurrences) against each layer's slow ``forward_reference``.

Every family layer's ``forward`` must compute the same function as its per-step reference, forward
and gradients (w.r.t. the input, the initial state and every parameter), to float32 rounding.
Run in float64 so the comparison is tight, and once in float32 at 1e-5 relative.
"""

from __future__ import annotations

import pytest
import torch

from squeezelstm.spaces import build_cell

CASES = [
    ("lstm", {}),
    ("lstm", {"bias": False}),
    ("grouped", {"groups": 4}),
    ("grouped", {"groups": 2, "bias": False}),
    ("grouped", {"groups": 1}),
    ("factorized", {"rank": 3}),
    ("factorized", {"rank": 5, "bias": False}),
    ("restricted", {"share": 0.5}),
    ("restricted", {"share": 0.0, "bias": False}),
    ("routed", {"num_cells": 4, "routing": "round_robin"}),
    ("routed", {"num_cells": 2, "routing": "round_robin", "bias": False}),
    ("routed", {"num_cells": 4, "routing": "token"}),
    ("routed", {"num_cells": 4, "routing": "hidden"}),
    ("routed", {"num_cells": 4, "routing": "soft"}),
    ("routed", {"num_cells": 1, "routing": "hidden"}),
    ("hidden", {"gate_hidden": 3}),
]


def _layer_and_inputs(cell, args, input_size, hidden_size, steps, batch, dtype, seed=0):
    args = dict(args)
    bias = args.pop("bias", True)
    torch.manual_seed(seed)
    model = build_cell(cell, input_size, hidden_size, bias=bias, dtype=dtype, **args)
    layer = model.layers[0]
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(steps, batch, input_size, generator=gen, dtype=dtype)
    h = 0.5 * torch.randn(batch, hidden_size, generator=gen, dtype=dtype)
    c = 0.5 * torch.randn(batch, hidden_size, generator=gen, dtype=dtype)
    return layer, x, h, c


def _run(fn, layer, x, h, c, seed=None):
    """Outputs and gradients of a fixed random projection of ``fn``'s outputs."""
    layer.zero_grad(set_to_none=True)
    x, h, c = (t.detach().clone().requires_grad_(True) for t in (x, h, c))
    if seed is not None:
        layer.generator = torch.Generator().manual_seed(seed)
    out, (h_n, c_n) = fn(x, (h, c))
    gen = torch.Generator().manual_seed(123)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (out, h_n, c_n))
    loss.backward()
    grads = {"x": x.grad, "h0": h.grad, "c0": c.grad}
    for name, p in layer.named_parameters():
        grads[name] = torch.zeros_like(p) if p.grad is None else p.grad
    return (out.detach(), h_n.detach(), c_n.detach()), grads


@pytest.mark.parametrize("cell,args", [
    ("lstm", {}), ("grouped", {"groups": 4}), ("factorized", {"rank": 8}), ("restricted", {"share": 0.5}),
    ("routed", {"num_cells": 4, "routing": "round_robin"}),
], ids=lambda v: str(v))
def test_fast_path_matches_reference_float32(cell, args):
    layer, x, h, c = _layer_and_inputs(cell, args, input_size=16, hidden_size=32, steps=12, batch=5, dtype=torch.float32)
    fast_out, fast_grads = _run(layer.forward, layer, x, h, c)
    ref_out, ref_grads = _run(layer.forward_reference, layer, x, h, c)
    for a, b in zip(fast_out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-5, atol=1e-5, msg=name)


def test_fast_path_single_step_and_no_grad():
    for cell, args in CASES:
        layer, x, h, c = _layer_and_inputs(cell, args, input_size=4, hidden_size=8, steps=1, batch=2, dtype=torch.float64)
        layer.eval()
        with torch.no_grad():
            fast = layer(x, (h, c))
            ref = layer.forward_reference(x, (h, c))
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)


# -- the recurrence kernels themselves ---------------------------------------------------------

from squeezelstm.spaces._recurrence import bottleneck_recurrence, linear_recurrence, strided_lstms  # noqa: E402
from squeezelstm.spaces.lstm import lstm_pointwise  # noqa: E402


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).mul_(0.5).requires_grad_(True)


@pytest.mark.parametrize("num_factors", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_linear_recurrence_gradcheck(num_factors, masked):
    gen = torch.Generator().manual_seed(3)
    groups, steps, batch, s = 2, 4, 3, 2
    xw = _rand(gen, groups, steps, batch, 4 * s)
    h0, c0 = _rand(gen, groups, batch, s), _rand(gen, groups, batch, s)
    dims = [s, 3, 4 * s][: 1] + ([3] if num_factors == 2 else []) + [4 * s]
    factors = [_rand(gen, groups, a, b) for a, b in zip(dims[:-1], dims[1:])]
    keep = (torch.rand(groups, steps, batch, 1, generator=gen) > 0.4) if masked else None

    def fn(xw, h0, c0, *factors):
        return linear_recurrence(xw, h0, c0, factors, keep)

    assert torch.autograd.gradcheck(fn, (xw, h0, c0, *factors))


def test_linear_recurrence_masked_matches_loop():
    gen = torch.Generator().manual_seed(4)
    groups, steps, batch, s = 3, 5, 2, 3
    xw = _rand(gen, groups, steps, batch, 4 * s).detach()
    h, c = _rand(gen, groups, batch, s).detach(), _rand(gen, groups, batch, s).detach()
    w = _rand(gen, groups, s, 4 * s).detach()
    keep = torch.rand(groups, steps, batch, 1, generator=gen) > 0.5
    out, h_n, c_n = linear_recurrence(xw, h, c, (w,), keep)
    outs = []
    for t in range(steps):
        hn, cn = lstm_pointwise(xw[:, t] + torch.bmm(h, w), c)
        h, c = torch.where(keep[:, t], hn, h), torch.where(keep[:, t], cn, c)
        outs.append(h.transpose(0, 1).reshape(batch, groups * s))
    torch.testing.assert_close(out, torch.stack(outs))
    torch.testing.assert_close((h_n, c_n), (h, c))


@pytest.mark.parametrize("bias", [True, False])
def test_bottleneck_recurrence_gradcheck(bias):
    gen = torch.Generator().manual_seed(5)
    steps, batch, n, r = 4, 3, 3, 2
    args = [_rand(gen, steps, batch, r), _rand(gen, batch, n), _rand(gen, batch, n), _rand(gen, n, r),
            _rand(gen, r, 4 * n), _rand(gen, 4 * n) if bias else None]
    assert torch.autograd.gradcheck(bottleneck_recurrence, tuple(args))


@pytest.mark.parametrize("steps,offset", [(7, 0), (7, 2), (2, 1), (1, 3)])
def test_strided_lstms_match_turn_taking_loop(steps, offset):
    gen = torch.Generator().manual_seed(6)
    k, s, m, batch = 3, 2, 4, 2
    x = _rand(gen, steps, batch, m)
    h0, c0 = _rand(gen, batch, k * s), _rand(gen, batch, k * s)
    weights = [[_rand(gen, 4 * s, m), _rand(gen, 4 * s, s), _rand(gen, 4 * s), _rand(gen, 4 * s)] for _ in range(k)]
    out, (h_n, c_n) = strided_lstms(x, (h0, c0), weights, offset)
    hs, cs = list(h0.split(s, -1)), list(c0.split(s, -1))
    outs = []
    for t in range(steps):
        j = (offset + t) % k
        w_ih, w_hh, b_ih, b_hh = weights[j]
        hs[j], cs[j] = lstm_pointwise(x[t] @ w_ih.t() + b_ih + hs[j] @ w_hh.t() + b_hh, cs[j])
        outs.append(torch.cat(hs, -1))
    ref = (torch.stack(outs), torch.cat(hs, -1), torch.cat(cs, -1))
    got = (out, h_n, c_n)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
    leaves = [x, h0, c0] + [p for ws in weights for p in ws]
    g_got = torch.autograd.grad(sum(t.sum() * (i + 1) for i, t in enumerate(got)), leaves, allow_unused=True)
    g_ref = torch.autograd.grad(sum(t.sum() * (i + 1) for i, t in enumerate(ref)), leaves, allow_unused=True)
    for a, b in zip(g_got, g_ref):
        if a is None or b is None:
            assert (a is None or not a.any()) and (b is None or not b.any())
        else:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_grouped_wide_groups_take_the_window_wide_projection_and_match_reference(monkeypatch, training):
    """Groups wider than ``FUSED_X_MAX_WIDTH`` project x for the whole window before the recurrence; the
    other tests' narrow groups compute it inside the loop. Both must equal the reference."""
    from squeezelstm.spaces import _recurrence, grouped

    layer, x, h, c = _layer_and_inputs("grouped", {"groups": 2}, input_size=8, hidden_size=8, steps=7, batch=3,
                                       dtype=torch.float64)
    layer.train(training)
    calls = []
    real = _recurrence.linear_recurrence

    def spy(*args, **kw):
        calls.append(kw.get("x_weight") is not None)
        return real(*args, **kw)

    monkeypatch.setattr(grouped, "linear_recurrence", spy)
    for width, fused in ((grouped.FUSED_X_MAX_WIDTH, True), (0, False)):
        monkeypatch.setattr(grouped, "FUSED_X_MAX_WIDTH", width)
        calls.clear()
        fast_out, fast_grads = _run(layer.forward, layer, x, h, c)
        assert calls == [fused]
        ref_out, ref_grads = _run(layer.forward_reference, layer, x, h, c)
        for a, b in zip(fast_out, ref_out):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for name in ref_grads:
            torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-9, atol=1e-11, msg=name)
