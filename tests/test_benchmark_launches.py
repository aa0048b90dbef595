"""``benchmarks/launches.py`` end to end at toy sizes: it counts, its nn.LSTM count is sane, and the
fused-kernel families' counts do not grow with the window (what the launch targets rest on)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_launches_benchmark_counts_a_window(tmp_path):
    out = tmp_path / "launches.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "launches.py"), "--bptt", "3", "6", "--hidden", "8",
                          "--batch", "2", "--only", "grouped4", "routed4_token", "routed4_soft", "--quiet",
                          "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "| nn.LSTM |" in run.stdout
    rows = {r["variant"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["nn.LSTM", "grouped4", "routed4_token", "routed4_soft"]
    lstm = rows["nn.LSTM"]["counts"]
    # forward, the loss, backward: a handful of top-level ops however long the window, no Triton launch
    assert 4 <= lstm["3"]["aten"] <= 40 and lstm["3"] == lstm["6"], lstm
    for name in ("grouped4", "routed4_token"):
        counts = rows[name]["counts"]
        assert counts["3"]["triton"] == 0 and counts["3"]["total"] == counts["6"]["total"], (name, counts)
        assert rows[name]["per_step"] == 0 and rows[name]["meets_target"]
    # soft routing runs Triton kernels (interpreted here): their launches are counted, not their insides
    soft = rows["routed4_soft"]["counts"]
    assert soft["3"]["triton"] >= 1 and soft["3"]["aten"] < 200, soft
