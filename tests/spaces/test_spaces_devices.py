"""Every family, run whole (two layers) in float32 on each available device, against the same weights in
float64 on the CPU: outputs, final state and every gradient, and nothing left on another device.

The device list is the CPU plus CUDA where this machine has it; on a CUDA machine these are the
cells' GPU correctness checks (there the recurrences run their Python loops or cuDNN, not the
compiled CPU loops). TF32 is switched off so float32 means float32.
"""

from __future__ import annotations

import pytest
import torch

from squeezelstm.spaces import build_cell

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

CASES = [
    ("lstm", {}),
    ("grouped", {"groups": 4}),
    ("grouped", {"groups": [4, 2]}),
    ("factorized", {"rank": 6}),
    ("restricted", {"share": 0.5}),
    ("routed", {"num_cells": 4, "routing": "round_robin"}),
    ("routed", {"num_cells": 4, "routing": "token"}),
    ("routed", {"num_cells": 4, "routing": "hidden"}),
    ("routed", {"num_cells": 4, "routing": "soft"}),
    ("hidden", {"gate_hidden": 5}),
]


def _run(model, x, h0, c0, weights):
    """Outputs, final state and gradients (input, initial state, every parameter) of a fixed loss."""
    x, h0, c0 = (t.detach().clone().requires_grad_(True) for t in (x, h0, c0))
    model.zero_grad(set_to_none=True)
    out, (h_n, c_n) = model(x, (h0, c0))
    loss = (out * weights[0]).sum() + (h_n * weights[1]).sum() + (c_n * weights[2]).sum()
    loss.backward()
    grads = {"x": x.grad, "h0": h0.grad, "c0": c0.grad}
    grads.update({name: p.grad for name, p in model.named_parameters()})
    return (out, h_n, c_n), grads


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cell,args", CASES, ids=[f"{c}-{a}" for c, a in CASES])
def test_family_on_device_matches_float64_cpu(cell, args, training, device, monkeypatch):
    if training and args.get("routing") == "hidden":
        # Gumbel noise comes from the device's own generator: CPU and CUDA route differently by design.
        training = False
    if device == "cuda":
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    ref = build_cell(cell, 12, 16, num_layers=2, dtype=torch.float64, **args)
    model = build_cell(cell, 12, 16, num_layers=2, dtype=torch.float32, device=device, **args)
    model.load_state_dict({k: v.to(torch.float32) for k, v in ref.state_dict().items()})
    ref.train(training)
    model.train(training)
    gen = torch.Generator().manual_seed(1)
    steps, batch = 9, 5
    x = torch.randn(steps, batch, 12, generator=gen, dtype=torch.float64)
    h0, c0 = (0.5 * torch.randn(2, batch, 16, generator=gen, dtype=torch.float64) for _ in range(2))
    weights = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((steps, batch, 16), (2, batch, 16), (2, batch, 16))]

    ref_out, ref_grads = _run(ref, x, h0, c0, weights)
    dev_out, dev_grads = _run(model, *(t.to(device, torch.float32) for t in (x, h0, c0)),
                              [w.to(device, torch.float32) for w in weights])

    for a, b in zip(dev_out, ref_out):
        assert a.device.type == device and a.dtype == torch.float32
        torch.testing.assert_close(a.cpu().double(), b.detach(), rtol=1e-4, atol=2e-5)
    assert dev_grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        if g is None:  # a parameter this configuration does not use (none of the cases here)
            assert dev_grads[name] is None, name
            continue
        assert dev_grads[name] is not None and dev_grads[name].device.type == device, name
        torch.testing.assert_close(dev_grads[name].cpu().double(), g, rtol=1e-4, atol=5e-5, msg=name)
