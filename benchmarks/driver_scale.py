"""The search driver at scale: its own per-event cost as trials and simulated workers grow, no training.

Each cell replays a sampler (``--sampler``: the default ``ehvi``, or Optuna's ``tpe``, ``gp``, ...) with the
default pruner (``pareto``) over the recorded default-space table (``benchmarks/data/default_curves.csv.gz``)
with ``squeezelstm.search.backends.replay_search``:
``--trials`` trials on ``--workers`` simulated workers, with 4-epoch curves (as recorded) or 13-epoch
ones (the ``ptb`` space's epochs: each recorded curve stretched, v(e) = final * (1 + a / e) through its
recorded first and last epochs; made-up beyond epoch 4, but the same ranking). Two driver set-ups:

* ``memory``: the controller alone (in-memory study, no files), the replay's own setting;
* ``sqlite``: as ``squeezelstm search`` drives: the controller's journal and ``records.json`` on disk,
  and on every completion the MLflow child run ended and the parent's front brought up to date
  (pareto tags, hypervolume steps, the front's CSV/JSON/HTML report) in a SQLite store.

Per cell: wall time, proposal latency (``suggest``) and result-handling latency (``report``, and
``complete`` with the tracking) p50 / p95 / max, and peak RSS (of this process: run one cell per
process, ``--cell``, for a clean number; the default runs every asked cell in a child process each).
One JSON line per cell is appended to ``--out`` as it finishes, so a partial run keeps its cells.

    python benchmarks/driver_scale.py --trials 100 1000 --workers 64 256 --epochs 4 13 \\
        --tracking memory sqlite --out /tmp/driver_scale.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE = HERE / "data" / "default_curves.csv.gz"


def stretched(table, epochs: int):
    """``table`` with every curve that reached its last recorded epoch stretched to ``epochs`` epochs."""
    from squeezelstm.search.backends import Curve, CurveTable

    out = []
    for c in table.curves:
        if len(c.valid) < 2 or epochs <= len(c.valid):
            out.append(c)
            continue
        first, last, n = c.valid[0], c.valid[-1], len(c.valid)
        # v(e) = final * (1 + a / e) through (1, first) and (n, last)
        a = (first - last) / (last - first / n) if last != first / n else 0.0
        final = first / (1 + a)
        valid = tuple(final * (1 + a / e) for e in range(1, epochs + 1))
        seconds = tuple(c.epoch_s[min(e, len(c.epoch_s)) - 1] if c.epoch_s else 0.0 for e in range(1, epochs + 1))
        out.append(Curve(index=c.index, family=c.family, sampled=c.sampled, params=c.params, flops=c.flops,
                         valid=valid, epoch_s=seconds, status=c.status))
    return CurveTable(out)


def run_cell(trials: int, workers: int, epochs: int, tracking: str, seed: int = 0, sampler: str = "ehvi") -> dict:
    """One replayed search; returns its driver-cost numbers."""
    from squeezelstm.search.backends import CurveTable, replay_search
    from squeezelstm.search.backends._replay_run import latency_summary, peak_rss_mb
    from squeezelstm.search.config import SearchConfig

    table = CurveTable.from_csv(TABLE)
    if epochs != 4:
        table = stretched(table, epochs)
    config = SearchConfig("default", experiment=f"scale-{trials}-{workers}-{epochs}", seed=seed, epochs=epochs,
                          sampler=sampler, track=tracking != "memory")
    ref = (float(config.space.max_params), 200.0)
    with tempfile.TemporaryDirectory(prefix="driver-scale-") as tmp:
        state_dir = on_complete = None
        if tracking == "sqlite":
            from squeezelstm import dashboards
            from squeezelstm.search.tracking import SearchTracker

            state_dir = Path(tmp) / "controller"
            tracker = SearchTracker(f"sqlite:///{tmp}/mlflow.db", config.experiment, dashboards.write_front_files)
            tracker.start_search(params={"space": "default"}, tags={"space": "default"}, config=config.to_dict())

            def on_complete(record, controller):  # what ControllerSearcher.on_trial_complete does
                tracker.end_trial(record)
                tracker.update_front(controller.records(), ref_params=ref[0], ref_ppl=ref[1])

        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = replay_search(table, config, workers=workers, budget=math.inf, vocab_size=200, ref=ref,
                                max_trials=trials, fresh=True, state_dir=state_dir, on_complete=on_complete)
        wall = time.perf_counter() - start
    out = {"trials": len(res.trials), "workers": workers, "epochs": epochs, "tracking": tracking, "seed": seed,
           "sampler": sampler,
           "wall_s": wall, "peak_rss_mb": peak_rss_mb(), "counts": res.counts}
    for name in ("proposal", "result"):
        for key, value in latency_summary(res.latency[name]).items():
            out[f"{name}_latency_{key}_s"] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workers", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--epochs", type=int, nargs="+", default=[4, 13])
    parser.add_argument("--tracking", nargs="+", default=["memory", "sqlite"], choices=("memory", "sqlite"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", nargs="+", default=["ehvi"],
                        help="ehvi (the default), tpe, gp, ...: each through the same controller")
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per cell here")
    parser.add_argument("--cell", action="store_true", help="run the one cell given, in this process")
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(args.trials[0], args.workers[0], args.epochs[0], args.tracking[0], args.seed,
                                  args.sampler[0])))
        return 0
    for trials, sampler in ((t, s) for t in args.trials for s in args.sampler):
        for tracking in args.tracking:
            for epochs in args.epochs:
                for workers in args.workers:
                    cmd = [sys.executable, __file__, "--cell", "--trials", str(trials), "--workers", str(workers),
                           "--epochs", str(epochs), "--tracking", tracking, "--seed", str(args.seed),
                           "--sampler", sampler]
                    done = subprocess.run(cmd, capture_output=True, text=True)
                    if done.returncode != 0:
                        print(f"cell {cmd[3:]} failed: {done.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                        continue
                    line = done.stdout.strip().splitlines()[-1]
                    row = json.loads(line)
                    print(f"{sampler} {trials:>5} trials {workers:>3} workers {epochs:>2} epochs {tracking:>6}: "
                          f"{row['wall_s']:7.1f} s, proposal p50/p95/max {row['proposal_latency_p50_s']:.3f}/"
                          f"{row['proposal_latency_p95_s']:.3f}/{row['proposal_latency_max_s']:.3f} s, result "
                          f"{row['result_latency_p50_s']:.4f}/{row['result_latency_p95_s']:.4f}/"
                          f"{row['result_latency_max_s']:.4f} s, peak RSS {row['peak_rss_mb']:.0f} MiB", flush=True)
                    if args.out is not None:
                        with args.out.open("a") as f:
                            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
