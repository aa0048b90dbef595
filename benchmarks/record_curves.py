"""Record full learning curves of randomly sampled configurations of a search space (for the replay benchmark).

A one-off, resumable script: configuration ``i`` is drawn from the space with a ``RandomSuggester``
seeded by ``(seed, i)``, so the same index always gives the same configuration and a restarted run
skips the indices already in the output CSV. Every configuration is trained for the full number of
epochs (no pruning) and appended to the CSV as one row per epoch as soon as it ends, so an
interrupted run loses at most the configuration in flight.

Columns: ``index, family, sampled (JSON), params, flops, epoch, valid_ppl, train_ppl, epoch_s, status``
(a configuration that diverged or failed before its first epoch gets one row with epoch 0 and empty
perplexities). Over-budget samples are skipped (the real search never launches them) and counted.

    python benchmarks/record_curves.py --space default --n 300 --out benchmarks/data/default_curves.csv
    python benchmarks/record_curves.py --space warandpeace --data ../shared/data/warandpeace --n 200 ...

``--deadline HH:MM`` (UTC) stops it before starting a configuration it could not finish in time;
``--shard K/M`` records only indices ``i % M == K`` (several processes or machines, one CSV each).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ("index", "family", "sampled", "params", "flops", "epoch", "valid_ppl", "train_ppl", "epoch_s", "status")


def _open(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", newline="")
    return open(path, mode, newline="")


def recorded_indices(path: Path) -> set[int]:
    """Indices already in the CSV at ``path`` (empty if it does not exist)."""
    if not path.exists():
        return set()
    return set(pd.read_csv(path, usecols=["index"], compression="infer")["index"].astype(int))


def write_curve_rows(f, rows: list[dict], header: bool) -> None:
    """Append ``rows`` (dicts keyed by ``COLUMNS``; None for no value) to the open CSV ``f``, as the
    recorded tables are written: ``\\r\\n`` line ends, every value as its ``str`` (floats exact)."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS), dtype=object)
    frame.to_csv(f, header=header, index=False, lineterminator="\r\n")


def sample_config(space, index: int, seed: int, epochs: int | None):
    """Configuration ``index`` of the recording: the same (space, seed, index) always gives the same one."""
    from squeezelstm.search.space import RandomSuggester

    sub_seed = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    return space.sample(RandomSuggester(sub_seed), epochs)


def parse_deadline(text: str | None) -> float | None:
    """``HH:MM`` (UTC, today or tomorrow if already past) or seconds from now, as a Unix time."""
    if text is None:
        return None
    if ":" in text:
        hh, mm = text.split(":")
        now = dt.datetime.now(dt.timezone.utc)
        when = now.replace(hour=int(hh), minute=int(mm), second=0, microsecond=0)
        if when < now:
            when += dt.timedelta(days=1)
        return when.timestamp()
    return time.time() + float(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="default", help="shipped space name or space file")
    parser.add_argument("--data", default=None, help="data.path for a text space (War and Peace folder or file)")
    parser.add_argument("--n", type=int, default=300, help="configuration indices start..start+n-1 to record")
    parser.add_argument("--start", type=int, default=0, help="first configuration index (a second process can take another range)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per configuration (default: the space's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="CSV (optionally .gz) to append to")
    parser.add_argument("--deadline", default=None, help="stop by HH:MM UTC (or after N seconds)")
    parser.add_argument("--shard", default="0/1", help="K/M: record only indices i %% M == K")
    parser.add_argument("--set", action="append", default=[], help="extra space override key=value")
    args = parser.parse_args(argv)

    from squeezelstm.search.space import load_space, model_cost
    from squeezelstm.trainers import Config, load_corpus, train

    overrides = list(args.set)
    if args.data:
        overrides.append(f"data.path={args.data}")
    space = load_space(args.space, overrides or None)
    data_cfg = Config.from_dict({"data": dict(space.fixed.get("data", {}))}).data
    vocab = int(data_cfg.vocab_size) if data_cfg.corpus == "synthetic" else int(load_corpus(data_cfg).vocab_size)
    shard_k, shard_m = (int(x) for x in args.shard.split("/"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = recorded_indices(out)
    deadline = parse_deadline(args.deadline)
    new_file = not out.exists()
    durations: list[float] = []
    skipped = 0
    for index in range(args.start, args.start + args.n):
        if index % shard_m != shard_k or index in done:
            continue
        if deadline is not None:
            expected = max(durations) if durations else 0.0
            if time.time() + expected > deadline:
                print(f"deadline: stopping before index {index}", flush=True)
                break
        point = sample_config(space, index, args.seed, args.epochs)
        params, flops = model_cost(point.config, vocab)
        if space.exceeds_budget(params, flops):
            skipped += 1
            continue
        config = json.loads(json.dumps(point.config))
        config.setdefault("train", {}).update({"threads": args.threads, "device": args.device})
        start = time.perf_counter()
        last = [start]
        rows: list[dict] = []

        def report(epoch: int, metrics: dict) -> bool:
            now = time.perf_counter()
            rows.append({"epoch": int(epoch), "valid_ppl": metrics.get("valid_ppl"),
                         "train_ppl": metrics.get("train_ppl"), "epoch_s": round(now - last[0], 3)})
            last[0] = now
            return True

        result = train(Config.from_dict(config), report=report)
        durations.append(time.perf_counter() - start)
        if not rows:
            rows.append({"epoch": 0, "valid_ppl": None, "train_ppl": None, "epoch_s": round(durations[-1], 3)})
        base = {"index": index, "family": point.family, "sampled": json.dumps(point.sampled, sort_keys=True),
                "params": params, "flops": flops, "status": result.status}
        with _open(out, "a") as f:
            write_curve_rows(f, [{**base, **row} for row in rows], header=new_file)
        new_file = False
        final = rows[-1]["valid_ppl"]
        print(f"[{index}] {point.family} params={params} status={result.status} valid_ppl={final} "
              f"{durations[-1]:.1f}s", flush=True)
    print(f"done; skipped {skipped} over-budget samples", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
