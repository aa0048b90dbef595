"""The driver's per-event cost with MLflow tracking: does a completion cost the same at 100 and at 5,000 trials?

Each cell replays the default table (``benchmarks/data/default_curves.csv.gz``, 4-epoch curves) with the
``sqlite`` driver of ``driver_scale.py``: the controller's journal on disk and, on every completion, what the
Ray runner does in that version of the code: the MLflow child run ended, the parent's front brought up to
date (SQLite store) and the records file users read. Times are taken around ``SearchController.complete`` plus
that completion work, and around ``SearchController.report``, one list each, so a completion's cost can be
read by position (the median of the last 100 completions of a 100-trial and of a 1,000-trial search).

``--trees`` runs the same cell on other checkouts of the code at once (``before=/tmp/before_pkg``: a folder
holding a ``squeezelstm`` link to a ``git worktree`` of the old commit, put first on ``PYTHONPATH``), so
before and after are paired under the same load. ``--max-seconds`` stops a cell that would take too long
(the old code at 1,000 trials): its completions so far are kept, with the trial count it reached.

    python benchmarks/driver_events.py --trials 100 1000 --trees after before=/tmp/before_pkg \\
        --out results/driver_events.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
TABLE = HERE / "data" / "default_curves.csv.gz"


class _Stop(Exception):
    """Raised from the completion hook when a cell has run ``max_seconds``."""


def run_cell(trials: int, workers: int, sampler: str, max_seconds: float, seed: int = 0) -> dict:
    """One replayed search with SQLite tracking; per-completion and per-report seconds, in order."""
    from squeezelstm import dashboards
    from squeezelstm.search import backends
    from squeezelstm.search.backends import CurveTable, replay_search
    from squeezelstm.search.config import SearchConfig
    from squeezelstm.search.controller import SearchController
    from squeezelstm.search.tracking import SearchTracker

    from squeezelstm.trainers import files

    incremental = hasattr(backends, "RecordsFile")  # the journal, the diffed front, the throttled files
    background = hasattr(files, "BackgroundWriter")  # the periodic whole writes on run_search's background writer
    writer = files.BackgroundWriter() if background else None
    extra = {"writer": writer} if background else {}
    complete_s: list[float] = []
    report_s: list[float] = []
    real_complete, real_report = SearchController.complete, SearchController.report

    def report(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return real_report(self, *args, **kwargs)
        finally:
            report_s.append(time.perf_counter() - start)

    def complete(self, *args, **kwargs):
        complete.start = time.perf_counter()  # ended in on_complete, after the tracking
        return real_complete(self, *args, **kwargs)

    SearchController.report, SearchController.complete = report, complete
    table = CurveTable.from_csv(TABLE)
    config = SearchConfig("default", experiment=f"events-{trials}-{workers}", seed=seed, sampler=sampler)
    ref = (float(config.space.max_params), 200.0)
    t0 = time.perf_counter()
    reached = 0
    with tempfile.TemporaryDirectory(prefix="driver-events-") as tmp:
        tracker = SearchTracker(f"sqlite:///{tmp}/mlflow.db", config.experiment, dashboards.write_front_files, **extra)
        tracker.start_search(params={"space": "default"}, tags={"space": "default"}, config=config.to_dict())
        records_path = Path(tmp) / "records.json"
        records_file = backends.RecordsFile(records_path, {}, **extra) if incremental else None

        def on_complete(record, controller):  # what ControllerSearcher.on_trial_complete does in this version
            nonlocal reached
            if background and controller._journal.writer is None:  # the runner builds its controller with it
                controller._journal.writer = writer
            tracker.end_trial(record)
            if incremental:
                source = getattr(controller, "records_view", controller.records)
                tracker.update_front(source, ref_params=ref[0], ref_ppl=ref[1])
                records_file.maybe_write(source)
            else:
                tracker.update_front(controller.records(), ref_params=ref[0], ref_ppl=ref[1])
                backends.write_records(records_path, controller.records(), {})
            complete_s.append(time.perf_counter() - complete.start)
            reached = controller.n_records() if incremental else len(controller.records())
            if time.perf_counter() - t0 > max_seconds:
                raise _Stop

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                replay_search(table, config, workers=workers, budget=math.inf, vocab_size=200, ref=ref,
                              max_trials=trials, fresh=True, state_dir=Path(tmp) / "controller",
                              on_complete=on_complete)
                stopped = False
            except _Stop:
                stopped = True
        end_s = time.perf_counter()
        tracker.end_search()
        end_s = time.perf_counter() - end_s
    return {"trials": trials, "workers": workers, "sampler": sampler, "incremental": incremental,
            "background_writes": background,
            "stopped_at_trials": reached if stopped else None, "wall_s": time.perf_counter() - t0,
            "end_search_s": end_s, "complete_s": complete_s, "report_s": report_s}


def summary(row: dict) -> dict:
    """Median / p95 / max of the last 100 completions and reports, and medians of successive hundreds."""
    def stats(xs: list[float]) -> dict:
        if not xs:
            return {}
        xs = sorted(xs)
        return {"median": statistics.median(xs), "p95": xs[min(len(xs) - 1, int(0.95 * len(xs)))], "max": xs[-1]}

    c = row["complete_s"]
    return {"completions": len(c), "last100_complete": stats(c[-100:]), "last100_report": stats(row["report_s"][-100:]),
            "complete_by_hundred": [statistics.median(c[i:i + 100]) for i in range(0, len(c), 100)]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--sampler", default="random", help="random keeps the proposals out of the wall time")
    parser.add_argument("--trees", nargs="+", default=["after"],
                        help="NAME or NAME=FOLDER (put first on PYTHONPATH); run at once, paired")
    parser.add_argument("--max-seconds", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per cell here")
    parser.add_argument("--cell", action="store_true", help="run the one cell given, in this process")
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(args.trials[0], args.workers, args.sampler, args.max_seconds)))
        return 0
    for trials in args.trials:
        procs = []
        for tree in args.trees:
            name, _, folder = tree.partition("=")
            env = dict(os.environ)
            if folder:
                env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, env.get("PYTHONPATH")) if p)
            cmd = [sys.executable, __file__, "--cell", "--trials", str(trials), "--workers", str(args.workers),
                   "--sampler", args.sampler, "--max-seconds", str(args.max_seconds)]
            procs.append((name, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                 env=env)))
        for name, proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                print(f"{name} {trials}: failed: {err.strip().splitlines()[-3:]}", file=sys.stderr)
                continue
            row = json.loads(out.strip().splitlines()[-1])
            row["tree"], row["load"] = name, os.getloadavg()
            s = summary(row)
            last = s["last100_complete"]
            print(f"{name:>8} {trials:>5} trials: {s['completions']} completions"
                  f"{'' if row['stopped_at_trials'] is None else ' (stopped at %d trials)' % row['stopped_at_trials']}"
                  f", wall {row['wall_s']:.0f} s; last 100 completions median {last['median'] * 1000:.1f} ms, "
                  f"p95 {last['p95'] * 1000:.1f} ms, max {last['max'] * 1000:.1f} ms; last 100 reports median "
                  f"{s['last100_report']['median'] * 1000:.2f} ms; end_search {row['end_search_s']:.1f} s; "
                  f"by hundred {[round(m * 1000, 1) for m in s['complete_by_hundred']]} ms", flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps({**row, "summary": s}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
