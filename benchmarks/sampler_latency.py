"""Proposal latency of the default sampler (``ExactSizeEHVI``) as a search grows: p50 / p95 / max per proposal.

A search of ``--trials`` closed trials of the space (random in-budget configurations, synthetic
``--epochs``-epoch learning curves: a smooth function of the configuration times a decaying
progress term, a third of the trials pruned after one or two epochs, a few failed) and ``--running``
trials in flight is fed to the sampler as the controller does (``Observation`` with trial
numbers); then ``--proposals`` proposals are timed, each followed by one more finished trial, so
the hyperparameter refits happen on their own schedule. ``--max-rows none`` is the unbounded GP
(every epoch of every trial: the sampler before the active set). Torch and BLAS use ``--threads``.

    python benchmarks/sampler_latency.py --trials 500 5000 --epochs 13 --proposals 40 --json lat.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time


def synthetic_search(space, measure, n: int, epochs: int, seed: int):
    """``n`` closed observations of ``space`` (value dicts, family, size, status, curve) and a factory for more."""
    import numpy as np

    from squeezelstm.search.samplers import Observation, random_draw

    draw = random_draw(space, measure, epochs)
    rng = np.random.default_rng(seed)
    fam_level = {f: 80.0 + 15.0 * i for i, f in enumerate(space.families)}

    def one(number: int, status: str | None = None) -> Observation:
        got = None
        while got is None:
            got = draw(int(rng.integers(2**62)))
        values, family, params = got
        lr = next((float(v) for k, v in values.items() if "lr" in k), 0.01)
        final = fam_level[family] * (1 + 0.3 * abs(math.log(lr / 0.01))) * (1e5 / params) ** 0.1 * rng.lognormal(0, 0.03)
        status = status or rng.choice(["finished", "pruned", "failed"], p=[0.62, 0.35, 0.03])
        last = {"finished": epochs, "pruned": int(rng.integers(1, 3)), "failed": 0}[status]
        curve = [(e, final * (1 + 2.0 / e)) for e in range(1, last + 1)]
        return Observation(values, family, params, status, curve, number)

    return [one(i) for i in range(n)], one


def measure_latency(space, measure, *, trials: int, epochs: int, running: int, proposals: int, max_rows,
                    seed: int = 0) -> dict:
    """Time ``proposals`` proposals after ``trials`` closed trials; returns the latency percentiles in seconds."""
    import numpy as np

    from squeezelstm.search.samplers import ExactSizeEHVI, Observation, local_draw, space_dists
    from squeezelstm.search.samplers import one_thread

    obs, one = synthetic_search(space, measure, trials + running, epochs, seed)
    obs = obs[:trials] + [Observation(o.values, o.family, o.params, "running", [], o.number) for o in obs[trials:]]
    dists, families = space_dists(space)
    from squeezelstm.search.samplers import random_draw

    sampler = ExactSizeEHVI(random_draw(space, measure, epochs), dists, families, epochs=epochs,
                            smallest=space.check_budget(measure)[0], ref_params=space.max_params, seed=seed,
                            neighbour=local_draw(space, measure, epochs), max_rows=max_rows)
    times, cpu, rows, refits = [], [], [], 0
    for k in range(proposals):
        start, cpu_start = time.perf_counter(), time.thread_time()
        with one_thread():  # as the controller runs it
            sampler.propose(obs)
        times.append(time.perf_counter() - start)
        cpu.append(time.thread_time() - cpu_start)  # what a shared machine's load does not inflate
        rows.append(sampler.last.get("rows", 0))
        refits += bool(sampler.last.get("refit"))
        obs.append(one(len(obs), "finished"))  # one more closed trial before the next proposal
    t = np.asarray(times)
    return {"trials": trials, "epochs": epochs, "running": running, "max_rows": max_rows, "proposals": proposals,
            "p50_s": float(np.percentile(t, 50)), "p95_s": float(np.percentile(t, 95)), "max_s": float(t.max()),
            "first_s": float(t[0]), "gp_rows": int(max(rows)), "refits": refits,
            "cpu_p50_s": float(np.percentile(cpu, 50)), "cpu_p95_s": float(np.percentile(cpu, 95)),
            "cpu_max_s": float(max(cpu)), "loadavg": os.getloadavg(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--trials", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--epochs", type=int, default=13)
    parser.add_argument("--running", type=int, default=64)
    parser.add_argument("--proposals", type=int, default=40)
    parser.add_argument("--max-rows", default="512", help="the active set's bound, or 'none' (unbounded)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)  # the process's setting; proposals run on one thread (``one_thread``)
    from squeezelstm.search.space import load_space, model_cost

    space = load_space(args.space)
    vocab = int(space.fixed.get("data", {}).get("vocab_size", 10000))
    measure = lambda config: model_cost(config, vocab)  # noqa: E731
    max_rows = None if args.max_rows == "none" else int(args.max_rows)
    out = []
    for n in args.trials:
        res = measure_latency(space, measure, trials=n, epochs=args.epochs, running=args.running,
                              proposals=args.proposals, max_rows=max_rows)
        out.append(res)
        print(f"{n} trials x {args.epochs} epochs, {args.running} running, max_rows={max_rows}: p50 {res['p50_s']:.3f} s, "
              f"p95 {res['p95_s']:.3f} s, max {res['max_s']:.3f} s (first {res['first_s']:.3f} s, {res['refits']} refits, "
              f"{res['gp_rows']} GP rows), CPU p50 {res['cpu_p50_s']:.3f} s p95 {res['cpu_p95_s']:.3f} s, peak RSS "
              f"{res['peak_rss_mb']:.0f} MB, load {res['loadavg'][0]:.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "cpus": os.cpu_count(), "results": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
