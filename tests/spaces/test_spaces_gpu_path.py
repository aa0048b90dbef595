"""The CUDA code path, run on CPU tensors (``SQUEEZELSTM_KERNELS=gpu``; Triton kernels through its
interpreter, ``TRITON_INTERPRET=1``, set in ``tests/conftest.py``) or, on a GPU machine, on CUDA
tensors (``benchmarks/gpu_check.sh``), against the reference path.

Every family and routing, whole (two layers), over two windows with the state carried from the first
into the second, ``batch_first`` both ways: outputs, final states and every gradient (input, initial
state, every parameter) equal the per-step ``forward_reference`` path's to 1e-5 relative in float32.
Under autocast (bf16 on the CPU; fp16 where the CPU's fused LSTM takes it) the GPU path stays within
``AUTOCAST_RTOL`` (outputs) and twice that (gradients; ``AUTOCAST_GRAD_RTOL`` per family) of the float32
reference, as relative errors of whole tensors in norm.

To add a family or routing whose GPU path is new (a Triton kernel), append its ``(family, kwargs)`` to
``CASES``; sizes are kept small because the Triton interpreter runs a kernel program per Python call.
"""

from __future__ import annotations

import os

import pytest
import torch

from squeezelstm.spaces import build_cell
from squeezelstm.spaces._kernels import gpu_path

CASES = [
    ("lstm", {}),
    ("lstm", {"bias": False}),
    ("restricted", {"share": 0.5}),
    ("grouped", {"groups": 4}),
    ("grouped", {"groups": [4, 2], "bias": False}),
    ("factorized", {"rank": 5}),
    ("factorized", {"rank": 3, "bias": False}),
    ("routed", {"num_cells": 4, "routing": "token"}),
    ("routed", {"num_cells": 2, "routing": "token", "bias": False}),
    ("routed", {"num_cells": 4, "routing": "round_robin"}),
    ("routed", {"num_cells": 1, "routing": "hidden"}),
    ("routed", {"num_cells": 4, "routing": "hidden"}),
    ("routed", {"num_cells": 4, "routing": "soft"}),
    ("hidden", {"gate_hidden": 3}),
]
IDS = [f"{c}-{a}" for c, a in CASES]

INPUT, HIDDEN, LAYERS, STEPS, BATCH = 8, 8, 2, (4, 3), 3
# Without a GPU the path runs on CPU tensors, Triton kernels interpreted; on a GPU machine (where
# tests/conftest.py leaves the interpreter off) the same checks run on CUDA tensors, kernels compiled.
DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
# Autocast tolerances, relative error in norm against the float32 reference (measured here: bf16 <= 0.5%
# on outputs, <= 1.2% on gradients). H-LSTM's first-layer gradients pass ReLUs: a unit whose pre-activation
# sits at the kink can flip in bf16 and move them by 10-25% (seed-dependent), so its gradients get 0.3.
AUTOCAST_RTOL = {torch.bfloat16: 2e-2, torch.float16: 1e-2}
AUTOCAST_GRAD_RTOL = {"hidden": 0.3}


def _model(cell, args, dtype=torch.float32, batch_first=False):
    args = dict(args)
    bias = args.pop("bias", True)
    torch.manual_seed(0)
    return build_cell(cell, INPUT, HIDDEN, num_layers=LAYERS, bias=bias, batch_first=batch_first, dtype=dtype,
                      device=DEVICE, **args)


def _inputs(dtype, batch_first):
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(t, BATCH, INPUT, generator=gen, dtype=dtype).to(DEVICE) for t in STEPS]
    if batch_first:
        xs = [x.transpose(0, 1).contiguous() for x in xs]
    h0, c0 = (0.5 * torch.randn(LAYERS, BATCH, HIDDEN, generator=gen, dtype=dtype).to(DEVICE) for _ in range(2))
    return xs, h0, c0


def _stack_call(model, reference: bool):
    """``f(x, hx, offset, generator) -> (out, (h, c))``: the model's own forward, or its layers'
    ``forward_reference`` chained as ``RecurrentStack.forward`` chains its layers."""
    routed = model.family == "routed"

    def call(x, hx, offset, generator):
        if not reference:
            return model(x, hx, offset=offset, generator=generator) if routed else model(x, hx)
        seq = x.transpose(0, 1) if model.batch_first else x
        hs, cs = [], []
        for i, layer in enumerate(model.layers):
            if routed:
                layer.offset, layer.generator = offset, generator
            seq, (h, c) = layer.forward_reference(seq, (hx[0][i], hx[1][i]))
            hs.append(h)
            cs.append(c)
        if routed:
            for layer in model.layers:
                layer.offset, layer.generator = 0, None
        return (seq.transpose(0, 1) if model.batch_first else seq), (torch.stack(hs), torch.stack(cs))

    return call


def _two_windows(model, reference: bool, dtype=torch.float32, autocast=None):
    """Two windows, the second starting from the first's final state (not detached); returns the outputs
    and final states (float32) and the gradients of a fixed random projection of all of them."""
    xs, h0, c0 = _inputs(dtype, model.batch_first)
    xs = [x.requires_grad_(True) for x in xs]
    h0, c0 = h0.requires_grad_(True), c0.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    call = _stack_call(model, reference)
    gen = torch.Generator(device=DEVICE).manual_seed(7)  # Gumbel noise: both paths draw it in the same order
    ctx = torch.autocast(DEVICE, dtype=autocast) if autocast is not None else torch.autocast(DEVICE, enabled=False)
    with ctx:
        out1, state = call(xs[0], (h0, c0), 0, gen)
        out2, (h_n, c_n) = call(xs[1], state, STEPS[0], gen)
    results = [t.float() for t in (out1, out2, h_n, c_n)]
    proj = torch.Generator().manual_seed(123)
    loss = sum((t * torch.randn(t.shape, generator=proj).to(DEVICE)).sum() for t in results)
    loss.backward()
    grads = {"x1": xs[0].grad, "x2": xs[1].grad, "h0": h0.grad, "c0": c0.grad}
    grads.update({name: p.grad for name, p in model.named_parameters()})
    return [t.detach() for t in results], grads


@pytest.fixture
def gpu_env(monkeypatch):
    monkeypatch.setenv("SQUEEZELSTM_KERNELS", "gpu")
    if DEVICE == "cuda":  # float32 means float32 (cuDNN and cuBLAS would otherwise use TF32)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert gpu_path(torch.zeros(1))


def test_switch_is_read_at_every_call(monkeypatch):
    monkeypatch.delenv("SQUEEZELSTM_KERNELS", raising=False)
    assert not gpu_path(torch.zeros(1))
    monkeypatch.setenv("SQUEEZELSTM_KERNELS", "gpu")
    assert gpu_path(torch.zeros(1))
    from squeezelstm.spaces._kernels import kernels

    assert kernels() is None  # the CPU compiled loops never run on the GPU path


# Two of the four (mode, layout) pairs keep the Triton interpreter's time down; the layout is the shell's
# (RecurrentStack transposes before the layers), so each pair still covers both modes and both layouts.
@pytest.mark.parametrize("training,batch_first", [(True, False), (False, True)], ids=["train-seq_first", "eval-batch_first"])
@pytest.mark.parametrize("cell,args", CASES, ids=IDS)
def test_gpu_path_matches_reference_float32(cell, args, training, batch_first, gpu_env):
    if DEVICE == "cuda" and args.get("routing") == "hidden":
        training = False  # CUDA's kernel draws the window's Gumbel noise at once: another stream than the reference's
    model = _model(cell, args, batch_first=batch_first).train(training)
    fast, fast_grads = _two_windows(model, reference=False)
    ref, ref_grads = _two_windows(model, reference=True)
    for name, a, b in zip(("out1", "out2", "h_n", "c_n"), fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert fast_grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        if g is None:
            assert fast_grads[name] is None, name
            continue
        torch.testing.assert_close(fast_grads[name], g, rtol=1e-5, atol=1e-5, msg=name)


def _autocast_dtypes():
    """bf16, and fp16 where this CPU's fused LSTM kernel runs under fp16 autocast (oneDNN often does not)."""
    if DEVICE == "cuda":
        return [torch.bfloat16, torch.float16]
    dtypes = [torch.bfloat16]
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.nn.LSTM(2, 2)(torch.zeros(1, 1, 2))
        dtypes.append(torch.float16)
    except (RuntimeError, ValueError):
        pass
    return dtypes


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize("dtype", _autocast_dtypes(), ids=str)
@pytest.mark.parametrize("cell,args", CASES, ids=IDS)
def test_gpu_path_under_autocast(cell, args, dtype, gpu_env):
    model = _model(cell, args).train(not (DEVICE == "cuda" and args.get("routing") == "hidden"))
    low, low_grads = _two_windows(model, reference=False, autocast=dtype)
    ref, ref_grads = _two_windows(model, reference=True)
    tol = AUTOCAST_RTOL[dtype]
    grad_tol = AUTOCAST_GRAD_RTOL.get(cell, 2 * tol)
    for name, a, b in zip(("out1", "out2", "h_n", "c_n"), low, ref):
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < tol, (name, _rel(a, b))
    for name, g in ref_grads.items():
        if g is None:
            continue
        assert low_grads[name] is not None and torch.isfinite(low_grads[name]).all(), name
        assert _rel(low_grads[name], g) < grad_tol, (name, _rel(low_grads[name], g))


@pytest.mark.parametrize("cell,args,knob", [
    ("grouped", {"groups": [4, 2]}, "BLOCK_DIAGONAL_MAX_HIDDEN"),
    ("grouped", {"groups": 2, "bias": False}, "BLOCK_DIAGONAL_MAX_HIDDEN"),
    ("factorized", {"rank": 5}, "PRODUCT_MAX_HIDDEN"),
    ("routed", {"num_cells": 4, "routing": "token"}, "BLOCK_DIAGONAL_MAX_HIDDEN"),
    ("routed", {"num_cells": 2, "routing": "round_robin", "bias": False}, "BLOCK_DIAGONAL_MAX_HIDDEN"),
], ids=str)
def test_gpu_path_wide_cell_formulations(cell, args, knob, gpu_env, monkeypatch):
    """The formulations taken from hidden 1024 on (one fused LSTM per group or sub-cell; F-LSTM's
    bottleneck recurrence), forced here at a small width by lowering the threshold."""
    from squeezelstm.spaces import _fused

    monkeypatch.setattr(_fused, knob, 0)
    model = _model(cell, args).train()
    fast, fast_grads = _two_windows(model, reference=False)
    ref, ref_grads = _two_windows(model, reference=True)
    for name, a, b in zip(("out1", "out2", "h_n", "c_n"), fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    for name, g in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], g, rtol=1e-5, atol=1e-5, msg=name)
