"""Hidden-state and soft routing on the GPU path (``_triton_routed``): the Triton kernels against the
reference path, forward and every gradient. Without a GPU they run on CPU tensors in Triton's
interpreter (``SQUEEZELSTM_KERNELS=gpu``); on a CUDA machine the same tests run them compiled on
CUDA tensors. Sizes are tiny because the interpreter is slow; k = 3 and s = 4 leave every block
partly masked (k is padded to 4, s to 16, the batch to 16)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from torch.nn import functional as F  # noqa: E402

from squeezelstm.spaces.routed import RoutedLSTM  # noqa: E402

M, HID, K = 5, 12, 3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [("hidden", True), ("hidden", False), ("soft", True)]
IDS = ["hidden-train", "hidden-eval", "soft"]


@pytest.fixture
def gpu_path(monkeypatch):
    monkeypatch.setenv("SQUEEZELSTM_KERNELS", "gpu")


def _model(routing, training, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = RoutedLSTM(M, HID, num_layers=2, num_cells=K, routing=routing, dtype=dtype, **kw).train(training)
    if DEVICE == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return model.to(DEVICE)


def _gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _reference(model, x, hx, generator):
    """The stack layer by layer through ``forward_reference`` (x (T, N, M)), Gumbel noise from ``generator``.

    On the CPU one (T, N, k) draw of the noise (the GPU path's) is the same stream as the reference's
    T draws of (N, k); CUDA's generator gives different numbers, so there the reference is handed
    the window's draw, one step at a time."""
    out, hs, cs = x, [], []
    for i, layer in enumerate(model.layers):
        layer.generator = generator
        if x.is_cuda and layer.training and layer.routing == "hidden":
            draws = iter(torch.empty(x.shape[0], x.shape[1], K, device=x.device, dtype=x.dtype)
                         .exponential_(generator=generator).unbind(0))

            def gumbel_st(logits, draws=draws, tau=layer.gumbel_tau):
                soft = torch.softmax((logits - next(draws).log()) / tau, dim=-1)
                return F.one_hot(soft.argmax(-1), K).to(soft.dtype) - soft.detach() + soft

            layer._gumbel_st = gumbel_st
        try:
            out, (h, c) = layer.forward_reference(out, (hx[0][i], hx[1][i]))
        finally:
            layer.__dict__.pop("_gumbel_st", None)
            layer.generator = None
        hs.append(h)
        cs.append(c)
    return out, (torch.stack(hs), torch.stack(cs))


def _loss_and_grads(model, run, x, hx):
    """Outputs, final state, and the gradients of a fixed loss w.r.t. the input, the initial state and
    every parameter (zeros where none reaches: the argmax router in eval)."""
    model.zero_grad(set_to_none=True)
    x, h0, c0 = (t.detach().clone().requires_grad_(True) for t in (x, *hx))
    out, (h, c) = run(x, (h0, c0))
    w = torch.linspace(-1, 1, HID, dtype=out.dtype, device=out.device)
    (out.square().sum() + (c * w).sum() + (h * w.flip(0)).sum()).backward()
    grads = [x.grad, h0.grad, c0.grad] + [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    return [out, h, c] + grads


def _inputs(T, N, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, M, generator=gen, dtype=dtype)
    hx = tuple(0.5 * torch.randn(2, N, HID, generator=gen, dtype=dtype).to(DEVICE) for _ in range(2))
    return x.to(DEVICE), hx


def _assert_close(fast, ref, rtol, atol):
    names = ["out", "h_n", "c_n", "d_input", "d_h0", "d_c0"]
    for i, (a, b) in enumerate(zip(fast, ref)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, i=i: f"{(names + ['param'] * 99)[i]}[{i}]: {m}")


@pytest.mark.parametrize("routing,training,batch_first", [c + (False,) for c in CASES] + [("hidden", True, True)],
                         ids=IDS + ["hidden-train-batch-first"])
def test_kernels_match_reference_float32(gpu_path, routing, training, batch_first):
    model = _model(routing, training, batch_first=batch_first)
    x, hx = _inputs(4, 3, torch.float32)

    def fast(x, hx):
        out, state = model(x.transpose(0, 1) if batch_first else x, hx, generator=_gen(5))
        return (out.transpose(0, 1) if batch_first else out), state

    ref = _loss_and_grads(model, lambda x, hx: _reference(model, x, hx, _gen(5)), x, hx)
    _assert_close(_loss_and_grads(model, fast, x, hx), ref, rtol=1e-5, atol=1e-6)


def test_kernels_match_reference_float64(gpu_path):
    model = _model("hidden", True, dtype=torch.float64)
    x, hx = _inputs(3, 2, torch.float64)
    fast = _loss_and_grads(model, lambda x, hx: model(x, hx, generator=_gen(5)), x, hx)
    ref = _loss_and_grads(model, lambda x, hx: _reference(model, x, hx, _gen(5)), x, hx)
    _assert_close(fast, ref, rtol=1e-10, atol=1e-12)


def test_carried_state_across_windows(gpu_path):
    """Two windows, the second starting from the first's final state (gradients flow through it)."""
    model = _model("hidden", True)
    x, hx = _inputs(4, 2, torch.float32, seed=3)

    def two_windows(step):
        def run(x, hx):
            gen = _gen(9)
            out1, state = step(x[:2], hx, gen)
            out2, state = step(x[2:], state, gen)
            return torch.cat([out1, out2]), state
        return run

    fast = _loss_and_grads(model, two_windows(lambda x, hx, g: model(x, hx, generator=g)), x, hx)
    ref = _loss_and_grads(model, two_windows(lambda x, hx, g: _reference(model, x, hx, g)), x, hx)
    _assert_close(fast, ref, rtol=1e-5, atol=1e-6)


def test_autocast_bfloat16_close_to_float32_reference(gpu_path):
    """Under autocast the input projections run in bfloat16 and the recurrence in float32: outputs
    and gradients within 3e-2 (absolute plus relative) of the float32 reference."""
    model = _model("soft", True)
    x, hx = _inputs(4, 3, torch.float32)

    def fast(x, hx):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out, (h, c) = model(x, hx)
        assert out.dtype == torch.float32  # the last layer's recurrence runs in the parameters' dtype
        return out, (h, c)

    ref = _loss_and_grads(model, lambda x, hx: _reference(model, x, hx, None), x, hx)
    _assert_close(_loss_and_grads(model, fast, x, hx), ref, rtol=3e-2, atol=3e-2)


def test_no_torch_op_per_time_step(gpu_path):
    """Forward + backward dispatch the same torch ops whatever the window length: the time loop is
    inside the kernels (one launch each way per layer), never in Python."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    model = _model("hidden", True)
    counts = []
    for T in (1, 2):
        x, _ = _inputs(T, 2, torch.float32)
        model.zero_grad(set_to_none=True)  # the same gradient bookkeeping for every T
        with Count() as mode:
            out, (h, c) = model(x)
            (out.sum() + c.sum()).backward()
        counts.append(mode.ops)
    assert counts[0] == counts[1]
