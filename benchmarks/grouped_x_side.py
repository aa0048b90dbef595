"""Benchmark: where a G-LSTM computes its input side, inside the compiled loop or as one window-wide bmm.

``GroupedLSTMLayer`` picks by the input group width m/g (``grouped.FUSED_X_MAX_WIDTH``). This runs
both on the same tensors in one process, forward+backward of one window (bptt 35, g = 4, input width
= hidden width n), in interleaved rounds (alternating which goes first), and prints per size the
median over rounds of t(window-wide bmm) / t(in-loop): > 1 means computing it inside the loop is
faster. CPU only: on other devices both are the same Python loop.

    python benchmarks/grouped_x_side.py [--hidden 256 512 1024] [--batch 32 64] [--threads 2]
                                        [--rounds 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from squeezelstm.spaces._recurrence import group_projection, linear_recurrence
from squeezelstm.spaces.grouped import FUSED_X_MAX_WIDTH


def measure(n: int, batch: int, groups: int, bptt: int, rounds: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    s4, width = 4 * n // groups, n // groups
    x = torch.randn(bptt, batch, n, generator=gen, requires_grad=True)
    w_ih = (0.1 * torch.randn(groups, s4, width, generator=gen)).requires_grad_()
    w_hh = (0.1 * torch.randn(groups, s4, width, generator=gen)).requires_grad_()
    bias = torch.zeros(groups, s4, requires_grad=True)
    h0, c0 = torch.zeros(groups, batch, width), torch.zeros(groups, batch, width)

    def in_loop() -> None:
        out, _, _ = linear_recurrence(x, h0, c0, (w_hh.transpose(1, 2),), bias=bias, x_weight=w_ih.transpose(1, 2))
        out.sum().backward()

    def window_wide() -> None:
        out, _, _ = linear_recurrence(group_projection(x, w_ih.transpose(1, 2)), h0, c0, (w_hh.transpose(1, 2),), bias=bias)
        out.sum().backward()

    reps = max(3, int(40 * (256 / n) ** 2))

    def timed(fn) -> float:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) / reps

    for fn in (in_loop, window_wide, in_loop, window_wide):  # warm-up
        fn()
    ratios, t_loop, t_wide = [], [], []
    for r in range(rounds):
        if r % 2:
            a, b = timed(in_loop), timed(window_wide)
        else:
            b, a = timed(window_wide), timed(in_loop)
        t_loop.append(a)
        t_wide.append(b)
        ratios.append(b / a)
    return {"hidden": n, "batch": batch, "groups": groups, "group_width": width, "ms_in_loop": 1e3 * statistics.median(t_loop),
            "ms_window_wide": 1e3 * statistics.median(t_wide), "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "chosen": "in_loop" if width <= FUSED_X_MAX_WIDTH else "window_wide"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, g = {args.groups}, bptt {args.bptt}; ratio = t(window-wide bmm) / t(in-loop), "
          f"> 1: in-loop faster; the layer uses in-loop for m/g <= {FUSED_X_MAX_WIDTH}", file=sys.stderr)
    print(f"{'n':>5} {'N':>4} {'m/g':>4} {'in-loop ms':>11} {'wide ms':>8} {'ratio':>6} {'range':>12}  chosen")
    rows = []
    for n in args.hidden:
        for batch in args.batch:
            row = measure(n, batch, args.groups, args.bptt, args.rounds)
            rows.append(row)
            print(f"{n:>5} {batch:>4} {row['group_width']:>4} {row['ms_in_loop']:>11.2f} {row['ms_window_wide']:>8.2f} "
                  f"{row['ratio']:>6.3f} {row['ratio_min']:>5.2f}-{row['ratio_max']:<5.2f}  {row['chosen']}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "bptt": args.bptt, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
