"""H-LSTM on the GPU path (``_triton_hidden``): the Triton kernels against the reference path, forward
and every gradient, with pruned weights. Without a GPU they run on CPU tensors in Triton's interpreter
(``SQUEEZELSTM_KERNELS=gpu``); on a CUDA machine the same tests run them compiled on CUDA tensors.
Sizes are tiny because the interpreter is slow; n = 6 and d = 3 leave every block partly masked."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from squeezelstm.spaces.hidden import HiddenLayerLSTM  # noqa: E402

M, HID, D = 5, 6, 3
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def gpu_path(monkeypatch):
    monkeypatch.setenv("SQUEEZELSTM_KERNELS", "gpu")


def _model(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = HiddenLayerLSTM(M, HID, num_layers=2, gate_hidden=D, dtype=dtype, **kw)
    model.prune(0.3)  # masked weights: the kernels get weight * mask, as the reference uses
    if DEVICE == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    return model.to(DEVICE)


def _reference(model, x, hx):
    out, hs, cs = x, [], []
    for i, layer in enumerate(model.layers):
        out, (h, c) = layer.forward_reference(out, (hx[0][i], hx[1][i]))
        hs.append(h)
        cs.append(c)
    return out, (torch.stack(hs), torch.stack(cs))


def _loss_and_grads(model, run, x, hx):
    """Outputs, final state and the gradients of a fixed loss w.r.t. input, initial state and every parameter."""
    model.zero_grad(set_to_none=True)
    x, h0, c0 = (t.detach().clone().requires_grad_(True) for t in (x, *hx))
    out, (h, c) = run(x, (h0, c0))
    w = torch.linspace(-1, 1, HID, dtype=out.dtype, device=out.device)
    (out.square().sum() + (c * w).sum() + (h * w.flip(0)).sum()).backward()
    return [out, h, c, x.grad, h0.grad, c0.grad] + [p.grad for p in model.parameters()]


def _inputs(T, N, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, M, generator=gen, dtype=dtype)
    hx = tuple(0.5 * torch.randn(2, N, HID, generator=gen, dtype=dtype).to(DEVICE) for _ in range(2))
    return x.to(DEVICE), hx


def _assert_close(fast, ref, rtol, atol):
    names = ["out", "h_n", "c_n", "d_input", "d_h0", "d_c0", "w1_ih", "w1_hh", "w2", "b1", "b2"]
    for name, a, b in zip(names, fast, ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("bias,batch_first", [(True, False), (False, True)], ids=["bias", "no-bias-batch-first"])
def test_kernels_match_reference_float32(gpu_path, bias, batch_first):
    model = _model(bias=bias, batch_first=batch_first)
    x, hx = _inputs(4, 3, torch.float32)

    def fast(x, hx):
        out, state = model(x.transpose(0, 1) if batch_first else x, hx)
        return (out.transpose(0, 1) if batch_first else out), state

    _assert_close(_loss_and_grads(model, fast, x, hx), _loss_and_grads(model, lambda x, hx: _reference(model, x, hx), x, hx),
                  rtol=1e-5, atol=1e-6)


def test_kernels_match_reference_float64(gpu_path):
    model = _model(dtype=torch.float64)
    x, hx = _inputs(3, 2, torch.float64)
    _assert_close(_loss_and_grads(model, model, x, hx), _loss_and_grads(model, lambda x, hx: _reference(model, x, hx), x, hx),
                  rtol=1e-10, atol=1e-12)


def test_carried_state_across_windows(gpu_path):
    """Two windows, the second starting from the first's final state (gradients flow through it)."""
    model = _model()
    x, hx = _inputs(4, 2, torch.float32, seed=3)

    def two_windows(step):
        def run(x, hx):
            out1, state = step(x[:2], hx)
            out2, state = step(x[2:], state)
            return torch.cat([out1, out2]), state
        return run

    _assert_close(_loss_and_grads(model, two_windows(model), x, hx),
                  _loss_and_grads(model, two_windows(lambda x, hx: _reference(model, x, hx)), x, hx), rtol=1e-5, atol=1e-6)


def test_growth_gradients_recorded_as_on_the_cpu_path(gpu_path, monkeypatch):
    """grow() ranks dormant weights by the dense gradient of ``weight * mask``: the GPU path records
    the same one as the CPU path."""
    model = _model()
    x, hx = _inputs(3, 2, torch.float32)
    recorded = []
    for path in ("gpu", "0"):
        monkeypatch.setenv("SQUEEZELSTM_KERNELS", path)
        model.clear_growth_grads()
        _loss_and_grads(model, model, x, hx)
        recorded.append({(i, k): v.clone() for i, layer in enumerate(model.layers) for k, v in layer.growth_grads.items()})
    assert recorded[0].keys() == recorded[1].keys() and len(recorded[0]) == 6
    for key in recorded[0]:
        torch.testing.assert_close(recorded[0][key], recorded[1][key], rtol=1e-5, atol=1e-6, msg=str(key))


def test_autocast_bfloat16_close_to_float32_reference(gpu_path):
    """Under autocast the input projections run in bfloat16 and the recurrence in float32: outputs
    and gradients within 3e-2 (absolute plus relative) of the float32 reference."""
    model = _model()
    x, hx = _inputs(4, 3, torch.float32)

    def fast(x, hx):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out, (h, c) = model(x, hx)
        assert out.dtype == torch.float32
        return out, (h, c)

    _assert_close(_loss_and_grads(model, fast, x, hx), _loss_and_grads(model, lambda x, hx: _reference(model, x, hx), x, hx),
                  rtol=3e-2, atol=3e-2)


def test_no_torch_op_per_time_step(gpu_path):
    """Forward + backward dispatch the same torch ops whatever the window length."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += 1
            return func(*args, **(kwargs or {}))

    model = _model()
    counts = []
    for T in (1, 2):
        x, _ = _inputs(T, 2, torch.float32)
        model.zero_grad(set_to_none=True)  # the same gradient bookkeeping for every T
        with Count() as mode:
            out, (h, c) = model(x)
            (out.sum() + c.sum()).backward()
        counts.append(mode.ops)
    assert counts[0] == counts[1]
