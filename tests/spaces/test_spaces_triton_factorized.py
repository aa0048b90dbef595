"""F-LSTM's wide-cell GPU path (``_triton_factorized``, one launch a step and direction, taken from
hidden ``_fused.PRODUCT_MAX_HIDDEN``; the threshold is lowered to 0 here) against the reference path,
forward and every gradient. Without a GPU the kernels run on CPU tensors in Triton's interpreter; on a
CUDA machine the same tests run them compiled. n = 72 spans two column programs (the second mostly
masked), so the atomic split-K sums of the bottleneck are exercised across programs; batch 17 (in
one case) spans two row blocks."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from squeezelstm.spaces import _fused  # noqa: E402
from squeezelstm.spaces import _triton_factorized  # noqa: E402
from squeezelstm.spaces.factorized import FactorizedLSTM  # noqa: E402

M, HID, RANK = 5, 72, 6
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def gpu_path(monkeypatch):
    monkeypatch.setenv("SQUEEZELSTM_KERNELS", "gpu")
    monkeypatch.setattr(_fused, "PRODUCT_MAX_HIDDEN", 0)
    if DEVICE == "cuda":
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def _model(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return FactorizedLSTM(M, HID, num_layers=2, rank=RANK, dtype=dtype, **kw).to(DEVICE)


def _reference(model, x, hx):
    out, hs, cs = x, [], []
    for i, layer in enumerate(model.layers):
        out, (h, c) = layer.forward_reference(out, (hx[0][i], hx[1][i]))
        hs.append(h)
        cs.append(c)
    return out, (torch.stack(hs), torch.stack(cs))


def _loss_and_grads(model, run, x, hx):
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
    names = ["out", "h_n", "c_n", "d_input", "d_h0", "d_c0", "param"] + ["param"] * 9
    for name, a, b in zip(names, fast, ref):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("bias,batch_first,batch", [(True, False, 17), (False, True, 3)], ids=["bias", "no-bias-batch-first"])
def test_kernels_match_reference_float32(gpu_path, bias, batch_first, batch):
    model = _model(bias=bias, batch_first=batch_first)
    x, hx = _inputs(2, batch, torch.float32)

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


def test_carried_state_and_autocast(gpu_path):
    """Two windows with the state carried (float32, 1e-5), and the same under bf16 autocast (input
    projections in bf16, recurrence in float32) within 3e-2 of the float32 reference."""
    model = _model()
    x, hx = _inputs(4, 2, torch.float32, seed=3)

    def two_windows(step, autocast=False):
        def run(x, hx):
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
                out1, state = step(x[:2], hx)
                out2, state = step(x[2:], state)
            return torch.cat([out1, out2]).float(), state
        return run

    ref = _loss_and_grads(model, two_windows(lambda x, hx: _reference(model, x, hx)), x, hx)
    _assert_close(_loss_and_grads(model, two_windows(model), x, hx), ref, rtol=1e-5, atol=1e-6)
    _assert_close(_loss_and_grads(model, two_windows(model, autocast=True), x, hx), ref, rtol=3e-2, atol=3e-2)


def test_one_launch_per_step_and_direction(gpu_path, monkeypatch):
    """Per layer and window: T forward and T backward launches, and torch ops outside them (the
    interpreter's own copies of the arguments are not GPU work) that do not grow with T."""
    from torch.utils._python_dispatch import TorchDispatchMode

    launches = []

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops += not _Counted.inside
            return func(*args, **(kwargs or {}))

    for name in ("_step_kernel", "_step_backward_kernel"):
        k = getattr(_triton_factorized, name)
        monkeypatch.setattr(_triton_factorized, name, _Counted(k, name, launches))
    model = _model()
    ops = []
    for T in (1, 2):
        launches.clear()
        x, _ = _inputs(T, 2, torch.float32)
        model.zero_grad(set_to_none=True)  # the same gradient bookkeeping for every T
        with Count() as mode:
            out, (h, c) = model(x)
            (out.sum() + c.sum()).backward()
        ops.append(mode.ops)
        assert launches.count("_step_kernel") == launches.count("_step_backward_kernel") == 2 * T  # 2 layers
    assert ops[0] == ops[1]


class _Counted:
    """A kernel whose launches are logged by name; ``inside`` is true during one."""

    inside = False

    def __init__(self, kernel, name, log):
        self.kernel, self.name, self.log = kernel, name, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.log.append(self.name)
            _Counted.inside = True
            try:
                return self.kernel[grid](*args, **kwargs)
            finally:
                _Counted.inside = False

        return launch
