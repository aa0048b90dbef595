"""Real (not replayed) searches to check the replay's ranking: hypervolume, epochs trained and pruned trials.

Runs ``squeezelstm.search.run_search`` (Ray Tune, the real ``SearchController``) once per strategy
and seed, one trial at a time, with no MLflow, and reports each search's hypervolume in (log10
params, log perplexity) against the same fixed reference as ``search_efficiency.py`` (the budget's
``max_params``, the corpus's unigram perplexity) and as a fraction of a recorded table's best-known
hypervolume. A search already in ``--storage`` is not run again, only summarised (so an interrupted
run picks up where it stopped; a search cut off mid-way is resumed).

    python benchmarks/real_searches.py --space warandpeace_small --data ../shared/data/warandpeace \
        --table benchmarks/data/warandpeace_small_curves.csv.gz --trials 24 --seeds 0 \
        --strategies "ehvi+pareto (default)" random --storage /tmp/real --json real.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
# The replay benchmark's strategy catalogue and reference point, so both benchmarks mean the same by a name.
from search_efficiency import EXTRA, STRATEGIES, reference_point  # noqa: E402

# name -> (sampler, pruner, pruner kwargs); ASHA variants need Ray's scheduler, which run_search does not take.
REAL = {name: spec[:3] for name, spec in {**STRATEGIES, **EXTRA}.items() if spec[3] is None}


def experiment_name(space: str, strategy: str, seed: int, trials: int) -> str:
    slug = strategy.replace(" (default)", "").replace("+", "_")
    return f"real-{Path(space).stem}-{slug}-t{trials}-s{seed}"


def summarise(records: list, ref: tuple[float, float], best: float | None) -> dict:
    """Hypervolume (and its fraction of ``best``), epochs trained, trials per status, front size."""
    from squeezelstm.search.pareto import log_hypervolume, pareto_front

    hv = log_hypervolume(records, *ref)
    front = pareto_front(records)
    return {
        "hv": hv, "hv_fraction": hv / best if best else None,
        "epochs": sum(r.epochs for r in records),
        "trials": len(records),
        "finished": sum(r.status == "finished" for r in records),
        "pruned": sum(r.status == "pruned" for r in records),
        "failed": sum(r.status in ("failed", "diverged") for r in records),
        "front": [(r.params, round(r.valid_ppl, 2), r.family) for r in front],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default")
    parser.add_argument("--data", default=None, help="data.path for a text space")
    parser.add_argument("--table", default=None, help="recorded curves whose front's hypervolume is the best-known")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--strategies", nargs="+", default=["ehvi+pareto (default)", "random"],
                        help=f"names from {list(REAL)}")
    parser.add_argument("--storage", default="squeezelstm_runs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    unknown = [s for s in args.strategies if s not in REAL]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}; known: {list(REAL)}")
    from squeezelstm.search.export import load_records
    from squeezelstm.search.backends import CurveTable
    from squeezelstm.search.backends import resolve_paths, run_search
    from squeezelstm.search.space import load_space

    space = load_space(args.space, [f"data.path={args.data}"] if args.data else None)
    epochs = int(space.fixed.get("train", {}).get("epochs", 1))
    ref = reference_point(space)
    best = CurveTable.from_csv(args.table).best_hypervolume(epochs, ref) if args.table else None
    print(f"reference {ref[0]:g} params, ppl {ref[1]:.1f}; best-known HV {best}", flush=True)
    results: dict[str, dict] = {}
    for strategy in args.strategies:
        sampler, pruner, pruner_kwargs = REAL[strategy]
        for seed in args.seeds:
            name = experiment_name(args.space, strategy, seed, args.trials)
            records_file = resolve_paths(name, args.storage).records_file
            done = records_file.is_file() and len(load_records(name, storage=args.storage)[1]) >= args.trials
            if not done:
                start = time.perf_counter()
                run_search(space, trials=args.trials, experiment=name, sampler=sampler, pruner=pruner,
                           pruner_kwargs=pruner_kwargs, seed=seed, cpus_per_trial=1, max_concurrent=1,
                           storage=args.storage, track=False, resume=records_file.is_file())
                print(f"{name}: {time.perf_counter() - start:.0f}s", flush=True)
            records = load_records(name, storage=args.storage)[1]
            results[f"{strategy} seed {seed}"] = {"strategy": strategy, "seed": seed, **summarise(records, ref, best)}
    print("| strategy | seed | HV | HV / best-known | epochs trained | trials (finished / pruned / failed) |")
    print("|---|---|---|---|---|---|")
    for s in results.values():
        frac = "" if s["hv_fraction"] is None else f"{s['hv_fraction']:.3f}"
        print(f"| {s['strategy']} | {s['seed']} | {s['hv']:.4f} | {frac} | {s['epochs']} | "
              f"{s['trials']} ({s['finished']} / {s['pruned']} / {s['failed']}) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"ref": ref, "best_hv": best, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
