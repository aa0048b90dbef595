"""``benchmarks/cells.py`` end to end at toy sizes: the speed table and the packed-trials measurement.

Speed itself is measured by the benchmark, not here; this checks that its code paths run and that
what they write is consistent (every packed trial did work, speedups are relative to the first k).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_cells_benchmark_runs_and_packs_trials_as_separate_processes(tmp_path):
    out = tmp_path / "cells.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cells.py"), "--hidden", "32", "--batch", "4",
                          "--bptt", "5", "--rounds", "1", "--min-time", "0.01", "--threads", "1",
                          "--only", "grouped4", "factorized_n/4", "--pack", "1", "2", "--pack-hidden", "32",
                          "--pack-seconds", "0.5", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    names = [r["variant"] for r in result["rows"]]
    assert names[0] == "nn.LSTM" and {"grouped4", "factorized_n/4"} <= set(names), names
    for row in result["rows"]:
        assert row["tokens_per_s"] > 0 and row["macs_per_token"] > 0
    packing = result["packing"]
    assert [(p["cell"], p["trials"]) for p in packing] == [("lstm", 1), ("lstm", 2), ("grouped", 1), ("grouped", 2)]
    for p in packing:
        assert len(p["per_trial_windows"]) == p["trials"] and all(w > 0 for w in p["per_trial_windows"])
        assert p["windows"] == sum(p["per_trial_windows"])
        elapsed = p["windows"] * 5 * 32 / p["aggregate_tokens_per_s"]  # bptt 5, batch 32 windows over the timed span
        assert 0.5 <= elapsed < 5.0
    assert packing[0]["speedup"] == 1.0 and packing[2]["speedup"] == 1.0
    assert "packing lstm" in run.stdout


def test_grouped_x_side_benchmark_runs_both_paths_and_reports_the_layers_choice(tmp_path):
    from squeezelstm.spaces.grouped import FUSED_X_MAX_WIDTH

    out = tmp_path / "xside.json"
    wide = 4 * (FUSED_X_MAX_WIDTH + 4)  # one size on each side of the threshold, g = 4
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "grouped_x_side.py"), "--hidden", "16", str(wide),
                          "--batch", "2", "--bptt", "3", "--rounds", "1", "--threads", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["hidden"], r["chosen"]) for r in rows] == [(16, "in_loop"), (wide, "window_wide")]
    for r in rows:
        assert r["ms_in_loop"] > 0 and r["ms_window_wide"] > 0 and r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
