"""ExactSizeEHVI: the closed-form expected improvement, the GP, the proposer's choices, and the controller's ``ehvi`` sampler."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optuna.trial import TrialState

from squeezelstm.search.config import SearchConfig
from squeezelstm.search.controller import SearchController
from squeezelstm.search.space import Choice, FloatRange
from squeezelstm.search.samplers import Encoder, ExactSizeEHVI, Observation, expected_hvi, staircase
from squeezelstm.search.samplers import fit_gp, fit_gp_ard
from squeezelstm.search.space import model_cost, parse_space

VOCAB = 200


def hvi(a: float, y: float, front: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """Hypervolume improvement of (a, y) by brute force on a fine grid (both objectives minimised)."""
    xs = np.linspace(min([a] + [p[0] for p in front]) - 0.01, ref[0], 4001)
    mid = 0.5 * (xs[1:] + xs[:-1])
    dx = xs[1] - xs[0]

    def level(points):
        out = np.full_like(mid, ref[1])
        for px, py in points:
            out = np.where(mid >= px, np.minimum(out, py), out)
        return np.minimum(out, ref[1])

    return float(((level(front) - level(front + [(a, y)])) * dx).sum())


def test_staircase_keeps_only_the_non_dominated_steps_inside_the_reference():
    xs, fs = staircase([(1.0, 5.0), (2.0, 3.0), (1.5, 6.0), (3.0, 4.0), (0.5, 9.0), (2.5, 2.0), (9.0, 0.1)], (4.0, 8.0))
    assert xs.tolist() == [-math.inf, 1.0, 2.0, 2.5, 4.0]
    assert fs.tolist() == [8.0, 5.0, 3.0, 2.0]


def test_expected_hvi_matches_monte_carlo_and_the_deterministic_limit():
    front = [(1.0, 5.0), (2.0, 3.0), (2.5, 2.0)]
    ref = (4.0, 8.0)
    rng = np.random.default_rng(0)
    for a, mu, sd in [(0.5, 4.0, 1.0), (1.5, 3.5, 0.5), (2.2, 1.0, 2.0), (3.5, 9.0, 0.3)]:
        draws = rng.normal(mu, sd, 20000)
        grid_hvi = np.vectorize(lambda y: hvi(a, y, front, ref))
        # the improvement is piecewise linear in y: a coarse grid of y and interpolation is exact enough
        ys = np.linspace(mu - 6 * sd, mu + 6 * sd, 241)
        mc = float(np.interp(draws, ys, grid_hvi(ys)).mean())
        closed = float(expected_hvi(np.array([a]), np.array([mu]), np.array([sd]), front, ref)[0])
        assert closed == pytest.approx(mc, rel=0.03, abs=2e-3)
    # sd -> 0: the plain hypervolume improvement
    assert expected_hvi(np.array([1.5]), np.array([2.5]), np.array([1e-9]), front, ref)[0] == pytest.approx(
        hvi(1.5, 2.5, front, ref), rel=1e-3)
    # a point dominated with certainty improves nothing
    assert expected_hvi(np.array([2.2]), np.array([4.0]), np.array([1e-9]), front, ref)[0] == pytest.approx(0.0, abs=1e-9)


def test_gp_interpolates_smooth_data_and_is_unsure_far_from_it():
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.uniform(0, 1, (60, 2)), rng.choice([0.25, 0.5, 1.0], 60)])
    f = lambda Z: np.sin(3 * Z[:, 0]) + Z[:, 1] ** 2 - 0.5 * Z[:, 2]  # noqa: E731
    gp = fit_gp(X, f(X))
    Q = np.column_stack([rng.uniform(0.1, 0.9, (40, 2)), np.ones(40)])
    mean, sd = gp.predict(Q)
    assert np.abs(mean - f(Q)).max() < 0.1
    _, sd_far = gp.predict(np.array([[6.0, 6.0, 1.0]]))
    assert sd_far[0] > 5 * sd.mean()
    with pytest.raises(ValueError, match="matching non-empty"):
        fit_gp(np.zeros((0, 3)), np.zeros(0))


@pytest.mark.parametrize("kernel", ["iso", "ard"])
def test_gp_triangular_solves_equal_the_dense_posterior(kernel):
    # the GP's mean and variance, computed with triangular solves on the Cholesky factor, against the
    # textbook formulas with a dense inverse of K + noise I (ARD: on the columns divided by their lengths)
    from squeezelstm.search.samplers._gp import _kernel, _sq_dists

    rng = np.random.default_rng(3)
    X = np.column_stack([rng.uniform(0, 1, (40, 3)), rng.choice([0.25, 1.0], 40)])
    y = rng.normal(size=40)
    gp, jitter = (fit_gp(X, y), 1e-8) if kernel == "iso" else (fit_gp_ard(X, y), 1e-6)
    assert (gp.lengths is None) == (kernel == "iso")

    def scale(Z):
        return Z if gp.lengths is None else np.column_stack([Z[:, :-1] / gp.lengths, Z[:, -1]])

    Q = np.column_stack([rng.uniform(0, 1, (7, 3)), np.ones(7)])
    K = _kernel(*_sq_dists(scale(X), scale(X)), gp.length, gp.length_t) + (gp.noise + jitter) * np.eye(40)
    Kq = _kernel(*_sq_dists(scale(Q), scale(X)), gp.length, gp.length_t)
    Kinv = np.linalg.inv(K)
    z = (y - y.mean()) / y.std()
    mean, sd = gp.predict(Q)
    assert mean == pytest.approx(y.mean() + y.std() * (Kq @ Kinv @ z), rel=1e-7, abs=1e-9)
    var = 1.0 - np.einsum("ij,jk,ik->i", Kq, Kinv, Kq)
    assert sd == pytest.approx(y.std() * np.sqrt(np.maximum(var, 1e-12)), rel=1e-6, abs=1e-9)


def test_ard_gp_finds_the_column_that_matters_where_one_length_for_all_cannot():
    # perplexity moved by one column (the learning rate, say) among 12 that do nothing: ARD gives that
    # column a short length and the rest long ones, and predicts far better than the isotropic grid fit
    rng = np.random.default_rng(5)
    X = np.column_stack([rng.uniform(0, 1, (150, 12)), rng.choice([0.25, 0.5, 1.0], 150)])
    f = lambda Z: np.sin(6 * Z[:, 3]) - 0.3 * Z[:, 12]  # noqa: E731
    y = f(X) + 0.01 * rng.normal(size=150)
    ard = fit_gp_ard(X, y)
    assert int(np.argmin(ard.lengths)) == 3
    assert ard.lengths[3] < 0.1 * np.delete(ard.lengths, 3).min()
    Q = np.column_stack([rng.uniform(0, 1, (100, 12)), np.ones(100)])
    rmse = lambda gp: float(np.sqrt(((gp.predict(Q)[0] - f(Q)) ** 2).mean()))  # noqa: E731
    assert rmse(ard) < 0.05
    assert rmse(ard) < 0.2 * rmse(fit_gp(X, y))
    # a warm start at the fitted point with no optimisation steps reproduces the fit
    again = fit_gp_ard(X, y, (ard.lengths, ard.length_t, ard.noise), steps=0)
    assert again.predict(Q)[0] == pytest.approx(ard.predict(Q)[0], rel=1e-6, abs=1e-8)
    with pytest.raises(ValueError, match="matching non-empty"):
        fit_gp_ard(np.zeros((0, 3)), np.zeros(0))


@pytest.mark.parametrize("kernel", ["iso", "ard"])
def test_hyperparameters_are_re_picked_only_when_the_data_has_grown_enough(kernel):
    rng = np.random.default_rng(4)
    pool = [({"lr": float(lr), "width": int(w)}, "a", 1000 * int(w))
            for lr, w in zip(rng.uniform(1e-3, 1e-1, 40), rng.choice([8, 16, 32, 64], 40))]
    proposer = toy_proposer(pool, kernel=kernel)
    proposer.refit_growth = 1.5
    obs = []
    refits = []
    for i in range(12):
        values, family, params = proposer.propose(obs)
        obs.append(observe(values, family, params, [300.0 / (1 + i % 5), 250.0 / (1 + i % 5)]))
        if proposer.last["mode"] == "ehvi":
            refits.append((2 * (len(obs) - 1), proposer.last["refit"]))
    # observations 4, 6, 8, ...: a grid search at 4, then again only once there are 1.5x as many (6 >= 6, 10 >= 9, ...)
    assert [n for n, r in refits if r] == [4, 6, 10, 16]
    assert any(not r for _, r in refits)
    with pytest.raises(ValueError, match="refit_growth"):
        ExactSizeEHVI(lambda _s: None, {}, ["a"], epochs=1, smallest=1, refit_growth=0.5)
    with pytest.raises(ValueError, match="kernel must be"):
        ExactSizeEHVI(lambda _s: None, {}, ["a"], epochs=1, smallest=1, kernel="rbf")


def toy_proposer(pool, seed=0, n_startup=2, kernel="iso", n_local=0, neighbour=None):
    """A proposer over a fixed list of (values, family, params) candidates."""
    it = iter(pool)
    dists = {"lr": FloatRange(1e-3, 1e-1, log=True), "width": Choice((8, 16, 32, 64))}
    return ExactSizeEHVI(lambda _seed: next(it, None), dists, ["a", "b"], epochs=4, smallest=1000, ref_params=100_000,
                         seed=seed, n_startup=n_startup, pool_size=len(pool), max_draws=len(pool), kernel=kernel,
                         n_local=n_local, neighbour=neighbour)


def observe(values, family, params, finals, status="finished"):
    return Observation(values, family, params, status, [(e + 1, v) for e, v in enumerate(finals)])


def test_proposer_goes_where_the_improvement_is_and_uses_the_exact_size():
    # family "a" learns (perplexity falls with size), "b" stays bad; a small "a" is where the front can grow
    obs = [observe({"lr": 0.01, "width": w}, "a", 1000 * w, [400 / w ** 0.3 * (1 + 1 / e) for e in range(1, 5)])
           for w in (16, 32, 64)]
    obs += [observe({"lr": 0.01, "width": w}, "b", 1000 * w, [300.0, 290.0, 285.0, 280.0]) for w in (8, 16, 32, 64)]
    pool = [({"lr": 0.01, "width": 8}, "a", 8000), ({"lr": 0.01, "width": 8}, "b", 8000),
            ({"lr": 0.01, "width": 64}, "b", 64000)]
    proposer = toy_proposer(pool)
    values, family, params = proposer.propose(obs)
    assert (family, params) == ("a", 8000)
    assert proposer.last["mode"] == "ehvi" and proposer.last["ehvi"] > 0
    assert len(proposer._pool) == 2  # the proposal left the pool


def test_local_search_reaches_a_narrow_optimum_the_random_pool_misses():
    # perplexity is good only for lr near 0.08; the pool holds only low learning rates, and one finished trial
    # at lr 0.05 sits on the front. Mutations of it (lr moved, the width kept) put candidates next to the
    # optimum; without them the proposer can only pick from the pool
    def ppl(lr, width):
        return 100.0 + 400.0 * abs(math.log(lr / 0.08)) + 0.1 * width

    obs = [observe({"lr": lr, "width": 16}, "a", 16000, [2 * ppl(lr, 16), ppl(lr, 16)])
           for lr in (0.05, 0.002, 0.004, 0.001, 0.003, 0.006, 0.0015)]
    pool = [({"lr": lr, "width": 16}, "a", 16000) for lr in (0.0012, 0.0025, 0.0035, 0.005)]

    def neighbour(base, seed):
        rng = np.random.default_rng(seed)
        lr = float(np.clip(base["lr"] * math.exp(rng.normal(0, 0.5)), 1e-3, 1e-1))
        return {"lr": lr, "width": base["width"]}, "a", 1000 * base["width"]

    plain = toy_proposer(pool)
    values, _, _ = plain.propose(obs)
    assert plain.last["mode"] == "ehvi" and values["lr"] < 0.01
    local = toy_proposer(pool, n_local=32, neighbour=neighbour)
    values, family, params = local.propose(obs)
    assert local.last["mode"] == "ehvi local"
    assert 0.04 < values["lr"] < 0.2 and (family, params) == ("a", 16000)
    assert len(local._pool) == len(pool)  # a local candidate is not taken out of the pool
    with pytest.raises(ValueError, match="n_local"):
        toy_proposer(pool, n_local=-1, neighbour=neighbour)


def test_startup_is_random_and_a_pruned_trial_is_never_a_final_value():
    pool = [({"lr": 0.01, "width": 8}, "a", 8000), ({"lr": 0.01, "width": 64}, "a", 64000)]
    proposer = toy_proposer(pool, n_startup=3)
    done = [observe({"lr": 0.01, "width": 16}, "a", 16000, [200.0, 150.0, 120.0, 110.0]),
            observe({"lr": 0.01, "width": 32}, "a", 32000, [180.0, 140.0, 110.0, 100.0])]
    proposer.propose(done)
    assert proposer.last == {"mode": "startup"}
    # a pruned 4k-parameter trial with a striking first epoch: it teaches the model, but is not on the front,
    # so the 8k candidate still has the whole strip left of 16k to win
    pruned = observe({"lr": 0.01, "width": 8}, "a", 4000, [50.0], status="pruned")
    proposer2 = toy_proposer(pool, n_startup=3)
    front_seen = []
    original = expected_hvi.__globals__["expected_hvi"]

    def spy(a, mu, sd, front, ref):
        front_seen.append(list(front))
        return original(a, mu, sd, front, ref)

    import squeezelstm.search.samplers._ehvi as ehvi_module

    ehvi_module.expected_hvi = spy
    try:
        proposer2.propose(done + [pruned])
    finally:
        ehvi_module.expected_hvi = original
    assert proposer2.last["mode"] == "ehvi"
    assert sorted(round(10 ** x) for x, _ in front_seen[0]) == [16000, 32000]


def test_encoder_scales_to_the_unit_cube_and_marks_missing_arguments_in_the_middle():
    enc = Encoder({"lr": FloatRange(1e-3, 1e-1, log=True), "mode": Choice(("x", "y")), "b.k": Choice((2, 4, 8))},
                  ["a", "b"], (1000, 100_000))
    v = enc.encode({"lr": 1e-2, "mode": "y"}, "a", 10_000)
    assert v.tolist() == pytest.approx([1, 0, 0.5, 0, 1, 0.5, 0.5])
    assert len(v) == enc.width


def toy_raw(max_params: int = 40_000) -> dict:
    return {
        "name": "toy",
        "data": {"corpus": "synthetic", "vocab_size": VOCAB},
        "model": {"cell": {"choice": ["lstm", "grouped", "factorized"]}, "hidden_size": {"int": [8, 96], "step": 8},
                  "embedding_size": 16},
        "train": {"lr": {"float": [1e-3, 1e-2], "log": True}, "epochs": 3},
        "families": {"grouped": {"groups": {"choice": [2, 4]}}, "factorized": {"rank_fraction": {"float": [0.1, 0.5]}}},
        "budget": {"max_params": max_params},
    }


def fake_curve(spec) -> list[float]:
    final = 300.0 * spec.params ** -0.2 * (1.5 if spec.family == "factorized" else 1.0)
    return [final * (1 + 1.0 / e) for e in (1, 2, 3)]


def test_controller_ehvi_suggests_in_budget_configs_the_study_records_and_resumes(tmp_path):
    space = parse_space(toy_raw())
    config = SearchConfig(space, sampler="ehvi", pruner="none", seed=2, experiment="exp",
                          sampler_options={"n_startup": 3, "pool_size": 24})
    controller = SearchController(config, vocab_size=VOCAB, state_dir=tmp_path)
    numbers = []
    for _ in range(7):
        spec = controller.suggest()
        numbers.append(spec.number)
        assert spec.params <= 40_000 and (spec.params, spec.flops) == model_cost(spec.config, VOCAB)
        trial = controller.study.get_trials(deepcopy=False)[spec.number]
        assert trial.state == TrialState.RUNNING and trial.params  # the proposal went through Optuna
        for epoch, value in enumerate(fake_curve(spec), 1):
            controller.report(spec.number, epoch, {"valid_ppl": value})
        controller.complete(spec.number, "finished", {"valid_ppl": fake_curve(spec)[-1]})
    assert controller._ehvi.last["mode"] == "ehvi"
    assert controller.rejected == 0  # the pool holds only in-budget configurations
    configs = [r.config for r in controller.records()]
    assert len({repr(c) for c in configs}) == len(configs)  # no candidate is proposed twice
    del controller
    resumed = SearchController(config, vocab_size=VOCAB, state_dir=tmp_path)
    spec = resumed.suggest()
    assert spec.number > max(numbers) and spec.params <= 40_000
    assert len(resumed.records()) == 8
    # the journal names the objectives, so optuna-dashboard (which reads it live) labels its axes
    import optuna

    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.journal")))
    assert optuna.load_study(study_name="exp", storage=journal).metric_names == ["params", "valid_ppl"]


def test_controller_ehvi_rejects_unknown_options():
    with pytest.raises(ValueError, match="ehvi takes n_startup, pool_size, ref_margin"):
        SearchController(SearchConfig(parse_space(toy_raw()), sampler="ehvi", sampler_options={"n_startup_trials": 3}),
                         vocab_size=VOCAB)
    with pytest.raises(ValueError, match="pool_size must be an integer >= 1"):
        SearchController(SearchConfig(parse_space(toy_raw()), sampler="ehvi", sampler_options={"pool_size": 0}),
                         vocab_size=VOCAB)


def test_prefetched_proposals_leave_results_unblocked_and_stay_apart(tmp_path, monkeypatch):
    import threading
    import time

    space = parse_space(toy_raw())
    config = SearchConfig(space, sampler="ehvi", pruner="none", seed=1, sampler_options={"n_startup": 2, "pool_size": 24})
    controller = SearchController(config, vocab_size=VOCAB, prefetch=True)
    specs = [controller.suggest() for _ in range(3)]  # the third proposal is EHVI's, prepared in the background
    for spec in specs[:2]:
        for epoch, value in enumerate(fake_curve(spec), 1):
            controller.report(spec.number, epoch, {"valid_ppl": value})
        controller.complete(spec.number, "finished", {"valid_ppl": fake_curve(spec)[-1]})
    seen_running = []
    original = controller._ehvi.propose

    def slow(observations):  # a model fit that takes a while
        seen_running.append({o.number for o in observations if o.status == "running"})
        time.sleep(1.0)
        return original(observations)

    controller._prefetch.wait()  # the proposal prepared after the third trial is ready
    controller._prefetch._propose = slow
    spec = controller.suggest()  # hands out what was prepared; starts preparing the next one
    assert controller._prefetch._thread is not None and controller._prefetch._thread.is_alive()
    start = time.perf_counter()
    controller.report(specs[2].number, 1, {"valid_ppl": 80.0})  # handled while the proposal is computed
    assert time.perf_counter() - start < 0.1
    assert controller._prefetch._thread.is_alive()
    nxt = controller.suggest()  # waits for the prepared proposal
    assert seen_running[0] == {specs[2].number, spec.number}  # the kriging believer saw both running trials
    assert len({repr(r.config) for r in controller.records()}) == len(controller.records()) == 5
    assert nxt.number == 4 and threading.active_count() >= 1


def test_prefetching_with_every_slot_busy_waits_for_the_result_and_proposes_as_the_synchronous_driver(tmp_path):
    # One trial at a time (--max-concurrent 1): a proposal prepared right after a launch would miss that
    # trial's result, and every proposal would lag one trial behind. With the slots known, the next proposal
    # is prepared when a trial ends, from its result: the same trials, in order, as without prefetching.
    space = parse_space(toy_raw())

    def run(prefetch: bool, slots: int | None) -> list:
        config = SearchConfig(space, sampler="ehvi", pruner="none", seed=3, trials=9,
                              sampler_options={"n_startup": 2, "pool_size": 24})
        controller = SearchController(config, vocab_size=VOCAB, prefetch=prefetch)
        controller.slots = slots
        out = []
        for _ in range(9):
            spec = controller.suggest()
            if prefetch and slots == 1:  # a full house: nothing is prepared before the trial's result
                assert controller._prefetch._thread is None and controller._prefetch._result is None
            curve = fake_curve(spec)
            for epoch, value in enumerate(curve, 1):
                controller.report(spec.number, epoch, {"valid_ppl": value})
            controller.complete(spec.number, "finished", {"valid_ppl": curve[-1]})
            out.append(repr(spec.config))
        return out

    synchronous = run(prefetch=False, slots=None)
    assert run(prefetch=True, slots=1) == synchronous
    assert run(prefetch=True, slots=None) != synchronous  # prepared at launch: each one lagged a result
