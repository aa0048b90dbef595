"""Benchmark: the squeezelstm trainer against a plain ``torch.nn.LSTM`` loop, same data, same process.

Both train the Zaremba et al. (2014) "small" LSTM language model with the shipped recipe,
``trainers/configs/zaremba_small.yaml`` (2 x 200, bptt 20, batch 20, no dropout, SGD lr 20 halved
after epoch 4, gradient norm clipped at 0.25: the paper's lr 1 and clip 5 on the loss summed over the
20 steps, as both loops here average the loss over all tokens), on a raw-text corpus (default: War and
Peace from ``../shared/data/warandpeace``, word level, vocabulary capped at 10k) for ``--epochs``
epochs, and print validation/test perplexity and training tokens/s of each. The trainer should match
the plain loop's perplexity (within seed noise) and not be slower.

    python benchmarks/trainer_vs_plain.py --epochs 1 [--train-tokens 200000] [--device auto] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

from squeezelstm import trainers
from squeezelstm.trainers import Config, apply_overrides, load_config, load_corpus, train
from squeezelstm.trainers.corpus import batchify
from squeezelstm.trainers.device import resolve_device, thread_budget

DEFAULT_DATA = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "warandpeace"
ZAREMBA_SMALL = pathlib.Path(trainers.__file__).resolve().parent / "configs" / "zaremba_small.yaml"


def zaremba_config(data: str, epochs: int, device: str, threads: int, seed: int) -> Config:
    """The shipped Zaremba-small recipe (model, batches, SGD lr 20 / clip 0.25 and its schedule, from
    ``ZAREMBA_SMALL``) on a raw-text directory, word level with a 10k vocabulary, for ``epochs`` epochs."""
    return apply_overrides(load_config(ZAREMBA_SMALL), {
        "data.corpus": "text", "data.path": data, "data.vocab_cap": 10_000,
        "train.epochs": epochs, "train.seed": seed, "train.device": device, "train.threads": threads,
    })


class PlainLM(nn.Module):
    """The textbook model: embedding, one 2-layer ``nn.LSTM``, linear decoder."""

    def __init__(self, vocab: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers)
        self.decoder = nn.Linear(hidden, vocab)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, x, state):
        out, state = self.rnn(self.embedding(x), state)
        return self.decoder(out), state


def plain_run(train_ids, valid_ids, test_ids, vocab, cfg: Config, device: torch.device) -> dict:
    """Train and evaluate ``PlainLM`` with the config's settings; returns ppls and tokens/s."""
    t, m = cfg.train, cfg.model
    torch.manual_seed(t.seed)
    model = PlainLM(vocab, m.hidden_size, m.num_layers).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=t.lr)
    data = batchify(train_ids, t.batch_size).to(device)

    def zero(bs):
        z = torch.zeros(m.num_layers, bs, m.hidden_size, device=device)
        return (z, z.clone())

    @torch.inference_mode()
    def evaluate(ids):
        model.eval()
        d = batchify(ids, t.eval_batch_size).to(device)
        state, total, n = zero(d.size(1)), 0.0, 0
        for i in range(0, d.size(0) - 1, t.bptt):
            s = min(t.bptt, d.size(0) - 1 - i)
            logits, state = model(d[i:i + s], state)
            total += F.cross_entropy(logits.reshape(-1, vocab), d[i + 1:i + 1 + s].reshape(-1), reduction="sum").item()
            n += d[i + 1:i + 1 + s].numel()
        return math.exp(total / n)

    tokens, seconds, valid = 0, 0.0, math.nan
    # Untimed warm-up (kernel selection, allocator, lazy imports) so whichever loop runs first is not penalised.
    warm = PlainLM(vocab, m.hidden_size, m.num_layers).to(device)
    for _ in range(3):
        logits, _state = warm(data[: t.bptt], zero(t.batch_size))
        F.cross_entropy(logits.reshape(-1, vocab), data[1:t.bptt + 1].reshape(-1)).backward()
    del warm
    for epoch in range(1, t.epochs + 1):
        lr = t.lr * t.lr_decay ** max(epoch - max(t.decay_start, 1), 0)  # the trainer's "epoch" schedule
        for g in opt.param_groups:
            g["lr"] = lr
        model.train()
        state = zero(t.batch_size)
        start = time.perf_counter()
        for i in range(0, data.size(0) - 1, t.bptt):
            s = min(t.bptt, data.size(0) - 1 - i)
            state = tuple(h.detach() for h in state)
            logits, state = model(data[i:i + s], state)
            loss = F.cross_entropy(logits.reshape(-1, vocab), data[i + 1:i + 1 + s].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), t.clip)
            opt.step()
            tokens += data[i + 1:i + 1 + s].numel()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        valid = evaluate(valid_ids)
    return {"valid_ppl": valid, "test_ppl": evaluate(test_ids), "tokens_per_s": tokens / seconds}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="directory with train.txt/valid.txt/test.txt")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-tokens", type=int, default=0, help="use only the first N training tokens (0 = all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = the trainer's auto choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    cfg = zaremba_config(args.data, args.epochs, args.device, args.threads, args.seed)
    corpus = load_corpus(cfg.data)
    if args.train_tokens:
        # Shrink the cached corpus in place for both runs (the trainer reads it from the same cache).
        object.__setattr__(corpus, "train", corpus.train[: args.train_tokens])
    print(corpus.summary(), file=sys.stderr)
    device = resolve_device(args.device)

    # The plain loop runs first, after an untimed warm-up of the same shapes (see plain_run).
    with thread_budget(device, args.threads) as threads:
        plain = plain_run(corpus.train, corpus.valid, corpus.test, corpus.vocab_size, cfg, device)
    result = train(cfg, progress=lambda line: print(line, file=sys.stderr))
    ours = {"valid_ppl": result.valid_ppl, "test_ppl": result.test_ppl, "tokens_per_s": result.tokens_per_s}
    report = {"device": str(device), "threads": threads, "epochs": args.epochs,
              "train_tokens": int(corpus.train.numel()), "vocab": corpus.vocab_size,
              "plain": plain, "trainer": ours, "speed_ratio": ours["tokens_per_s"] / plain["tokens_per_s"]}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{'':10s} {'valid ppl':>10s} {'test ppl':>10s} {'tokens/s':>10s}")
        for name, r in (("plain", plain), ("trainer", ours)):
            print(f"{name:10s} {r['valid_ppl']:10.2f} {r['test_ppl']:10.2f} {r['tokens_per_s']:10.0f}")
        print(f"trainer/plain speed: {report['speed_ratio']:.2f}x on {device} ({threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
