"""NT-ASGD: the AWD-LSTM trigger, the running average of the iterates, and the trainer's use of both."""

import pytest
import torch

from squeezelstm.trainers import Config, apply_overrides, train
from squeezelstm.trainers import loop
from squeezelstm.trainers.asgd import ParameterAverage, should_trigger
from squeezelstm.trainers.checkpoint import checkpoint_path, load_checkpoint

TINY = {"data": {"corpus": "synthetic", "vocab_size": 30, "train_tokens": 1200, "valid_tokens": 200,
                 "test_tokens": 200, "seed": 1},
        "model": {"cell": "lstm", "hidden_size": 16, "num_layers": 1},
        "train": {"epochs": 3, "batch_size": 4, "bptt": 10, "optimizer": "sgd", "lr": 1.0, "seed": 0,
                  "device": "cpu", "threads": 1, "asgd": True, "asgd_nonmono": 1, "schedule": "none"}}


def test_trigger_is_awd_lstms_non_monotone_rule():
    # awd-lstm-lm: len(best_val_loss) > nonmono and val_loss > min(best_val_loss[:-nonmono])
    assert not should_trigger([5.0, 4.0, 4.5], 5)  # too few epochs to judge
    assert not should_trigger([5.0, 4.0, 3.9, 3.8, 3.7, 3.6, 3.5], 5)
    assert should_trigger([5.0, 4.0, 3.9, 3.95, 4.1, 4.2, 4.3], 5)  # worse than the best of [5.0, 4.0]
    assert not should_trigger([5.0, 4.0, 3.0, 3.9], 2)  # 3.9 < min(5.0, 4.0)
    assert should_trigger([5.0, 4.0, 3.0, 4.1], 2)
    with pytest.raises(ValueError, match="nonmono"):
        should_trigger([1.0], 0)


def test_average_is_torch_asgds_ax():
    # torch.optim.ASGD with lambd=0, t0=0 takes plain SGD steps and keeps ax, the mean of the iterates.
    torch.manual_seed(0)
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    sgd, asgd = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.ASGD(b.parameters(), lr=0.1, lambd=0.0, t0=0)
    avg = ParameterAverage(a)
    for _ in range(6):
        x = torch.randn(5, 4)
        for model, opt in ((a, sgd), (b, asgd)):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
        avg.update()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q)
        torch.testing.assert_close(avg.average[name], asgd.state[q]["ax"])
    before = [p.clone() for p in a.parameters()]
    with avg.swapped_in():
        torch.testing.assert_close(a.weight, avg.average["weight"])
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), before))


def test_asgd_needs_sgd():
    with pytest.raises(ValueError, match="train.asgd"):
        apply_overrides(Config(), {"train.asgd": True, "train.optimizer": "adam"})


def force_trigger_after_epoch_one(monkeypatch):
    monkeypatch.setattr(loop, "should_trigger", lambda losses, n: len(losses) == 1)


def test_trainer_averages_after_the_trigger_and_evaluates_the_average(tmp_path, monkeypatch):
    force_trigger_after_epoch_one(monkeypatch)
    cfg = Config.from_dict(TINY)
    result = train(cfg, checkpoint_dir=tmp_path)
    assert [h["averaged"] for h in result.history] == [False, True, True]
    saved = load_checkpoint(checkpoint_path(tmp_path))
    average = saved["asgd"]["average"]
    steps_per_epoch = len(range(0, 1200 // 4 - 1, 10))  # BPTT windows of one epoch
    assert average["steps"] == 2 * steps_per_epoch
    # The reported validation perplexity is the averaged model's, not the raw iterate's.
    from squeezelstm.trainers import build_model, load_corpus
    from squeezelstm.trainers.corpus import batchify, entropy_to_ppl
    corpus = load_corpus(cfg.data)
    model = build_model(cfg, corpus.vocab_size)
    model.load_state_dict(saved["model"])
    valid = batchify(corpus.valid, min(64, corpus.valid.numel() // 2))
    raw = entropy_to_ppl(loop.evaluate(model, valid, 10, torch.device("cpu")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(average["average"][name])
    averaged = entropy_to_ppl(loop.evaluate(model, valid, 10, torch.device("cpu")))
    assert result.history[-1]["valid_ppl"] == pytest.approx(averaged, rel=1e-9)
    assert averaged != pytest.approx(raw, rel=1e-6)


def test_asgd_run_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    force_trigger_after_epoch_one(monkeypatch)
    whole = train(Config.from_dict(TINY))
    train(apply_overrides(Config.from_dict(TINY), {"train.epochs": 2}), checkpoint_dir=tmp_path)
    resumed = train(Config.from_dict(TINY), checkpoint_dir=tmp_path)
    for a, b in zip(whole.history, resumed.history):
        assert a["valid_ppl"] == pytest.approx(b["valid_ppl"], rel=1e-9)
    assert resumed.test_ppl == pytest.approx(whole.test_ppl, rel=1e-9)
