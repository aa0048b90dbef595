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


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cell,args", CASES, ids=[f"{c}-{a}" for c, a in CASES])
def test_fast_path_matches_reference_float64(cell, args, training):
    layer, x, h, c = _layer_and_inputs(cell, args, input_size=8, hidden_size=8, steps=7, batch=3, dtype=torch.float64)
    layer.train(training)
    seed = 7 if cell == "routed" else None
    fast_out, fast_grads = _run(layer.forward, layer, x, h, c, seed)
    ref_out, ref_grads = _run(layer.forward_reference, layer, x, h, c, seed)
    for a, b in zip(fast_out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert fast_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-9, atol=1e-11, msg=name)


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


@pytest.mark.parametrize("cell,args", [("grouped", {"groups": 2}), ("factorized", {"rank": 4}),
                                       ("routed", {"num_cells": 2, "routing": "round_robin"})])
def test_fast_path_input_size_differs_from_hidden(cell, args):
    layer, x, h, c = _layer_and_inputs(cell, args, input_size=6, hidden_size=10, steps=5, batch=2, dtype=torch.float64)
    fast_out, fast_grads = _run(layer.forward, layer, x, h, c)
    ref_out, ref_grads = _run(layer.forward_reference, layer, x, h, c)
    for a, b in zip(fast_out, ref_out):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-9, atol=1e-11, msg=name)


def test_fast_path_single_step_and_no_grad():
    for cell, args in CASES:
        layer, x, h, c = _layer_and_inputs(cell, args, input_size=4, hidden_size=8, steps=1, batch=2, dtype=torch.float64)
        layer.eval()
        with torch.no_grad():
            fast = layer(x, (h, c))
            ref = layer.forward_reference(x, (h, c))
        torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-12)
