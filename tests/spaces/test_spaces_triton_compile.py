"""The GPU path's Triton kernels compile for an H100 (sm_90) through Triton's own ptxas, without a GPU.

The interpreter that runs them on CPU tensors in the other tests accepts programs the GPU compiler
rejects (shapes below tl.dot's 16, mixed dtypes, non-constexpr loop bounds), so each kernel is also
compiled to a cubin here, with the block sizes the layers use at a tiny, masked size (the sizes of
the interpreter tests; the production sizes compile the same code with larger constants, and take
minutes of ptxas on two cores). A subprocess, because this process imported triton in interpreter mode.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r'''
import inspect
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from squeezelstm.spaces import _triton_factorized as F, _triton_hidden as H, _triton_routed as R

def compile_(fn, scalars, consts):
    params = list(inspect.signature(fn).parameters)
    sig = {p: "constexpr" if p in consts else scalars.get(p, "*fp32") for p in params}
    src = ASTSource(triton.jit(fn), sig, constexprs={(params.index(k),): v for k, v in consts.items()})
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

routed = {"T": "i32", "N": "i32", "inv_tau": "fp32"}
for k, s, mode in ((3, 4, R.STRAIGHT_THROUGH), (3, 4, R.SOFT), (3, 4, R.HARD)):
    bl = R._blocks(k, s)
    compile_(R._routed_forward, routed, dict(K=k, S=s, MODE=mode, HAS_RBIAS=True, BK=R.block(s, 16), PREC="ieee", **bl))
    compile_(R._routed_backward, routed, dict(K=k, S=s, MODE=mode, BK=R.block(4 * s, 64), PREC="ieee", **bl))
for n, d in ((6, 3),):
    bl = H._blocks(n, d)
    compile_(H._hidden_forward, {"T": "i32", "N": "i32"}, dict(NH=n, D=d, PREC="ieee", **bl))
    bl.update(BK=H.block(n, 64), BKD=H.block(4 * d, 64))
    compile_(H._hidden_backward, {"T": "i32", "N": "i32"}, dict(NH=n, D=d, PREC="ieee", **bl))
steps = {"t": "i32", "T": "i32", "N": "i32"}
bl = F._blocks(72, 6)
compile_(F._bottleneck_step, steps, dict(NH=72, R=6, PREC="ieee", **bl))
bl.update(BR=F.block(6, 64))
compile_(F._bottleneck_step_backward, steps, dict(NH=72, R=6, PREC="ieee", **bl))
print("compiled")
'''


# The forwards at the layers' own sizes, with the constants the layers launch them with (recorded from
# HiddenRecurrence / BottleneckRecurrence / RoutedRecurrence on CPU tensors, nothing run): with Triton 3.9
# and float32 without TF32, a forward that reduced in one chunk of 32 or more, or in one of 16 from
# zero-started accumulators (a layer without bias), aborted the process in LLVM's SLP vectorizer (spaces/README.md).
# That abort is in the LLVM stage, so these stop before ptxas (seconds, not minutes, each).
LAYER_SCRIPT = r'''
import inspect
import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from squeezelstm.spaces import _triton_factorized as F, _triton_hidden as H, _triton_routed as R

class LLVMDone(Exception):
    pass

def _stop(src, metadata):
    raise LLVMDone

def _llvm_only(*args):  # Triton's stages hook: called bare for the cache key, then with the stages
    if not args:
        return "llvm-only", "llvm-only"
    args[1]["ptx"] = _stop

knobs.runtime.add_stages_inspection_hook = _llvm_only

def compile_launch(module, name, fn, run):
    """Compile for sm_90 the kernel ``module.name`` as ``run()`` launches it (the launch only recorded)."""
    calls = []
    class Record:
        def __getitem__(self, grid):
            return lambda *args, **consts: calls.append((args, consts))
    setattr(module, name, Record())
    run()
    args, consts = calls[0]
    params = list(inspect.signature(fn).parameters)
    sig = {p: "*fp32" if torch.is_tensor(a) else "fp32" if isinstance(a, float) else "i32" for p, a in zip(params, args)}
    sig.update({k: "constexpr" for k in consts})
    src = ASTSource(triton.jit(fn), sig, constexprs={(params.index(k),): v for k, v in consts.items()})
    try:
        triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    except LLVMDone:
        pass

z = torch.zeros
for n, d, bias in ((128, 32, True), (128, 32, False), (256, 32, True), (256, 32, False), (128, 16, False)):
    print("H-LSTM forward", n, d, bias, flush=True)
    compile_launch(H, "_forward_kernel", H._hidden_forward, lambda: H.HiddenRecurrence.apply(
        z(1, 2, 4 * d), z(4 * d, n), z(4, n, d), z(4 * n) if bias else None, z(2, n), z(2, n)))
for n, r, bias in ((1024, 32, True), (1024, 64, False), (1024, 16, False)):
    print("F-LSTM step", n, r, bias, flush=True)
    compile_launch(F, "_step_kernel", F._bottleneck_step, lambda: F.BottleneckRecurrence.apply(
        z(1, 2, r), z(2, n), z(2, n), z(n, r), z(r, 4 * n), z(4 * n) if bias else None))
for k, s in ((2, 32), (4, 64)):
    print("routed forward", k, s, flush=True)
    compile_launch(R, "_forward_kernel", R._routed_forward, lambda: R.RoutedRecurrence.apply(
        z(1, 2, 4 * k * s), z(k, 4 * s, s), z(k, k * s), None, None, z(2, k * s), z(2, k * s), R.SOFT, 1.0))
print("compiled")
'''


def _compile(script, **env_extra):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)


def test_kernels_compile_for_sm90():
    done = _compile(SCRIPT)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


def test_forwards_compile_at_the_layers_sizes(tmp_path):
    done = _compile(LAYER_SCRIPT, TRITON_CACHE_DIR=str(tmp_path))  # a fresh cache: compiled, not looked up
    assert done.returncode == 0 and "compiled" in done.stdout, (
        f"exit {done.returncode} compiling {done.stdout.strip().splitlines()[-1:]}: {done.stderr[-2000:]}")
