"""Smoke runs of the long-run acceptance benches (``emolive bench sessions`` and ``bench
browser``) through the real CLI, each for a few seconds: they start the real server, finish,
and print and write their figures. Their verdicts are not asserted here: a benchmark's
verdict on a shared 2-core machine is a measurement, not a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_emolive

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _figures(proc, out: Path) -> dict:
    assert proc.returncode in (0, 1), f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    return json.loads(out.read_text())


def test_bench_sessions_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "sessions.json"
    proc = run_emolive("bench", "sessions", "--minutes", "0.3", "--concurrency", "1", "--json", out, timeout=150)
    data = _figures(proc, out)
    assert "sessions passed" in proc.stdout or "sessions FAILED" in proc.stdout, proc.stdout
    assert "RSS server MB" in proc.stdout and "sessions by kind" in proc.stdout
    kinds = {s["kind"] for s in data["sessions"]}
    assert {"ws", "webrtc"} <= kinds, data["sessions"]
    # Both clean kinds streamed at about the real-time rate (frames or motion rows received).
    for s in data["sessions"]:
        if s["kind"] in ("ws", "webrtc") and not s["failed"]:
            assert s["fps"] > 15, s
    samples = data["samples"]
    assert len(samples) >= 5 and all(s["rss_server_mb"] > 50 and s["fds"] > 0 for s in samples)
    assert len(samples[0]["workers"]) == 3  # the default 2 render processes and their spare were found
    assert data["idle_end"]["metrics"]["emolive_active_sessions"] == 0
    for key in ("rss_growth_mb", "fds_idle_start", "fds_idle_end", "sessions_failed"):
        assert key in data["figures"]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")
def test_bench_browser_runs_and_reports(tmp_path: Path) -> None:
    pytest.importorskip("playwright.sync_api")
    out = tmp_path / "browser.json"
    proc = run_emolive("bench", "browser", "--sessions", "2", "--seconds", "4", "--json", out, timeout=150)
    data = _figures(proc, out)
    assert "browser passed" in proc.stdout or "browser FAILED" in proc.stdout, proc.stdout
    assert len(data["sessions"]) == 2
    for s in data["sessions"]:
        assert s["frames_decoded"] > 0 and s["streamed_s"] > 0, s  # the page presented video it measured
