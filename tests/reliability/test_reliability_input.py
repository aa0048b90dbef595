"""Bad input of every kind: one line on stderr naming the problem, a non-zero exit, no traceback, nothing half-written.

Space files (unknown keys, empty choices, min > max, a budget nothing meets), ``train`` configs with
wrong types, missing or empty corpora, a checkpoint of another config, tampered checkpoints (no code
runs while loading them), invalid command-line values, full or unusable storage. Most cases call
the CLI in-process (``main([...])``); one runs the installed ``squeezelstm`` script to show the
real process prints no traceback.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from squeezelstm.search.cli import main

SPACE = (Path(__file__).parents[1] / "data" / "reliability_input.yaml").read_text()  # a tiny space for fast Ray searches

CONFIG = """
data: {corpus: synthetic, vocab_size: 30, train_tokens: 2000, valid_tokens: 400, test_tokens: 400}
model: {cell: lstm, hidden_size: 16, num_layers: 1}
train: {epochs: 1, batch_size: 10, bptt: 10, device: cpu}
"""


def one_line_error(capsys, argv, *fragments, code=2):
    """Run the CLI in-process; it must fail with exactly one stderr line containing ``fragments``."""
    try:
        got = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        got = exc.code
    out = capsys.readouterr()
    err = out.err.strip()
    assert got == code, (got, err)
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("squeezelstm"), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    """Work in an empty folder, and refuse to start Ray: all of this must be caught before."""
    monkeypatch.chdir(tmp_path)
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called for input that should have been rejected")

    monkeypatch.setattr(ray, "init", refuse)


def nothing_written(tmp_path: Path, experiment: str = "x") -> None:
    """No file of the experiment exists (so the same command, corrected, starts afresh without --resume)."""
    files = [p for p in (tmp_path / "runs" / experiment).rglob("*") if not p.is_dir()]
    assert not files, files
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "squeezelstm_runs").exists()


# ---------------------------------------------------------------------------------------------
# Space files


@pytest.mark.parametrize("old, new, fragments", [
    ("  num_layers: 1", "  num_layers: 1\n  hiden_size: 32", ["model.hiden_size", "unknown"]),
    ("families:", "extras: {a: 1}\nfamilies:", ["extras", "unknown key"]),
    ("grouped: {groups: {choice: [2, 4]}}", "grouped: {groupz: {choice: [2, 4]}}", ["groupz"]),
    ("choice: [lstm, grouped]", "choice: []", ["model.cell", "non-empty"]),
    ("[16, 32]", "[32, 16]", ["model.hidden_size", "min > max"]),
    ("[0.001, 0.01]", "[0.01, 0.001]", ["train.lr", "min > max"]),
    ("max_params: 20000", "max_params: 10", ["max_params=10", "smallest configuration"]),
    ("cell: {choice: [lstm, grouped]}", "cell: {choice: [lstm, squeezed]}", ["squeezed"]),
    ("hidden_size: {int: [16, 32], step: 16}", "hidden_size: {int: [16, 32], step: 0}", ["model.hidden_size", "step"]),
    ("epochs: 1", "epochs: one", ["train.epochs"]),
    ("budget: {max_params: 20000}", "budget: [1, 2", ["space.yaml"]),
])
def test_malformed_or_contradictory_space_file(capsys, tmp_path, old, new, fragments):
    assert old in SPACE
    (tmp_path / "space.yaml").write_text(SPACE.replace(old, new))
    one_line_error(capsys, ["search", "--space", tmp_path / "space.yaml", "--trials", 2, "--experiment", "x",
                            "--storage", tmp_path / "runs", "--no-tracking"], *fragments)
    nothing_written(tmp_path)


@pytest.mark.parametrize("content, fragment", [("", "empty"), ("- just\n- a list\n", "space.yaml")])
def test_empty_or_non_mapping_space_file(capsys, tmp_path, content, fragment):
    (tmp_path / "space.yaml").write_text(content)
    one_line_error(capsys, ["search", "--space", tmp_path / "space.yaml", "--trials", 2, "--experiment", "x",
                            "--storage", tmp_path / "runs", "--no-tracking"], fragment)
    nothing_written(tmp_path)


def test_space_path_is_a_folder(capsys, tmp_path):
    (tmp_path / "space.yaml").mkdir()
    one_line_error(capsys, ["search", "--space", tmp_path / "space.yaml", "--trials", 2, "--experiment", "x",
                            "--storage", tmp_path / "runs", "--no-tracking"], "space.yaml")


# ---------------------------------------------------------------------------------------------
# Command-line values (argparse's own errors are one line too)


@pytest.mark.parametrize("argv, fragments", [
    (["search", "--trials", "many"], ["--trials", "many"]),
    (["search", "--max-failures", "-1"], ["max_failures", "-1"]),
    (["search", "--max-failures", "1.5"], ["--max-failures", "1.5"]),
    (["search", "--epochs", "0"], ["epochs"]),
    (["search", "--seed", "x"], ["--seed", "x"]),
    (["search", "--bogus-flag", "1"], ["--bogus-flag"]),
    (["frobnicate"], ["frobnicate"]),
    (["export", "--max-params", "10", "--max-ppl", "3", "--out", "o.yaml"], ["--max-ppl", "--max-params"]),
    (["train"], ["config"]),
])
def test_invalid_cli_values(capsys, tmp_path, argv, fragments):
    (tmp_path / "space.yaml").write_text(SPACE)
    base = {"--space": tmp_path / "space.yaml", "--trials": 2, "--experiment": "x",
            "--storage": tmp_path / "runs", "--no-tracking": None}
    if argv[0] == "search":
        given = set(argv[1::2])
        for flag, value in base.items():
            if flag not in given:
                argv = argv + ([flag] if value is None else [flag, value])
    elif argv[0] == "export":
        argv = argv + ["--experiment", "x"]
    one_line_error(capsys, argv, *fragments)
    nothing_written(tmp_path)


def test_unreachable_ray_cluster(capsys, tmp_path, monkeypatch):
    """``--address`` where no cluster listens: a one-line error in seconds, no half-made experiment."""
    monkeypatch.undo()  # ray.init may run: the check must come first and fail
    monkeypatch.chdir(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "space.yaml").write_text(SPACE)
    one_line_error(capsys, ["search", "--space", tmp_path / "space.yaml", "--trials", 2, "--experiment", "x",
                            "--storage", tmp_path / "runs", "--no-tracking", "--address", f"127.0.0.1:{port}"],
                   f"127.0.0.1:{port}")
    nothing_written(tmp_path)


# ---------------------------------------------------------------------------------------------
# Storage


def test_storage_in_a_read_only_system_folder(capsys, tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    one_line_error(capsys, ["search", "--space", tmp_path / "space.yaml", "--trials", 2, "--experiment", "x",
                            "--storage", "/proc/squeezelstm", "--no-tracking"], "storage", "/proc/squeezelstm")


def test_full_storage_is_an_error_at_start(capsys, tmp_path):
    """A full disk (a tiny tmpfs filled up) is reported before any trial, not mid-search."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # full
        finally:
            os.close(fd)
        (tmp_path / "space.yaml").write_text(SPACE)
        one_line_error(capsys, ["search", "--space", tmp_path / "space.yaml", "--trials", 2, "--experiment", "x",
                                "--storage", mnt / "runs", "--no-tracking"], "storage", "not writable")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# ---------------------------------------------------------------------------------------------
# ``train`` configs, corpora, checkpoints


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.mark.parametrize("old, new, fragments", [
    ("hidden_size: 16", "hidden_size: sixteen", ["model.hidden_size", "int"]),
    ("hidden_size: 16", "hidden_size: 16.5", ["model.hidden_size"]),
    ("epochs: 1", "epochs: [1]", ["train.epochs"]),
    ("device: cpu", "device: 7", ["train.device"]),
    ("num_layers: 1", "num_layers: 1, layers: 2", ["model.layers"]),
    ("cell: lstm", "cell: gru", ["gru"]),
    ("num_layers: 1", "num_layers: 0", ["model.num_layers"]),
])
def test_train_config_with_wrong_values(capsys, tmp_path, config, old, new, fragments):
    config.write_text(CONFIG.replace(old, new))
    one_line_error(capsys, ["train", config, "--quiet", "--checkpoint-dir", tmp_path / "ck"], *fragments)
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("override, fragments", [
    ("model.hidden_size=abc", ["model.hidden_size", "abc"]),
    ("train.lr=fast", ["train.lr", "fast"]),
    ("model.bogus=1", ["model.bogus"]),
    ("hidden_size", ["hidden_size"]),
])
def test_train_overrides_with_wrong_types(capsys, config, override, fragments):
    one_line_error(capsys, ["train", config, "--quiet", "--set", override], *fragments)


@pytest.mark.parametrize("setup, fragments", [
    ("missing", ["not found"]),
    ("empty-file", ["empty"]),
    ("empty-folder", ["no text files"]),
])
def test_missing_or_empty_corpus(capsys, tmp_path, config, setup, fragments):
    path = tmp_path / "corpus.txt"
    if setup == "empty-file":
        path.write_text("")
    elif setup == "empty-folder":
        path = tmp_path / "corpus"
        path.mkdir()
    config.write_text(f"data: {{corpus: text, path: {path}}}\nmodel: {{cell: lstm, hidden_size: 16}}\n"
                      "train: {epochs: 1, device: cpu}\n")
    one_line_error(capsys, ["train", config, "--quiet"], str(path), *fragments)


@pytest.mark.parametrize("text", ["", "not: [yaml"])
def test_empty_or_broken_config_file(capsys, config, text):
    config.write_text(text)
    one_line_error(capsys, ["train", config, "--quiet"], "config.yaml")


def test_missing_config_file(capsys, tmp_path):
    one_line_error(capsys, ["train", tmp_path / "nope.yaml"], "nope.yaml", "not found")


def test_checkpoint_from_another_config_is_refused_and_kept(capsys, tmp_path, config):
    ck = tmp_path / "ck"
    assert main(["train", str(config), "--quiet", "--checkpoint-dir", str(ck)]) == 0
    capsys.readouterr()
    before = (ck / "checkpoint.pt").read_bytes()
    one_line_error(capsys, ["train", config, "--quiet", "--checkpoint-dir", ck, "--set", "model.hidden_size=32"],
                   "different config", "model.hidden_size")
    assert (ck / "checkpoint.pt").read_bytes() == before  # nothing overwritten


class _Payload:
    """Unpickling this runs a shell command: a tampered checkpoint must never get that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["pickle", "torch.save", "garbage", "empty", "truncated"])
def test_tampered_checkpoint_runs_no_code(capsys, tmp_path, config, how):
    import torch

    ck = tmp_path / "ck"
    ck.mkdir()
    target = ck / "checkpoint.pt"
    marker = tmp_path / "PWNED"
    if how == "pickle":
        target.write_bytes(pickle.dumps({"format": "squeezelstm-checkpoint", "model": _Payload(marker)}))
    elif how == "torch.save":
        torch.save({"format": "squeezelstm-checkpoint", "version": 1, "model": _Payload(marker)}, target)
    elif how == "garbage":
        target.write_bytes(os.urandom(256))
    elif how == "truncated":
        assert main(["train", str(config), "--quiet", "--checkpoint-dir", str(tmp_path / "good")]) == 0
        capsys.readouterr()
        data = (tmp_path / "good" / "checkpoint.pt").read_bytes()
        target.write_bytes(data[: len(data) // 2])
    else:
        target.write_bytes(b"")
    before = target.read_bytes()
    one_line_error(capsys, ["train", config, "--quiet", "--checkpoint-dir", ck], "checkpoint.pt")
    assert not marker.exists(), "loading a checkpoint ran code from it"
    assert target.read_bytes() == before


def test_checkpoint_dir_that_is_a_file(capsys, tmp_path, config):
    blocker = tmp_path / "ck"
    blocker.write_text("a file, not a folder")
    one_line_error(capsys, ["train", config, "--quiet", "--checkpoint-dir", blocker], str(blocker))
    assert blocker.read_text() == "a file, not a folder"


def test_export_of_an_unknown_experiment(capsys, tmp_path):
    err = one_line_error(capsys, ["export", "--experiment", "ghost", "--storage", tmp_path / "runs",
                                  "--out", tmp_path / "o.yaml"])
    assert "ghost" in err or "does not exist" in err
    assert not (tmp_path / "o.yaml").exists()


def test_real_process_prints_one_line_and_no_traceback(tmp_path):
    """The installed script, in its own process: exit 2, one stderr line, no traceback, empty stdout."""
    script = Path(sys.executable).with_name("squeezelstm")
    if not script.exists():
        pytest.skip("squeezelstm script not installed next to this Python")
    (tmp_path / "space.yaml").write_text(SPACE.replace("[16, 32]", "[32, 16]"))
    done = subprocess.run([str(script), "search", "--space", str(tmp_path / "space.yaml"), "--trials", "2",
                           "--experiment", "x", "--storage", str(tmp_path / "runs"), "--no-tracking"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "min > max" in lines[0] and "Traceback" not in done.stderr, done.stderr
    nothing_written(tmp_path)
