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
def wide(monkeypatch):
    """F-LSTM's own kernels from any width (the product threshold lowered to 0)."""
    monkeypatch.setattr(_fused, "PRODUCT_MAX_HIDDEN", 0)


def _model(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return FactorizedLSTM(M, HID, num_layers=2, rank=RANK, dtype=dtype, **kw).to(DEVICE)


@pytest.mark.parametrize("bias,batch_first,batch", [(True, False, 17), (False, True, 3)], ids=["bias", "no-bias-batch-first"])
def test_kernels_match_reference_float32(gpu_kernels, wide, bias, batch_first, batch):
    model = _model(bias=bias, batch_first=batch_first)
    x, hx = gpu_kernels.inputs(model, 2, batch, torch.float32)

    def fast(x, hx):
        out, state = model(x.transpose(0, 1) if batch_first else x, hx)
        return (out.transpose(0, 1) if batch_first else out), state

    gpu_kernels.check(model, fast, x, hx, rtol=1e-5, atol=1e-6)


def test_kernels_match_reference_float64(gpu_kernels, wide):
    model = _model(dtype=torch.float64)
    x, hx = gpu_kernels.inputs(model, 3, 2, torch.float64)
    gpu_kernels.check(model, model, x, hx, rtol=1e-10, atol=1e-12)


def test_carried_state_and_autocast(gpu_kernels, wide):
    """Two windows with the state carried (float32, 1e-5), and the same under bf16 autocast (input
    projections in bf16, recurrence in float32) within 3e-2 of the float32 reference."""
    model = _model()
    x, hx = gpu_kernels.inputs(model, 4, 2, torch.float32, seed=3)

    def two_windows(step, autocast=False):
        def run(x, hx):
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
                out1, state = step(x[:2], hx)
                out2, state = step(x[2:], state)
            return torch.cat([out1, out2]).float(), state
        return run

    gpu_kernels.check(model, model, x, hx, rtol=1e-5, atol=1e-6, wrap=two_windows)
    gpu_kernels.check(model, two_windows(model, autocast=True), x, hx, rtol=3e-2, atol=3e-2,
                      reference=two_windows(lambda x, hx: gpu_kernels.reference(model, x, hx)))


def test_one_launch_per_step_and_direction(gpu_kernels, wide, monkeypatch):
    """Per layer and window: T forward and T backward launches, and torch ops outside them (the
    interpreter's own copies of the arguments are not GPU work) that do not grow with T."""
    launches = []
    for name in ("_step_kernel", "_step_backward_kernel"):
        k = getattr(_triton_factorized, name)
        monkeypatch.setattr(_triton_factorized, name, _Counted(k, name, launches))
    model = _model()
    ops = []
    for T in (1, 2):
        launches.clear()
        ops.append(gpu_kernels.torch_ops(model, T, counted=lambda: not _Counted.inside))
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
