"""One replayed search as a user runs it (``squeezelstm replay``): the table checked against the space,
the search replayed, and what a researcher reads before spending GPU hours on a strategy.

``run_replay`` returns plain data: the front the replayed search found, its hypervolume against
simulated compute (and as a share of the best any search over the table can reach), the trials by
status, and the driver's own cost: proposal and result-handling latency (p50 / p95 / max seconds of
``SearchController.suggest`` and of ``report`` / ``complete``; with a ``proposal_time`` the results handled while
a proposal was computed in the background apart from the others) and the process's peak RSS.
"""

from __future__ import annotations

import copy
import math
import resource
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from ..config import SearchConfig
from ..controller import corpus_vocab_size
from ..pareto import TrialRecord, pareto_front
from ..space import SearchSpace, model_cost
from ._gc import survivors_frozen
from ._replay import CurveTable
from ._replay_loop import ReplayResult, replay_search

MAPPINGS = ("fresh", "nearest")
# shares of the best-known hypervolume whose compute the summary reports
TARGETS = (0.9, 0.95, 0.99)


def check_table(table: CurveTable, space: SearchSpace, measure: Callable[[dict], tuple[int, int]],
                probes: int = 8) -> None:
    """ValueError (one line) unless ``table`` was recorded from ``space``: shared families, and the space's own
    size counter gives the recorded parameter count of the recorded configurations.

    ``probes`` curves spread over the table are recounted; the table is refused when most of them differ
    by more than 1% (another vocabulary, other fixed settings), so a small change of the counters since
    the recording does not refuse a table that still replays the right sizes.
    """
    shared = [f for f in space.families if f in table.by_family]
    if not shared:
        raise ValueError(f"the curve table's families ({', '.join(sorted(table.by_family))}) are none of space "
                         f"{space.name!r}'s ({', '.join(space.families)}): pass the --space it was recorded from")
    curves = [c for c in table.curves if c.family in shared]
    picked = [curves[int(i)] for i in np.unique(np.linspace(0, len(curves) - 1, min(probes, len(curves))).astype(int))]
    wrong = []
    for curve in picked:
        config = copy.deepcopy(space.fixed)
        for key, value in curve.sampled.items():
            section, _, name = key.partition(".")
            if key != "model.cell" and name:
                config.setdefault(section, {})[name] = value
        config.setdefault("model", {})["cell"] = curve.family
        try:
            params, _ = measure(config)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"the curve table does not match space {space.name!r}: curve {curve.index}'s "
                             f"configuration is not one of it ({exc})") from None
        if abs(params - curve.params) > 0.01 * max(curve.params, 1):
            wrong.append((curve, params))
    if len(wrong) * 2 > len(picked):
        curve, params = wrong[0]
        raise ValueError(f"the curve table does not match space {space.name!r}: curve {curve.index} ({curve.family}) "
                         f"was recorded with {curve.params:,} parameters, the space counts {params:,} for it "
                         f"({len(wrong)} of {len(picked)} probed curves differ); pass the --space (and --set) it was "
                         "recorded from")


def latency_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50, p95 and max of ``seconds`` (None for an empty list)."""
    if not len(seconds):
        return {"p50": None, "p95": None, "max": None}
    arr = np.asarray(seconds, dtype=float)
    return {"p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)), "max": float(arr.max())}


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def run_replay(table: CurveTable, config: SearchConfig, *, trials: int, workers: int, budget: float = math.inf,
               mapping: str = "fresh", vocab_size: int | None = None, proposal_time: float | None = None) -> dict:
    """Check ``table`` against ``config.space``, replay ``trials`` trials of ``config`` on ``workers`` simulated
    workers (or until ``budget`` epochs of compute), and return the summary (plain JSON-ready data).

    ``mapping``: "fresh" maps each sample to the nearest recorded configuration not yet launched (as a real
    search trains a new one), "nearest" to the nearest one even if already launched. ``proposal_time``: simulated
    epochs a proposal takes, prepared in the background as in a Ray search (``replay_search``); None: instantaneous.
    """
    if mapping not in MAPPINGS:
        raise ValueError(f"mapping must be one of {MAPPINGS}, got mapping={mapping!r}")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be a positive integer, got trials={trials!r}")
    space = config.space
    vocab = corpus_vocab_size(space) if vocab_size is None else int(vocab_size)
    check_table(table, space, lambda c: model_cost(c, vocab))
    if not space.max_params:
        raise ValueError(f"space {space.name!r} has no budget.max_params: the replay's hypervolume needs it")
    epochs = space.trial_epochs(config.epochs)
    ref = (float(space.max_params), float(vocab))  # what `squeezelstm search` reports against
    start = time.perf_counter()
    with survivors_frozen():  # the driver's heap, as a search's: no full collection walking every trial
        result = replay_search(table, config, workers=workers, budget=budget, vocab_size=vocab, ref=ref,
                               max_trials=trials, fresh=mapping == "fresh", proposal_time=proposal_time)
    wall = time.perf_counter() - start
    out = summarise(table, config, result, ref=ref, epochs=epochs, workers=workers, mapping=mapping, wall_s=wall)
    out["proposal_time"] = proposal_time
    return out


def summarise(table: CurveTable, config: SearchConfig, result: ReplayResult, *, ref: tuple[float, float],
              epochs: int, workers: int, mapping: str, wall_s: float) -> dict:
    """The replay's summary: settings, statuses, front, hypervolume trace and targets, driver cost."""
    best = table.best_hypervolume(epochs, ref)
    by_index = {c.index: c for c in table.curves}
    records = [TrialRecord(number=t["number"], family=t["family"], params=int(t["params"]), status=t["status"],
                           valid_ppl=t["valid_ppl"], sampled=dict(by_index[t["curve"]].sampled))
               for t in result.trials]
    curve_of = {t["number"]: t["curve"] for t in result.trials}
    front, seen = [], set()
    for r in pareto_front(records):  # a recorded configuration trained again (the table ran out) is listed once
        if curve_of[r.number] not in seen:
            seen.add(curve_of[r.number])
            front.append({"trial": r.number, "curve": curve_of[r.number], "family": r.family, "params": r.params,
                          "valid_ppl": r.valid_ppl, "sampled": r.sampled})
    hv = result.trace[-1][1] if result.trace else 0.0
    out = {
        "space": config.space.name, "sampler": config.sampler, "pruner": config.pruner, "seed": config.seed,
        "workers": workers, "mapping": mapping, "epochs": epochs, "configurations": len(table.curves),
        "trials": len(result.trials), "statuses": {k: v for k, v in result.counts.items() if v},
        "compute_epochs": result.compute, "reference": list(ref),
        "hypervolume": hv, "best_hypervolume": best, "hypervolume_share": hv / best if best > 0 else None,
        "true_front_found": result.found(table.true_front(epochs)),
        "true_front_size": len(table.true_front(epochs)),
        "front": front,
        "hypervolume_trace": [[c, h] for c, h in result.trace],  # (compute spent, hypervolume) per closed trial
        "wall_s": wall_s,
        "proposals": len(result.latency["proposal"]), "results": len(result.latency["result"]),
        "results_during_proposal": len(result.latency["result_during_proposal"]),
        "peak_rss_mb": peak_rss_mb(),
    }
    for share in TARGETS:
        out[f"compute_to_{int(share * 100)}pct"] = result.compute_to(share * best) if best > 0 else None
    # results handled while a proposal was computed in the background (the thread alive) and while none was
    for name in ("proposal", "result", "result_during_proposal", "result_no_proposal"):
        for key, value in latency_summary(result.latency[name]).items():
            out[f"{name}_latency_{key}_s"] = value
    return out


__all__ = ["MAPPINGS", "check_table", "latency_summary", "peak_rss_mb", "run_replay", "summarise"]
