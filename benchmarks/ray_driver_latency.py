"""How long a real Ray search's results wait for the driver, and whether a proposal holds them up.

Runs ``squeezelstm search`` (Ray Tune, the default ``ehvi`` sampler and ``pareto`` pruner) on a tiny space
with the driver's event log on (``SQUEEZELSTM_DRIVER_EVENTS``, ``search/backends/_event_log.py``) and
summarises it:

* ``result``: a trial's epoch report, from the trainer's ``tune.report`` to the scheduler's pruning decision
  (``wait``), and the decision itself (``handle``); split by whether ehvi's next proposal was being computed
  in the background when it arrived;
* ``complete``: ``on_trial_complete`` (the controller's bookkeeping, and the MLflow tracking unless
  ``--no-tracking``);
* ``suggest``: how long each of the searcher's ``suggest`` calls held Ray's event loop, and how many results
  arrived during a suggest that held it over 50 ms (held up by a proposal).

    nice -n 5 python benchmarks/ray_driver_latency.py --trials 40 --max-concurrent 4 --out /tmp/ray_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPACE = HERE.parent / "tests" / "data" / "tiny_ray.yaml"


RUN = "import sys; from squeezelstm.search.cli import main; sys.exit(main())"
# --blocking-suggest: the searcher as it was before it deferred (commit 28089c7): suggest waits for the proposal
BLOCKING = """
from squeezelstm.search.backends import _ray
_suggest = _ray.ControllerSearcher.suggest
def _blocking(self, trial_id):
    import time
    s = _ray._session(self._token)
    prefetch = getattr(s.controller, "_prefetch", None)
    if prefetch is not None:
        start = time.time()
        prefetch.wait()
        if s.events is not None:
            s.events.write("suggest_wait", start=start, end=time.time())
    return _suggest(self, trial_id)
_ray.ControllerSearcher.suggest = _blocking
"""

# --proposal-cost S: every ehvi proposal first burns S seconds of CPU in Python (holding the GIL as the
# sampler's own Python does): a proposal as slow as one at thousands of trials on a loaded machine
COSTLY = """
import time as _time
from squeezelstm.search.samplers import _ehvi
_propose = _ehvi.ExactSizeEHVI.propose
def _costly(self, observations):
    end = _time.thread_time() + %r
    while _time.thread_time() < end:
        sum(range(1000))
    return _propose(self, observations)
_ehvi.ExactSizeEHVI.propose = _costly
"""


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=float)
    return {"n": len(values), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "max": float(arr.max()), "over_100ms": int((arr > 0.1).sum())}


def analyse(events: list[dict]) -> dict:
    """The event log's latencies, summarised (seconds).

    Everything the driver does here runs on Ray's one event-loop thread, one thing at a time, so a result's
    wait splits into the driver's own work that overlapped it (other results, completions, suggests: ``driver``)
    and the rest (the trainer's checkpoint upload, Ray's transport, the machine's load). ``proposal`` is the part
    spent in suggests, and in waiting for a proposal (``suggest_wait``, only with ``--blocking-suggest``).
    """
    results = [e for e in events if e["event"] == "result"]
    completes = [e for e in events if e["event"] == "complete"]
    suggests = [e for e in events if e["event"] == "suggest"]
    proposal_spans = [(e["start"], e["end"]) for e in events if e["event"] in ("suggest", "suggest_wait")]
    busy = proposal_spans + [(e["arrived"], e["arrived"] + e["handle_s"]) for e in results + completes]

    def overlap(spans: list[tuple[float, float]], lo: float, hi: float) -> float:
        return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in spans)

    timed = [e for e in results if e.get("reported_at") is not None]
    driver = [overlap(busy, e["reported_at"], e["arrived"]) for e in timed]
    proposal = [overlap(proposal_spans, e["reported_at"], e["arrived"]) for e in timed]
    return {
        "result_wait": summary([e["wait_s"] for e in timed]),
        "result_wait_for_driver": summary(driver),
        "result_wait_for_proposal": summary(proposal),
        "result_wait_while_proposing": summary([e["wait_s"] for e in timed if e["proposing"]]),
        "result_wait_not_proposing": summary([e["wait_s"] for e in timed if not e["proposing"]]),
        "result_handle": summary([e["handle_s"] for e in results]),
        "result_handle_while_proposing": summary([e["handle_s"] for e in results if e["proposing"]]),
        "result_handle_not_proposing": summary([e["handle_s"] for e in results if not e["proposing"]]),
        "complete_wait": summary([e["wait_s"] for e in completes if e["wait_s"] is not None]),
        "complete_handle": summary([e["handle_s"] for e in completes]),
        "suggest_held_loop": summary([e["end"] - e["start"] for e in suggests if not e.get("deferred")]),
        "suggest_cpu": summary([e["cpu_s"] for e in suggests if not e.get("deferred") and "cpu_s" in e]),
        "suggest_waited_for_proposal": summary([e["end"] - e["start"] for e in events if e["event"] == "suggest_wait"]),
        "suggests_deferred": sum(1 for e in suggests if e.get("deferred")),
        "results": len(results), "completes": len(completes),
        "results_while_proposing": sum(1 for e in results if e["proposing"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(SPACE))
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-concurrent", type=int, default=4)
    parser.add_argument("--cpus-per-trial", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tracking", action="store_true", help="MLflow tracking (SQLite) on, as a default search")
    parser.add_argument("--blocking-suggest", action="store_true",
                        help="the searcher before it deferred: suggest waits for the proposal (for comparison)")
    parser.add_argument("--proposal-cost", type=float, default=0.0,
                        help="seconds of CPU (Python, holding the GIL) added to every ehvi proposal: a slow proposal")
    parser.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    parser.add_argument("--keep", type=Path, default=None, help="copy the raw event log here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ray-latency-") as tmp:
        log = Path(tmp) / "events.jsonl"
        code = (BLOCKING if args.blocking_suggest else "") + (COSTLY % args.proposal_cost if args.proposal_cost else "")
        cmd = [sys.executable, "-c", code + RUN, "search", "--space", args.space, "--trials", str(args.trials),
               "--experiment", "latency", "--epochs", str(args.epochs), "--max-concurrent", str(args.max_concurrent),
               "--cpus-per-trial", str(args.cpus_per_trial), "--seed", str(args.seed), "--storage", f"{tmp}/runs",
               "--quiet"]
        cmd += ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db"] if args.tracking else ["--no-tracking"]
        env = {**os.environ, "SQUEEZELSTM_DRIVER_EVENTS": str(log)}
        load_start, start = os.getloadavg(), time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall, load_end = time.perf_counter() - start, os.getloadavg()
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        events = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if args.keep is not None:
            args.keep.write_text(log.read_text())
    out = {"trials": args.trials, "blocking_suggest": args.blocking_suggest,
           "proposal_cost_s": args.proposal_cost, "epochs": args.epochs, "max_concurrent": args.max_concurrent,
           "tracking": args.tracking, "wall_s": wall, "loadavg_start": load_start, "loadavg_end": load_end,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **analyse(events)}
    print(json.dumps(out, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
