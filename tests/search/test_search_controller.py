"""SearchController: in-budget suggestions, honest bookkeeping with the Optuna study, resume from state_dir."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from squeezelstm.search.config import SearchConfig
from squeezelstm.search.controller import SearchController, corpus_vocab_size
from squeezelstm.search.samplers import SAMPLERS, make_sampler
from squeezelstm.search.space import load_space, model_cost, parse_space
from squeezelstm.trainers import Config, validate

VOCAB = 200


def toy_raw(max_params: int | None = None) -> dict:
    raw = {
        "name": "toy",
        "data": {"corpus": "synthetic", "vocab_size": VOCAB},
        "model": {"cell": {"choice": ["lstm", "grouped", "factorized"]}, "hidden_size": {"int": [8, 96], "step": 8},
                  "num_layers": {"choice": [1, 2]}, "embedding_size": 16},
        "train": {"lr": {"float": [1e-3, 1e-2], "log": True}, "epochs": 3},
        "families": {"grouped": {"groups": {"choice": [2, 4]}}, "factorized": {"rank_fraction": {"float": [0.1, 0.5]}}},
    }
    if max_params:
        raw["budget"] = {"max_params": max_params}
    return raw


def fake_ppl(spec) -> float:
    """A made-up final perplexity: bigger is better, with a little per-trial spread."""
    return 300.0 * spec.params ** -0.2 * (1 + 0.05 * (spec.number % 3))


def run_trial(controller: SearchController, spec, status: str = "finished", epochs: int = 3) -> None:
    final = fake_ppl(spec)
    for epoch in range(1, epochs + 1):
        if controller.report(spec.number, epoch, {"valid_ppl": final * (1 + 1.0 / epoch), "train_ppl": final}):
            break
    controller.complete(spec.number, status, {"valid_ppl": final * (1 + 1.0 / epochs), "test_ppl": final})


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_suggestions_are_valid_and_never_over_budget_and_infeasible_samples_stay_out(sampler):
    space = load_space("default")
    controller = SearchController(SearchConfig(space, sampler=sampler, pruner="none", seed=1, epochs=2), vocab_size=VOCAB)
    specs = []
    for _ in range(30):
        spec = controller.suggest()
        specs.append(spec)
        assert spec.params <= space.max_params
        assert (spec.params, spec.flops) == model_cost(spec.config, VOCAB)
        validate(Config.from_dict(spec.config))
        assert spec.config["train"]["epochs"] == 2
        run_trial(controller, spec, epochs=2)
    assert controller.rejected > 0, "the default budget should bind for some random samples"
    trials = controller.study.get_trials(deepcopy=False)
    launched = {s.number for s in specs}
    infeasible = [t for t in trials if t.number not in launched]
    assert len(infeasible) == controller.rejected
    for t in infeasible:
        assert t.state == TrialState.COMPLETE and t.constraints["max_params"] > 0
        assert t.user_attrs["params"] > space.max_params
    best = {t.number for t in controller.study.best_trials}
    assert best and best <= launched
    assert {r.number for r in controller.records()} == launched
    assert all(r.params <= space.max_params for r in controller.front())


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_a_small_constrained_search(sampler):
    space = parse_space(toy_raw(max_params=40_000))
    options = ({"n_startup_trials": 3} if sampler in ("tpe", "gp")
               else {"n_startup": 3, "pool_size": 32} if sampler == "ehvi" else {})
    controller = SearchController(SearchConfig(space, sampler=sampler, seed=0, sampler_options=options), vocab_size=VOCAB)
    for _ in range(4 if sampler == "gp" else 8):  # the GP sampler fits a model per suggestion: keep it short
        spec = controller.suggest()
        assert spec.params <= 40_000
        run_trial(controller, spec)
    assert controller.counts()["running"] == 0
    assert controller.front()


def test_samplers_are_seeded():
    def configs(seed):
        controller = SearchController(SearchConfig(parse_space(toy_raw()), sampler="tpe", seed=seed, sampler_options={"n_startup_trials": 3}), vocab_size=VOCAB)
        out = []
        for _ in range(6):
            spec = controller.suggest()
            out.append(spec.config)
            run_trial(controller, spec)
        return out

    assert configs(3) == configs(3)
    assert configs(3) != configs(4)


def test_bookkeeping_statuses_reach_the_study_honestly():
    controller = SearchController(SearchConfig(parse_space(toy_raw()), sampler="random", pruner="none"), vocab_size=VOCAB)
    specs = [controller.suggest() for _ in range(5)]
    for s in specs:
        controller.report(s.number, 1, {"valid_ppl": 50.0 + s.number})
    finished = controller.complete(specs[0].number, "finished", {"valid_ppl": 42.0, "test_ppl": 41.0})
    pruned = controller.complete(specs[1].number, "pruned", {"valid_ppl": 1.0})  # a half-trained, too good value
    failed = controller.complete(specs[2].number, "failed")
    diverged = controller.complete(specs[3].number, "diverged", {"valid_ppl": float("nan")})
    no_value = controller.complete(specs[4].number, "finished", {})
    assert (finished.status, finished.valid_ppl, finished.test_ppl) == ("finished", 42.0, 41.0)
    assert pruned.status == "pruned" and pruned.test_ppl is None
    assert failed.status == "failed" and diverged.status == "diverged"
    assert no_value.status == "finished" and no_value.valid_ppl == 50.0 + specs[4].number  # last reported value
    states = {t.number: t for t in controller.study.get_trials(deepcopy=False)}
    assert states[specs[0].number].state == TrialState.COMPLETE
    assert states[specs[0].number].values == [float(specs[0].params), 42.0]
    assert states[specs[1].number].state == TrialState.PRUNED and states[specs[1].number].values is None
    assert states[specs[2].number].state == TrialState.FAIL
    assert states[specs[3].number].state == TrialState.FAIL
    # the pruned trial's half-trained 1.0 is never on the front, in our records or in Optuna's
    front = [r.number for r in controller.front()]
    assert specs[0].number in front and specs[1].number not in front
    assert set(front) <= {r.number for r in controller.records() if r.status == "finished"}
    assert specs[1].number not in {t.number for t in controller.study.best_trials}
    # idempotent: a second complete (Ray may call twice) changes nothing
    again = controller.complete(specs[1].number, "finished", {"valid_ppl": 0.5})
    assert again.status == "pruned" and again.valid_ppl == 1.0
    assert controller.report(specs[1].number, 2, {"valid_ppl": 0.1}) is True
    assert controller.counts() == {"running": 0, "finished": 2, "pruned": 1, "failed": 1, "diverged": 1, "rejected": 0}


def test_finished_without_a_value_is_failed():
    controller = SearchController(SearchConfig(parse_space(toy_raw()), sampler="random"), vocab_size=VOCAB)
    spec = controller.suggest()
    record = controller.complete(spec.number, "finished", {"valid_ppl": None})
    assert record.status == "failed"
    assert controller.study.get_trials(deepcopy=False)[spec.number].state == TrialState.FAIL


def test_argument_errors():
    space = parse_space(toy_raw())
    with pytest.raises(ValueError, match="valid samplers: ehvi, tpe, nsga2, gp, random"):
        SearchController(SearchConfig(space, sampler="cmaes"), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="valid pruners"):
        SearchController(SearchConfig(space, pruner="asha"), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="epochs"):
        SearchController(SearchConfig(space, epochs=0), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="bad argument for sampler 'tpe'"):
        make_sampler("tpe", 0, population=3)
    controller = SearchController(SearchConfig(space), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="unknown trial number=99"):
        controller.report(99, 1, {"valid_ppl": 1.0})
    with pytest.raises(ValueError, match="status must be one of"):
        controller.complete(0, "done")


def test_budget_below_the_cheapest_config_fails_at_construction():
    with pytest.raises(ValueError, match=r"budget max_params=1000 is below the smallest configuration of this space \(\d+ params\)"):
        SearchController(SearchConfig(parse_space(toy_raw(max_params=1000))), vocab_size=VOCAB)


def test_bounded_retries_then_a_clear_error():
    raw = toy_raw()
    raw["model"]["hidden_size"] = {"int": [8, 4096], "step": 8}
    raw["model"]["cell"] = "lstm"
    raw["model"]["num_layers"] = 1
    cheapest = model_cost({"data": raw["data"], "model": {"cell": "lstm", "hidden_size": 8, "num_layers": 1,
                                                          "embedding_size": 16}}, VOCAB)[0]
    raw["budget"] = {"max_params": cheapest}
    raw["families"] = {}
    controller = SearchController(SearchConfig(parse_space(raw), sampler="random", seed=0), vocab_size=VOCAB, max_retries=3)
    with pytest.raises(ValueError, match="no configuration within budget .* after 3 samples"):
        controller.suggest()
    assert controller.rejected == 3 and controller.records() == []


def test_resume_keeps_records_history_numbers_and_sampler_history(tmp_path):
    state = tmp_path / "controller"
    space = parse_space(toy_raw(max_params=40_000))
    first = SearchController(SearchConfig(space, sampler="tpe", seed=5, experiment="exp"), state_dir=state, vocab_size=VOCAB)
    specs = [first.suggest() for _ in range(4)]
    run_trial(first, specs[0])
    run_trial(first, specs[1])
    first.complete(specs[2].number, "pruned", {"valid_ppl": 99.0})
    first.report(specs[3].number, 1, {"valid_ppl": 80.0})
    first.report(specs[3].number, 2, {"valid_ppl": 70.0})
    before = first.records()
    n_trials = len(first.study.get_trials(deepcopy=False))
    first.study.ask()  # the driver is killed right after asking Optuna: a RUNNING trial without a record
    del first

    second = SearchController(SearchConfig(space, sampler="tpe", seed=5, experiment="exp"), state_dir=state, vocab_size=VOCAB)
    assert [r.to_dict() for r in second.records()] == [r.to_dict() for r in before]
    assert [s.number for s in second.unfinished()] == [specs[3].number]
    assert second.unfinished()[0].config == specs[3].config
    trials = second.study.get_trials(deepcopy=False)
    assert trials[n_trials].state == TrialState.FAIL  # the orphan is closed, not left running forever
    assert [trials[s.number].state for s in specs] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
    assert second.bridge.curve(specs[3].number) == {1: 80.0, 2: 70.0}
    # the resumed trial continues under its number; new trials get new numbers and a fresh draw
    second.report(specs[3].number, 3, {"valid_ppl": 60.0})
    record = second.complete(specs[3].number, "finished", {"valid_ppl": 60.0, "test_ppl": 58.0})
    assert record.epochs == 3 and second.study.get_trials(deepcopy=False)[specs[3].number].state == TrialState.COMPLETE
    new = second.suggest()
    assert new.number > n_trials
    assert new.config != specs[0].config
    assert len(second.study.get_trials(deepcopy=False)) >= n_trials + 2

    with pytest.raises(ValueError, match="different space"):
        SearchController(SearchConfig(parse_space(toy_raw(max_params=50_000)), experiment="exp"), state_dir=state, vocab_size=VOCAB)


def test_resume_replays_the_pruning_decision(tmp_path):
    space = parse_space(toy_raw())
    config = SearchConfig(space, sampler="random", pruner="median", pruner_options={"n_startup_trials": 1, "n_warmup_steps": 0})
    first = SearchController(config, state_dir=tmp_path, vocab_size=VOCAB)
    good = first.suggest()
    first.report(good.number, 1, {"valid_ppl": 10.0})
    first.complete(good.number, "finished", {"valid_ppl": 10.0})
    bad = first.suggest()
    assert first.report(bad.number, 1, {"valid_ppl": 500.0}) is True
    del first  # killed before Ray stopped the trial
    second = SearchController(config, state_dir=tmp_path, vocab_size=VOCAB)
    assert second.complete(bad.number, "finished", {"valid_ppl": 400.0}).status == "pruned"
    assert second.study.get_trials(deepcopy=False)[bad.number].state == TrialState.PRUNED


@pytest.mark.filterwarnings("ignore:All-NaN slice:RuntimeWarning")
def test_a_pruned_decision_does_not_hide_a_divergence():
    controller = SearchController(SearchConfig(parse_space(toy_raw()), sampler="random", pruner="median", pruner_options={"n_startup_trials": 1, "n_warmup_steps": 0}), vocab_size=VOCAB)
    run_trial(controller, controller.suggest())
    spec = controller.suggest()
    assert controller.report(spec.number, 1, {"valid_ppl": float("nan")}) is True
    assert controller.complete(spec.number, "diverged").status == "diverged"
    assert controller.study.get_trials(deepcopy=False)[spec.number].state == TrialState.FAIL


def test_vocabulary_comes_from_the_space_corpus():
    assert corpus_vocab_size(parse_space(toy_raw())) == VOCAB
    with pytest.raises(ValueError, match="data.path is required for data.corpus='ptb'"):
        corpus_vocab_size(load_space("ptb"))
    controller = SearchController(SearchConfig(parse_space(toy_raw())))
    assert controller.vocab_size == VOCAB
    assert math.isfinite(controller.corpus.unigram_ppl)


def test_infeasible_trials_never_reach_optuna_best_trials():
    controller = SearchController(SearchConfig(parse_space(toy_raw(max_params=20_000)), sampler="random", seed=2), vocab_size=VOCAB)
    for _ in range(10):
        run_trial(controller, controller.suggest())
    assert controller.rejected > 0
    best = controller.study.best_trials
    assert best and all(t.constraints["max_params"] <= 0 for t in best)
    assert optuna.study.StudyDirection.MINIMIZE in controller.study.directions


def test_bad_arguments_write_nothing_to_state_dir(tmp_path):
    state = tmp_path / "controller"
    with pytest.raises(ValueError, match="valid pruners"):
        SearchController(SearchConfig(parse_space(toy_raw()), pruner="asha"), state_dir=state, vocab_size=VOCAB)
    with pytest.raises(ValueError, match="bad argument for sampler"):
        SearchController(SearchConfig(parse_space(toy_raw()), sampler_options={"bogus": 1}), state_dir=state, vocab_size=VOCAB)
    assert not state.exists()


def test_controller_drives_the_real_trainer_without_ray():
    """The trainer's report callable plugs straight into the controller: metrics names and statuses agree."""
    from squeezelstm.trainers import train

    raw = toy_raw(max_params=20_000)
    raw["data"].update({"vocab_size": 30, "train_tokens": 1500, "valid_tokens": 300, "test_tokens": 300})
    raw["train"].update({"batch_size": 8, "bptt": 8, "device": "cpu", "threads": 1})
    controller = SearchController(SearchConfig(parse_space(raw), sampler="random", pruner="median", seed=0, epochs=2, pruner_options={"n_startup_trials": 1, "n_warmup_steps": 0}))
    for _ in range(3):
        spec = controller.suggest()
        result = train(Config.from_dict(spec.config),
                       report=lambda epoch, metrics, n=spec.number: not controller.report(n, epoch, metrics))
        record = controller.complete(spec.number, result.status, result.to_dict())
        assert record.params == result.params == spec.params
        assert [h["epoch"] for h in record.history] == [h["epoch"] for h in result.history]
        if record.status == "finished":
            assert record.valid_ppl == pytest.approx(result.valid_ppl) and record.test_ppl is not None
    assert controller.counts()["running"] == 0 and controller.front()


def test_a_trial_is_never_pruned_at_its_last_epoch():
    """A trial that reached its last epoch is fully trained: its value is final, so it is told as finished
    (and can reach the front) however bad it is; the same curve one epoch short of the end is pruned."""
    space = parse_space(toy_raw())  # 3 epochs a trial
    controller = SearchController(SearchConfig(space, sampler="random", pruner="median", pruner_options={"n_startup_trials": 1, "n_warmup_steps": 0}), vocab_size=VOCAB)
    good = controller.suggest()
    for epoch in (1, 2, 3):
        controller.report(good.number, epoch, {"valid_ppl": 10.0})
    controller.complete(good.number, "finished", {"valid_ppl": 10.0})
    early = controller.suggest()
    assert controller.report(early.number, 2, {"valid_ppl": 500.0}) is True  # median prunes it mid-way
    controller.complete(early.number, "pruned")
    late = controller.suggest()
    assert controller.report(late.number, 3, {"valid_ppl": 500.0}) is False
    record = controller.complete(late.number, "finished", {"valid_ppl": 500.0})
    assert record.status == "finished"
    assert controller.study.get_trials(deepcopy=False)[late.number].state == TrialState.COMPLETE
