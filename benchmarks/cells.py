"""Benchmark: every cell family's forward+backward speed next to ``torch.nn.LSTM`` in the same process.

For each hidden size n and batch size N, one window of ``bptt`` steps with input width n is run
through ``torch.nn.LSTM(n, n)`` and through each family configuration (one layer), timed in
interleaved rounds (nn.LSTM, family 1, family 2, ..., then again) so that load from other
processes on a shared machine hits every model alike. Reported per configuration:

- tokens/s (median over rounds) of forward+backward (``--mode train``) or a no-grad forward
  (``--mode eval``);
- ``ratio``: the median over rounds of t(nn.LSTM) / t(family), both timed in the same round, so
  >1 means faster than ``torch.nn.LSTM`` of the same hidden size;
- multiply-adds per token (``count_flops``, matmul multiply-adds of one forward step) and the
  achieved GFLOP/s, counting 2 FLOPs per multiply-add and, in train mode, backward as twice the
  forward (so 6 FLOPs per multiply-add per token). Element-wise gate maths is not counted.

    python benchmarks/cells.py [--hidden 256 512 1024] [--batch 32 64] [--bptt 35] [--threads 2]
                               [--rounds 7] [--mode train|eval] [--only grouped4 factorized4]
                               [--json out.json]

On a CUDA machine (``--device cuda``) the baseline is cuDNN's LSTM. ``--pack 1 2 4 8`` also measures
k small trials sharing the device, each in its own process as Ray's fractional-GPU trials are
(aggregate tokens/s and the speedup over the first k); see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from squeezelstm.spaces import build_cell, count_flops


@dataclass(frozen=True)
class Variant:
    """One family configuration to benchmark: ``args`` maps hidden size n to its family arguments."""

    name: str
    cell: str
    args: object  # callable n -> dict
    default: bool = True  # run without --only (else only when named)

    def family_args(self, n: int) -> dict:
        return self.args(n)


VARIANTS = (
    Variant("lstm", "lstm", lambda n: {}),
    Variant("grouped4", "grouped", lambda n: {"groups": 4}),
    Variant("factorized_n/4", "factorized", lambda n: {"rank": n // 4}),
    Variant("routed4_round_robin", "routed", lambda n: {"num_cells": 4, "routing": "round_robin"}),
    Variant("routed4_token", "routed", lambda n: {"num_cells": 4, "routing": "token"}),
    Variant("routed4_hidden", "routed", lambda n: {"num_cells": 4, "routing": "hidden"}),
    Variant("restricted0.5", "restricted", lambda n: {"share": 0.5}),
    Variant("hidden_n/4", "hidden", lambda n: {"gate_hidden": n // 4}),
    # shapes whose float32 forward once aborted the sm_90 compile (spaces/README.md): gpu_check.sh runs them
    Variant("hidden_32", "hidden", lambda n: {"gate_hidden": 32}, default=False),
    Variant("factorized_64", "factorized", lambda n: {"rank": 64}, default=False),
)


@dataclass
class Row:
    """One measured configuration; ``times`` are seconds per window, one per round."""

    variant: str
    cell: str
    family_args: dict
    hidden: int
    batch: int
    bptt: int
    macs_per_token: int
    times: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)

    def summary(self, mode: str) -> dict:
        t = statistics.median(self.times)
        tokens = self.bptt * self.batch / t
        flops_per_mac = 6 if mode == "train" else 2
        return {
            "variant": self.variant, "cell": self.cell, "family_args": self.family_args,
            "hidden": self.hidden, "batch": self.batch, "bptt": self.bptt,
            "tokens_per_s": tokens, "ms_per_window": 1e3 * t,
            "ratio_vs_nn_lstm": statistics.median(self.ratios) if self.ratios else 1.0,
            "macs_per_token": self.macs_per_token,
            "gflops": flops_per_mac * self.macs_per_token * tokens / 1e9,
            "rounds": len(self.times),
        }


def make_step(model: nn.Module, x: torch.Tensor, mode: str, device: torch.device):
    """A closure running one window through ``model``: forward+backward, or a no-grad forward."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if mode == "train":
        model.train()

        def step() -> None:
            out, _ = model(x)
            out.sum().backward()
            sync()
    else:
        model.eval()

        def step() -> None:
            with torch.no_grad():
                model(x)
            sync()
    return step


def timed(step, iters: int) -> float:
    """Seconds per call of ``step``, averaged over ``iters`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - start) / iters


def bench_size(n: int, batch: int, bptt: int, variants, rounds: int, mode: str, device: torch.device,
               seed: int, min_time: float) -> list[Row]:
    """Interleaved rounds over nn.LSTM and every variant at hidden ``n`` and batch ``batch``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(bptt, batch, n, generator=gen).to(device).requires_grad_(mode == "train")
    torch.manual_seed(seed)  # module initialisers use the default generator
    models = [("nn.LSTM", "nn.LSTM", {}, nn.LSTM(n, n).to(device), count_flops("lstm", n, n))]
    for v in variants:
        args = v.family_args(n)
        try:
            model = build_cell(v.cell, n, n, device=device, **args)
        except (ValueError, ImportError) as err:
            print(f"skipping {v.name} at n={n}: {err}", file=sys.stderr)
            continue
        models.append((v.name, v.cell, args, model, count_flops(v.cell, n, n, **args)))
    rows = [Row(name, cell, args, n, batch, bptt, macs) for name, cell, args, _, macs in models]
    steps = [make_step(m, x, mode, device) for *_, m, _macs in models]
    # Warm-up (first-call allocations, lazy kernels) and a per-model iteration count so each
    # timing lasts at least ``min_time`` seconds.
    iters = []
    for step in steps:
        step()
        once = timed(step, 1)
        iters.append(max(1, int(min_time / max(once, 1e-6))))
        timed(step, iters[-1])  # one untimed round: caches, allocator arenas and page tables at steady state
    for r in range(rounds):
        # Rotate the order every round so no model always runs right after another one.
        order = [(i + r) % len(rows) for i in range(len(rows))]
        for i in order:
            rows[i].times.append(timed(steps[i], iters[i]))
            x.grad = None
            models[i][3].zero_grad(set_to_none=True)
        base = rows[0].times[-1]
        for row in rows[1:]:
            row.ratios.append(base / row.times[-1])
    return rows


def _pack_worker(i: int, cell: str, n: int, batch: int, bptt: int, args: dict, device: str, threads: int,
                 ready, go, stop, counts) -> None:
    """One packed trial: a process of its own (as a Ray trial with a fractional GPU is), counting its
    forward+backward windows between ``go`` and ``stop``."""
    torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(i)
    model = build_cell(cell, n, n, device=dev, **args)
    x = torch.randn(bptt, batch, n, device=dev, requires_grad=True)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def step() -> None:
        out, _ = model(x)
        out.sum().backward()
        sync()

    for _ in range(3):  # warm-up: kernels loaded, allocator primed
        step()
    with ready.get_lock():
        ready.value += 1
    go.wait()
    while not stop.is_set():
        step()
        with counts.get_lock():
            counts[i] += 1


def bench_packing(n: int, batch: int, bptt: int, cell: str, args: dict, packs, seconds: float,
                  device: torch.device, threads: int = 1) -> list[dict]:
    """k trials sharing one device, each its own process (``threads`` CPU threads each); aggregate tokens/s per k.

    Every worker warms up first; the clock starts when all are ready, and the windows each one
    finishes in the next ``seconds`` are counted. ``speedup`` is the aggregate over k = the first pack size.
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be re-initialised in a forked child
    results = []
    for k in packs:
        ready, counts = ctx.Value("i", 0), ctx.Array("q", k)
        go, stop = ctx.Event(), ctx.Event()
        procs = [ctx.Process(target=_pack_worker, args=(i, cell, n, batch, bptt, args, str(device), threads,
                                                        ready, go, stop, counts), daemon=True) for i in range(k)]
        for proc in procs:
            proc.start()
        deadline = time.time() + 300
        while ready.value < k:
            if time.time() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise RuntimeError(f"packing {k} x {cell}: a worker failed to start")
            time.sleep(0.05)
        go.set()
        time.sleep(0.5)  # every worker is past its first timed step
        start_counts, start = list(counts), time.perf_counter()
        time.sleep(seconds)
        end_counts, elapsed = list(counts), time.perf_counter() - start
        stop.set()
        for proc in procs:
            proc.join(timeout=60)
        done = sum(end_counts) - sum(start_counts)
        results.append({"trials": k, "cell": cell, "family_args": args, "hidden": n, "batch": batch,
                        "threads_per_trial": threads, "windows": done,
                        "aggregate_tokens_per_s": done * bptt * batch / elapsed,
                        "per_trial_windows": [e - s for s, e in zip(start_counts, end_counts)]})
    base = results[0]["aggregate_tokens_per_s"] if results else 0.0
    for r in results:
        r["speedup"] = r["aggregate_tokens_per_s"] / base if base > 0 else float("nan")
    return results


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    from squeezelstm.spaces._kernels import kernels

    # Which recurrence loops ran: the compiled ones (spaces/_kernels.cpp) or the Python fallback.
    info["recurrence_loops"] = "compiled" if kernels() is not None else "python (SQUEEZELSTM_KERNELS=0 or no compiler)"
    return info


def format_table(summaries: list[dict]) -> str:
    head = f"{'variant':<22}{'n':>6}{'N':>5}{'tok/s':>11}{'ms/win':>9}{'ratio':>8}{'MAC/tok':>11}{'GFLOP/s':>9}"
    lines = [head, "-" * len(head)]
    for s in summaries:
        lines.append(f"{s['variant']:<22}{s['hidden']:>6}{s['batch']:>5}{s['tokens_per_s']:>11.0f}"
                     f"{s['ms_per_window']:>9.1f}{s['ratio_vs_nn_lstm']:>8.2f}{s['macs_per_token']:>11d}{s['gflops']:>9.1f}")
    return "\n".join(lines)


def format_markdown(summaries: list[dict]) -> str:
    """The same table as Markdown, for benchmarks/README.md."""
    lines = ["| variant | n | N | tokens/s | ratio vs nn.LSTM | MAC/token | GFLOP/s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for s in summaries:
        lines.append(f"| {s['variant']} | {s['hidden']} | {s['batch']} | {s['tokens_per_s']:.0f} | "
                     f"{s['ratio_vs_nn_lstm']:.2f} | {s['macs_per_token']} | {s['gflops']:.1f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--min-time", type=float, default=0.2, help="seconds each timing lasts at least")
    p.add_argument("--mode", choices=("train", "eval"), default="train")
    p.add_argument("--only", nargs="+", default=None, help=f"variants to run, of {[v.name for v in VARIANTS]}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--pack", type=int, nargs="*", default=[],
                   help="trials sharing the device, each its own process, e.g. 1 2 4 8 (on CPU one thread each)")
    p.add_argument("--pack-hidden", type=int, default=256, help="hidden size of the packed trials")
    p.add_argument("--pack-seconds", type=float, default=10.0, help="timed seconds per pack size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--markdown", default=None, help="JSON file written by --json: print it as a Markdown table and exit")
    args = p.parse_args(argv)
    known = {v.name for v in VARIANTS}
    for name in args.only or []:
        if name not in known:
            p.error(f"unknown variant {name!r}; known: {sorted(known)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.markdown:
        with open(args.markdown) as f:
            print(format_markdown(json.load(f)["rows"]))
        return 0
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    variants = [v for v in VARIANTS if (v.default if args.only is None else v.name in args.only)]
    summaries = []
    for n in args.hidden:
        for batch in args.batch:
            rows = bench_size(n, batch, args.bptt, variants, args.rounds, args.mode, device, args.seed, args.min_time)
            block = [r.summary(args.mode) for r in rows]
            print(format_table(block), flush=True)
            print(flush=True)
            summaries += block
    packing = []
    if args.pack:
        threads = 1 if device.type == "cpu" else args.threads
        for cell, fargs in (("lstm", {}), ("grouped", {"groups": 4})):
            rows = bench_packing(args.pack_hidden, 32, args.bptt, cell, fargs, args.pack, args.pack_seconds, device, threads)
            packing += rows
            for r in rows:
                print(f"packing {r['cell']:8s} n={r['hidden']} k={r['trials']}: {r['aggregate_tokens_per_s']:,.0f} tok/s "
                      f"aggregate, {r['speedup']:.2f}x of k={rows[0]['trials']}", flush=True)
    result = {"machine": machine(), "mode": args.mode, "bptt": args.bptt, "rows": summaries, "packing": packing}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
