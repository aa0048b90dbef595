"""Search spaces: shipped files, conditional sampling, validity by construction, budget, broken files."""

from __future__ import annotations

import copy
import math

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezelstm.search.space import (
    FAMILY_ARG_NAMES,
    Choice,
    FloatRange,
    IntRange,
    RandomSuggester,
    derive_family_args,
    load_space,
    model_cost,
    nearest_divisor,
    parse_space,
    shipped_spaces,
)
from squeezelstm.spaces import FAMILY_ARGS
from squeezelstm.trainers import Config, validate

SMALL = {
    "name": "small",
    "budget": {"max_params": 60000},
    "data": {"corpus": "synthetic", "vocab_size": 50},
    "model": {
        "cell": {"choice": ["lstm", "factorized", "grouped", "routed", "restricted", "hidden"]},
        "hidden_size": {"int": [12, 96], "step": 6},
        "num_layers": {"choice": [1, 2]},
        "embedding_size": {"int": [10, 40], "step": 5},
        "dropout": {"float": [0.0, 0.5]},
    },
    "train": {"lr": {"float": [1e-4, 1e-2], "log": True}, "epochs": 2},
    "families": {
        "factorized": {"rank_fraction": {"float": [0.01, 2.0], "log": True}},
        "grouped": {"groups": {"int": [1, 16]}},
        "routed": {"num_cells_fraction": {"float": [0.01, 0.5]}, "routing": {"choice": ["hidden", "round_robin", "token", "soft"]}},
        "restricted": {"share": {"float": [0.0, 1.0]}},
        "hidden": {"gate_hidden": {"int": [1, 64], "log": True}},
    },
}


def small(**changes) -> dict:
    raw = copy.deepcopy(SMALL)
    for dotted, value in changes.items():
        node = raw
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return raw


def test_shipped_spaces_load_and_are_listed():
    names = shipped_spaces()
    assert {"default", "ptb", "warandpeace", "warandpeace_small"} <= set(names)
    for name in names:
        space = load_space(name)
        assert set(space.families) == set(FAMILY_ARGS), name
        assert space.max_params is not None
    ptb = load_space("ptb")
    assert ptb.fixed["data"]["corpus"] == "ptb"
    assert ptb.knobs["model.hidden_size"] == IntRange(200, 1500, 100)
    # the CPU-sized War and Peace space trains on a 50k-token prefix of the book (data.max_train_tokens)
    assert Config.from_dict({"data": load_space("warandpeace_small").fixed["data"]}).data.max_train_tokens == 50_000


@pytest.mark.parametrize("name,vocab", [("default", 200), ("ptb", 10000), ("warandpeace", 5000), ("warandpeace_small", 2000)])
def test_every_sample_is_a_valid_config_and_conditional(name, vocab):
    space = load_space(name)
    rng = RandomSuggester(seed=7)
    seen = set()
    for _ in range(150):
        rng.params.clear()
        point = space.sample(rng)
        cfg = Config.from_dict(point.config)
        if cfg.data.corpus == "synthetic":
            validate(cfg)  # text corpora also need data.path, which the user gives
        else:
            validate(Config.from_dict({**point.config, "data": {**point.config["data"], "path": "x"}}))
        params, flops = model_cost(point.config, vocab)
        assert params > 0 and flops > 0
        fam = point.family
        seen.add(fam)
        own = set(FAMILY_ARGS[fam])
        # conditional: only the family's own arguments are set and sampled
        assert {k for k in FAMILY_ARG_NAMES if point.config["model"].get(k) is not None} == own
        assert {k.split(".", 1)[1] for k in point.sampled if k.split(".", 1)[1] in FAMILY_ARG_NAMES} == own
        # the suggester was asked only about this family's own names
        asked = {key.split(".", 1)[0] for key in rng.params} - {"model", "train", "data"}
        assert asked <= {fam}
    assert seen == set(FAMILY_ARGS)


def test_random_space_with_awkward_sizes_is_valid_by_construction():
    # hidden sizes step 6 and embedding step 5: most sampled group counts do not divide; they are mapped
    space = parse_space(small())
    rng = RandomSuggester(seed=3)
    mapped = 0
    for _ in range(300):
        point = space.sample(rng)
        validate(Config.from_dict(point.config))
        m = point.config["model"]
        if m["cell"] == "grouped":
            assert m["hidden_size"] % m["groups"] == 0 and m["embedding_size"] % m["groups"] == 0
            mapped += rng.params["grouped.groups"] != m["groups"]
        if m["cell"] == "routed":
            assert m["hidden_size"] % m["num_cells"] == 0
        if m["cell"] == "factorized":
            assert 1 <= m["rank"] <= min(4 * m["hidden_size"], min(m["embedding_size"], m["hidden_size"]) + m["hidden_size"])
        rng.params.clear()
    assert mapped > 0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 400), st.floats(0.01, 500))
def test_nearest_divisor_is_a_divisor_and_nearest_in_log_ratio(n, target):
    d = nearest_divisor(n, target)
    assert n % d == 0
    best = min(abs(math.log(k / target)) for k in range(1, n + 1) if n % k == 0)
    assert abs(math.log(d / target)) == pytest.approx(best)


def test_derive_family_args_fraction_forms():
    assert derive_family_args("factorized", {"rank_fraction": 0.25}, 64, 128, 1) == {"rank": 32}
    assert derive_family_args("factorized", {"rank": 10_000}, 8, 16, 2) == {"rank": 24}  # min(4n, m + n) over layers
    assert derive_family_args("grouped", {"groups_fraction": 1 / 32}, 64, 128, 1) == {"groups": 4}
    assert derive_family_args("grouped", {"groups": 8}, 12, 96, 1) == {"groups": 6}  # gcd 12: 6 is nearest to 8
    assert derive_family_args("routed", {"num_cells": 3, "routing": "soft"}, 32, 64, 1) == {"num_cells": 4, "routing": "soft"}
    assert derive_family_args("hidden", {"gate_hidden_fraction": 0.1}, 32, 64, 1) == {"gate_hidden": 6}


def test_tied_weights_keep_the_sampled_embedding_size():
    # a tied decoder of another width gets a projection (trainers.model), so nothing is forced
    space = parse_space(small(model__tie_weights=True))
    rng = RandomSuggester(seed=0)
    widths = set()
    for _ in range(100):
        point = space.sample(rng)
        validate(Config.from_dict(point.config))
        assert point.config["model"]["embedding_size"] == point.sampled["model.embedding_size"]
        widths.add(point.config["model"]["embedding_size"] == point.config["model"]["hidden_size"])
    assert widths == {False, True} or widths == {False}


def test_cheapest_is_the_minimum_over_a_dense_grid():
    space = parse_space(small())

    def measure(config):
        return model_cost(config, 50)

    params, flops, config = space.cheapest(measure)
    rng = RandomSuggester(seed=11)
    sampled = [measure(space.sample(rng).config)[0] for _ in range(200)]
    assert params <= min(sampled)
    assert config["model"]["hidden_size"] == 12 and config["model"]["num_layers"] == 1


def test_budget_below_the_smallest_configuration_is_one_line_error():
    space = parse_space(small(budget={"max_params": 100}))
    with pytest.raises(ValueError, match=r"budget max_params=100 is below the smallest configuration of this space \(\d+ params\)") as err:
        space.check_budget(lambda c: model_cost(c, 50))
    assert "\n" not in str(err.value)
    flops_space = parse_space(small(budget={"max_flops": 10}))
    with pytest.raises(ValueError, match="max_flops=10"):
        flops_space.check_budget(lambda c: model_cost(c, 50))


def test_over_budget_constraint_values():
    space = parse_space(small(budget={"max_params": 1000, "max_flops": 500}))
    assert space.over_budget(1500, 250) == {"max_params": 0.5, "max_flops": -0.5}
    assert parse_space(small(budget=None)).over_budget(10**9, 10**9) == {}
    assert space.exceeds_budget(1500, 250) and not space.exceeds_budget(1000, 250)
    assert not parse_space(small(budget=None)).exceeds_budget(10**9, 10**9)


BROKEN = [
    (dict(colour="red"), "colour: unknown key"),
    (dict(model__colour=3), "model.colour"),
    (dict(train__lrate={"float": [0.1, 1.0]}), "train.lrate"),
    (dict(model__hidden_size={"choice": []}), "model.hidden_size: choice must be a non-empty list"),
    (dict(model__hidden_size={"int": [64, 32]}), "model.hidden_size: min > max"),
    (dict(train__lr={"float": [0.0, 1.0], "log": True}), "train.lr: a log range needs low > 0"),
    (dict(model__hidden_size={"float": [16.0, 32.0]}), "model.hidden_size: must be an int"),
    (dict(model__hidden_size={"int": [16.5, 32]}), "model.hidden_size: int range bounds must be integers"),
    (dict(model__hidden_size={"int": [16, 32], "step": 4, "log": True}), "model.hidden_size: a log int range cannot have step"),
    (dict(model__hidden_size={"int": [16, 32], "stride": 4}), "model.hidden_size: unknown field 'stride'"),
    (dict(model__hidden_size={"int": [16, 30], "step": 8}), "model.hidden_size: high - low must be a multiple of step=8"),
    (dict(model__cell={"choice": ["lstm", "gru"]}), "model.cell: unknown family 'gru'"),
    (dict(model__cell=None), "model.cell: is required"),
    (dict(model__rank=4), "model.rank: family arguments go under families"),
    (dict(families__grouped__groups={"choice": ["four"]}), "families.grouped.groups: must be positive integers"),
    (dict(families__grouped__groups=None), "families.grouped.groups: is required for family grouped"),
    (dict(families__grouped__rank=3), "families.grouped.rank: unknown key for family grouped"),
    (dict(families__gru={}), "families.gru: unknown family"),
    (dict(families__routed__routing={"choice": ["hidden", "bogus"]}), "families.routed.routing: routing must be one of"),
    (dict(families__restricted__share={"float": [0.0, 1.5]}), "families.restricted.share: share must be in [0, 1]"),
    (dict(families__factorized__rank=8), "families.factorized.rank_fraction: give only one of rank, rank_fraction"),
    (dict(data__vocab_size={"choice": [50, 100]}), "data.vocab_size: data settings are fixed"),
    (dict(budget={"max_params": -5}), "budget.max_params: must be a positive integer"),
    (dict(budget={"max_parameters": 5}), "budget.max_parameters: unknown key"),
    (dict(train__epochs="many"), "train.epochs"),
]


@pytest.mark.parametrize("changes,message", BROKEN, ids=[m.split(":")[0] for _, m in BROKEN])
def test_broken_space_is_one_line_error_naming_the_key(changes, message):
    with pytest.raises(ValueError) as err:
        parse_space(small(**changes), source="bad.yaml")
    text = str(err.value)
    assert message in text, text
    assert "\n" not in text and "bad.yaml" in text


def test_family_not_searched_is_an_error():
    raw = small(model__cell={"choice": ["lstm", "grouped"]})
    with pytest.raises(ValueError, match="families.factorized: family is not searched"):
        parse_space(raw)


def test_load_space_from_yaml_and_toml_files(tmp_path):
    raw = small()
    yml = tmp_path / "s.yaml"
    yml.write_text(yaml.safe_dump(raw, sort_keys=False))
    from_yaml = load_space(yml)
    toml = tmp_path / "s.toml"
    toml.write_text(
        'name = "small"\n[budget]\nmax_params = 60000\n[data]\ncorpus = "synthetic"\nvocab_size = 50\n'
        '[model]\ncell = {choice = ["lstm", "factorized", "grouped", "routed", "restricted", "hidden"]}\n'
        'hidden_size = {int = [12, 96], step = 6}\nnum_layers = {choice = [1, 2]}\n'
        'embedding_size = {int = [10, 40], step = 5}\ndropout = {float = [0.0, 0.5]}\n'
        '[train]\nlr = {float = [1e-4, 1e-2], log = true}\nepochs = 2\n'
        '[families.factorized]\nrank_fraction = {float = [0.01, 2.0], log = true}\n'
        '[families.grouped]\ngroups = {int = [1, 16]}\n'
        '[families.routed]\nnum_cells_fraction = {float = [0.01, 0.5]}\nrouting = {choice = ["hidden", "round_robin", "token", "soft"]}\n'
        '[families.restricted]\nshare = {float = [0.0, 1.0]}\n[families.hidden]\ngate_hidden = {int = [1, 64], log = true}\n'
    )
    from_toml = load_space(toml)
    assert from_toml.to_dict() == from_yaml.to_dict()
    a, b = RandomSuggester(5), RandomSuggester(5)
    assert [from_yaml.sample(a).config for _ in range(5)] == [from_toml.sample(b).config for _ in range(5)]


def test_load_space_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no space file or shipped space named 'nope'"):
        load_space("nope")
    with pytest.raises(FileNotFoundError, match="space file not found"):
        load_space(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML") as err:
        load_space(bad)
    assert "\n" not in str(err.value)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValueError, match="file is empty"):
        load_space(empty)


def test_overrides_set_fixed_values_and_knobs():
    space = load_space("ptb", overrides=["data.path=/data/ptb", "model.hidden_size={int: [200, 400], step: 100}"])
    assert space.fixed["data"]["path"] == "/data/ptb"
    assert space.knobs["model.hidden_size"] == IntRange(200, 400, 100)
    space = load_space("default", overrides={"budget.max_params": 50000, "families.grouped.groups": {"choice": [2]}})
    assert space.max_params == 50000 and space.family_knobs["grouped"]["groups"] == Choice((2,))
    with pytest.raises(ValueError, match="cannot override 'hidden_size'"):
        load_space("default", overrides=["hidden_size=3"])


def test_to_dict_round_trips_and_epochs_override():
    space = load_space("default")
    again = parse_space(space.to_dict(), source=space.source)
    assert again.to_dict() == space.to_dict()
    point = space.sample(RandomSuggester(0), epochs=2)
    assert point.config["train"]["epochs"] == 2


def test_random_suggester_respects_bounds_and_seed():
    a, b = RandomSuggester(1), RandomSuggester(1)
    for _ in range(200):
        x = a.suggest_int("i", 3, 17, step=2)
        assert x == b.suggest_int("i", 3, 17, step=2) and 3 <= x <= 17 and (x - 3) % 2 == 0
        y = a.suggest_int("j", 1, 100, log=True)
        assert y == b.suggest_int("j", 1, 100, log=True) and 1 <= y <= 100
        z = a.suggest_float("f", 1e-4, 1e-1, log=True)
        assert z == b.suggest_float("f", 1e-4, 1e-1, log=True) and 1e-4 <= z <= 1e-1
    assert IntRange(3, 17, 2).candidates() == (3, 17) and FloatRange(0.5, 0.5).candidates() == (0.5,)


@st.composite
def random_space(draw):
    """A random but well-formed space: odd steps, fractions and absolute family arguments mixed."""
    h_step = draw(st.integers(1, 12))
    h_low = draw(st.integers(1, 40))
    h_high = h_low + h_step * draw(st.integers(0, 8))
    e_step = draw(st.integers(1, 9))
    e_low = draw(st.integers(1, 30))
    e_high = e_low + e_step * draw(st.integers(0, 6))
    absolute = draw(st.booleans())
    families = {
        "factorized": {"rank": {"int": [1, draw(st.integers(1, 300))]}} if absolute
        else {"rank_fraction": {"float": [0.01, draw(st.floats(0.02, 4.0))]}},
        "grouped": {"groups": {"choice": draw(st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True))}} if absolute
        else {"groups_fraction": {"float": [0.01, draw(st.floats(0.02, 1.0))]}},
        "routed": {"num_cells": {"int": [1, draw(st.integers(1, 16))]}, "routing": {"choice": ["hidden", "token"]}},
        "restricted": {"share": {"float": [0.0, draw(st.floats(0.0, 1.0))]}},
        "hidden": {"gate_hidden_fraction": {"float": [0.01, draw(st.floats(0.02, 2.0))]}},
    }
    return {
        "name": "random",
        "data": {"corpus": "synthetic", "vocab_size": 20},
        "model": {"cell": {"choice": list(families)}, "hidden_size": {"int": [h_low, h_high], "step": h_step},
                  "num_layers": {"choice": [1, draw(st.integers(2, 3))]}, "embedding_size": {"int": [e_low, e_high], "step": e_step},
                  "tie_weights": draw(st.booleans())},
        "families": families,
    }


@settings(max_examples=12, deadline=None)
@given(random_space(), st.integers(0, 2**16))
def test_random_spaces_only_ever_sample_valid_configs(raw, seed):
    space = parse_space(raw)
    rng = RandomSuggester(seed)
    cheapest, _, _ = space.cheapest(lambda c: model_cost(c, 20))
    for _ in range(12):
        point = space.sample(rng)
        validate(Config.from_dict(point.config))
        assert model_cost(point.config, 20)[0] >= cheapest


def test_local_suggester_stays_near_its_base_and_on_the_space_grid():
    from squeezelstm.search.space import LocalSuggester

    space = parse_space(small())
    dists = {**space.knobs, "model.cell": Choice(tuple(space.families))}
    base_point = RandomSuggester(seed=5)
    space.sample(base_point)
    base = dict(base_point.params)
    changed_counts = []
    for seed in range(300):
        s = LocalSuggester(base, seed)
        point = space.sample(s)
        validate(Config.from_dict(point.config))  # a mutation is a valid config by construction
        changed = [k for k in base if s.params.get(k) != base[k]]
        assert changed, "a mutation never returns its base unchanged"
        changed_counts.append(len(changed))
        for key, dist in dists.items():
            value = s.params[key]
            if isinstance(dist, Choice):
                assert value in dist.choices
            elif isinstance(dist, IntRange):
                assert dist.low <= value <= dist.high and (value - dist.low) % dist.step == 0
            else:
                assert dist.low <= value <= dist.high
    # about two of the ~7 parameters move (one forced, the rest each with probability 2/7), not all of them
    assert 1.5 <= sum(changed_counts) / len(changed_counts) <= 3.5
    assert max(changed_counts) < len(base)
    # a numeric step is local: the learning rate mostly stays within a factor of 3 of its base
    lrs = [LocalSuggester(base, seed, p_change=1.0) for seed in range(200)]
    ratios = []
    for s in lrs:
        space.sample(s)
        ratios.append(abs(math.log(s.params["train.lr"] / base["train.lr"])))
    assert sorted(ratios)[len(ratios) // 2] < math.log(3.0)
    assert max(ratios) > 0
