import os

# Keep every test on a predictable, small thread budget (CI has 2 cores).
os.environ.setdefault("OMP_NUM_THREADS", "2")

# The GPU path's Triton kernels run on CPU tensors in Triton's interpreter, which must be chosen
# before anything imports triton. On a CUDA machine they run compiled on CUDA tensors instead.
import torch  # noqa: E402  (after the thread budget above)

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_sessionstart(session):
    """Build the compiled recurrence kernels (spaces/_kernels.cpp) once, up front: otherwise the first
    test to need them (often a Ray trial with a time limit) pays the ~30 s build."""
    from squeezelstm.spaces._kernels import kernels

    kernels()
