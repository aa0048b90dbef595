"""The shipped spaces for real corpora (ptb, ptb_small, wikitext2): tied, regularised, valid at every sample."""

import pytest

from squeezelstm.search.space import RandomSuggester, load_space, model_cost, shipped_spaces
from squeezelstm.trainers import Config, build_model, model_sizes, validate


@pytest.mark.parametrize("name,vocab", [("ptb", 10000), ("ptb_small", 8000), ("wikitext2", 33278)])
def test_corpus_spaces_sample_tied_regularised_valid_configs(name, vocab):
    assert name in shipped_spaces()
    space = load_space(name)
    rng = RandomSuggester(seed=11)
    families, untied_widths, pruned = set(), 0, 0
    for _ in range(60):
        rng.params.clear()
        point = space.sample(rng)
        raw = {**point.config, "data": {**point.config["data"], "path": "x"}}
        cfg = validate(Config.from_dict(raw))
        m, t = cfg.model, cfg.train
        assert m.tie_weights and m.locked_dropout and 0.0 <= m.weight_drop <= 0.5
        assert 32 <= m.hidden_size <= 1500
        untied_widths += m.input_size != m.hidden_size
        sizes = model_sizes(cfg, vocab)
        assert (sizes.params, sizes.flops) == model_cost(point.config, vocab)
        pruned += sizes.live_params < sizes.params
        families.add(point.family)
    assert families == {"lstm", "factorized", "grouped", "routed", "restricted", "hidden"}
    assert untied_widths > 0 and pruned > 0  # the projection and grow-and-prune are both exercised


def test_ptb_small_trains_on_a_prefix():
    space = load_space("ptb_small")
    data = Config.from_dict({"data": space.fixed["data"]}).data
    assert data.corpus == "ptb" and data.max_train_tokens == 100_000
    assert space.fixed["train"]["epochs"] == 4


def test_a_small_point_builds_and_counts_exactly():
    space = load_space("ptb_small")
    point = space.sample(RandomSuggester(seed=2))
    cfg = Config.from_dict({**point.config, "data": {"corpus": "synthetic", "vocab_size": 500}})
    model = build_model(cfg, 500)
    assert sum(p.numel() for p in model.parameters()) == model_sizes(cfg, 500).params
