"""The pruning bridge decides exactly as the wrapped Optuna pruner; the Pareto-aware pruner spares the front."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from squeezelstm.search.config import SearchConfig
from squeezelstm.search.controller import SearchController
from squeezelstm.search.pareto import pareto_mask
from squeezelstm.search.pruners import PRUNERS, ParetoAwarePruner, PruningBridge, make_pruner, pareto_should_prune
from squeezelstm.search.space import parse_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

EPOCHS = 6


def noisy_curves(seed: int, n: int = 18) -> list[tuple[int, list[float]]]:
    """(params, per-epoch valid ppl) of ``n`` made-up trials: decreasing, noisy, some bad, one diverging."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        params = int(10 ** rng.uniform(4, 6))
        final = 40.0 * (params / 1e4) ** -0.12 * rng.choice([1.0, 1.1, 1.4, 2.0])
        curve = [final * (1 + 1.5 * math.exp(-0.7 * e)) * rng.uniform(0.97, 1.03) for e in range(1, EPOCHS + 1)]
        if i == 7:
            curve[3:] = [float("nan")] * (EPOCHS - 3)
        out.append((params, curve))
    return out


def reference_decisions(pruner: optuna.pruners.BasePruner, curves, study_name: str) -> list[int | None]:
    """Plain single-objective Optuna, trials run one after another: the epoch each trial is pruned at."""
    study = optuna.create_study(study_name=study_name, direction="minimize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))
    decisions = []
    for params, curve in curves:
        trial = study.ask()
        trial.set_user_attr("params", params)
        pruned_at = None
        for epoch, value in enumerate(curve, start=1):
            trial.report(value, epoch)
            if trial.should_prune():
                pruned_at = epoch
                break
        if pruned_at is not None:
            study.tell(trial, state=TrialState.PRUNED)
        elif math.isfinite(curve[-1]):
            study.tell(trial, curve[-1])
        else:
            study.tell(trial, state=TrialState.FAIL)
        decisions.append(pruned_at)
    return decisions


def bridge_decisions(bridge: PruningBridge, curves) -> list[int | None]:
    decisions = []
    for number, (params, curve) in enumerate(curves):
        bridge.start(number, params)
        pruned_at = None
        for epoch, value in enumerate(curve, start=1):
            if bridge.report(number, epoch, value):
                pruned_at = epoch
                break
        status = "pruned" if pruned_at else ("finished" if math.isfinite(curve[-1]) else "diverged")
        bridge.finish(number, status, curve[-1])
        decisions.append(pruned_at)
    return decisions


PRUNER_CASES = [
    ("median", {"n_startup_trials": 3, "n_warmup_steps": 1}),
    ("percentile", {"percentile": 40.0, "n_startup_trials": 2}),
    ("successive_halving", {"min_resource": 1, "reduction_factor": 2}),
    ("hyperband", {"min_resource": 1, "max_resource": EPOCHS, "reduction_factor": 2}),
    ("wilcoxon", {"p_threshold": 0.2, "n_startup_steps": 2}),
    ("pareto", {"n_startup_trials": 2, "n_warmup_steps": 2}),
    ("none", {}),
]


@pytest.mark.parametrize("name,kwargs", PRUNER_CASES, ids=[c[0] for c in PRUNER_CASES])
def test_bridge_prunes_exactly_as_the_wrapped_optuna_pruner(name, kwargs):
    for seed in (0, 1):
        curves = noisy_curves(seed)
        expected = reference_decisions(make_pruner(name, **kwargs), curves, study_name="s-pruning")
        got = bridge_decisions(PruningBridge(name, study_name="s-pruning", **kwargs), curves)
        assert got == expected
        if name in ("median", "percentile", "successive_halving", "pareto"):
            assert any(d is not None for d in got), "the scripted curves should make this pruner prune"


def _toy_space(max_params=None):
    raw = {
        "name": "toy",
        "data": {"corpus": "synthetic", "vocab_size": 50},
        "model": {"cell": {"choice": ["lstm", "grouped"]}, "hidden_size": {"int": [8, 64], "step": 8},
                  "num_layers": 1, "embedding_size": 16},
        # one epoch more than the scripted curves: the controller never prunes a trial's last epoch,
        # plain Optuna would, so every scripted epoch must come before it for the two to agree
        "train": {"lr": {"float": [1e-3, 1e-2], "log": True}, "epochs": EPOCHS + 1},
        "families": {"grouped": {"groups": {"choice": [2, 4]}}},
    }
    if max_params:
        raw["budget"] = {"max_params": max_params}
    return parse_space(raw)


@pytest.mark.parametrize("name,kwargs", [PRUNER_CASES[0], PRUNER_CASES[3], PRUNER_CASES[5]], ids=["median", "hyperband", "pareto"])
def test_controller_prunes_as_optuna_and_tells_the_sampler_pruned(name, kwargs):
    """Through the controller: same decisions as plain Optuna, and pruned trials reach the study as PRUNED."""
    curves = noisy_curves(3)
    config = SearchConfig(_toy_space(), sampler="random", pruner=name, experiment="s", pruner_options=kwargs)
    controller = SearchController(config, vocab_size=50)
    used, decisions = [], []
    for params_hint, curve in curves:
        spec = controller.suggest()
        used.append((spec.params, curve))
        pruned_at = None
        for epoch, value in enumerate(curve, start=1):
            if controller.report(spec.number, epoch, {"valid_ppl": value, "train_ppl": value * 0.9}):
                pruned_at = epoch
                break
        status = "finished" if math.isfinite(curve[-1]) or pruned_at else "diverged"
        # the runner may say "finished" for a trial the controller pruned: the controller's decision wins
        controller.complete(spec.number, status, {"valid_ppl": curve[-1], "test_ppl": curve[-1]})
        decisions.append(pruned_at)
    expected = reference_decisions(make_pruner(name, **kwargs), used, study_name="s-pruning")
    assert decisions == expected
    assert any(d is not None for d in decisions)
    trials = controller.study.get_trials(deepcopy=False)
    for record, trial, pruned_at in zip(controller.records(), trials, decisions):
        if pruned_at is not None:
            assert record.status == "pruned" and trial.state == TrialState.PRUNED and trial.values is None
            assert record.epochs == pruned_at
        elif record.status == "diverged":
            assert trial.state == TrialState.FAIL
        else:
            assert record.status == "finished" and trial.state == TrialState.COMPLETE
            assert trial.values == [float(record.params), pytest.approx(record.valid_ppl)]
    front = {r.number for r in controller.front()}
    assert front and all(controller.records()[n].status == "finished" for n in front)


def pareto_curves(seed: int, n: int = 30) -> list[tuple[int, list[float]]]:
    """Scripted curves whose shapes differ by less than 5% at any epoch >= 2 (convergence rates 0.6 to 0.7)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        params = int(10 ** rng.uniform(4, 6))
        quality = rng.choice([1.0, 1.0, 1.03, 1.1, 1.3, 1.8])  # lr / dropout luck: some configs clearly worse
        final = 40.0 * (params / 1e4) ** -0.12 * quality * rng.uniform(0.97, 1.03)
        k = rng.uniform(0.6, 0.7)
        norm = 1 + math.exp(-k * EPOCHS)
        out.append((params, [final * (1 + math.exp(-k * e)) / norm for e in range(1, EPOCHS + 1)]))
    return out


def full_front(curves) -> set[int]:
    pts = np.array([[p, c[-1]] for p, c in curves])
    return set(np.flatnonzero(pareto_mask(pts)).tolist())


@pytest.mark.parametrize("seed", range(6))
def test_pareto_aware_pruner_never_prunes_a_trial_that_ends_on_the_front(seed):
    curves = pareto_curves(seed)
    front = full_front(curves)
    decisions = bridge_decisions(PruningBridge("pareto"), curves)
    pruned = {i for i, d in enumerate(decisions) if d is not None}
    assert not pruned & front
    assert len(pruned) >= 0.3 * (len(curves) - len(front)), (len(pruned), len(curves), len(front))


def test_a_plain_median_pruner_kills_front_trials_on_the_same_curves():
    """Why the Pareto-aware pruner exists: the median pruner compares small models with big ones."""
    killed = 0
    for seed in range(6):
        curves = pareto_curves(seed)
        decisions = bridge_decisions(PruningBridge("median", n_startup_trials=2, n_warmup_steps=2), curves)
        killed += len({i for i, d in enumerate(decisions) if d is not None} & full_front(curves))
    assert killed > 0


def test_pareto_should_prune_rules():
    # dominated: a smaller trial is clearly better
    assert pareto_should_prune(50.0, 1000, [(900, 40.0)])
    assert not pareto_should_prune(50.0, 1000, [(900, 46.0)])  # better, but within the margin
    # larger trials never count, however good
    assert not pareto_should_prune(50.0, 1000, [(5000, 10.0), (2000, 20.0), (1001, 30.0)])
    # neighbourhood: most similar-size smaller trials are better by more than neighbor_margin
    near = [(900, 46.0), (800, 46.5), (700, 47.0)]
    assert pareto_should_prune(50.0, 1000, near)
    assert not pareto_should_prune(50.0, 1000, near, min_neighbors=4)
    assert not pareto_should_prune(50.0, 1000, [(400, 46.0), (300, 46.5), (450, 47.0)])  # outside the window of 2
    assert pareto_should_prune(50.0, 1000, [(400, 46.0), (300, 46.5), (450, 47.0)], window=4.0)
    # non-finite values are pruned; non-finite others are ignored
    assert pareto_should_prune(float("nan"), 1000, [])
    assert not pareto_should_prune(50.0, 1000, [(10, float("nan")), (10, float("inf"))])


def test_pareto_pruner_waits_for_startup_trials_and_warmup_epochs():
    bridge = PruningBridge("pareto", n_startup_trials=1, n_warmup_steps=3)
    bridge.start(0, 100)
    for e in range(1, 4):
        assert not bridge.report(0, e, 10.0)
    bridge.finish(0, "finished", 10.0)
    bridge.start(1, 200)
    assert not bridge.report(1, 1, 100.0)  # warm-up
    assert not bridge.report(1, 2, 100.0)
    assert bridge.report(1, 3, 100.0)
    bridge.start(2, 50)  # a smaller trial is never dominated by a bigger one
    assert [bridge.report(2, e, 100.0) for e in (1, 2, 3)] == [False, False, False]


@pytest.mark.parametrize(
    "kwargs,name",
    [({"margin": -0.1}, "margin"), ({"neighbor_margin": float("nan")}, "neighbor_margin"), ({"window": 0.5}, "window"),
     ({"percentile": 101}, "percentile"), ({"min_neighbors": 0}, "min_neighbors"), ({"n_startup_trials": -1}, "n_startup_trials"),
     ({"n_warmup_steps": 1.5}, "n_warmup_steps")],
)
def test_pareto_pruner_arguments_are_validated(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ParetoAwarePruner(**kwargs)


def test_make_pruner_errors_and_names():
    assert set(PRUNERS) == {"none", "median", "percentile", "successive_halving", "hyperband", "wilcoxon", "pareto"}
    with pytest.raises(ValueError, match="valid pruners: none, median"):
        make_pruner("asha")
    with pytest.raises(ValueError, match="bad argument for pruner 'median'"):
        make_pruner("median", n_startup=3)
    with pytest.raises(ValueError, match="never started"):
        PruningBridge().report(3, 1, 1.0)


def test_bridge_ignores_a_repeated_epoch_after_resume():
    bridge = PruningBridge("none")
    bridge.start(0, 10)
    bridge.report(0, 1, 5.0)
    bridge.report(0, 1, 7.0)  # a trial restored from its checkpoint may report its last epoch again
    assert bridge.curve(0) == {1: 5.0}


@pytest.mark.parametrize("seed", range(4))
def test_indexed_pareto_decisions_equal_optuna_asking_the_shadow_study(seed):
    """The bridge answers the Pareto pruner from its per-epoch index; Optuna's ``prune`` on the shadow
    study must say the same after every report: interleaved trials, tied sizes, NaN and inf values,
    repeated epochs (resume), reports after a prune, and every way a trial ends."""
    rng = np.random.default_rng(seed)
    pruner = ParetoAwarePruner(margin=0.3, neighbor_margin=0.02, min_neighbors=2, n_startup_trials=3,
                               n_warmup_steps=1)
    bridge = PruningBridge(pruner)
    sizes = [int(s) for s in rng.choice([6_000, 12_000, 12_000, 24_000, 48_000, 200_000], size=60)]
    running: dict[int, int] = {}  # trial number -> last epoch reported
    next_number, decisions, pruned = 0, 0, 0
    while next_number < 60 or running:
        if next_number < 60 and (len(running) < 8 and rng.random() < 0.5 or not running):
            bridge.start(next_number, sizes[next_number])
            running[next_number] = 0
            next_number += 1
            continue
        number = int(rng.choice(list(running)))
        epoch = running[number] + (0 if running[number] and rng.random() < 0.1 else 1)  # sometimes a repeat
        value = float(rng.choice([math.nan, math.inf])) if rng.random() < 0.03 else \
            float(60 * (sizes[number] / 6e3) ** -0.1 * (1 + 1 / epoch) * rng.uniform(0.9, 1.3))
        got = bridge.report(number, epoch, value)
        frozen = bridge.study.get_trials(deepcopy=False)[number]  # opened in number order: shadow number == number
        assert got == pruner.prune(bridge.study, frozen), (seed, number, epoch)
        decisions += 1
        pruned += got
        running[number] = max(running[number], epoch)
        if got or running[number] >= 5 or rng.random() < 0.05:
            status = "pruned" if got else str(rng.choice(["finished", "finished", "failed", "diverged"]))
            bridge.finish(number, status, value)
            assert bridge.report(number, epoch + 1, value) is False  # closed: never pruned again
            del running[number]
    assert decisions > 100 and 0 < pruned < decisions  # both answers were exercised

