"""Shared checks for the cell tests (a fixture, since importlib mode rules out importing a helper module)."""

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
