"""Hidden-state routing's compiled CPU loop (``_routed_hidden``, ``hidden_forward``/``hidden_backward`` in
``_kernels.cpp``) against the reference path (``RoutedLayer.forward_reference``) and the Python loops.

Outputs, final states and every gradient (input, initial state, every parameter) in float64 (1e-10) and
float32 (1e-5 relative), two layers, ``batch_first`` both ways, carried state, training (straight-through
Gumbel-softmax, the same noise) and eval (argmax), both matmul paths, threads splitting the batch, ties
of the choice and sub-cells that are never chosen; and a perturbed kernel output fails these checks.
"""

from __future__ import annotations

import pytest
import torch

from squeezelstm.spaces import _kernels, _routed_hidden
from squeezelstm.spaces.routed import RoutedLSTM

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture
def calls(monkeypatch, ops):
    """Counts the compiled ops' calls, so a test knows the compiled loop ran (not a silent fallback)."""
    counts = {"hidden_forward": 0, "hidden_backward": 0}

    class Counting:
        def __getattr__(self, name):
            fn = getattr(ops, name)
            if name not in counts:
                return fn

            def counted(*args):
                counts[name] += 1
                return fn(*args)

            return counted

    monkeypatch.setattr(_routed_hidden, "kernels", lambda: Counting())
    return counts


def _run(model, x, hx, reference: bool, seed: int = 11):
    """Outputs, final state and the gradients of a fixed loss w.r.t. x, hx and every parameter."""
    model.zero_grad(set_to_none=True)
    xi = x.clone().requires_grad_(True)
    h0, c0 = (t.clone().requires_grad_(True) for t in hx)
    if reference:
        for layer in model.layers:
            layer.forward = layer.forward_reference  # instance attribute: the stack calls it per layer
    try:
        out, (h, c) = model(xi, (h0, c0), generator=torch.Generator().manual_seed(seed))
    finally:
        for layer in model.layers:
            layer.__dict__.pop("forward", None)
    gen = torch.Generator().manual_seed(5)
    weights = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype) for t in (out, h, c)]
    (sum((t * w).sum() for t, w in zip((out, h, c), weights))).backward()
    grads = [xi.grad, h0.grad, c0.grad] + [torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                           for p in model.parameters()]
    return [out.detach(), h.detach(), c.detach()] + grads


def _assert_same(a, b, dtype):
    """Each tensor to ``TOL`` relative, plus an absolute slack of that relative size times the tensor's
    largest entry: a weight gradient summed over many tokens has entries that cancel to ~1e-3 of their
    terms, where float32 rounding alone (the Python loops' as much as the compiled one's) exceeds 1e-5
    of the entry."""
    names = ["output", "h_n", "c_n", "d_input", "d_h0", "d_c0"] + [f"d_param{i}" for i in range(len(a) - 6)]
    for name, u, v in zip(names, a, b, strict=True):
        tol = TOL[dtype]
        atol = max(tol["atol"], tol["rtol"] * float(v.abs().max())) if v.numel() else tol["atol"]
        torch.testing.assert_close(u, v, rtol=tol["rtol"], atol=atol, msg=lambda m, name=name: f"{name}: {m}")


def _model(dtype, training, batch_first=False, m=5, n=12, layers=2, bias=True, seed=0):
    torch.manual_seed(seed)
    model = RoutedLSTM(m, n, layers, bias=bias, batch_first=batch_first, num_cells=4, routing="hidden", dtype=dtype)
    return model.train(training)


def _inputs(model, steps, batch, dtype, seed=1):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, steps, model.input_size) if model.batch_first else (steps, batch, model.input_size)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    hx = tuple(torch.randn(model.num_layers, batch, model.hidden_size, generator=gen, dtype=dtype) for _ in "hc")
    return x, hx


@pytest.mark.parametrize("gemm", ["direct", "aten"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_loop_matches_reference(calls, monkeypatch, dtype, training, batch_first, gemm):
    monkeypatch.setenv("SQUEEZELSTM_DIRECT_GEMM", "1" if gemm == "direct" else "0")
    model = _model(dtype, training, batch_first)
    model.layers[1].gumbel_tau = 0.6  # the temperature reaches the loop (forward and backward)
    x, hx = _inputs(model, 6, 3, dtype)
    fast = _run(model, x, hx, reference=False)
    assert calls == {"hidden_forward": 2, "hidden_backward": 2}  # both layers, compiled
    _assert_same(fast, _run(model, x, hx, reference=True), dtype)


@pytest.mark.parametrize("training", [True, False])
def test_carried_state_and_split_windows_equal_the_whole(calls, training):
    """Two half windows, the state carried, equal one whole window, output and every gradient; the Gumbel
    noise of the second half comes after the first's in the generator (one layer in training: two would
    interleave their draws differently)."""
    dtype = torch.float64
    model = _model(dtype, training, bias=False, layers=1 if training else 2)
    x, hx = _inputs(model, 8, 4, dtype)
    whole, parts = [], []
    for run, acc in ((None, whole), ("split", parts)):
        model.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(3)
        if run is None:
            out, (h, c) = model(xi, hx, generator=gen)
        else:
            out1, state = model(xi[:4], hx, generator=gen)
            out2, (h, c) = model(xi[4:], state, generator=gen)
            out = torch.cat([out1, out2])
        (out.sin().sum() + h.sum() + 2 * c.sum()).backward()
        acc += [out.detach(), h.detach(), c.detach(), xi.grad] + [p.grad for p in model.parameters() if p.grad is not None]
    assert len(whole) == len(parts)
    for a, b in zip(whole, parts):
        torch.testing.assert_close(a, b, **TOL[dtype])
    assert calls["hidden_forward"] == 3 * model.num_layers and calls["hidden_backward"] == 3 * model.num_layers


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_threads_splitting_the_batch_match_the_python_loops(calls, monkeypatch, dtype):
    """A batch large enough for the loop to run on two threads (each its own sequences) against the layer's
    Python loops (SQUEEZELSTM_KERNELS=0: ``_forward_mixed``, itself checked against the reference)."""
    model = _model(dtype, True, m=7, n=80, layers=1)
    x, hx = _inputs(model, 5, 53, dtype)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fast = _run(model, x, hx, reference=False)
    finally:
        torch.set_num_threads(threads)
    assert calls["hidden_forward"] == 1
    monkeypatch.setenv("SQUEEZELSTM_KERNELS", "0")
    _assert_same(fast, _run(model, x, hx, reference=False), dtype)
    assert calls["hidden_forward"] == 1


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bias", [(0.0, 1e20, 0.0, 1e20), (0.0, 0.0, 0.0, 0.0), (-1e20, -1e20, -1e20, 1e20)])
def test_ties_and_idle_sub_cells(calls, training, bias):
    """Router logits that tie exactly (a zero router weight; in training the huge equal biases swallow the
    noise, so z and soft tie too): the first maximum is chosen, as torch.argmax does, and sub-cells that
    are never chosen get no gate gradient (empty segments), all as in the reference."""
    dtype = torch.float64
    model = _model(dtype, training, layers=1)
    layer = model.layers[0]
    with torch.no_grad():
        layer.router_weight.zero_()
        layer.router_bias.copy_(torch.tensor(bias, dtype=dtype))
    x, hx = _inputs(model, 4, 3, dtype)
    fast = _run(model, x, hx, reference=False)
    _assert_same(fast, _run(model, x, hx, reference=True), dtype)
    if training and max(bias) == 0:
        return  # the noise decides then
    first = max(range(4), key=lambda j: (bias[j], -j))
    s = model.hidden_size // 4
    out = fast[0]
    for j in range(4):  # only the chosen sub-cell's slice of the state ever moves
        moved = not torch.equal(out[:, :, j * s:(j + 1) * s], hx[0][0, :, j * s:(j + 1) * s].expand(4, -1, -1))
        assert moved == (j == first)
    assert calls["hidden_backward"] == 1


def test_single_step_single_sequence_and_unbatched(calls):
    dtype = torch.float64
    model = _model(dtype, True)
    for steps, batch in ((1, 1), (3, 1), (1, 4)):
        x, hx = _inputs(model, steps, batch, dtype, seed=steps + batch)
        _assert_same(_run(model, x, hx, reference=False), _run(model, x, hx, reference=True), dtype)
    out, (h, c) = model(torch.randn(3, 5, dtype=dtype))  # unbatched (T, m)
    assert out.shape == (3, 12) and h.shape == c.shape == (2, 12)
    out, (h, c) = model(torch.randn(0, 2, 5, dtype=dtype))
    assert out.shape == (0, 2, 12) and torch.equal(h, torch.zeros(2, 2, 12, dtype=dtype))


@pytest.mark.parametrize("which", ["dgates", "dlogits", "dh0", "dc0", "hs", "soft", "choice"])
def test_a_perturbed_kernel_output_fails_the_comparison(monkeypatch, ops, which):
    """The checks above can fail: one kernel output changed slightly (or one choice flipped) is caught."""
    dtype = torch.float64
    model = _model(dtype, True)
    x, hx = _inputs(model, 6, 3, dtype)
    reference = _run(model, x, hx, reference=True)

    class Broken:
        def __getattr__(self, name):
            return getattr(ops, name)

        def hidden_forward(self, *args):
            hs, cs, acts, tcs, cands, soft, choice = ops.hidden_forward(*args)
            if which == "hs":
                hs[-1, 0, 0] += 1e-6
            elif which == "soft":
                soft[2, 1] = soft[2, 1].roll(1)
            elif which == "choice":
                choice[1, 2] = (choice[1, 2] + 1) % 4
            return hs, cs, acts, tcs, cands, soft, choice

        def hidden_backward(self, *args):
            out = dict(zip(["dgates", "dlogits", "dh0", "dc0"], ops.hidden_backward(*args)))
            if which in out:
                out[which].view(-1)[3] *= 1 + 1e-6
            return tuple(out.values())

    monkeypatch.setattr(_routed_hidden, "kernels", lambda: Broken())
    with pytest.raises(AssertionError):
        _assert_same(_run(model, x, hx, reference=False), reference, dtype)
