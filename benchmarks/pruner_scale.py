"""The Pareto pruner's cost per report as the search grows: the bridge's per-epoch index against Optuna's path.

``PruningBridge`` answers ``ParetoAwarePruner`` from arrays sorted by params (one per epoch); before, every
report asked the shadow study, whose ``prune`` loops in Python over every shadow trial. Both paths run in
this process on the same reports, interleaved, and must agree on every decision. Made-up curves: sizes
log-uniform 5k-2M, 1-4 epochs each (a third pruned early), values falling with size and epoch, noisy.

    python benchmarks/pruner_scale.py --trials 500 5000 20000
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import optuna

from squeezelstm.search.pruners import PruningBridge


def fill(trials: int, seed: int = 0) -> PruningBridge:
    """A bridge holding ``trials`` closed trials."""
    rng = np.random.default_rng(seed)
    bridge = PruningBridge("pareto")
    for number in range(trials):
        params = int(10 ** rng.uniform(math.log10(5e3), math.log10(2e6)))
        final = 60 * (params / 5e3) ** -0.1 * rng.uniform(0.9, 1.4)
        bridge.start(number, params)
        epochs = int(rng.choice([1, 2, 4, 4]))
        for epoch in range(1, epochs + 1):
            bridge.report(number, epoch, final * (1 + 1 / epoch))
        bridge.finish(number, "finished" if epochs == 4 else "pruned", final)
    return bridge


def measure(trials: int, probes: int) -> dict:
    bridge = fill(trials)
    pruner = bridge.pruner
    rng = np.random.default_rng(1)
    indexed, optuna_path = [], []
    for k in range(probes):
        number = trials + k
        bridge.start(number, int(10 ** rng.uniform(math.log10(5e3), math.log10(2e6))))
        for epoch in (1, 2):
            value = float(60 * rng.uniform(0.8, 1.6) * (1 + 1 / epoch))
            start = time.perf_counter()
            got = bridge.report(number, epoch, value)
            indexed.append(time.perf_counter() - start)
            start = time.perf_counter()
            frozen = bridge.study.get_trials(deepcopy=False)[number]
            want = pruner.prune(bridge.study, frozen)
            optuna_path.append(time.perf_counter() - start)
            if got != want:
                raise AssertionError(f"trial {number} epoch {epoch}: index says {got}, Optuna {want}")
        bridge.finish(number, "pruned", value)
    q = lambda xs, p: float(np.percentile(xs, p)) * 1e3  # noqa: E731
    return {"trials": trials, "probes": 2 * probes,
            "indexed_ms": {"p50": q(indexed, 50), "p95": q(indexed, 95)},
            "optuna_ms": {"p50": q(optuna_path, 50), "p95": q(optuna_path, 95)},
            "speedup_p50": q(optuna_path, 50) / q(indexed, 50)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = [measure(t, args.probes) for t in args.trials]
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print("| closed trials | reports | index p50 / p95 | Optuna's path p50 / p95 | ratio (p50) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['trials']:,} | {r['probes']} | {r['indexed_ms']['p50']:.3f} / {r['indexed_ms']['p95']:.3f} ms | "
              f"{r['optuna_ms']['p50']:.2f} / {r['optuna_ms']['p95']:.2f} ms | {r['speedup_p50']:.0f}x |")


if __name__ == "__main__":
    main()
