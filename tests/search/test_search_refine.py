"""A refinement's core (``search.pareto._refine``): the spread over seeds, which members are chosen, the refined
front, the configs each seed trains, and ``refined.json``'s round trip. Pure data: no Ray, no MLflow."""

from __future__ import annotations

import math
import statistics

import pytest

from squeezelstm.search.pareto import (RefinedMember, Refinement, SeedRun, TrialRecord, check_seeds, choose_members,
                                       new_refinement, refine_config, refined_front, spread)


def rec(number, params, ppl, status="finished", family="lstm", size="total", **kw) -> TrialRecord:
    config = {"model": {"cell": family, "hidden_size": number + 8}, "train": {"seed": 0, "epochs": 4}}
    return TrialRecord(number=number, family=family, params=params, recurrent_params=params // 2, flops=params * 2,
                       status=status, valid_ppl=ppl, config=config, size=size, **kw)


def test_spread_is_mean_sample_std_min_max_of_the_finite_values():
    s = spread([10.0, 12.0, None, math.inf, 14.0, math.nan])
    assert (s.mean, s.min, s.max, s.n) == (12.0, 10.0, 14.0, 3)
    assert s.std == pytest.approx(statistics.stdev([10.0, 12.0, 14.0]))  # ddof=1: 2.0, not 1.63
    assert s.std == pytest.approx(2.0)
    one = spread([5.0])
    assert (one.mean, one.std, one.n) == (5.0, 0.0, 1)
    assert spread([None, math.nan]) is None and spread([]) is None


def test_seeds_below_two_are_refused_with_the_reason():
    assert check_seeds(2) == 2 and check_seeds(5) == 5
    for bad in (1, 0, -3, True, 2.5):
        with pytest.raises(ValueError, match="at least 2 seeds"):
            check_seeds(bad)


def records():
    # front: 0 (100, 50), 2 (300, 30), 4 (900, 20); 1 and 3 are dominated; 5 pruned; 6 failed
    return [rec(0, 100, 50.0), rec(1, 200, 55.0), rec(2, 300, 30.0), rec(3, 400, 31.0), rec(4, 900, 20.0),
            rec(5, 50, 10.0, status="pruned"), rec(6, 60, None, status="failed")]


def test_the_front_is_chosen_by_default_and_top_n_follows_non_dominated_ranks():
    assert [r.number for r in choose_members(records())] == [0, 2, 4]
    # rank 1 = {0, 2, 4} (by perplexity: 4, 2, 0), rank 2 = {1, 3} (3 then 1)
    assert [r.number for r in choose_members(records(), top=2)] == [2, 4]
    assert [r.number for r in choose_members(records(), top=4)] == [0, 2, 3, 4]
    assert [r.number for r in choose_members(records(), top=99)] == [0, 1, 2, 3, 4]  # pruned / failed never


def test_the_front_is_taken_in_the_searchs_size_objective():
    recs = [rec(0, 100, 50.0, size="recurrent"), rec(1, 90, 40.0, size="recurrent")]
    recs[0].recurrent_params, recs[1].recurrent_params = 10, 80  # 0 is smaller in recurrent parameters
    assert [r.number for r in choose_members(recs)] == [0, 1]
    assert [r.number for r in choose_members([rec(0, 100, 50.0), rec(1, 90, 40.0)])] == [1]


def test_a_configuration_trained_twice_is_one_member():
    twin = rec(7, 300, 29.0)
    twin.config = dict(records()[2].config)
    chosen = choose_members(records() + [twin])
    assert [r.number for r in chosen] == [0, 7, 4]


def test_no_finished_trial_and_bad_top_are_one_line_errors():
    with pytest.raises(ValueError, match="no finished trial"):
        choose_members([rec(0, 10, 5.0, status="pruned"), rec(1, 10, None, status="running")])
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="--top must be an integer >= 1"):
            choose_members(records(), top=bad)


def test_each_seed_trains_the_members_config_with_its_seed_epochs_and_the_train_overrides():
    config = records()[2].config
    out = refine_config(config, epochs=40, seed=3, overrides={"train.asgd": True, "train.optimizer": "sgd",
                                                              "data.path": "/books"})
    assert out["train"] == {"seed": 3, "epochs": 40, "asgd": True, "optimizer": "sgd"}
    assert out["model"] == config["model"] and out["data"] == {"path": "/books"}
    assert config["train"] == {"seed": 0, "epochs": 4}  # the record is left alone
    assert refine_config(config, epochs=None, seed=1, overrides={})["train"]["epochs"] == 4
    for key in ("model.hidden_size", "data.vocab_cap", "train.seed", "train.prune_sparsity", "trainer.x"):
        with pytest.raises(ValueError, match=f"--set {key} is not allowed"):
            refine_config(config, epochs=None, seed=0, overrides={key: 1})


def member(number, params, valid, status=("finished", "finished"), family="lstm") -> RefinedMember:
    m = RefinedMember.of(rec(number, params, 0.0, family=family), [0, 1])
    for run, v, st in zip(m.runs, valid, status):
        run.status, run.valid_ppl, run.test_ppl = st, v, (v + 1 if v is not None else None)
    return m


def test_the_refined_front_is_by_mean_valid_ppl_over_at_least_two_finished_seeds():
    a = member(0, 100, [50.0, 52.0])          # mean 51
    b = member(1, 200, [49.0, 55.0])          # mean 52: dominated by a
    c = member(2, 300, [30.0, 30.5])
    d = member(3, 50, [10.0, None], status=("finished", "diverged"))  # one finished seed: no spread, not on it
    assert [m.number for m in refined_front([a, b, c, d])] == [0, 2]
    assert a.valid.mean == 51.0 and a.valid.std == pytest.approx(math.sqrt(2)) and a.test.mean == 52.0
    assert d.seeds_finished == 1 and d.valid.n == 1


def test_a_refinement_round_trips_and_lists_what_is_left_to_run(tmp_path):
    ref = new_refinement("exp", records(), seeds=2, epochs=6, top=None, overrides={"train.asgd": True})
    assert ref.selection == "front" and ref.seeds == 2 and ref.epochs == 6
    assert [(m.number, [r.seed for r in m.runs]) for m in ref.members] == [(0, [0, 1]), (2, [0, 1]), (4, [0, 1])]
    assert ref.members[1].params == 300 and ref.members[1].recurrent_params == 150 and ref.members[1].flops == 600
    assert len(ref.pending()) == 6 and ref.counts() == {"pending": 6}
    run = ref.member(2).run(1)
    run.status, run.valid_ppl, run.test_ppl, run.epochs = "finished", 30.0, 31.0, 6
    assert len(ref.pending()) == 5
    again = Refinement.from_dict(ref.to_dict())
    assert again.to_dict() == ref.to_dict()
    assert again.member(2).run(1) == SeedRun(1, "finished", 30.0, 31.0, 6)
    ref.add_seeds(3)
    assert [r.seed for r in ref.member(0).runs] == [0, 1, 2] and ref.seeds == 3
    with pytest.raises(ValueError, match="fewer than the 3"):
        ref.add_seeds(2)
    assert new_refinement("exp", records(), seeds=2, top=2).selection == "top 2"
    with pytest.raises(ValueError, match="--epochs"):
        new_refinement("exp", records(), seeds=2, epochs=0)


def test_seeds_count_up_from_the_seed_the_search_trained_with():
    r = rec(0, 100, 50.0)
    r.config["train"]["seed"] = 7
    ref = new_refinement("exp", [r], seeds=3)
    assert [x.seed for x in ref.members[0].runs] == [7, 8, 9]
