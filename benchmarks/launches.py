"""Benchmark: kernel launches per training window on the CUDA code path, per family and routing.

One forward+backward window (``loss = out.sum() + h_n.sum()``, training mode, state carried in) of a
stack of ``--layers`` layers, hidden = input = ``--hidden``, batch ``--batch``, at each ``--bptt``,
next to ``torch.nn.LSTM``'s. Counted, after one warm-up window:

- ``aten``: top-level aten ops (ops no other aten op or Triton launch encloses, forward and the
  autograd engine's backward), by ``torch.profiler``: on a GPU each is at least one launch and its
  CPU-side dispatch cost (views included, which launch nothing: an upper bound);
- ``triton``: Triton kernel launches, counted in Triton's own launch entry (``JITFunction.run`` and,
  under ``TRITON_INTERPRET=1``, ``InterpretedFunction.run``, patched here; the interpreter's own
  torch calls inside a launch are not counted as aten ops);
- ``cuda`` (``--device cuda`` only): kernels, memcpys and memsets the CUDA profiler saw on the device.

``total = aten + triton``; ``per_step`` = (total at the largest bptt - total at the smallest) / steps
between. Targets (issue 16): total <= 200 at bptt 35 and per_step <= 4, every family and routing.

Without ``--device cuda`` the CPU tensors take exactly the CUDA path (``SQUEEZELSTM_KERNELS=gpu``,
Triton kernels in its interpreter), which is how this is measured without a GPU.

    python benchmarks/launches.py [--bptt 20 35 70] [--hidden 256] [--batch 32] [--layers 2]
                                  [--only grouped4 ...] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys


def _prepare_env(device: str) -> None:
    """The CUDA path on CPU tensors, and Triton's interpreter, chosen before torch or triton import."""
    if device == "cpu":
        os.environ["SQUEEZELSTM_KERNELS"] = "gpu"
        os.environ.setdefault("TRITON_INTERPRET", "1")


VARIANTS = {  # name -> (family, family args); "nn.LSTM" is torch's own
    "nn.LSTM": ("nn.LSTM", {}),
    "lstm": ("lstm", {}),
    "restricted0.5": ("restricted", {"share": 0.5}),
    "grouped4": ("grouped", {"groups": 4}),
    "factorized64": ("factorized", {"rank": 64}),
    "hidden64": ("hidden", {"gate_hidden": 64}),
    "routed4_round_robin": ("routed", {"num_cells": 4, "routing": "round_robin"}),
    "routed4_token": ("routed", {"num_cells": 4, "routing": "token"}),
    "routed4_hidden": ("routed", {"num_cells": 4, "routing": "hidden"}),
    "routed4_soft": ("routed", {"num_cells": 4, "routing": "soft"}),
}
TARGET_TOTAL, TARGET_BPTT, TARGET_PER_STEP = 200, 35, 4.0


class TritonLaunches:
    """Counts Triton kernel launches (and marks them in the profiler as ``triton::<kernel>``) while active."""

    def __init__(self) -> None:
        self.count = 0
        self._saved: list = []

    def __enter__(self):
        import torch

        try:
            from triton.runtime import jit
        except ImportError:  # no triton: no Triton launches can happen
            return self
        classes = [jit.JITFunction]
        try:
            from triton.runtime import interpreter

            classes.append(interpreter.InterpretedFunction)
        except ImportError:
            pass
        counter = self

        def wrap(original):
            def run(self, *args, grid, warmup, **kwargs):
                if warmup:
                    return original(self, *args, grid=grid, warmup=warmup, **kwargs)
                counter.count += 1
                name = getattr(getattr(self, "fn", None), "__name__", None) or getattr(self, "__name__", "kernel")
                with torch.profiler.record_function(f"triton::{name}"):
                    return original(self, *args, grid=grid, warmup=warmup, **kwargs)

            return run

        for cls in classes:
            self._saved.append((cls, cls.run))
            cls.run = wrap(cls.run)
        return self

    def __exit__(self, *exc) -> None:
        for cls, run in self._saved:
            cls.run = run
        self._saved.clear()


def top_level_aten(events) -> int:
    """Aten ops with no aten op or Triton launch among their ancestors."""
    count = 0
    for evt in events:
        if not evt.name.startswith("aten::"):
            continue
        parent = evt.cpu_parent
        while parent is not None and not parent.name.startswith(("aten::", "triton::")):
            parent = parent.cpu_parent
        count += parent is None
    return count


def build(name: str, hidden: int, layers: int, device):
    import torch

    from squeezelstm.spaces import build_cell

    family, args = VARIANTS[name]
    torch.manual_seed(0)
    if family == "nn.LSTM":
        return torch.nn.LSTM(hidden, hidden, num_layers=layers, device=device)
    return build_cell(family, hidden, hidden, num_layers=layers, device=device, **args)


def count_window(model, bptt: int, batch: int, hidden: int, layers: int, device) -> dict:
    """Launch counts of one forward+backward window (after a short warm-up window)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    gen = torch.Generator(device="cpu").manual_seed(1)
    hx = tuple((0.1 * torch.randn(layers, batch, hidden, generator=gen)).to(device) for _ in range(2))

    def window(steps: int):
        x = torch.randn(steps, batch, hidden, generator=gen).to(device)
        model.zero_grad(set_to_none=True)
        return x

    def run(x):
        out, (h, _c) = model(x, hx)
        (out.sum() + h.sum()).backward()

    model.train()
    run(window(2))  # first-call work (kernel builds, caches) is not a window's
    x = window(bptt)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    if device.type == "cuda":
        torch.cuda.synchronize()
    with TritonLaunches() as triton, profile(activities=activities) as prof:
        run(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    row = {"aten": top_level_aten(events), "triton": triton.count}
    row["total"] = row["aten"] + row["triton"]
    if device.type == "cuda":
        row["cuda"] = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return row


def measure(names, bptts, hidden: int, batch: int, layers: int, device_name: str, progress=None) -> list[dict]:
    import torch

    device = torch.device(device_name)
    rows = []
    for name in names:
        model = build(name, hidden, layers, device)
        counts = {}
        for bptt in bptts:
            counts[bptt] = count_window(model, bptt, batch, hidden, layers, device)
            if progress:
                progress(f"{name} bptt {bptt}: {counts[bptt]}")
        lo, hi = min(bptts), max(bptts)
        per_step = (counts[hi]["total"] - counts[lo]["total"]) / (hi - lo) if hi > lo else 0.0
        at_target = counts.get(TARGET_BPTT, counts[hi])["total"]
        rows.append({"variant": name, "family": VARIANTS[name][0], "args": VARIANTS[name][1],
                     "counts": {str(b): c for b, c in counts.items()}, "per_step": per_step,
                     "meets_target": at_target <= TARGET_TOTAL and per_step <= TARGET_PER_STEP})
    return rows


def machine(device_name: str) -> dict:
    import torch

    info = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "device": device_name,
            "path": "CUDA path on CPU tensors (SQUEEZELSTM_KERNELS=gpu, TRITON_INTERPRET=1)" if device_name == "cpu"
            else "CUDA"}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device_name.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def format_table(rows: list[dict], bptts) -> str:
    has_cuda = any("cuda" in c for r in rows for c in r["counts"].values())
    head = ["variant"] + [f"bptt {b}" for b in bptts] + ["per step", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = []
        for b in bptts:
            c = r["counts"][str(b)]
            cell = f"{c['total']} ({c['aten']}+{c['triton']})" if c["triton"] else str(c["total"])
            if has_cuda:
                cell += f", {c['cuda']} cuda"
            cells.append(cell)
        ok = "yes" if r["meets_target"] else "NO"
        lines.append("| " + " | ".join([r["variant"], *cells, f"{r['per_step']:.1f}", ok]) + " |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bptt", type=int, nargs="+", default=[20, 35, 70])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--only", nargs="+", default=None, help=f"variants to count, of {list(VARIANTS)}")
    p.add_argument("--device", default="cpu", help="cpu (the CUDA path on CPU tensors) or cuda")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    unknown = [v for v in args.only or [] if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    if any(b < 1 for b in args.bptt) or args.hidden < 1 or args.batch < 1 or args.layers < 1:
        p.error("--bptt, --hidden, --batch and --layers must be positive")
    if args.device not in ("cpu", "cuda") and not args.device.startswith("cuda:"):
        p.error(f"--device must be cpu or cuda, got {args.device!r}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _prepare_env(args.device)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("launches.py: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    names = ["nn.LSTM"] + [v for v in (args.only or VARIANTS) if v != "nn.LSTM"]
    say = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    rows = measure(names, sorted(set(args.bptt)), args.hidden, args.batch, args.layers, args.device, say)
    bptts = sorted(set(args.bptt))
    print(f"launches per forward+backward window: {args.layers} layers, hidden {args.hidden}, batch {args.batch}, "
          f"{machine(args.device)['path']}")
    print(format_table(rows, bptts))
    if args.json:
        result = {"machine": machine(args.device), "settings": {"bptt": bptts, "hidden": args.hidden, "batch": args.batch,
                                                               "layers": args.layers},
                  "targets": {"total_at_bptt": TARGET_BPTT, "max_total": TARGET_TOTAL, "max_per_step": TARGET_PER_STEP},
                  "rows": rows}
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
