"""Seeded replays as canonical JSON: the check that a refactor left the search's behaviour unchanged.

Four strategies on the default table (ehvi+pareto seed 0, tpe+pareto 1, nsga2+percentile 2,
random+median 3; 3 simulated workers): every trace point, trial and count, written with sorted keys.
Run it on the commit before and after a change (the old one from a `git worktree`) and compare the
files byte for byte (`cmp`), or their sha256, which the script prints.

    python benchmarks/replay_identity.py out.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from pathlib import Path

STRATEGIES = (("ehvi", "pareto", 0, 150.0), ("tpe", "pareto", 1, 150.0), ("nsga2", "percentile", 2, 100.0),
              ("random", "median", 3, 100.0))


def main() -> None:
    from squeezelstm.search import SearchConfig, replay_search
    from squeezelstm.search.backends import CurveTable

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--table", type=Path, default=Path(__file__).parent / "data" / "default_curves.csv.gz")
    args = parser.parse_args()
    table = CurveTable.from_csv(args.table)
    out = {}
    for sampler, pruner, seed, budget in STRATEGIES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = replay_search(table, SearchConfig("default", sampler=sampler, pruner=pruner, seed=seed),
                                workers=3, budget=budget)
        out[f"{sampler}+{pruner} seed {seed}"] = {"trace": res.trace, "trials": res.trials, "counts": res.counts,
                                                   "compute": res.compute}
    text = json.dumps(out, sort_keys=True, indent=1)
    args.out.write_text(text)
    print(f"{args.out}: sha256 {hashlib.sha256(text.encode()).hexdigest()}")


if __name__ == "__main__":
    main()
