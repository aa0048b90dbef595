"""SearchConfig: one frozen object per search, validated once, stored with the state, rebuilt from it."""

from __future__ import annotations

import dataclasses
import os
import json

import pytest

from squeezelstm.search.config import SearchConfig
from squeezelstm.search.controller import SearchController
from squeezelstm.search.space import load_space

VOCAB = 200


def test_round_trip_through_plain_json_rebuilds_the_same_search():
    config = SearchConfig(load_space("default", ["train.epochs=2"]), experiment="nb", trials=5, sampler="tpe",
                          sampler_options={"n_startup_trials": 3}, pruner="median",
                          pruner_options={"n_warmup_steps": 1}, seed=7, storage="runs", track=False)
    back = SearchConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert back == config
    assert back.space.trial_epochs() == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    assert config.replace(seed=1).seed == 1 and config.seed == 7


def test_a_space_name_is_loaded_and_defaults_are_the_commands():
    config = SearchConfig("default")
    assert config.space == load_space("default")
    assert (config.sampler, config.pruner, config.seed, config.epochs) == ("ehvi", "pareto", 0, None)


@pytest.mark.parametrize("changes,named", [
    ({"trials": 0}, "trials=0"), ({"epochs": 0}, "epochs=0"), ({"sampler": "cmaes"}, "sampler='cmaes'"),
    ({"pruner": "asha"}, "pruner='asha'"), ({"seed": 1.5}, "seed=1.5"), ({"cpus_per_trial": 0}, "cpus_per_trial=0"),
    ({"gpus_per_trial": 1.5}, "gpus_per_trial=1.5"), ({"max_concurrent": 0}, "max_concurrent=0"),
    ({"max_failures": -1}, "max_failures=-1"), ({"experiment": "a/b"}, "experiment='a/b'"),
    ({"track": "yes"}, "track='yes'"),
])
def test_each_bad_setting_is_one_error_naming_it(changes, named):
    with pytest.raises(ValueError) as info:
        SearchConfig("default", **changes)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_unknown_keys_and_option_types_are_refused():
    with pytest.raises(ValueError, match="unknown search config keys \\['bogus'\\]"):
        SearchConfig.from_dict({**SearchConfig("default").to_dict(), "bogus": 1})
    with pytest.raises(TypeError, match="pruner_options"):
        SearchConfig("default", pruner_options=[("n_warmup_steps", 1)])


def test_the_controller_state_keeps_the_config_that_rebuilds_the_search(tmp_path):
    config = SearchConfig("default", experiment="kept", sampler="random", pruner="none", seed=3)
    SearchController(config, state_dir=tmp_path, vocab_size=VOCAB).suggest()
    stored = json.loads((tmp_path / "controller.json").read_text())["config"]
    assert SearchConfig.from_dict(stored) == config


def test_a_search_leaves_the_process_settings_as_it_found_them(monkeypatch):
    # the runner's quiet Ray/MLflow settings and the controller's quiet Optuna are scoped, not global
    import logging

    import optuna

    from squeezelstm.search.backends import quiet_libraries

    monkeypatch.setenv("RAY_DEDUP_LOGS", "1")
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    logging.getLogger("mlflow").setLevel(logging.DEBUG)
    with quiet_libraries():
        assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1" and os.environ["RAY_DEDUP_LOGS"] == "1"
        assert logging.getLogger("mlflow").level == logging.WARNING
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ and os.environ["RAY_DEDUP_LOGS"] == "1"
    assert logging.getLogger("mlflow").level == logging.DEBUG
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        controller = SearchController(SearchConfig("default", sampler="random", pruner="none"), vocab_size=VOCAB)
        controller.complete(controller.suggest().number, "failed")
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
