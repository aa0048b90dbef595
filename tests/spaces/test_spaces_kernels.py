"""The compiled recurrence loops (``spaces/_kernels.cpp``) against the Python loops they replace.

The Python loops of ``_recurrence.py`` are the specification (and the fallback where no compiler is
available); the layer-level fast-vs-reference checks in ``test_spaces_fastpath.py`` run whichever
path is active. Here both paths run on the same inputs: forward, state and every gradient, in float64
(tight) and float32 (1e-5 relative), with and without hard-routing masks, and the float32 activation
approximations are checked against torch's over the whole input range, NaN included.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from squeezelstm.spaces import _kernels, _recurrence

TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@pytest.fixture
def python_loops(monkeypatch):
    """Run ``fn`` with the compiled kernels switched off (the Python loops of ``_recurrence``)."""

    def run(fn, *args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(_recurrence, "kernels", lambda: None)
            return fn(*args, **kwargs)

    return run


@pytest.fixture(params=["direct", "aten"])
def gemm_path(request, monkeypatch):
    """The compiled loops' per-step matmuls through the BLAS torch links (called directly) or through
    ATen's bmm/mm (the fallback where that BLAS symbol is not found)."""
    monkeypatch.setenv("SQUEEZELSTM_DIRECT_GEMM", "1" if request.param == "direct" else "0")
    return request.param


def test_source_ships_with_the_installed_package():
    assert (Path(_kernels.__file__).parent / "_kernels.cpp").is_file()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("SQUEEZELSTM_KERNELS", "0")
    assert _kernels.kernels() is None


@pytest.mark.parametrize("env", [{"SQUEEZELSTM_MALLOC_TUNE": "0"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1000000"}])
def test_malloc_tuning_leaves_a_configured_malloc_alone(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _kernels.keep_freed_memory() is False


def _outputs_and_grads(fn, inputs, seed=7):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None and t.is_floating_point() else t
              for t in inputs]
    outs = fn(*leaves)
    gen = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    grads = [t.grad for t in leaves if t is not None and t.is_floating_point()]
    return [o.detach() for o in outs], grads


def _assert_same(a, b, dtype):
    for x, y in zip(a, b, strict=True):
        # atol scaled by the tensor's magnitude: a weight gradient is a sum over the whole window, and
        # where it cancels to ~0 the summation order (threads, BLAS blocking) moves it by float rounding
        # of the terms, not of the result.
        tol = dict(TOL[dtype])
        tol["atol"] *= max(1.0, float(y.abs().max()))
        torch.testing.assert_close(x, y, **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("bias", [False, True])
# widths and batches on and off the vector width (16 floats), odd ones included
@pytest.mark.parametrize("groups,steps,batch,s", [(4, 7, 3, 5), (1, 5, 2, 16), (2, 1, 4, 3), (2, 4, 13, 40),
                                                  (3, 3, 6, 64), (1, 2, 7, 17)])
def test_linear_recurrence_matches_python_loop(ops, python_loops, gemm_path, dtype, masked, bias, groups, steps,
                                               batch, s):
    gen = torch.Generator().manual_seed(groups * 100 + steps)
    xw = 2.0 * torch.randn(groups, steps, batch, 4 * s, generator=gen, dtype=dtype)
    h0 = torch.randn(groups, batch, s, generator=gen, dtype=dtype)
    c0 = torch.randn(groups, batch, s, generator=gen, dtype=dtype)
    w = torch.randn(groups, s, 4 * s, generator=gen, dtype=dtype) / s**0.5
    keep = torch.rand(groups, steps, batch, 1, generator=gen) < 0.5 if masked else None
    bvec = torch.randn(groups, 4 * s, generator=gen, dtype=dtype) if bias else None

    def fn(xw, h0, c0, w, bvec):
        return _recurrence.linear_recurrence(xw, h0, c0, (w,), keep, bias=bvec)

    compiled = _outputs_and_grads(fn, [xw, h0, c0, w, bvec])
    reference = python_loops(_outputs_and_grads, fn, [xw, h0, c0, w, bvec])
    _assert_same(compiled[0], reference[0], dtype)
    _assert_same(compiled[1], reference[1], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("groups,steps,batch,s,m_g", [(4, 7, 3, 5, 6), (1, 3, 2, 16, 16), (2, 5, 13, 40, 3)])
def test_input_side_inside_the_recurrence_matches(ops, python_loops, gemm_path, dtype, groups, steps, batch, s, m_g):
    """``x_weight``: the G-LSTM's x side computed a step at a time inside the compiled loop equals the
    window-wide projection fed in as ``xw``, and the Python loop, in outputs and every gradient."""
    gen = torch.Generator().manual_seed(groups * 10 + s)
    x = torch.randn(steps, batch, groups * m_g, generator=gen, dtype=dtype)
    wx = torch.randn(groups, m_g, 4 * s, generator=gen, dtype=dtype)
    h0 = torch.randn(groups, batch, s, generator=gen, dtype=dtype)
    c0 = torch.randn(groups, batch, s, generator=gen, dtype=dtype)
    w = torch.randn(groups, s, 4 * s, generator=gen, dtype=dtype) / s**0.5
    bvec = torch.randn(groups, 4 * s, generator=gen, dtype=dtype)

    def fused(x, wx, h0, c0, w, bvec):
        return _recurrence.linear_recurrence(x, h0, c0, (w,), bias=bvec, x_weight=wx)

    def precomputed(x, wx, h0, c0, w, bvec):
        xw = torch.bmm(x.reshape(steps * batch, groups, m_g).transpose(0, 1), wx).view(groups, steps, batch, 4 * s)
        return _recurrence.linear_recurrence(xw, h0, c0, (w,), bias=bvec)

    inputs = [x, wx, h0, c0, w, bvec]
    compiled = _outputs_and_grads(fused, inputs)
    for other in (_outputs_and_grads(precomputed, inputs), python_loops(_outputs_and_grads, fused, inputs)):
        _assert_same(compiled[0], other[0], dtype)
        _assert_same(compiled[1], other[1], dtype)
    with pytest.raises(ValueError, match="no keep"):
        _recurrence.linear_recurrence(x, h0, c0, (w,), torch.ones(groups, steps, batch, 1, dtype=torch.bool), x_weight=wx)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_rows_after_the_last_update_are_skipped_exactly(ops, python_loops, gemm_path, dtype):
    """Token routing orders sequences so the updated ones come first at each step; the compiled loops
    then run a step's matmuls only up to the last updated row (none at all for a step nobody updates).
    Masks of that shape, all-masked steps included, against the Python loop."""
    groups, steps, batch, s = 3, 6, 9, 20
    gen = torch.Generator().manual_seed(5)
    xw = torch.randn(groups, steps, batch, 4 * s, generator=gen, dtype=dtype)
    h0 = torch.randn(groups, batch, s, generator=gen, dtype=dtype)
    c0 = torch.randn(groups, batch, s, generator=gen, dtype=dtype)
    w = torch.randn(groups, s, 4 * s, generator=gen, dtype=dtype) / s**0.5
    active = torch.randint(0, batch + 1, (groups, steps, 1, 1), generator=gen)
    active[0, 2] = 0  # a step no sequence updates
    active[1, 0] = batch
    keep = torch.arange(batch).view(1, 1, batch, 1) < active

    def fn(xw, h0, c0, w):
        return _recurrence.linear_recurrence(xw, h0, c0, (w,), keep)

    compiled = _outputs_and_grads(fn, [xw, h0, c0, w])
    reference = python_loops(_outputs_and_grads, fn, [xw, h0, c0, w])
    _assert_same(compiled[0], reference[0], dtype)
    _assert_same(compiled[1], reference[1], dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("steps,batch,n,rank", [(6, 3, 8, 3), (1, 2, 4, 16)])
def test_bottleneck_recurrence_matches_python_loop(ops, python_loops, gemm_path, dtype, bias, steps, batch, n, rank):
    gen = torch.Generator().manual_seed(steps * 10 + rank)
    xz = torch.randn(steps, batch, rank, generator=gen, dtype=dtype)
    h0 = torch.randn(batch, n, generator=gen, dtype=dtype)
    c0 = torch.randn(batch, n, generator=gen, dtype=dtype)
    a = torch.randn(n, rank, generator=gen, dtype=dtype) / n**0.5
    b = torch.randn(rank, 4 * n, generator=gen, dtype=dtype) / rank**0.5
    bvec = torch.randn(4 * n, generator=gen, dtype=dtype) if bias else None

    def fn(xz, h0, c0, a, b, bvec):
        return _recurrence.bottleneck_recurrence(xz, h0, c0, a, b, bvec)

    compiled = _outputs_and_grads(fn, [xz, h0, c0, a, b, bvec])
    reference = python_loops(_outputs_and_grads, fn, [xz, h0, c0, a, b, bvec])
    _assert_same(compiled[0], reference[0], dtype)
    _assert_same(compiled[1], reference[1], dtype)


def test_only_final_state_used(ops, python_loops):
    """No gradient reaches the per-step outputs (d_out is None in the backward)."""
    gen = torch.Generator().manual_seed(3)
    xw = torch.randn(2, 4, 3, 12, generator=gen)
    h0, c0 = torch.randn(2, 2, 3, 3, generator=gen)
    w = torch.randn(2, 3, 12, generator=gen)

    def fn(xw, h0, c0, w):
        _, h, c = _recurrence.linear_recurrence(xw, h0, c0, (w,))
        return h, c

    compiled = _outputs_and_grads(fn, [xw, h0, c0, w])
    reference = python_loops(_outputs_and_grads, fn, [xw, h0, c0, w])
    _assert_same(compiled[1], reference[1], torch.float32)


def test_float32_activations_match_torch_over_the_whole_range(ops):
    """One step from a zero state: the stored activations are sigmoid/tanh of xw exactly as torch computes
    them (the kernel's polynomial exp/tanh), from deep saturation through tiny values to exact zeros."""
    s = 64
    values = torch.cat([torch.linspace(-100, 100, 2001), torch.logspace(-30, 1, 500), -torch.logspace(-30, 1, 500),
                        torch.tensor([0.0, -0.0, 88.7, -88.7, 87.0, -87.0, 0.625, -0.625, 0.6249999, 1e-38])])
    values = torch.cat([values, torch.zeros((-values.numel()) % s)])
    rows = values.numel() // s
    xw = values.view(1, 1, rows, s).repeat(1, 1, 1, 4)  # the same values in each gate
    zeros = torch.zeros(1, rows, s)
    hs, cs, tcs, acts = ops.linear_forward(xw.contiguous(), zeros, zeros, None, None, torch.zeros(1, s, 4 * s))
    v = values.view(rows, s)
    a = acts[0, 0]
    # atol: sigmoid(x < -87) is below the smallest normal float (torch returns denormals, the kernel ~0)
    torch.testing.assert_close(a[:, :s], torch.sigmoid(v), rtol=2e-6, atol=1e-37)
    torch.testing.assert_close(a[:, 2 * s:3 * s], torch.tanh(v), rtol=2e-6, atol=0)
    # and the state update: c = i * g (c_prev = 0), h = o * tanh(c)
    c = torch.sigmoid(v) * torch.tanh(v)
    torch.testing.assert_close(cs[0, 1], c, rtol=5e-6, atol=1e-37)
    torch.testing.assert_close(hs[0, 1], torch.sigmoid(v) * torch.tanh(c), rtol=5e-6, atol=1e-37)


def test_nan_propagates(ops):
    """A diverged pre-activation must stay NaN (the trainer's divergence check relies on it)."""
    xw = torch.zeros(1, 2, 1, 8)
    xw[0, 0, 0, 0] = float("nan")
    zeros = torch.zeros(1, 1, 2)
    hs, cs, _, _ = ops.linear_forward(xw, zeros, zeros, None, None, torch.zeros(1, 2, 8))
    assert torch.isnan(cs[0, 1, 0, 0]) and torch.isnan(hs[0, 2, 0, 0])


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("groups,s,masked", [(4, 64, False), (3, 96, True), (1, 256, False)])
def test_threaded_lanes_match_python_loop(ops, python_loops, two_threads, gemm_path, groups, s, masked):
    """Sizes above the threading threshold: the window is split over threads by groups (4 groups) or by
    sequences (3 groups, 1 group), each thread running its lanes' whole time loop."""
    steps, batch = 3, 16
    gen = torch.Generator().manual_seed(groups)
    xw = torch.randn(groups, steps, batch, 4 * s, generator=gen)
    h0, c0 = torch.randn(2, groups, batch, s, generator=gen)
    w = torch.randn(groups, s, 4 * s, generator=gen) / s**0.5
    bvec = torch.randn(groups, 4 * s, generator=gen)
    keep = torch.rand(groups, steps, batch, 1, generator=gen) < 0.5 if masked else None

    def fn(xw, h0, c0, w, bvec):
        return _recurrence.linear_recurrence(xw, h0, c0, (w,), keep, bias=bvec)

    compiled = _outputs_and_grads(fn, [xw, h0, c0, w, bvec])
    reference = python_loops(_outputs_and_grads, fn, [xw, h0, c0, w, bvec])
    _assert_same(compiled[0], reference[0], torch.float32)
    _assert_same(compiled[1], reference[1], torch.float32)


def test_threaded_bottleneck_matches_python_loop(ops, python_loops, two_threads, gemm_path):
    steps, batch, n, rank = 3, 17, 256, 64  # odd batch: unequal halves
    gen = torch.Generator().manual_seed(5)
    xz = torch.randn(steps, batch, rank, generator=gen)
    h0, c0 = torch.randn(2, batch, n, generator=gen)
    a = torch.randn(n, rank, generator=gen) / n**0.5
    b = torch.randn(rank, 4 * n, generator=gen) / rank**0.5
    bvec = torch.randn(4 * n, generator=gen)

    def fn(xz, h0, c0, a, b, bvec):
        return _recurrence.bottleneck_recurrence(xz, h0, c0, a, b, bvec)

    compiled = _outputs_and_grads(fn, [xz, h0, c0, a, b, bvec])
    reference = python_loops(_outputs_and_grads, fn, [xz, h0, c0, a, b, bvec])
    _assert_same(compiled[0], reference[0], torch.float32)
    _assert_same(compiled[1], reference[1], torch.float32)


def test_a_lock_left_by_a_killed_build_does_not_hang_the_next_process(tmp_path, ops):
    """torch's build step waits forever on the lock file of a builder that was killed; a library that
    was already built loads without it, and an old lock with no library is cleared before a build."""
    import os
    import shutil
    import subprocess
    import sys
    import time

    from torch.utils.cpp_extension import _get_build_directory

    src = Path(_get_build_directory("x", verbose=False)).parent  # the extensions cache in use
    built = [d for d in src.iterdir() if d.name.startswith("squeezelstm_kernels_") and (d / f"{d.name}.so").exists()]
    assert built, "no built kernels in the extensions cache"
    cache = tmp_path / "ext"
    cache.mkdir()
    for d in built:
        shutil.copytree(d, cache / d.name)
        (cache / d.name / "lock").write_text("")  # as a killed builder leaves it
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache)}
    code = "from squeezelstm.spaces import _kernels; assert _kernels.kernels() is not None; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]

    lock = tmp_path / "lock"
    lock.write_text("")
    assert not _kernels._drop_stale_lock(lock)  # fresh: a build may be running
    old = time.time() - 2 * _kernels._STALE_LOCK_S
    os.utime(lock, (old, old))
    assert _kernels._drop_stale_lock(lock) and not lock.exists()
