"""The contract every cell family keeps, run by every family (as Optuna's shared sampler tests are).

The ``torch.nn.LSTM`` interface (shapes, state ``(num_layers, N, H)`` whatever ``batch_first`` says,
``hx=None`` as zeros, unbatched input as the batch of one, early input checks with the expected and
actual shapes), ``count_parameters`` equal to the module's ``numel`` sum, the fast path equal to the
per-step reference (forward and every gradient), state carried across windows, seeding, dtype, and an
``extra_repr`` that shows only non-default settings. A family added to the family table must add a
case here (``test_every_family_has_a_case``). Family-specific behaviour stays in each family's file.
"""

from __future__ import annotations

import pytest
import torch

from squeezelstm.spaces import build_cell, count_parameters
from squeezelstm.spaces.families import FAMILY_TABLE, ROUTINGS

# (family, family args); sizes below keep every case valid, with input_size != hidden_size.
CASES = [
    ("lstm", {}),
    ("factorized", {"rank": 5}),
    ("factorized", {"rank": [3, 7]}),
    ("grouped", {"groups": 2}),
    ("grouped", {"groups": [2, 4]}),
    ("restricted", {"share": 0.5}),
    ("restricted", {"share": [0.0, 1.0]}),
    *(("routed", {"num_cells": 4, "routing": r}) for r in ROUTINGS),
    ("routed", {"num_cells": 1, "routing": "hidden"}),
    ("hidden", {"gate_hidden": 3}),
]
IDS = [f"{c}-{'-'.join(f'{k}={v}' for k, v in a.items())}" for c, a in CASES]
M, H, L = 6, 8, 2
contract = pytest.mark.parametrize("cell,args", CASES, ids=IDS)


def make(cell, args, seed=0, input_size=M, **kw):
    torch.manual_seed(seed)
    return build_cell(cell, input_size, H, L, **kw, **args)


def run(model, x, hx=None, offset=0, generator=None):
    """``model(x, hx)``, passing the stream position and generator to the families that take them."""
    if FAMILY_TABLE[model.family].stream_position:
        return model(x, hx, offset=offset, generator=generator)
    return model(x, hx)


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_every_family_has_a_case():
    assert {cell for cell, _ in CASES} == set(FAMILY_TABLE)


@contract
def test_shapes_and_state_layout(cell, args):
    model = make(cell, args)
    out, (h, c) = run(model, torch.randn(7, 3, M))
    assert out.shape == (7, 3, H) and h.shape == c.shape == (L, 3, H)
    out, (h, c) = run(make(cell, args, batch_first=True), torch.randn(3, 7, M))
    assert out.shape == (3, 7, H) and h.shape == c.shape == (L, 3, H)  # state is never batch-first
    out, (h, c) = run(model, torch.randn(7, M))
    assert out.shape == (7, H) and h.shape == c.shape == (L, H)


@contract
def test_input_checks_name_the_problem(cell, args):
    model = make(cell, args)
    name = type(model).__name__
    with pytest.raises(ValueError, match=f"{name}: input.size\\(-1\\) must be input_size={M}, got {M + 1}"):
        run(model, torch.randn(7, 3, M + 1))
    with pytest.raises(ValueError, match="expected input of 2 \\(unbatched\\) or 3 dimensions, got shape \\(7, 3, 1, 6\\)"):
        run(model, torch.randn(7, 3, 1, M))
    with pytest.raises(ValueError, match=f"expected h_0 of shape \\({L}, 3, {H}\\), got \\({L}, 2, {H}\\)"):
        run(model, torch.randn(7, 3, M), (torch.zeros(L, 2, H), torch.zeros(L, 3, H)))
    with pytest.raises(ValueError, match=f"expected c_0 of shape \\({L}, {H}\\), got \\({L}, 1, {H}\\)"):
        run(model, torch.randn(7, M), (torch.zeros(L, H), torch.zeros(L, 1, H)))
    with pytest.raises(ValueError, match="hx must be a tuple"):
        run(model, torch.randn(7, 3, M), torch.zeros(L, 3, H))


@contract
def test_hx_none_batch_first_and_unbatched_agree(cell, args):
    model = make(cell, args, dropout=0.2).eval()
    x = torch.randn(6, 2, M)
    torch.testing.assert_close(run(model, x)[0], run(model, x, (torch.zeros(L, 2, H), torch.zeros(L, 2, H)))[0])
    bf = make(cell, args, batch_first=True, seed=5).eval()
    bf.load_state_dict(model.state_dict())
    hx = (torch.randn(L, 2, H), torch.randn(L, 2, H))
    out_t, (h_t, c_t) = run(model, x, hx)
    out_b, (h_b, c_b) = run(bf, x.transpose(0, 1), hx)
    torch.testing.assert_close(out_b.transpose(0, 1), out_t)
    torch.testing.assert_close((h_b, c_b), (h_t, c_t))
    out_u, (h_u, _) = run(model, x[:, 1], (hx[0][:, 1], hx[1][:, 1]))
    torch.testing.assert_close(out_u, out_t[:, 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_u, h_t[:, 1], rtol=1e-5, atol=1e-6)


@contract
def test_count_parameters_equals_numel(cell, args):
    for bias in (True, False):
        model = make(cell, args, bias=bias)
        assert count_parameters(cell, M, H, L, bias, **args) == numel(model) == type(model).count_parameters(
            M, H, L, bias, **args)


def _outputs_and_grads(model, x, hx, reference):
    """Outputs, and the gradients of a fixed projection of them w.r.t. the input, the initial state and
    every parameter (zeros where none reach it), through ``forward`` or layer by layer through each
    layer's ``forward_reference``; Gumbel noise drawn from one seeded generator in the same order."""
    model.zero_grad(set_to_none=True)
    x, h0, c0 = (t.detach().clone().requires_grad_(True) for t in (x, *hx))
    generator = torch.Generator().manual_seed(7)
    if reference:
        out, hs, cs = x, [], []
        for i, layer in enumerate(model.layers):
            layer.offset, layer.generator = 3, generator
            out, (h, c) = layer.forward_reference(out, (h0[i], c0[i]))
            layer.offset, layer.generator = 0, None
            hs.append(h)
            cs.append(c)
        h_n, c_n = torch.stack(hs), torch.stack(cs)
    else:
        out, (h_n, c_n) = run(model, x, (h0, c0), offset=3, generator=generator)
    gen = torch.Generator().manual_seed(123)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for t in (out, h_n, c_n))
    loss.backward()
    grads = [x.grad, h0.grad, c0.grad] + [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
    return [out.detach(), h_n.detach(), c_n.detach()] + grads


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bias,input_size", [(True, M), (False, M), (True, 2 * M)], ids=["bias", "nobias", "wide"])
@contract
def test_fast_path_matches_reference(cell, args, bias, input_size, training):
    model = make(cell, args, bias=bias, input_size=input_size, dtype=torch.float64).train(training)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 3, input_size, generator=gen, dtype=torch.float64)
    hx = tuple(0.5 * torch.randn(L, 3, H, generator=gen, dtype=torch.float64) for _ in range(2))
    fast, ref = (_outputs_and_grads(model, x, hx, reference) for reference in (False, True))
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@contract
def test_gradients_reach_every_parameter(cell, args):
    model = make(cell, args).train()
    out, (h, c) = run(model, torch.randn(12, 6, M), (torch.randn(L, 6, H), torch.randn(L, 6, H)),
                      generator=torch.Generator().manual_seed(0))
    (out.pow(2).sum() + c.sum()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@contract
def test_two_windows_with_carried_state_equal_one(cell, args):
    model = make(cell, args, dropout=0.3).eval()
    x = torch.randn(10, 2, M)
    with torch.no_grad():
        whole, (h, c) = run(model, x, offset=5)
        first, state = run(model, x[:4], offset=5)
        second, (h2, c2) = run(model, x[4:], state, offset=9)
    torch.testing.assert_close(torch.cat([first, second]), whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close((h2, c2), (h, c), rtol=1e-5, atol=1e-6)


@contract
def test_same_seed_same_result(cell, args):
    x = torch.randn(5, 2, M)
    outs = [run(make(cell, args, seed=s).train(), x, generator=torch.Generator().manual_seed(11))[0] for s in (3, 3, 4)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[2])


@contract
def test_dtype(cell, args):
    model = make(cell, args, dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in model.state_dict().values() if t.is_floating_point())
    assert run(model, torch.randn(3, 2, M, dtype=torch.float64))[0].dtype == torch.float64


@contract
def test_extra_repr_shows_only_non_default_settings(cell, args):
    defaults = FAMILY_TABLE[cell].defaults
    family = [f"{k}={tuple(v) if isinstance(v, list) else v}" for k, v in args.items() if defaults.get(k, ...) != v]
    assert make(cell, args).extra_repr() == ", ".join([f"{M}, {H}", f"num_layers={L}"] + family)
    model = build_cell(cell, M, H, 1, bias=False, batch_first=True, dropout=0.25,
                       **{k: (v[0] if isinstance(v, list) else v) for k, v in args.items()})
    assert model.extra_repr().startswith(f"{M}, {H}, bias=False, batch_first=True, dropout=0.25")


def test_extra_repr_leaves_out_family_defaults():
    for family in FAMILY_TABLE.values():
        if all(a.default is not None for a in family.args):
            assert build_cell(family.name, M, H).extra_repr() == f"{M}, {H}", family.name
