"""Shared checks for the cell tests (fixtures, since importlib mode rules out importing a helper module)."""

import pytest
import torch

from squeezelstm.spaces import _kernels


@pytest.fixture
def ops():
    """The compiled recurrence ops (``torch.ops.squeezelstm_kernels``)."""
    ops = _kernels.kernels()
    # This suite runs where a C++ compiler exists (CI and every dev machine): a silent fallback to the
    # Python loops would hide a broken build, so it is an error here, not a skip.
    assert ops is not None, "the compiled recurrence kernels did not build (see the RuntimeWarning above)"
    return ops


@pytest.fixture
def assert_same_function():
    """``check(model, reference, input_size, hidden_size, layers, rtol, atol)``: on one random window and
    initial state (in ``reference``'s dtype), ``model`` gives ``reference``'s output and final state
    (the trivial settings of a family against the LSTM whose weights were copied into it)."""

    def check(model, reference, input_size, hidden_size, layers, rtol=1e-5, atol=1e-6):
        dtype = next(reference.parameters()).dtype
        x = torch.randn(7, 3, input_size, dtype=dtype)
        hx = (torch.randn(layers, 3, hidden_size, dtype=dtype), torch.randn(layers, 3, hidden_size, dtype=dtype))
        out, (h, c) = model(x, hx)
        out_r, (h_r, c_r) = reference(x, hx)
        torch.testing.assert_close((out, h, c), (out_r, h_r, c_r), rtol=rtol, atol=atol)

    return check


class KernelCheck:
    """The steps the Triton kernel tests (``test_spaces_triton_*.py``) share: inputs for a stack, the
    stack run layer by layer through ``forward_reference``, a fixed loss's outputs and gradients, their
    comparison, and the torch ops one window dispatches. On CUDA tensors where there is a GPU, else on
    CPU tensors through Triton's interpreter."""

    device = "cuda" if torch.cuda.is_available() else "cpu"

    def inputs(self, model, T, N, dtype, seed=1):
        """``(x (T, N, input_size), (h0, c0))`` with the state (layers, N, hidden_size) scaled by 0.5."""
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(T, N, model.input_size, generator=gen, dtype=dtype)
        hx = tuple(0.5 * torch.randn(model.num_layers, N, model.hidden_size, generator=gen, dtype=dtype).to(self.device)
                   for _ in range(2))
        return x.to(self.device), hx

    @staticmethod
    def reference(model, x, hx, layer_forward=None):
        """``(out, (h_n, c_n))`` of ``model``'s stack on ``x`` (T, N, M), layer by layer through
        ``layer.forward_reference`` (or ``layer_forward(layer, x, state)``)."""
        out, hs, cs = x, [], []
        for i, layer in enumerate(model.layers):
            state = (hx[0][i], hx[1][i])
            out, (h, c) = layer.forward_reference(out, state) if layer_forward is None else layer_forward(layer, out, state)
            hs.append(h)
            cs.append(c)
        return out, (torch.stack(hs), torch.stack(cs))

    @staticmethod
    def loss_and_grads(model, run, x, hx):
        """``run(x, (h0, c0))``'s outputs and final state, and the gradients of a fixed loss of them
        w.r.t. the input, the initial state and every parameter (zeros where none reaches: the argmax
        router in eval), by name."""
        model.zero_grad(set_to_none=True)
        x, h0, c0 = (t.detach().clone().requires_grad_(True) for t in (x, *hx))
        out, (h, c) = run(x, (h0, c0))
        w = torch.linspace(-1, 1, out.shape[-1], dtype=out.dtype, device=out.device)
        (out.square().sum() + (c * w).sum() + (h * w.flip(0)).sum()).backward()
        found = {"out": out, "h_n": h, "c_n": c, "d_input": x.grad, "d_h0": h0.grad, "d_c0": c0.grad}
        found.update((f"d_{name}", torch.zeros_like(p) if p.grad is None else p.grad) for name, p in model.named_parameters())
        return found

    @staticmethod
    def assert_close(fast, ref, rtol, atol):
        """Every output and gradient of ``loss_and_grads`` on the fast path as on the reference."""
        assert fast.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(fast[name], ref[name], rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")

    def check(self, model, fast, x, hx, rtol, atol, reference=None, wrap=lambda run: run):
        """``fast(x, hx)``'s outputs and gradients against those of ``reference`` (the stack layer by
        layer, by default), both runs through ``wrap`` (for example, two windows with the state carried)."""
        reference = reference or (lambda x, hx: self.reference(model, x, hx))
        self.assert_close(self.loss_and_grads(model, wrap(fast), x, hx), self.loss_and_grads(model, wrap(reference), x, hx),
                          rtol=rtol, atol=atol)

    def torch_ops(self, model, T, counted=lambda: True):
        """The torch ops that forward + backward of one window of ``T`` steps (batch 2, zero initial state)
        dispatch, those during which ``counted()`` is false left out."""
        from torch.utils._python_dispatch import TorchDispatchMode

        class Count(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.ops = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                self.ops += bool(counted())
                return func(*args, **(kwargs or {}))

        x, _ = self.inputs(model, T, 2, torch.float32)
        model.zero_grad(set_to_none=True)  # the same gradient bookkeeping for every T
        with Count() as mode:
            out, (h, c) = model(x)
            (out.sum() + c.sum()).backward()
        return mode.ops


@pytest.fixture
def gpu_kernels(monkeypatch):
    """The GPU code path (``SQUEEZELSTM_KERNELS=gpu``; on CUDA, float32 matmuls without TF32, as the
    reference) and the steps the Triton kernel tests share (``KernelCheck``)."""
    monkeypatch.setenv("SQUEEZELSTM_KERNELS", "gpu")
    if torch.cuda.is_available():
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    return KernelCheck()
