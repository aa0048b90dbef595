"""``squeezelstm search`` / ``demo``: bad input is a one-line error (exit 2) before Ray starts."""

from __future__ import annotations

import pytest

from squeezelstm.search.cli import main
from squeezelstm.search.backends import is_uri, resolve_paths

SPACE = """
name: cli-tiny
budget: {max_params: 20000}
data: {corpus: synthetic, vocab_size: 30, train_tokens: 2000, valid_tokens: 400, test_tokens: 400}
model: {cell: lstm, hidden_size: {int: [16, 32], step: 16}, num_layers: 1}
train: {epochs: 1, batch_size: 10, bptt: 10, device: cpu}
"""


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Every error here must come before Ray is started."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called for input that should have been rejected")

    monkeypatch.setattr(ray, "init", refuse)


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def one_line_error(code, err, *fragments):
    assert code == 2, err
    assert err.startswith("squeezelstm: error:") and "\n" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_missing_space_file(capsys, tmp_path):
    code, err = run(capsys, "search", "--space", str(tmp_path / "nope.yaml"), "--trials", "2",
                    "--experiment", "x", "--storage", str(tmp_path), "--no-tracking")
    one_line_error(code, err, "nope.yaml")


@pytest.mark.parametrize("flag, value, name", [
    ("--trials", "0", "trials"),
    ("--cpus-per-trial", "0", "cpus_per_trial"),
    ("--gpus-per-trial", "-0.5", "gpus_per_trial"),
    ("--gpus-per-trial", "1.5", "gpus_per_trial"),
    ("--max-concurrent", "0", "max_concurrent"),
])
def test_bad_numbers_name_the_argument(capsys, tmp_path, space, flag, value, name):
    argv = {"--trials": "2", flag: value}
    code, err = run(capsys, "search", "--space", str(space), "--experiment", "x", "--storage", str(tmp_path),
                    "--no-tracking", *[x for kv in argv.items() for x in kv])
    one_line_error(code, err, name, value)


def test_unwritable_storage(capsys, tmp_path, space):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = run(capsys, "search", "--space", str(space), "--trials", "2", "--experiment", "x",
                    "--storage", str(blocker / "sub"), "--no-tracking")
    one_line_error(code, err, "not writable", "file")


def test_existing_experiment_needs_resume_and_resume_needs_state(capsys, tmp_path, space):
    code, err = run(capsys, "search", "--space", str(space), "--trials", "2", "--experiment", "x",
                    "--storage", str(tmp_path), "--no-tracking", "--resume")
    one_line_error(code, err, "nothing to resume")
    state = resolve_paths("x", tmp_path).state_dir
    state.mkdir(parents=True)
    (state / "records.json").write_text("{}")
    code, err = run(capsys, "search", "--space", str(space), "--trials", "2", "--experiment", "x",
                    "--storage", str(tmp_path), "--no-tracking")
    one_line_error(code, err, "already exists", "--resume")


def test_bad_experiment_name(capsys, tmp_path, space):
    code, err = run(capsys, "search", "--space", str(space), "--trials", "2", "--experiment", "a/b",
                    "--storage", str(tmp_path), "--no-tracking")
    one_line_error(code, err, "experiment")


def test_unknown_sampler_and_pruner(capsys, tmp_path, space):
    code, err = run(capsys, "search", "--space", str(space), "--trials", "2", "--experiment", "s",
                    "--storage", str(tmp_path), "--no-tracking", "--sampler", "bogus")
    one_line_error(code, err, "bogus")
    code, err = run(capsys, "search", "--space", str(space), "--trials", "2", "--experiment", "p",
                    "--storage", str(tmp_path), "--no-tracking", "--pruner", "bogus")
    one_line_error(code, err, "bogus")


def test_bad_pruner_argument(capsys, tmp_path, space):
    code, err = run(capsys, "search", "--space", str(space), "--trials", "2", "--experiment", "q",
                    "--storage", str(tmp_path), "--no-tracking", "--pruner-arg", "noequals")
    one_line_error(code, err, "--pruner-arg", "noequals")


def test_demo_needs_an_existing_output_folder(capsys, tmp_path):
    code, err = run(capsys, "demo", "--out-dir", str(tmp_path / "missing"), "--storage", str(tmp_path))
    one_line_error(code, err, "--out-dir")


def test_missing_required_options_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", "--trials", "2"])
    assert info.value.code == 2


def test_storage_paths():
    local = resolve_paths("exp", "/data/runs")
    assert str(local.experiment_dir) == "/data/runs/exp" and local.ray_storage == "/data/runs/exp/ray"
    remote = resolve_paths("exp", "s3://bucket/runs/")
    assert remote.ray_storage == "s3://bucket/runs/exp" and remote.state_dir.name == "controller"
    assert is_uri("gs://b/x") and not is_uri("file:///tmp/x") and not is_uri("/tmp/x")


def test_unreachable_tracking_server_fails_before_anything_is_created(capsys, tmp_path, space):
    code, err = run(capsys, "search", "--space", str(space), "--trials", "2", "--experiment", "t",
                    "--storage", str(tmp_path), "--tracking-uri", "http://127.0.0.1:9")
    one_line_error(code, err, "127.0.0.1:9")
    assert not resolve_paths("t", tmp_path).state_dir.exists() or not any(resolve_paths("t", tmp_path).state_dir.iterdir())


def test_unreachable_ray_cluster_fails_fast_and_leaves_nothing(capsys, tmp_path, space):
    code, err = run(capsys, "search", "--space", str(space), "--trials", "2", "--experiment", "r",
                    "--storage", str(tmp_path), "--no-tracking", "--address", "127.0.0.1:9")
    one_line_error(code, err, "Ray cluster", "127.0.0.1:9")
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "space.yaml"]
