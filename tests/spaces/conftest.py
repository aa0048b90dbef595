"""Shared checks for the cell tests (a fixture, since importlib mode rules out importing a helper module)."""

import pytest
import torch


def _run_reference(model, x, hx):
    """The stack run layer by layer through each layer's slow ``forward_reference``; x is (T, N, in)."""
    h0, c0 = hx
    out, hs, cs = x, [], []
    for i, layer in enumerate(model.layers):
        out, (h, c) = layer.forward_reference(out, (h0[i], c0[i]))
        hs.append(h)
        cs.append(c)
    return out, (torch.stack(hs), torch.stack(cs))


def _grads(model, out, h):
    model.zero_grad()
    (out.pow(2).sum() + h.sum()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture
def assert_matches_reference():
    """``check(model, x, hx, out, h, c)``: the fast result (out (T, N, H), h, c) equals the reference path's,
    forward and every parameter's gradient, to 1e-5 relative."""

    def check(model, x, hx, out, h, c):
        out_r, (h_r, c_r) = _run_reference(model, x, hx)
        torch.testing.assert_close(out, out_r, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c, c_r, rtol=1e-5, atol=1e-6)
        g, g_r = _grads(model, out, h), _grads(model, out_r, h_r)
        for name in g:
            torch.testing.assert_close(g[name], g_r[name], rtol=1e-5, atol=1e-6, msg=name)

    return check
