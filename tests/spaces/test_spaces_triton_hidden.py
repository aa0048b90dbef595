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


def _model(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    model = HiddenLayerLSTM(M, HID, num_layers=2, gate_hidden=D, dtype=dtype, **kw)
    model.prune(0.3)  # masked weights: the kernels get weight * mask, as the reference uses
    return model.to(DEVICE)


@pytest.mark.parametrize("bias,batch_first", [(True, False), (False, True)], ids=["bias", "no-bias-batch-first"])
def test_kernels_match_reference_float32(gpu_kernels, bias, batch_first):
    model = _model(bias=bias, batch_first=batch_first)
    x, hx = gpu_kernels.inputs(model, 4, 3, torch.float32)

    def fast(x, hx):
        out, state = model(x.transpose(0, 1) if batch_first else x, hx)
        return (out.transpose(0, 1) if batch_first else out), state

    gpu_kernels.check(model, fast, x, hx, rtol=1e-5, atol=1e-6)


def test_kernels_match_reference_float64(gpu_kernels):
    model = _model(dtype=torch.float64)
    x, hx = gpu_kernels.inputs(model, 3, 2, torch.float64)
    gpu_kernels.check(model, model, x, hx, rtol=1e-10, atol=1e-12)


def test_carried_state_across_windows(gpu_kernels):
    """Two windows, the second starting from the first's final state (gradients flow through it)."""
    model = _model()
    x, hx = gpu_kernels.inputs(model, 4, 2, torch.float32, seed=3)

    def two_windows(step):
        def run(x, hx):
            out1, state = step(x[:2], hx)
            out2, state = step(x[2:], state)
            return torch.cat([out1, out2]), state
        return run

    gpu_kernels.check(model, model, x, hx, rtol=1e-5, atol=1e-6, wrap=two_windows)


def test_growth_gradients_recorded_as_on_the_cpu_path(gpu_kernels, monkeypatch):
    """grow() ranks dormant weights by the dense gradient of ``weight * mask``: the GPU path records
    the same one as the CPU path."""
    model = _model()
    x, hx = gpu_kernels.inputs(model, 3, 2, torch.float32)
    recorded = []
    for path in ("gpu", "0"):
        monkeypatch.setenv("SQUEEZELSTM_KERNELS", path)
        model.clear_growth_grads()
        gpu_kernels.loss_and_grads(model, model, x, hx)
        recorded.append({(i, k): v.clone() for i, layer in enumerate(model.layers) for k, v in layer.growth_grads.items()})
    assert recorded[0].keys() == recorded[1].keys() and len(recorded[0]) == 6
    for key in recorded[0]:
        torch.testing.assert_close(recorded[0][key], recorded[1][key], rtol=1e-5, atol=1e-6, msg=str(key))


def test_autocast_bfloat16_close_to_float32_reference(gpu_kernels):
    """Under autocast the input projections run in bfloat16 and the recurrence in float32: outputs
    and gradients within 3e-2 (absolute plus relative) of the float32 reference."""
    model = _model()
    x, hx = gpu_kernels.inputs(model, 4, 3, torch.float32)

    def fast(x, hx):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out, (h, c) = model(x, hx)
        assert out.dtype == torch.float32
        return out, (h, c)

    gpu_kernels.check(model, fast, x, hx, rtol=3e-2, atol=3e-2)


def test_no_torch_op_per_time_step(gpu_kernels):
    """Forward + backward dispatch the same torch ops whatever the window length."""
    model = _model()
    assert gpu_kernels.torch_ops(model, 1) == gpu_kernels.torch_ops(model, 2)
