"""The HTML report: self-contained, and drawn by a real browser (headless Chromium) without JavaScript errors."""

from __future__ import annotations

import random
import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest

from squeezelstm.dashboards import write_report
from squeezelstm.search.pareto import TrialRecord, pareto_front


def made_up_search(n: int = 24, seed: int = 0) -> list[TrialRecord]:
    rng = random.Random(seed)
    out = []
    for number in range(n):
        family = rng.choice(["lstm", "factorized", "grouped", "routed"])
        status = rng.choice(["finished", "finished", "pruned", "failed"])
        ppl, history = 300.0, []
        for epoch in range(1, (4 if status == "finished" else 2) + 1):
            ppl *= rng.uniform(0.6, 0.9)
            history.append({"epoch": epoch, "valid_ppl": ppl})
        if status == "failed":
            history = []
        sampled = {"model.cell": family, "model.hidden_size": rng.choice([32, 64, 128])}
        if family == "factorized":
            sampled["model.rank"] = rng.choice([4, 8])
        out.append(TrialRecord(number=number, family=family, params=rng.randint(5_000, 500_000), status=status,
                               valid_ppl=ppl if history else None, test_ppl=ppl * 1.05 if history else None,
                               config={"model": {k.split(".")[1]: v for k, v in sampled.items()}}, sampled=sampled,
                               history=history, started_at=100.0 * number, ended_at=100.0 * number + 60))
    return out


def test_report_is_one_self_contained_page(tmp_path):
    records = made_up_search()
    path = write_report(records, tmp_path / "r.html", title="search <small> & friends", optimal_ppl=25.0)
    text = path.read_text()
    assert path == tmp_path / "r.html"
    assert "search &lt;small&gt; &amp; friends" in text
    # plotly.js inlined exactly once, nothing fetched from the network
    assert text.count("plotly.js v") >= 1 and len(text) > 1_000_000
    assert not re.search(r"<script[^>]+src=", text)
    assert len(re.findall(r'id="figure-\d"', text)) == 5
    for r in pareto_front(records):
        assert f"<td class=\"num\">{r.number}</td>" in text
    with pytest.raises(FileNotFoundError):
        write_report(records, tmp_path / "missing" / "r.html", title="x")
    empty = write_report([], tmp_path / "empty.html", title="nothing yet")
    assert "the front is empty" in empty.read_text()


# ---------------------------------------------------------------- headless Chromium
def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def decode_png(data: bytes) -> np.ndarray:
    """(H, W, C) uint8 pixels of an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes); no Pillow needed."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unsupported PNG {header}"
    bpp = 3 if color == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:]
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # Sub: running sum along each channel
            row = np.cumsum(line.reshape(width, bpp).astype(np.uint32), axis=0).astype(np.uint8).reshape(stride)
        elif kind == 2:  # Up
            row = line + prior
        else:  # Average / Paeth depend on the pixel just decoded: byte by byte
            row = bytearray(stride)
            cur, up = line.tolist(), prior.tolist()
            for i in range(stride):
                a = row[i - bpp] if i >= bpp else 0
                b = up[i]
                if kind == 3:
                    row[i] = (cur[i] + (a + b) // 2) & 0xFF
                else:
                    c = up[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                    row[i] = (cur[i] + pred) & 0xFF
            row = np.frombuffer(bytes(row), dtype=np.uint8)
        out[y] = row
        prior = row
    return out.reshape(height, width, bpp)[:, :, :3]


def render(chromium: str, page, shot, profile, size=(1200, 900)) -> str:
    """Screenshot ``page`` with a fresh profile and no network chatter; returns Chromium's log."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--hide-scrollbars", f"--user-data-dir={profile}",
           # parcoords draws with WebGL: allow the software renderer explicitly (no GPU here)
           "--enable-unsafe-swiftshader",
           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=8000",
           f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}"
    return done.stderr + done.stdout


def javascript_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line and re.search(r"Uncaught|Error:", line)]


def coloured_pixels(pixels: np.ndarray) -> int:
    """Pixels clearly coloured (markers, lines): a blank or grey page has none."""
    spread = pixels.max(axis=2).astype(int) - pixels.min(axis=2).astype(int)
    return int((spread > 80).sum())


@pytest.mark.slow
def test_report_is_drawn_by_headless_chromium(tmp_path):
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    # the checks can fail: a page whose script throws and draws nothing is caught by both
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body style='background:#fff'><script>undefinedFunction();</script></body></html>")
    log = render(chromium, broken, tmp_path / "broken.png", tmp_path / "profile-broken", size=(400, 300))
    assert javascript_errors(log), "a thrown error should show in the console log"
    assert coloured_pixels(decode_png((tmp_path / "broken.png").read_bytes())) == 0

    report = write_report(made_up_search(), tmp_path / "report.html", title="chromium check", optimal_ppl=25.0)
    shot = tmp_path / "report.png"
    log = render(chromium, report, shot, tmp_path / "profile")
    assert not javascript_errors(log), "\n".join(javascript_errors(log))
    pixels = decode_png(shot.read_bytes())
    assert pixels.shape[:2] == (900, 1200)
    # the Pareto plot (top of the page) is drawn: family colours in its area, not a blank page
    plot_area = pixels[150:700]
    assert coloured_pixels(plot_area) > 300, "the Pareto plot looks blank"
    assert (plot_area.reshape(-1, 3) != plot_area[0, 0]).any(axis=1).mean() > 0.02
