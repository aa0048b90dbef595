"""Config: typed round trips through dicts, YAML and TOML; overrides; errors naming the key."""

import importlib.resources

import pytest

from squeezelstm.trainers import Config, apply_overrides, load_config, save_config, validate
from squeezelstm.trainers.config import DataConfig, ModelConfig, TrainConfig


def test_defaults_round_trip_dict():
    c = Config()
    assert Config.from_dict(c.to_dict()) == c
    assert isinstance(c.to_dict()["train"]["grow_epochs"], list)


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_file_round_trip_keeps_per_layer_lists(tmp_path, suffix):
    c = Config(model=ModelConfig(cell="grouped", groups=(4, 2), num_layers=2, hidden_size=32),
               train=TrainConfig(lr=1e-3, prune_epochs=(2, 3)))
    path = tmp_path / f"run{suffix}"
    save_config(c, path, header_comment="exported\nby a test")
    assert path.read_text().startswith("# exported\n# by a test\n")
    back = load_config(path)
    assert back == c
    assert back.model.groups == (4, 2)


def test_overrides_are_typed():
    c = apply_overrides(Config(), ["model.hidden_size=64", "train.lr=1e-3", "model.tie_weights=true",
                                   "model.cell=grouped", "model.groups=[4, 2]", "model.num_layers=2",
                                   "data.path=null"])
    assert c.model.hidden_size == 64 and isinstance(c.model.hidden_size, int)
    assert c.train.lr == pytest.approx(1e-3)
    assert c.model.tie_weights is True
    assert c.model.groups == (4, 2)
    d = apply_overrides(Config(), {"model.hidden_size": 32, "train.clip": 1})
    assert d.model.hidden_size == 32 and d.train.clip == 1.0 and isinstance(d.train.clip, float)


@pytest.mark.parametrize("override, message", [
    (["model.nope=1"], "model.nope"),
    (["nosection.x=1"], "nosection.x"),
    (["model.hidden_size=abc"], "model.hidden_size"),
    (["model.hidden_size=0"], "model.hidden_size"),
    (["train.optimizer=rmsprop"], "train.optimizer"),
    (["model.tie_weights=maybe"], "model.tie_weights"),
    (["hidden_size"], "section.key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises((ValueError, TypeError), match=message.replace(".", r"\.")):
        apply_overrides(Config(), override)


def test_from_dict_rejects_unknown_and_mistyped():
    with pytest.raises(ValueError, match=r"model\.hiden_size"):
        Config.from_dict({"model": {"hiden_size": 3}})
    with pytest.raises(TypeError, match=r"train\.epochs"):
        Config.from_dict({"train": {"epochs": "many"}})
    with pytest.raises(TypeError, match=r"model\.groups"):
        Config.from_dict({"model": {"groups": ["a"]}})
    with pytest.raises(ValueError, match="section"):
        Config.from_dict({"modle": {}})


def test_load_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.yaml"):
        load_config(tmp_path / "nothere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(bad)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_config(empty)


def test_validate_family_args():
    validate(Config(model=ModelConfig(cell="grouped", groups=(4, 2), num_layers=2, hidden_size=32)))
    with pytest.raises(ValueError, match="rank"):
        validate(Config(model=ModelConfig(cell="lstm", rank=4)))
    with pytest.raises(ValueError, match="groups"):
        validate(Config(model=ModelConfig(cell="grouped", groups=3, hidden_size=32)))
    with pytest.raises(ValueError, match="one value per layer"):
        validate(Config(model=ModelConfig(cell="grouped", groups=(4, 2, 2), num_layers=2, hidden_size=32)))
    with pytest.raises(ValueError, match="model.cell"):
        validate(Config(model=ModelConfig(cell="gru")))
    # a tied decoder of another width is fine: a projection bridges the widths (test_trainers_size.py)
    validate(Config(model=ModelConfig(tie_weights=True, embedding_size=16, hidden_size=32)))
    with pytest.raises(ValueError, match="data.path"):
        validate(Config(data=DataConfig(corpus="ptb")))


@pytest.mark.parametrize("name", ["zaremba_small.yaml", "synthetic_small.yaml"])
def test_shipped_configs_load(name):
    path = importlib.resources.files("squeezelstm.trainers") / "configs" / name
    c = load_config(path)
    validate(c)
    if name.startswith("zaremba"):
        m, t = c.model, c.train
        assert (m.hidden_size, m.num_layers, t.bptt, t.batch_size, t.epochs) == (200, 2, 20, 20, 13)
        # The paper's SGD step (lr 1, clip 5) on a loss summed over bptt steps is, on this trainer's
        # loss averaged over the steps, lr * bptt and clip / bptt.
        assert (t.lr, t.clip) == (1.0 * t.bptt, 5.0 / t.bptt)


def test_override_text_is_parsed_by_field_type():
    c = apply_overrides(Config(), ["data.path=123", "data.corpus=text", "model.cell=routed", "model.routing=soft",
                                   "model.num_cells=2", "train.grow_epochs=[1, 2]"])
    assert c.data.path == "123" and c.model.routing == "soft" and c.train.grow_epochs == (1, 2)
    assert apply_overrides(c, ["data.path=null", "model.routing=none"]).data.path is None


def test_device_names_are_checked():
    from squeezelstm.trainers.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="train.device"):
        resolve_device("cuda:abc")
    with pytest.raises(ValueError, match="train.device"):
        apply_overrides(Config(), ["train.device=tpu"])
