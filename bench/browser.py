"""``emolive bench browser``: consecutive real-Chromium sessions over WebRTC against the real
``emolive serve`` subprocess. A benchmark, never a test (the smoke test runs 2 short sessions).

Each session is what a user of the demo page does in TTS mode: a fresh browser context opens
the page the server serves at ``/``, and ``window.emolive.startFile`` plays a speech WAV (flite
TTS, a little longer than the measured window) through the page's own path: decoded by
WebAudio, sent over the WebSocket in 20 ms chunks in real time, face and voice back over
WebRTC. The page measures with ``requestVideoFrameCallback`` on the ``<video>``: every callback
records ``performance.now()`` and ``presentedFrames``. Over ``--seconds`` from the first
presented frame: fps = frames presented / seconds, and a freeze is a gap > 200 ms between
callbacks during which at most one frame was presented (a gap in which several frames were
presented is a late callback, not a frozen picture); a stream that stops before the window
ends counts its tail as a freeze. Chromium's own ``freezeCount`` (inbound-rtp stats) is shown
beside it.

``--kill-render-worker``: two sessions stream; the bench SIGKILLs one render worker process of
the server (its ``multiprocessing`` spawn children) and reports, per session, how long after
the kill Chromium decodes frames again (after a freeze; 0 when it never froze), or that it
did not within the watch window. Its decoder count is polled: requestVideoFrameCallback stops
firing for a page that is not in front.
"""

from __future__ import annotations

import base64
import io
import math
import os
import signal
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from emolive.bench.report import console as make_console
from emolive.bench.report import fmt, write_figures
from emolive.bench.server_process import ServerProcess, log_errors
from emolive.bench.speech import RATE, speech_turns
from emolive.engine.errors import BadInputError

CHROMIUM = Path("/usr/bin/chromium")
MIN_FPS = 24.0
FREEZE_MS = 200.0
FIRST_FRAME_TIMEOUT_S = 30.0
KILL_WATCH_S = 20.0
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection", "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding", "--disable-backgrounding-occluded-windows",
]
# Installed before startFile: one record per requestVideoFrameCallback.
WATCH_FRAMES = """() => {
    const video = document.getElementById('video');
    window.__bench = { frames: [] };
    const tick = (now, metadata) => {
        window.__bench.frames.push([now, metadata.presentedFrames]);
        video.requestVideoFrameCallback(tick);
    };
    video.requestVideoFrameCallback(tick);
}"""
START_FILE = """b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    window.emolive.startFile(bytes.buffer).catch(e => { window.__bench.error = String(e); }); }"""
VIDEO_STATS = """async () => { const pc = window.emolive.state.pc; if (!pc) return {};
    let out = {}; (await pc.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video') out = s; });
    return out; }"""


@dataclass
class BrowserSession:
    index: int
    fps: float = math.nan
    streamed_s: float = 0.0  # from the first presented frame to the last one inside the window
    freezes: int = 0
    max_gap_ms: float = math.nan
    first_frame_ms: float = math.nan  # startFile -> first presented frame
    chrome_freezes: int = 0
    frames_decoded: int = 0
    status: str = ""
    server_errors: list[str] = field(default_factory=list)
    error: str = ""

    def passed(self, seconds: float) -> bool:
        return not self.error and self.fps >= MIN_FPS and self.streamed_s >= seconds - 0.2 and self.freezes == 0


@dataclass
class KillResult:
    killed_pid: int
    workers_before: list[int]
    workers_after: list[int]
    recovery_s: list[float]  # per session; NaN: no frames again within the watch
    decoded: list[int]  # per session: frames Chromium decoded during the watch
    statuses: list[str]
    server_errors: list[str]


def _speech_wav(seconds: float) -> tuple[str, str]:
    """Base64 WAV (16-bit, 48 kHz) of TTS turns with short pauses, at least ``seconds`` long."""
    import soundfile as sf

    turns, source = speech_turns()
    pause = np.zeros(int(0.4 * RATE), np.int16)
    parts, total, k = [], 0, 0
    while total < seconds * RATE:
        parts += [turns[k % len(turns)], pause]
        total += len(parts[-2]) + len(pause)
        k += 1
    buffer = io.BytesIO()
    sf.write(buffer, np.concatenate(parts), RATE, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode(), source


def _frame_figures(frames: list[list[float]], start: float, seconds: float) -> tuple[float, float, int, float]:
    """(fps, streamed s, freezes, max gap ms) over [start, start + seconds] in page ms."""
    end = start + 1000 * seconds
    inside = [f for f in frames if start <= f[0] <= end]
    if len(inside) < 2:
        return 0.0, 0.0, 1, 1000 * seconds
    freezes, max_gap = 0, 0.0
    for (t0, n0), (t1, n1) in zip(inside, inside[1:]):
        max_gap = max(max_gap, t1 - t0)
        if t1 - t0 > FREEZE_MS and n1 - n0 <= 1:
            freezes += 1
    tail = end - inside[-1][0]
    if tail > FREEZE_MS:  # the stream stopped before the window ended
        freezes += 1
        max_gap = max(max_gap, tail)
    fps = (inside[-1][1] - inside[0][1]) / seconds
    return fps, (inside[-1][0] - inside[0][0]) / 1000, freezes, max_gap


def _new_errors(server: ServerProcess, mark: int) -> list[str]:
    """Error lines the server logged after character ``mark`` of its log."""
    return log_errors(server.log()[mark:])


def _start_page(browser, server: ServerProcess, wav_b64: str):
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=15_000)
    page.evaluate(WATCH_FRAMES)
    started = page.evaluate("performance.now()")
    page.evaluate(START_FILE, wav_b64)
    return context, page, started


def _wait_first_frame(page) -> float:
    page.wait_for_function("window.__bench.frames.length > 0 || window.__bench.error !== undefined",
                           timeout=FIRST_FRAME_TIMEOUT_S * 1000, polling=50)
    error = page.evaluate("window.__bench.error")
    if error:
        raise RuntimeError(f"the page failed: {error}")
    return page.evaluate("window.__bench.frames[0][0]")


def _stop_page(context, page) -> None:
    try:
        page.evaluate("window.emolive.stop()")
    except Exception:  # a page that broke is closed all the same
        pass
    context.close()


def _one_session(browser, server: ServerProcess, wav_b64: str, seconds: float, index: int) -> BrowserSession:
    result = BrowserSession(index)
    mark = len(server.log())
    context = None
    try:
        context, page, started = _start_page(browser, server, wav_b64)
        first = _wait_first_frame(page)
        result.first_frame_ms = first - started
        end = first + 1000 * seconds
        page.wait_for_function(f"performance.now() > {end + 300}", timeout=(seconds + 15) * 1000, polling=200)
        frames = page.evaluate("window.__bench.frames")
        result.fps, result.streamed_s, result.freezes, result.max_gap_ms = _frame_figures(frames, first, seconds)
        stats = page.evaluate(VIDEO_STATS)
        result.chrome_freezes = int(stats.get("freezeCount", 0))
        result.frames_decoded = int(stats.get("framesDecoded", 0))
        result.status = page.text_content("#status") or ""
    except Exception as error:
        result.error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
    finally:
        if context is not None:
            _stop_page(context, page)
    time.sleep(1.5)  # the server logs a session's end a moment after the page leaves
    result.server_errors = _new_errors(server, mark)
    return result


def _kill_render_worker(browser, server: ServerProcess, wav_b64: str) -> KillResult:
    pages = []
    try:
        for _ in range(2):
            context, page, _ = _start_page(browser, server, wav_b64)
            pages.append((context, page))
        for _, page in pages:
            _wait_first_frame(page)
        time.sleep(3.0)
        workers = server.render_workers()
        if not workers:
            raise RuntimeError("the server has no render worker process to kill")
        mark = len(server.log())
        # Chromium's decoder count, polled: requestVideoFrameCallback stops firing for a page
        # that is not in front, which would pass for a frozen stream.
        decoded: list[list[tuple[float, int]]] = [[] for _ in pages]
        os.kill(workers[0], signal.SIGKILL)
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < KILL_WATCH_S:
            for samples, (_, page) in zip(decoded, pages):
                samples.append((time.monotonic() - killed_at, page.evaluate(VIDEO_STATS).get("framesDecoded", 0)))
            time.sleep(0.05)
        recovery = [_recovery_s(samples) for samples in decoded]
        decoded = [samples[-1][1] - samples[0][1] for samples in decoded]
        statuses = [page.text_content("#status") or "" for _, page in pages]
        return KillResult(workers[0], workers, server.render_workers(), recovery, decoded, statuses,
                          _new_errors(server, mark))
    finally:
        for context, page in pages:
            _stop_page(context, page)


def _recovery_s(decoded: list[tuple[float, int]]) -> float:
    """Seconds from the kill (t = 0) until frames flow again after the freeze it caused, from
    (t, frames decoded) samples; 0 if none froze; NaN if frames had not resumed by the end."""
    still_since, resumed_at = None, 0.0
    for (t0, n0), (t1, n1) in zip(decoded, decoded[1:]):
        if n1 > n0:
            if still_since is not None and t0 - still_since > FREEZE_MS / 1000:
                resumed_at = t1
            still_since = None
        elif still_since is None:
            still_since = t0
    if still_since is not None and decoded[-1][0] - still_since > FREEZE_MS / 1000:
        return math.nan
    return resumed_at


def _report(console: Console, sessions: list[BrowserSession], kill: KillResult | None, config: BrowserConfig) -> list[str]:
    table = Table(title=f"emolive bench browser — {len(sessions)} Chromium sessions, {config.seconds:g} s each, "
                        f"loop {config.loop}")
    for column in ("session", "fps", "streamed s", "freezes", "max gap ms", "first frame ms", "chrome freezes",
                   "decoded", "page status", "server errors"):
        table.add_column(column, justify="right")
    for s in sessions:
        table.add_row(str(s.index), fmt(s.fps), fmt(s.streamed_s), str(s.freezes), fmt(s.max_gap_ms, 0),
                      fmt(s.first_frame_ms, 0), str(s.chrome_freezes), str(s.frames_decoded),
                      s.error or s.status, str(len(s.server_errors)),
                      style=None if s.passed(config.seconds) else "red")
    console.print(table)
    for s in sessions:
        for line in s.server_errors[:2]:
            console.print(f"  session {s.index} server log: {line[:300]}", style="yellow", highlight=False)
    failures = []
    bad = [s for s in sessions if not s.passed(config.seconds)]
    fps = [s.fps for s in sessions if not math.isnan(s.fps)]
    froze = sum(1 for s in sessions if s.freezes or s.error)
    logged = sum(1 for s in sessions if s.server_errors)
    summary = (f"{len(sessions) - len(bad)}/{len(sessions)} sessions >= {MIN_FPS:.0f} fps for {config.seconds:g} s with "
               f"no freeze; {froze} froze or failed; fps min {fmt(min(fps, default=math.nan))} / median "
               f"{fmt(statistics.median(fps) if fps else math.nan)}; the server logged errors during {logged}")
    if bad:
        failures.append(summary)
    if kill is not None:
        table = Table(title=f"--kill-render-worker: SIGKILL of render worker {kill.killed_pid} "
                            f"(workers before {kill.workers_before}, after {kill.workers_after})")
        for column in ("session", "frames again after s", "decoded during the watch", "page status"):
            table.add_column(column, justify="right")
        for i, (recovery, decoded, status) in enumerate(zip(kill.recovery_s, kill.decoded, kill.statuses), start=1):
            table.add_row(str(i), fmt(recovery, 2) if not math.isnan(recovery) else f"not within {KILL_WATCH_S:.0f} s",
                          str(decoded), status, style="red" if math.isnan(recovery) else None)
        console.print(table)
        for line in kill.server_errors[:4]:
            console.print(f"  server log after the kill: {line[:300]}", style="yellow", highlight=False)
        lost = sum(math.isnan(r) for r in kill.recovery_s)
        if lost:
            failures.append(f"after the render worker was killed, {lost} of 2 sessions delivered no frames again "
                            f"within {KILL_WATCH_S:.0f} s")
    if failures:
        console.print(f"[bold red]browser FAILED:[/bold red] {'; '.join(failures)}", highlight=False)
    else:
        console.print(f"[bold green]browser passed[/bold green]: {summary}"
                      + (f"; worker kill: frames again after {max(kill.recovery_s):.2f} s" if kill else ""),
                      highlight=False)
    return failures


@dataclass(frozen=True)
class BrowserConfig:
    """``emolive bench browser``'s options (``emolive bench browser --help`` explains each)."""

    sessions: int
    seconds: float
    loop: str
    kill_render_worker: bool
    chromium: Path
    json: Path | None
    quiet: bool


def run_browser(config: BrowserConfig) -> None:
    """Run the sessions (and the kill), print the report; exits 1 when the verdict fails."""
    if not 1 <= config.sessions <= 1000:
        raise BadInputError(f"--sessions must be between 1 and 1000, got {config.sessions}")
    if not 2 <= config.seconds <= 600:
        raise BadInputError(f"--seconds must be between 2 and 600, got {config.seconds}")
    if not config.chromium.exists():
        raise BadInputError(f"{config.chromium}: no Chromium there (Debian: apt install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise BadInputError("playwright is not installed (pip install playwright; its bundled browsers are not "
                            "needed)") from None
    console = make_console()
    longest = max(config.seconds, KILL_WATCH_S + 5 if config.kill_render_worker else 0)
    wav_b64, source = _speech_wav(longest + 4.0)
    sessions: list[BrowserSession] = []
    kill = None
    with tempfile.TemporaryDirectory(prefix="emolive-browser-") as tmp:
        server = ServerProcess(Path(tmp) / "data", Path(tmp) / "server.log", loop=config.loop)
        console.print(f"browser: {config.sessions} sessions one after another, {config.seconds:g} s each; speech: {source}; "
                      f"server: {' '.join(server.command[1:])}", style="dim", highlight=False)
        with server, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(config.chromium), headless=True, args=CHROMIUM_ARGS)
            try:
                for i in range(1, config.sessions + 1):
                    s = _one_session(browser, server, wav_b64, config.seconds, i)
                    sessions.append(s)
                    if not config.quiet:
                        console.print(f"  session {i}: {fmt(s.fps)} fps, {s.freezes} freezes, max gap "
                                      f"{fmt(s.max_gap_ms, 0)} ms{', ' + s.error if s.error else ''}",
                                      style="dim", highlight=False)
                    if not server.alive():
                        console.print("the server process died", style="bold red")
                        break
                if config.kill_render_worker and server.alive():
                    kill = _kill_render_worker(browser, server, wav_b64)
            finally:
                browser.close()
    failures = _report(console, sessions, kill, config)
    if config.json:
        out = {"sessions_requested": config.sessions, "seconds": config.seconds, "loop": config.loop,
               "sessions": [asdict(s) | {"passed": s.passed(config.seconds)} for s in sessions],
               "kill_render_worker": asdict(kill) if kill else None, "failures": failures}
        write_figures(config.json, out)
        console.print(f"wrote {config.json}", style="dim")
    if failures:
        raise SystemExit(1)
