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


def _model(routing, training, dtype=torch.float32, **kw):
    torch.manual_seed(0)
    return RoutedLSTM(M, HID, num_layers=2, num_cells=K, routing=routing, dtype=dtype, **kw).train(training).to(DEVICE)


def _gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


def _reference(kc, model, generator):
    """The stack layer by layer through ``forward_reference`` (``kc.reference``), Gumbel noise from ``generator``.

    On the CPU one (T, N, k) draw of the noise (the GPU path's) is the same stream as the reference's
    T draws of (N, k); CUDA's generator gives different numbers, so there the reference is handed
    the window's draw, one step at a time."""

    def layer_forward(layer, x, state):
        layer.generator = generator
        if x.is_cuda and layer.training and layer.routing == "hidden":
            draws = iter(torch.empty(x.shape[0], x.shape[1], K, device=x.device, dtype=x.dtype)
                         .exponential_(generator=generator).unbind(0))

            def gumbel_st(logits, draws=draws, tau=layer.gumbel_tau):
                soft = torch.softmax((logits - next(draws).log()) / tau, dim=-1)
                return F.one_hot(soft.argmax(-1), K).to(soft.dtype) - soft.detach() + soft

            layer._gumbel_st = gumbel_st
        try:
            return layer.forward_reference(x, state)
        finally:
            layer.__dict__.pop("_gumbel_st", None)
            layer.generator = None

    return lambda x, hx: kc.reference(model, x, hx, layer_forward)


@pytest.mark.parametrize("routing,training,batch_first", [c + (False,) for c in CASES] + [("hidden", True, True)],
                         ids=IDS + ["hidden-train-batch-first"])
def test_kernels_match_reference_float32(gpu_kernels, routing, training, batch_first):
    model = _model(routing, training, batch_first=batch_first)
    x, hx = gpu_kernels.inputs(model, 4, 3, torch.float32)

    def fast(x, hx):
        out, state = model(x.transpose(0, 1) if batch_first else x, hx, generator=_gen(5))
        return (out.transpose(0, 1) if batch_first else out), state

    gpu_kernels.check(model, fast, x, hx, rtol=1e-5, atol=1e-6, reference=lambda x, hx: _reference(gpu_kernels, model, _gen(5))(x, hx))


def test_kernels_match_reference_float64(gpu_kernels):
    model = _model("hidden", True, dtype=torch.float64)
    x, hx = gpu_kernels.inputs(model, 3, 2, torch.float64)
    gpu_kernels.check(model, lambda x, hx: model(x, hx, generator=_gen(5)), x, hx, rtol=1e-10, atol=1e-12,
                      reference=lambda x, hx: _reference(gpu_kernels, model, _gen(5))(x, hx))


def test_carried_state_across_windows(gpu_kernels):
    """Two windows, the second starting from the first's final state (gradients flow through it)."""
    model = _model("hidden", True)
    x, hx = gpu_kernels.inputs(model, 4, 2, torch.float32, seed=3)

    def two_windows(step):
        def run(x, hx):
            gen = _gen(9)
            out1, state = step(x[:2], hx, gen)
            out2, state = step(x[2:], state, gen)
            return torch.cat([out1, out2]), state
        return run

    gpu_kernels.check(model, two_windows(lambda x, hx, g: model(x, hx, generator=g)), x, hx, rtol=1e-5, atol=1e-6,
                      reference=two_windows(lambda x, hx, g: _reference(gpu_kernels, model, g)(x, hx)))


def test_autocast_bfloat16_close_to_float32_reference(gpu_kernels):
    """Under autocast the input projections run in bfloat16 and the recurrence in float32: outputs
    and gradients within 3e-2 (absolute plus relative) of the float32 reference."""
    model = _model("soft", True)
    x, hx = gpu_kernels.inputs(model, 4, 3, torch.float32)

    def fast(x, hx):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out, (h, c) = model(x, hx)
        assert out.dtype == torch.float32  # the last layer's recurrence runs in the parameters' dtype
        return out, (h, c)

    gpu_kernels.check(model, fast, x, hx, rtol=3e-2, atol=3e-2, reference=_reference(gpu_kernels, model, None))


def test_no_torch_op_per_time_step(gpu_kernels):
    """Forward + backward dispatch the same torch ops whatever the window length: the time loop is
    inside the kernels (one launch each way per layer), never in Python."""
    model = _model("hidden", True)
    assert gpu_kernels.torch_ops(model, 1) == gpu_kernels.torch_ops(model, 2)
