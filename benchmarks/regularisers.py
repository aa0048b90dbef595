"""Benchmark: AWD-LSTM's regularisers on real text, each alone and together, per family (a sanity check, not tuning).

Trains one small model per (family, setting) on a raw-text corpus cut to its first
``--train-tokens`` words (default: War and Peace from ``../shared/data/warandpeace``) and prints
valid/test perplexity, parameters and training tokens/s. Settings: ``none`` (the keys off),
``embdrop`` (embedding dropout 0.1), ``wdrop`` (weight drop 0.5), ``ar_tar`` (AR 2, TAR 1),
``tied`` (tied decoder with the H->E projection), ``all`` (all of them, locked dropout 0.3), and
``asgd`` (SGD lr 20 with NT-ASGD, nonmono 1).

    python benchmarks/regularisers.py --epochs 4 --families lstm grouped --json out.json
"""

from __future__ import annotations

import argparse
import json
import pathlib

from squeezelstm.trainers import Config, apply_overrides, train

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "warandpeace"
FAMILY_ARGS = {"lstm": {}, "factorized": {"model.rank": 64}, "grouped": {"model.groups": 4},
               "routed": {"model.num_cells": 2, "model.routing": "round_robin"},
               "restricted": {"model.share": 0.5}, "hidden": {"model.gate_hidden": 32}}
SETTINGS = {
    "none": {},
    "embdrop": {"model.embedding_dropout": 0.1},
    "wdrop": {"model.weight_drop": 0.5},
    "ar_tar": {"train.ar_alpha": 2.0, "train.tar_beta": 1.0},
    "tied": {"model.tie_weights": True},
    "all": {"model.embedding_dropout": 0.1, "model.weight_drop": 0.5, "train.ar_alpha": 2.0,
            "train.tar_beta": 1.0, "model.tie_weights": True, "model.dropout": 0.3, "model.locked_dropout": True},
    "asgd": {"train.optimizer": "sgd", "train.lr": 20.0, "train.schedule": "none", "train.asgd": True,
             "train.asgd_nonmono": 1},
}


def config(data: str, family: str, setting: str, epochs: int, tokens: int, threads: int) -> Config:
    return apply_overrides(Config(), {
        "data.corpus": "text", "data.path": data, "data.vocab_cap": 5000, "data.lowercase": True,
        "data.max_train_tokens": tokens, "model.cell": family, "model.hidden_size": 128,
        "model.embedding_size": 96, "model.num_layers": 2, "train.epochs": epochs, "train.batch_size": 32,
        "train.bptt": 35, "train.optimizer": "adam", "train.lr": 3e-3, "train.clip": 0.25,
        "train.device": "cpu", "train.threads": threads, **FAMILY_ARGS[family], **SETTINGS[setting],
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--families", nargs="+", default=["lstm", "grouped"], choices=list(FAMILY_ARGS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-tokens", type=int, default=100_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the rows here as JSON")
    args = p.parse_args()
    rows = []
    print(f"{'family':<11} {'setting':<8} {'params':>9} {'valid':>8} {'test':>8} {'tok/s':>7}")
    for family in args.families:
        for setting in args.settings:
            r = train(config(args.data, family, setting, args.epochs, args.train_tokens, args.threads))
            row = {"family": family, "setting": setting, "status": r.status, "params": r.params,
                   "valid_ppl": r.valid_ppl, "test_ppl": r.test_ppl, "tokens_per_s": r.tokens_per_s,
                   "averaged_epochs": sum(bool(h.get("averaged")) for h in r.history)}
            rows.append(row)
            print(f"{family:<11} {setting:<8} {r.params:>9,} {r.valid_ppl or float('nan'):>8.2f} "
                  f"{r.test_ppl or float('nan'):>8.2f} {r.tokens_per_s:>7.0f}", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
