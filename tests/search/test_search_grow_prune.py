"""H-LSTM grow-and-prune searched in a space: target sparsity and phase counts, placed over the trial's epochs."""

import pytest

from squeezelstm.search.space import RandomSuggester, parse_space
from squeezelstm.trainers import Config, model_sizes, validate
from squeezelstm.trainers.growprune import spread_schedule

SPACE = {
    "name": "hlstm",
    "data": {"corpus": "synthetic", "vocab_size": 40},
    "model": {"cell": {"choice": ["lstm", "hidden"]}, "hidden_size": {"int": [16, 64], "step": 16},
              "num_layers": 2},
    "train": {"epochs": 6},
    "families": {"hidden": {"gate_hidden": {"int": [4, 16]}, "prune_sparsity": {"float": [0.5, 0.9]},
                            "grow_phases": {"choice": [0, 1]}, "prune_phases": {"int": [1, 3]}}},
}


def test_spread_schedule_grows_first_and_retrains_last():
    assert spread_schedule(4, 1, 2) == ((1,), (2, 3))
    assert spread_schedule(13, 1, 3) == ((1,), (4, 8, 12))
    assert spread_schedule(6, 0, 1) == ((), (5,))
    assert spread_schedule(3, 2, 2) == ((), (1, 2))  # no room: grow phases go first
    assert spread_schedule(1, 1, 1) == ((), ())
    with pytest.raises(ValueError, match="prune_phases"):
        spread_schedule(4, 1, -1)


def test_space_samples_valid_grow_prune_schedules_with_live_sizes():
    space = parse_space(SPACE)
    rng = RandomSuggester(seed=3)
    seen = 0
    for _ in range(40):
        point = space.sample(rng)
        cfg = validate(Config.from_dict(point.config))
        sizes = model_sizes(cfg, 40)
        if point.family != "hidden":
            assert cfg.train.prune_epochs == () and sizes.live_params == sizes.params
            continue
        seen += 1
        t = cfg.train
        assert 0.5 <= t.prune_sparsity <= 0.9 and point.sampled["train.prune_sparsity"] == t.prune_sparsity
        assert 1 <= len(t.prune_epochs) <= 3 and max(t.prune_epochs) == t.epochs - 1
        assert sizes.live_params < sizes.params and sizes.live_flops < sizes.flops
    assert seen > 5


def test_sparsity_is_checked_in_the_space_file():
    bad = {**SPACE, "families": {"hidden": {"gate_hidden": 4, "prune_sparsity": 1.0}}}
    with pytest.raises(ValueError, match="prune_sparsity"):
        parse_space(bad)
    bad = {**SPACE, "families": {"hidden": {"gate_hidden": 4, "prune_phases": {"float": [0.5, 2.0]}}}}
    with pytest.raises(ValueError, match="prune_phases"):
        parse_space(bad)
