"""The size objective (issue 19): total, recurrent or FLOPs, chosen by the space's ``size:`` or ``--size``."""

from __future__ import annotations

import argparse

import pytest

from squeezelstm.search.backends import replay_search
from squeezelstm.search.cli import main
from squeezelstm.search.cli._search import search_config
from squeezelstm.search.config import SearchConfig
from squeezelstm.search.controller import SearchController
from squeezelstm.search.export import pick
from squeezelstm.search.pareto import SIZES, TrialRecord, objective_values, objectives, pareto_front
from squeezelstm.search.space import SIZE_NAMES, load_space, parse_space
from squeezelstm.trainers import Config, model_sizes

from .test_search_replay import EPOCHS, _made_up_table

VOCAB = 200


def toy(size: str | None = None, families: tuple = ("lstm", "grouped", "factorized")) -> dict:
    raw = {
        "name": "toy",
        "data": {"corpus": "synthetic", "vocab_size": VOCAB},
        "model": {"cell": {"choice": list(families)}, "hidden_size": {"int": [8, 96], "step": 8},
                  "num_layers": {"choice": [1, 2]}, "embedding_size": 16},
        "train": {"lr": {"float": [1e-3, 1e-2], "log": True}, "epochs": 3},
        "families": {"grouped": {"groups": {"choice": [2, 4]}}, "factorized": {"rank_fraction": {"float": [0.1, 0.5]}},
                     "hidden": {"gate_hidden": {"int": [4, 16]}, "prune_sparsity": {"float": [0.5, 0.9]}}},
        "budget": {"max_params": 60000},
    }
    raw["families"] = {f: v for f, v in raw["families"].items() if f in families}
    if size is not None:
        raw["size"] = size
    return raw


def run_search(controller: SearchController, n: int = 10) -> None:
    """n trials to the end, with a made-up perplexity that falls with total parameters (so the fronts differ)."""
    for _ in range(n):
        spec = controller.suggest()
        final = 300.0 * spec.params ** -0.3 * (1 + 0.05 * (spec.number % 3))
        for epoch in (1, 2, 3):
            controller.report(spec.number, epoch, {"valid_ppl": final * (1 + 1.0 / epoch)})
        controller.complete(spec.number, "finished", {"valid_ppl": final * (1 + 1.0 / 3)})


def test_size_names_match_the_records():
    assert SIZE_NAMES == tuple(SIZES)
    assert objectives() == (("params", "min"), ("valid_ppl", "min"))
    assert objectives("recurrent") == (("recurrent_params", "min"), ("valid_ppl", "min"))


def test_space_key_round_trips_and_is_absent_by_default():
    space = parse_space(toy("recurrent"))
    assert space.size == "recurrent" and parse_space(space.to_dict()).size == "recurrent"
    plain = parse_space(toy())
    assert plain.size == "total" and "size" not in plain.to_dict()
    with pytest.raises(ValueError, match=r"size: unknown size objective 'cells'"):
        parse_space(toy("cells"))
    for name in ("ptb", "wikitext2", "ptb_small"):
        assert load_space(name).size == "recurrent"
    assert load_space("default").size == "total"


def test_config_size_overrides_the_space_and_is_checked():
    space = parse_space(toy("recurrent"))
    assert SearchConfig(space).size_objective == "recurrent"
    assert SearchConfig(space, size="flops").size_objective == "flops"
    assert SearchConfig(parse_space(toy())).size_objective == "total"
    with pytest.raises(ValueError, match="unknown size='cells'"):
        SearchConfig(space, size="cells")
    config = SearchConfig(space, size="total")
    assert SearchConfig.from_dict(config.to_dict()).size_objective == "total"


@pytest.mark.parametrize("sampler", ["tpe", "ehvi"])
def test_recurrent_search_puts_recurrent_counts_on_the_front_and_records_every_size(sampler):
    config = SearchConfig(parse_space(toy("recurrent")), sampler=sampler, pruner="none", seed=2,
                          sampler_options={"n_startup": 3} if sampler == "ehvi" else {})
    controller = SearchController(config, vocab_size=VOCAB)
    assert [name for name, _ in controller.objectives] == ["recurrent_params", "valid_ppl"]
    assert controller.study.metric_names == ["recurrent_params", "valid_ppl"]
    run_search(controller, 8 if sampler == "ehvi" else 10)
    records = controller.records()
    for r in records:
        sizes = model_sizes(Config.from_dict(r.config), VOCAB)
        assert (r.params, r.recurrent_params, r.flops) == (sizes.live_params, sizes.live_recurrent_params,
                                                           sizes.live_flops)
        assert r.dense == {"params": sizes.params, "recurrent_params": sizes.recurrent_params, "flops": sizes.flops}
        assert r.size == "recurrent" and r.size_value == r.recurrent_params
    front = controller.front()
    assert [objective_values(r)[0] for r in front] == sorted(r.recurrent_params for r in front)
    # every front member is non-dominated in (recurrent, ppl), and every other finished trial is dominated
    for r in records:
        dominated = any(f.recurrent_params <= r.recurrent_params and f.valid_ppl <= r.valid_ppl
                        and (f.recurrent_params, f.valid_ppl) != (r.recurrent_params, r.valid_ppl) for f in records)
        assert (r in front) != dominated
    trials = controller.study.get_trials()
    told = {t.number: t.values for t in trials if t.values is not None}
    assert all(told[r.number][0] == r.recurrent_params for r in records)


def test_hidden_lstm_with_pruning_is_counted_live():
    config = SearchConfig(parse_space(toy("recurrent", families=("hidden",))), sampler="random", pruner="none", seed=0)
    controller = SearchController(config, vocab_size=VOCAB)
    run_search(controller, 3)
    for r in controller.records():
        sizes = model_sizes(Config.from_dict(r.config), VOCAB)
        assert r.config["train"]["prune_sparsity"] >= 0.5
        assert r.recurrent_params == sizes.live_recurrent_params < sizes.recurrent_params == r.dense["recurrent_params"]
        assert r.params == sizes.live_params < r.dense["params"] and r.flops == sizes.live_flops


def test_replay_with_recurrent_size_puts_recurrent_counts_on_its_front():
    space, table = _made_up_table()
    config = SearchConfig(space, sampler="tpe", pruner="none", seed=3, epochs=EPOCHS, size="recurrent")
    res = replay_search(table, config, workers=2, budget=24, vocab_size=VOCAB)
    assert res.trace and res.trace[-1][1] > 0
    total = replay_search(table, config.replace(size=None), workers=2, budget=24, vocab_size=VOCAB)
    # the same seed samples the same first trials, but the hypervolume is over recurrent counts
    assert res.trace[-1][1] != total.trace[-1][1]


def test_export_max_size_reads_the_chosen_size():
    controller = SearchController(SearchConfig(parse_space(toy("recurrent")), sampler="random", pruner="none", seed=4),
                                  vocab_size=VOCAB)
    run_search(controller, 8)
    records = controller.records()
    front = pareto_front(records)
    budget = front[len(front) // 2].recurrent_params
    chosen = pick(records, max_size=budget)
    assert chosen.recurrent_params <= budget
    assert chosen.valid_ppl == min(r.valid_ppl for r in front if r.recurrent_params <= budget)
    assert pick(records, max_params=budget) == chosen  # the old name, same rule
    with pytest.raises(ValueError, match="recurrent parameters"):
        pick(records, max_size=1)


def cli_args(space: str, size: str | None) -> argparse.Namespace:
    return argparse.Namespace(overrides=[], epochs=None, sampler="tpe", pruner="none", pruner_arg=[], seed=0,
                              address=None, cpus_per_trial=1, gpus_per_trial=0, max_concurrent=None, max_failures=0,
                              storage=None, tracking_uri=None, no_tracking=True, size=size)


def test_cli_size_overrides_the_space(tmp_path):
    import yaml

    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(toy("recurrent")))
    assert search_config(cli_args(str(path), None), space=str(path), trials=1, experiment="e").size_objective == "recurrent"
    assert search_config(cli_args(str(path), "flops"), space=str(path), trials=1, experiment="e").size_objective == "flops"


@pytest.mark.parametrize("where", ["flag", "space"])
def test_unknown_size_is_a_one_line_error(tmp_path, capsys, monkeypatch, where):
    import ray
    import yaml

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init for bad input"))
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(toy("cells" if where == "space" else None)))
    argv = ["search", "--space", str(path), "--trials", "1", "--experiment", "e", "--no-tracking",
            "--storage", str(tmp_path / "runs")] + (["--size", "cells"] if where == "flag" else [])
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("squeezelstm: error:") and "\n" not in err, err
    assert "cells" in err and "size" in err


def test_progress_lines_name_the_search_s_size_objective_first():
    from squeezelstm.search.backends import SearchEvent

    rec = TrialRecord(number=3, family="grouped", params=746_900, recurrent_params=52_224, flops=104_448,
                      status="finished", valid_ppl=41.25, history=[{"epoch": 1, "valid_ppl": 41.25}],
                      size="recurrent")
    line = SearchEvent("finished", 3, rec, 1, {"finished": 1}, 1, None).line()
    assert line.startswith("trial 3 finished: grouped 52,224 recurrent, 746,900 params, 104,448 flops, valid ppl 41.25")
    rec.size = "total"
    assert "grouped 746,900 params, 52,224 recurrent" in SearchEvent("started", 3, rec, 1, {}, 0, None).line()
