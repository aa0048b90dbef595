"""The training loop: truncated BPTT, per-epoch validation and reporting, checkpoints, resume.

``train(config)`` imports no tuner or tracker: it reports each epoch through a plain callable
``report(epoch, metrics) -> continue?`` and progress lines through ``progress(line)``. A NaN or
exploding loss ends the run with status ``diverged``; a ``False`` from ``report`` ends it with
``pruned``; CUDA running out of memory ends it with ``failed``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .asgd import ParameterAverage, should_trigger
from .checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from .config import Config, validate
from .corpus import Corpus, batchify, entropy_to_ppl, load_corpus
from .device import autocast, resolve_device, thread_budget
from .growprune import apply_phase, phase_for_epoch, reset_growth_grads
from .model import LanguageModel, build_model, count_model_flops
from .regularisers import activation_penalty, temporal_activation_penalty

Report = Callable[[int, dict[str, Any]], Any]
Progress = Callable[[str], None]

# A run whose mean training loss exceeds this multiple of ln(V) (the loss of a uniform guess) is
# exploding: no learning model gets there without diverging.
DIVERGENCE_FACTOR = 2.0
# Config keys that may change between a checkpoint and its resumption.
RESUMABLE_CHANGES = {("train", "epochs"), ("train", "log_interval"), ("train", "threads"), ("train", "device")}


@dataclass
class TrainResult:
    """The outcome of one run; ``to_dict`` gives JSON-safe values (non-finite floats as None)."""

    status: str
    valid_ppl: float | None = None
    best_valid_ppl: float | None = None
    test_ppl: float | None = None
    params: int = 0
    live_params: int = 0
    flops: int = 0
    tokens_per_s: float = 0.0
    epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    optimal_ppl: float | None = None
    unigram_ppl: float | None = None
    elapsed_s: float = 0.0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class Diverged(Exception):
    """The loss became NaN/inf or exploded."""


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (with optional momentum), Adam or AdamW over all parameters, from ``config.train``."""
    t = config.train
    params = model.parameters()
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


def next_lr(config: Config, lr: float, epoch: int, valid_loss: float, best_loss: float) -> float:
    """The learning rate for the epoch after ``epoch`` (1-based) under ``config.train.schedule``."""
    t = config.train
    if t.schedule == "epoch" and epoch >= max(t.decay_start, 1):
        return lr * t.lr_decay
    if t.schedule == "plateau" and epoch > t.decay_start and not valid_loss < best_loss:
        return lr * t.lr_decay
    return lr


def train_epoch(model: LanguageModel, data: torch.Tensor, config: Config, optimizer: torch.optim.Optimizer,
                generator: torch.Generator, device: torch.device, scaler: torch.amp.GradScaler | None,
                progress: Progress | None = None, epoch: int = 0,
                average: ParameterAverage | None = None) -> tuple[float, int, float]:
    """One pass of truncated BPTT over ``data`` (T, N); returns (mean loss in nats, tokens, seconds).

    The returned loss is the cross-entropy alone; AR/TAR penalties only shape the gradient. With
    ``average`` (NT-ASGD triggered) every optimizer step is folded into the running average.
    """
    t = config.train
    penalised = t.ar_alpha > 0 or t.tar_beta > 0
    model.train()
    vocab = model.vocab_size
    limit = DIVERGENCE_FACTOR * math.log(vocab)
    state = model.init_state(data.size(1))
    total = torch.zeros((), device=device, dtype=torch.float64)
    window_total = torch.zeros((), device=device, dtype=torch.float64)
    tokens = window_tokens = 0
    start = time.perf_counter()
    steps = range(0, data.size(0) - 1, t.bptt)
    for step, i in enumerate(steps, 1):
        seq = min(t.bptt, data.size(0) - 1 - i)
        x, y = data[i:i + seq], data[i + 1:i + 1 + seq]
        # Truncated BPTT: keep the state's values, cut its history.
        state = [(h.detach(), c.detach()) for h, c in state]
        with autocast(device, t.precision):
            if penalised:
                logits, state, raw, dropped = model(x, state, offset=i, generator=generator, return_last=True)
            else:
                logits, state = model(x, state, offset=i, generator=generator)
        loss = F.cross_entropy(logits.reshape(-1, vocab).float(), y.reshape(-1))
        objective = loss
        if penalised:
            if t.ar_alpha > 0:
                objective = objective + activation_penalty(dropped, t.ar_alpha)
            if t.tar_beta > 0:
                objective = objective + temporal_activation_penalty(raw, t.tar_beta)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(objective).backward()
            scaler.unscale_(optimizer)
        else:
            objective.backward()
        if t.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), t.clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if average is not None:
            average.update()
        n = y.numel()
        window_total += loss.detach().double() * n
        window_tokens += n
        if step % t.log_interval == 0 or step == len(steps):
            # One host sync per interval: check for divergence and fold the window into the total.
            mean = float(window_total) / window_tokens
            if not math.isfinite(mean) or mean > limit:
                raise Diverged(f"training loss {mean:.3g} nats at epoch {epoch} step {step}")
            total += window_total
            tokens += window_tokens
            window_total.zero_()
            window_tokens = 0
            if progress is not None and step % t.log_interval == 0:
                rate = tokens / (time.perf_counter() - start)
                progress(f"epoch {epoch} step {step}/{len(steps)} loss {mean:.3f} ppl {entropy_to_ppl(mean):.2f} "
                         f"{rate:.0f} tok/s")
    seconds = time.perf_counter() - start
    return float(total) / max(tokens, 1), tokens, seconds


@torch.inference_mode()
def evaluate(model: LanguageModel, data: torch.Tensor, bptt: int, device: torch.device,
             precision: str = "fp32") -> float:
    """Mean cross-entropy (nats per token) of ``model`` on ``data`` (T, N), state carried across windows."""
    model.eval()
    state = model.init_state(data.size(1))
    total = torch.zeros((), device=device, dtype=torch.float64)
    tokens = 0
    for i in range(0, data.size(0) - 1, bptt):
        seq = min(bptt, data.size(0) - 1 - i)
        x, y = data[i:i + seq], data[i + 1:i + 1 + seq]
        with autocast(device, precision):
            logits, state = model(x, state, offset=i)
        total += F.cross_entropy(logits.reshape(-1, model.vocab_size).float(), y.reshape(-1), reduction="sum").double()
        tokens += y.numel()
    return float(total) / max(tokens, 1)


def _evaluate(model: LanguageModel, average: ParameterAverage | None, data: torch.Tensor, bptt: int,
              device: torch.device, precision: str) -> float:
    """``evaluate`` with the NT-ASGD averaged weights swapped in once averaging has started."""
    if average is None:
        return evaluate(model, data, bptt, device, precision)
    with average.swapped_in():
        return evaluate(model, data, bptt, device, precision)


def _config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    diffs = []
    # A key the saved config lacks was added to the trainer later: the run had its default.
    defaults = Config().to_dict()
    for section, values in current.items():
        for key, value in values.items():
            if (section, key) in RESUMABLE_CHANGES:
                continue
            old = saved.get(section, {}).get(key, defaults[section][key])
            if old != value:
                diffs.append(f"{section}.{key}: {old!r} -> {value!r}")
    return diffs


def train(config: Config, *, report: Report | None = None, checkpoint_dir: str | os.PathLike | None = None,
          resume: bool = True, progress: Progress | None = None) -> TrainResult:
    """Train the model ``config`` describes on its corpus; returns a ``TrainResult``.

    ``report(epoch, metrics)`` is called after every epoch's validation (metrics: ``epoch``,
    ``train_ppl``, ``valid_ppl``, ``tokens_per_s``, ``lr``, ``params``, ``live_params``,
    ``elapsed_s``, ...); a ``False`` return stops the run as ``pruned`` (no test evaluation).
    With ``checkpoint_dir`` a checkpoint is written after every epoch and, if ``resume``, an
    existing one is continued (one written for a different config -> ValueError).
    """
    validate(config)
    corpus = load_corpus(config.data)
    device = resolve_device(config.train.device)
    with thread_budget(device, config.train.threads):
        try:
            return _train(config, corpus, device, report, checkpoint_dir, resume, progress)
        except torch.OutOfMemoryError as exc:
            # Too big for this device is a property of the trial, not a bug: the search records it.
            return TrainResult(status="failed", error=f"out of memory: {str(exc).splitlines()[0]}")


def _train(config: Config, corpus: Corpus, device: torch.device, report: Report | None,
           checkpoint_dir: str | os.PathLike | None, resume: bool, progress: Progress | None) -> TrainResult:
    t = config.train
    vocab = corpus.vocab_size
    model = build_model(config, vocab).to(device)
    optimizer = make_optimizer(config, model)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and t.precision == "fp16" else None
    generator = torch.Generator(device=device)
    generator.manual_seed(t.seed)
    params = sum(p.numel() for p in model.parameters())
    result = TrainResult(status="finished", params=params, live_params=model.live_parameters(),
                         flops=count_model_flops(config, vocab), optimal_ppl=corpus.optimal_ppl,
                         unigram_ppl=corpus.unigram_ppl)
    history: list[dict[str, Any]] = []
    start_epoch, elapsed_before, best_loss = 0, 0.0, math.inf
    # NT-ASGD: the running average exists from the epoch the trigger fired (None before, or if off).
    average: ParameterAverage | None = None
    ckpt = checkpoint_path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt is not None and resume and ckpt.exists():
        saved = load_checkpoint(ckpt, map_location=device)
        diffs = _config_differences(saved["config"], config.to_dict())
        if diffs:
            raise ValueError(f"checkpoint {ckpt} was written for a different config ({'; '.join(diffs)})")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["rng"]["dropout"].cpu())
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        start_epoch, history = int(saved["epoch"]), list(saved["history"])
        if saved.get("asgd", {}).get("average") is not None:
            average = ParameterAverage(model)
            average.load_state_dict(saved["asgd"]["average"])
        best_loss, elapsed_before = float(saved["schedule"]["best_loss"]), float(saved["elapsed_s"])
        if progress:
            progress(f"resumed from {ckpt} after epoch {start_epoch}")

    train_data = batchify(corpus.train, t.batch_size).to(device)
    eval_bs = t.resolved_eval_batch_size
    valid_data = batchify(corpus.valid, min(eval_bs, max(1, corpus.valid.numel() // 2))).to(device)
    if progress:
        progress(f"{corpus.summary()}; model {config.model.cell} params {params:,} on {device}")
    run_start = time.perf_counter()
    trained_tokens, trained_seconds = 0, 0.0

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - run_start

    for epoch in range(start_epoch + 1, t.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        reset_growth_grads(model)
        try:
            train_loss, tokens, seconds = train_epoch(model, train_data, config, optimizer, generator, device,
                                                      scaler, progress, epoch, average)
        except Diverged as exc:
            result.status, result.error = "diverged", str(exc)
            break
        trained_tokens += tokens
        trained_seconds += seconds
        phase = phase_for_epoch(config, epoch)
        if phase is not None:
            apply_phase(model, *phase)
        valid_loss = _evaluate(model, average, valid_data, t.bptt, device, t.precision)
        if not math.isfinite(valid_loss):
            result.status, result.error = "diverged", f"validation loss {valid_loss} at epoch {epoch}"
            break
        new_lr = next_lr(config, lr, epoch, valid_loss, best_loss)
        best_loss = min(best_loss, valid_loss)
        for group in optimizer.param_groups:
            group["lr"] = new_lr
        metrics = {
            "epoch": epoch, "train_loss": train_loss, "train_ppl": entropy_to_ppl(train_loss),
            "valid_loss": valid_loss, "valid_ppl": entropy_to_ppl(valid_loss), "lr": lr,
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0, "params": params,
            "live_params": model.live_parameters(), "elapsed_s": elapsed(),
        }
        if phase is not None:
            metrics["phase"] = phase[0]
        if t.asgd:
            metrics["averaged"] = average is not None
            if average is None and should_trigger([h["valid_loss"] for h in history] + [valid_loss], t.asgd_nonmono):
                average = ParameterAverage(model)  # averages from the next step on
                if progress:
                    progress(f"epoch {epoch}: validation stalled, switching to averaged SGD (NT-ASGD)")
        history.append(metrics)
        if ckpt is not None:
            save_checkpoint(ckpt, {
                "config": config.to_dict(), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": {"best_loss": best_loss}, "rng": {"dropout": generator.get_state()},
                "scaler": scaler.state_dict() if scaler is not None else {}, "epoch": epoch,
                "history": history, "elapsed_s": metrics["elapsed_s"],
                **({"asgd": {"average": average.state_dict() if average is not None else None}} if t.asgd else {}),
            })
        if progress:
            progress(f"epoch {epoch}/{t.epochs} train ppl {metrics['train_ppl']:.2f} valid ppl "
                     f"{metrics['valid_ppl']:.2f} lr {lr:.3g} {metrics['tokens_per_s']:.0f} tok/s "
                     f"live params {metrics['live_params']:,}")
        if report is not None:
            keep_going = report(epoch, dict(metrics))
            if keep_going is not None and not keep_going:
                result.status = "pruned"
                break

    result.history = history
    result.epochs = len(history)
    result.live_params = model.live_parameters()
    if history:
        result.valid_ppl = history[-1]["valid_ppl"]
        result.best_valid_ppl = min(h["valid_ppl"] for h in history)
    if trained_seconds > 0:
        result.tokens_per_s = trained_tokens / trained_seconds
    elif history:
        result.tokens_per_s = history[-1]["tokens_per_s"]
    if result.status == "finished":
        test_data = batchify(corpus.test, min(eval_bs, max(1, corpus.test.numel() // 2))).to(device)
        result.test_ppl = entropy_to_ppl(_evaluate(model, average, test_data, t.bptt, device, t.precision))
    result.elapsed_s = elapsed()
    if progress:
        progress(f"{result.status}: valid ppl {result.valid_ppl} test ppl {result.test_ppl}")
    return result
