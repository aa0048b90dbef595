"""The search driver at scale: its own per-event cost as trials and simulated workers grow, no training.

Each cell replays a sampler (``--sampler``: the default ``ehvi``, or Optuna's ``tpe``, ``gp``, ...) with the
default pruner (``pareto``) over the recorded default-space table (``benchmarks/data/default_curves.csv.gz``)
with ``squeezelstm.search.backends.replay_search``:
``--trials`` trials on ``--workers`` simulated workers, with 4-epoch curves (as recorded) or 13-epoch
ones (the ``ptb`` space's epochs: each recorded curve stretched, v(e) = final * (1 + a / e) through its
recorded first and last epochs; made-up beyond epoch 4, but the same ranking). Two driver set-ups:

* ``memory``: the controller alone (in-memory study, no files), the replay's own setting;
* ``sqlite``: as ``squeezelstm search`` drives: the controller's journal and ``records.json`` on disk,
  and on every completion the MLflow child run ended, the parent's front brought up to date
  (pareto tags, hypervolume steps, the front's CSV/JSON/HTML report) in a SQLite store and the records file
  the runner keeps; where the code has it (``trainers.files.BackgroundWriter``), the periodic whole writes
  run on the runner's background writer, as ``run_search`` sets it up, and the end (``end_search``, the
  records file, ``flush``) is timed as ``end_s``;
* ``server``: the same, through a local ``mlflow server`` (SQLite behind it, started by the cell on a free
  port, one worker) at ``http://127.0.0.1:PORT``, as a team's shared tracking server is used.

Per cell: wall time, proposal latency (``suggest``; and its CPU time on the driver's thread, which a shared
machine's load does not inflate) and result-handling latency (``report``, and ``complete`` with the tracking)
p50 / p95 / max, and peak RSS (of this process: run one cell per process, ``--cell``, for a clean number; the
default runs every asked cell in a child process each),
the cell's CPU time (user, system) and the load average at its start and end (the machine may be shared).
``--cap S`` stops a cell after S seconds of wall time (at its next proposal: GPSampler at 1,000 trials) and
reports the trials it got to, with ``capped: true``.
One JSON line per cell is appended to ``--out`` as it finishes, so a partial run keeps its cells.

    python benchmarks/driver_scale.py --trials 100 1000 --workers 64 256 --epochs 4 13 \\
        --tracking memory sqlite --out /tmp/driver_scale.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import socket
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


class Capped(Exception):
    """The cell ran out of its wall-time cap."""


def timed_controller(latency: dict, deadline: float, writer=None):
    """The replay's controller, timing its calls into ``latency`` itself and stopping (``Capped``) at ``deadline``
    (given ``writer``, its journal's snapshots are written by it, as in ``run_search``)."""
    from squeezelstm.search.controller import SearchController

    class Timed(SearchController):
        def __init__(self, *args, **kwargs):
            if writer is not None:
                kwargs["writer"] = writer
            super().__init__(*args, **kwargs)
            timed_controller.live = self

        def suggest(self):
            if time.perf_counter() > deadline:
                raise Capped
            start, cpu = time.perf_counter(), time.thread_time()
            try:
                return super().suggest()
            finally:
                latency["proposal"].append(time.perf_counter() - start)
                latency["proposal_cpu"].append(time.thread_time() - cpu)

        def report(self, *args, **kwargs):
            start, busy = time.perf_counter(), writer is not None and writer.busy()
            try:
                return super().report(*args, **kwargs)
            finally:
                latency["result"].append(time.perf_counter() - start)
                latency["events"].append(("report", latency["result"][-1], busy))

        def complete(self, *args, **kwargs):
            start, busy = time.perf_counter(), writer is not None and writer.busy()
            try:
                return super().complete(*args, **kwargs)
            finally:
                latency["result"].append(time.perf_counter() - start)
                latency["events"].append(("complete", latency["result"][-1], busy))  # + its tracking (on_complete)

    return Timed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(tmp: str) -> tuple[subprocess.Popen, str]:
    """A local ``mlflow server`` over SQLite in ``tmp`` (one worker); returns it and its URI once it answers."""
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp}/server.db",
         "--artifacts-destination", f"{tmp}/server-artifacts", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/server.log", "w"), start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {Path(tmp, 'server.log').read_text()[-500:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("mlflow server did not answer within 2 minutes")


def run_cell(trials: int, workers: int, epochs: int, tracking: str, seed: int = 0, sampler: str = "ehvi",
             cap: float | None = None) -> dict:
    """One replayed search; returns its driver-cost numbers."""
    from squeezelstm.search.backends import CurveTable, replay_search
    try:  # the replay's event loop, which builds the controller (in _replay.py before it had a module of its own)
        from squeezelstm.search.backends import _replay_loop as _replay
    except ImportError:
        from squeezelstm.search.backends import _replay
    from squeezelstm.search.backends._replay_run import latency_summary, peak_rss_mb
    from squeezelstm.search.config import SearchConfig

    table = CurveTable.from_csv(TABLE)
    if epochs != 4:
        table = stretched(table, epochs)
    config = SearchConfig("default", experiment=f"scale-{trials}-{workers}-{epochs}", seed=seed, epochs=epochs,
                          sampler=sampler, track=tracking != "memory")
    ref = (float(config.space.max_params), 200.0)
    load_start, rusage_start = os.getloadavg(), resource.getrusage(resource.RUSAGE_SELF)
    server = None
    end_s, background = None, False
    with tempfile.TemporaryDirectory(prefix="driver-scale-") as tmp:
        state_dir = on_complete = writer = tracker = records_file = None
        if tracking in ("sqlite", "server"):
            from squeezelstm import dashboards
            from squeezelstm.search import backends
            from squeezelstm.search.tracking import SearchTracker
            from squeezelstm.trainers import files

            uri = f"sqlite:///{tmp}/mlflow.db"
            if tracking == "server":
                server, uri = start_mlflow_server(tmp)
            state_dir = Path(tmp) / "controller"
            background = hasattr(files, "BackgroundWriter") and not os.environ.get("DRIVER_SCALE_SYNC_WRITES")
            writer = files.BackgroundWriter() if background else None
            extra = {"writer": writer} if background else {}
            tracker = SearchTracker(uri, config.experiment, dashboards.write_front_files, **extra)
            tracker.start_search(params={"space": "default"}, tags={"space": "default"}, config=config.to_dict())
            records_file = backends.RecordsFile(Path(tmp) / "records.json", {}, **extra)

            def on_complete(record, controller):  # what ControllerSearcher.on_trial_complete does
                start = time.perf_counter()
                source = getattr(controller, "records_view", controller.records)  # shallow copies, where it has them
                tracker.end_trial(record)
                tracker.update_front(source, ref_params=ref[0], ref_ppl=ref[1])  # read only when due
                records_file.maybe_write(source)  # the runner's on_change
                if capped_latency["result"]:
                    capped_latency["result"][-1] += time.perf_counter() - start
                    kind, took, busy = capped_latency["events"][-1]
                    busy = busy or (writer is not None and writer.busy())
                    capped_latency["events"][-1] = (kind, took + time.perf_counter() - start, busy)

        capped_latency: dict[str, list] = {"proposal": [], "result": [], "proposal_cpu": [], "events": []}
        deadline = time.perf_counter() + (cap if cap else math.inf)
        original = _replay.SearchController
        _replay.SearchController = timed_controller(capped_latency, deadline, writer)
        start = time.perf_counter()
        res, capped = None, False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = replay_search(table, config, workers=workers, budget=math.inf, vocab_size=200, ref=ref,
                                    max_trials=trials, fresh=True, state_dir=state_dir, on_complete=on_complete)
        except Capped:
            capped = True
        finally:
            _replay.SearchController = original
            wall = time.perf_counter() - start
            if tracker is not None:  # the end of a search, as the runner's: records, the records file, the parent
                end = time.perf_counter()
                live = timed_controller.live
                live.flush()
                records_file.write(live.records())
                tracker.end_search()
                end_s = time.perf_counter() - end
            if server is not None:
                server.terminate()
                server.wait(timeout=30)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"trials": len(res.trials) if res else len(capped_latency["proposal"]), "workers": workers,
           "epochs": epochs, "tracking": tracking, "seed": seed, "sampler": sampler,
           "wall_s": wall, "cpu_user_s": usage.ru_utime - rusage_start.ru_utime,
           "cpu_system_s": usage.ru_stime - rusage_start.ru_stime, "peak_rss_mb": peak_rss_mb(),
           "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "capped": capped, "cap_s": cap, "counts": res.counts if res else None,
           "background_writes": background, "end_s": end_s}
    latency = res.latency if res else capped_latency
    for name in ("proposal", "result"):
        for key, value in latency_summary(latency[name]).items():
            out[f"{name}_latency_{key}_s"] = value
    for key, value in latency_summary(capped_latency["proposal_cpu"]).items():  # the same calls' CPU time (one thread)
        out[f"proposal_cpu_{key}_s"] = value
    events = capped_latency["events"]  # (kind, seconds, whether the background writer was busy meanwhile)
    for kind in ("report", "complete"):
        for key, value in latency_summary([t for k, t, _ in events if k == kind]).items():
            out[f"{kind}_latency_{key}_s"] = value
    out["results_over_0.1_s"] = sum(t > 0.1 for _, t, _ in events)
    out["results_over_1_s"] = sum(t > 1.0 for _, t, _ in events)
    out["results_over_0.1_s_writer_busy"] = sum(t > 0.1 and b for _, t, b in events)
    out["slowest_results"] = [[k, round(t, 4), b, i] for i, (k, t, b) in
                              sorted(enumerate(events), key=lambda e: -e[1][1])[:12]]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--workers", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--epochs", type=int, nargs="+", default=[4, 13])
    parser.add_argument("--tracking", nargs="+", default=["memory", "sqlite"], choices=("memory", "sqlite", "server"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", nargs="+", default=["ehvi"],
                        help="ehvi (the default), tpe, gp, ...: each through the same controller")
    parser.add_argument("--cap", type=float, default=None, help="stop a cell after this many seconds (reported)")
    parser.add_argument("--out", type=Path, default=None, help="append one JSON line per cell here")
    parser.add_argument("--cell", action="store_true", help="run the one cell given, in this process")
    args = parser.parse_args(argv)
    if args.cell:
        print(json.dumps(run_cell(args.trials[0], args.workers[0], args.epochs[0], args.tracking[0], args.seed,
                                  args.sampler[0], args.cap)))
        return 0
    for trials, sampler in ((t, s) for t in args.trials for s in args.sampler):
        for tracking in args.tracking:
            for epochs in args.epochs:
                for workers in args.workers:
                    cmd = [sys.executable, __file__, "--cell", "--trials", str(trials), "--workers", str(workers),
                           "--epochs", str(epochs), "--tracking", tracking, "--seed", str(args.seed),
                           "--sampler", sampler] + (["--cap", str(args.cap)] if args.cap else [])
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
                          f"{row['result_latency_max_s']:.4f} s, peak RSS {row['peak_rss_mb']:.0f} MiB, "
                          f"{row['trials']} trials{' (capped)' if row['capped'] else ''}, CPU "
                          f"{row['cpu_user_s'] + row['cpu_system_s']:.0f} s, load {row['loadavg_start'][0]:.1f}-"
                          f"{row['loadavg_end'][0]:.1f}", flush=True)
                    if args.out is not None:
                        with args.out.open("a") as f:
                            f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
