"""How the GPU path's Triton kernels are launched on either device, and the block sizes they share.

A kernel module defines its kernels as plain functions and wraps each one with ``kernel(fn)``: on
CUDA tensors the first launch compiles it (``triton.jit``); CPU tensors, which take this path only
under ``SQUEEZELSTM_KERNELS=gpu``, run in Triton's interpreter (``TRITON_INTERPRET=1``, which must
be set before triton is imported; done here on a machine without a GPU). Triton is imported on
first launch only, so the package imports and the CPU path runs where triton is absent.
"""

from __future__ import annotations

import os
import sys

import torch

# Sequences per program. tl.dot's smallest tile on NVIDIA tensor cores is 16 in every dimension,
# and a smaller batch block means more programs (sequences are independent) on a GPU that a
# persistent kernel otherwise leaves mostly idle at batch 32.
BLOCK_ROWS = 16
MIN_DOT = 16  # tl.dot's smallest M, N and K on a GPU


def block(size: int, cap: int) -> int:
    """A power-of-two tile for a dimension of ``size``: covers it when small, at most ``cap`` (masks
    handle the remainder), at least tl.dot's 16."""
    return max(MIN_DOT, min(cap, 1 << max(size - 1, 0).bit_length()))


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for positive ints: the number of programs that cover ``a`` rows in blocks of ``b``."""
    return -(-a // b)


def pow2(size: int) -> int:
    """The smallest power of two >= ``size`` (tl.arange's lengths must be powers of two)."""
    return 1 << max(size - 1, 0).bit_length()


_INTERPRET = "TRITON_INTERPRET"
if "triton" not in sys.modules and not torch.cuda.is_available():
    # Without a GPU, the kernels can only run in Triton's interpreter, which must be chosen before
    # triton is imported (triton.language's own jit functions are wrapped at import).
    os.environ.setdefault(_INTERPRET, "1")


def _triton(on_gpu: bool):
    try:
        import triton
    except ImportError as exc:  # the GPU path was asked for where triton is not installed
        raise RuntimeError("squeezelstm: the GPU code path needs triton (pip install triton; CUDA builds "
                           "of torch bring it)") from exc
    if not on_gpu and not triton.knobs.runtime.interpret:
        raise RuntimeError(f"squeezelstm: CPU tensors on the GPU path (SQUEEZELSTM_KERNELS=gpu) run Triton's "
                           f"interpreter: set {_INTERPRET}=1 before triton is imported")
    return triton


class kernel:
    """A Triton kernel, jit-wrapped on first launch: compiled for CUDA tensors, or run by Triton's
    interpreter on CPU tensors (``TRITON_INTERPRET=1``, set on import of this module where there is no GPU and triton is not imported yet).

    ``kernel(fn)[grid](*args)`` with ``fn`` a function written for ``triton.jit``.
    """

    def __init__(self, fn) -> None:
        self.fn = fn
        self._jit = None

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            on_gpu = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
            triton = _triton(on_gpu)
            if self._jit is None:
                self._jit = triton.jit(self.fn)
            return self._jit[grid](*args, **kwargs)

        return launch


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision for float32: "tf32" only where torch itself allows TF32 matmuls
    (off by default), else "ieee" so float32 means float32 as in the reference path."""
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def bias_or_zeros(bias: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A gate layer's bias (4n,) for the kernels, which always load one: zeros in ``like``'s dtype and
    device where the layer has none (see ``_triton_common.gate_accumulators`` for why)."""
    return bias if bias is not None else like.new_zeros(4 * like.shape[-1])


def incoming_grads(hs: torch.Tensor, d_out, d_hn, d_cn) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A window recurrence's backward inputs: the gradients of ``(out (T, N, n), h_n, c_n)``, contiguous
    for the kernels, zeros where autograd passes None; ``hs`` (T + 1, N, n) are the saved states."""
    N, n = hs.shape[1], hs.shape[2]
    return (torch.zeros_like(hs[1:]) if d_out is None else d_out.contiguous(),
            hs.new_zeros(N, n) if d_hn is None else d_hn.contiguous(),
            hs.new_zeros(N, n) if d_cn is None else d_cn.contiguous())
