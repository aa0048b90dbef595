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
    compile_(R._routed_forward, routed, dict(K=k, S=s, MODE=mode, HAS_RBIAS=True, BK=R.block(s, 32), PREC="ieee", **bl))
    compile_(R._routed_backward, routed, dict(K=k, S=s, MODE=mode, BK=R.block(4 * s, 64), PREC="ieee", **bl))
for n, d in ((6, 3),):
    bl = H._blocks(n, d)
    compile_(H._hidden_forward, {"T": "i32", "N": "i32"}, dict(NH=n, D=d, HAS_B2=True, PREC="ieee", **bl))
    bl.update(BK=H.block(n, 64), BKD=H.block(4 * d, 64))
    compile_(H._hidden_backward, {"T": "i32", "N": "i32"}, dict(NH=n, D=d, PREC="ieee", **bl))
steps = {"t": "i32", "T": "i32", "N": "i32"}
bl = F._blocks(72, 6)
compile_(F._bottleneck_step, steps, dict(NH=72, R=6, HAS_BIAS=True, PREC="ieee", **bl))
compile_(F._bottleneck_step_backward, steps, dict(NH=72, R=6, PREC="ieee", **bl))
print("compiled")
'''


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]
