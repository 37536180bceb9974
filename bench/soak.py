"""``emolive bench soak``: one live session for minutes, speech turns and idle gaps.

Samples RSS (this process and its render processes) every 10 s and, per turn, the offset
between the frame of ``playback_started`` and the frame the turn's first sample arrived in;
fails when RSS grows >= 50 MB, the offset drifts >= 40 ms, or the voice out ever differs
from the voice pushed (``emolive.bench.stream.measure.AudioTracker``).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from rich.table import Table

from emolive.bench.report import console as make_console
from emolive.bench.report import fmt, loadavg
from emolive.bench.speech import RATE, Feeder, speech_turns
from emolive.bench.stream.measure import FPS, AudioTracker, cpu_seconds, percentile, rss_mb
from emolive.bench.stream.run import prepare_rig
from emolive.engine.errors import BadInputError
from emolive.engine.rig import Rig

RSS_LIMIT_MB = 50.0
DRIFT_LIMIT_MS = 40.0


@dataclass(frozen=True)
class SoakConfig:
    """``emolive bench soak``'s options (``emolive bench soak --help`` explains each)."""

    minutes: float
    size: int
    seed: int
    motion: str
    render_processes: int
    quiet: bool


async def _soak(rig: Rig, minutes: float, turns: list[np.ndarray], seed: int, motion: str, render_processes: int,
                on_sample: Callable[[float, float, int, AudioTracker], None]) -> dict:
    from emolive.engine.motion.registry import create_motion_model
    from emolive.engine.motion_space import MotionControls
    from emolive.engine.render_workers import RenderWorkers
    from emolive.engine.session import Session
    from emolive.engine.session_types import SessionOptions

    render_workers = RenderWorkers(render_processes) if render_processes else None
    pids = render_workers.pids if render_workers else []
    session = Session(rig, create_motion_model(motion), SessionOptions(controls=MotionControls(seed=seed)),
                      render_workers=render_workers)
    tracker = AudioTracker(keep_hits=False)  # the bench's own bookkeeping must not show up as RSS growth
    duration = 60.0 * minutes
    first_push: list[float] = []  # push time of each turn's first chunk, in turn order
    started: dict[int, int] = {}  # turn -> playback_started frame index
    samples: list[tuple[float, float]] = []  # (elapsed s, RSS MB)
    acc = dict(frames=0, images=0, compute=[], lag=[])
    t0 = time.monotonic()  # the clock starts with the first frames() call, just below
    frames = session.frames()
    first = asyncio.ensure_future(frames.__anext__())
    end = t0 + duration

    async def consume() -> None:
        frame = await first
        while True:
            now = time.monotonic()
            tracker.frame(frame.index, frame.audio, now)
            if now <= end:
                acc["frames"] += 1
                acc["images"] += frame.image is not None
            if frame.index % 25 == 0:
                acc["compute"].append(session.stats.last_compute_ms)
                acc["lag"].append((now - t0 - frame.index / FPS) * 1000)  # clock: yield vs. index
            if now > end + 1.0:
                return
            frame = await frames.__anext__()

    async def events() -> None:
        async for event in session.events():
            if event.type == "playback_started":
                started[event.turn] = event.frame_index

    def push(chunk: np.ndarray) -> None:
        now = time.monotonic()
        if tracker.new_turn:
            first_push.append(now)
        session.push_audio(chunk, RATE)
        tracker.pushed(chunk, now)

    def end_turn() -> None:
        session.end_of_turn()
        tracker.end_of_turn()

    def align(t: float) -> float:
        """Start turns a quarter frame after a tick: 20 ms chunks then land 10 ms from every tick."""
        k = math.ceil((t - t0) * FPS)
        return t0 + (k + 0.25) / FPS

    async def sample_rss() -> None:
        while time.monotonic() < end:
            elapsed = time.monotonic() - t0
            samples.append((elapsed, rss_mb(pids)))
            on_sample(elapsed, samples[-1][1], len(first_push), tracker)
            await asyncio.sleep(10.0)
        samples.append((time.monotonic() - t0, rss_mb(pids)))

    feeder = Feeder(turns, np.random.default_rng(seed), pause=(1.0, 6.0))
    consumer, listener = asyncio.ensure_future(consume()), asyncio.ensure_future(events())
    cpu0 = cpu_seconds(pids)
    results = await asyncio.gather(feeder.run(t0 + 1.0, end - 1.0, push, end_turn, align=align), sample_rss(), consumer)
    cpu = cpu_seconds(pids) - cpu0
    stats = session.stats
    await session.close()
    listener.cancel()
    if render_workers is not None:
        render_workers.close()
    turn_hits = [h for h in tracker.hits if h.first_in_turn]
    offsets = []
    for turn, pushed_at in enumerate(first_push, start=1):
        if turn not in started:
            continue
        predicted = math.floor((pushed_at - t0) * FPS)  # the frame interval the first sample arrived in
        exact = turn_hits[turn - 1] if turn - 1 < len(turn_hits) else None
        offsets.append(dict(turn=turn, at=pushed_at - t0, frame_offset_ms=(started[turn] - predicted) * 1000 / FPS,
                            sample_offset_ms=(exact.out_sample / RATE - (pushed_at - t0)) * 1000 if exact else math.nan,
                            consistent=exact is not None and exact.frame_index == started[turn]))
    return dict(turns=results[0], offsets=offsets, samples=samples, stats=stats, tracker=tracker,
                fps=acc["images"] / duration, compute=acc["compute"], lag=acc["lag"], cpu=100 * cpu / duration)


def run_soak(config: SoakConfig) -> None:
    """Print the soak's table; exits 1 when it fails."""
    if not config.minutes > 0:
        raise BadInputError(f"--minutes must be positive, got {config.minutes}")
    console = make_console()
    turns, source = speech_turns()
    rig = prepare_rig(config.size)
    console.print(f"soak: 1 session, {config.size}², motion={config.motion}, {config.render_processes} render processes, "
                  f"{config.minutes:g} min; speech: {source}; idle gaps 1–6 s; RSS every 10 s", style="dim")

    def on_sample(elapsed: float, rss: float, turn_count: int, tracker: AudioTracker) -> None:
        if not config.quiet:
            console.print(f"  t={elapsed:6.0f} s  RSS {rss:7.1f} MB  turns {turn_count:4d}  "
                          f"sync errors {tracker.mismatches}", style="dim", highlight=False)

    out = asyncio.run(_soak(rig, config.minutes, turns, config.seed, config.motion, config.render_processes, on_sample))
    samples, offsets = out["samples"], out["offsets"]
    baseline = samples[1][1] if len(samples) > 2 else samples[0][1]  # after the first 10 s (warm caches)
    final = samples[-1][1]
    growth = final - baseline
    minutes = (samples[-1][0] - samples[min(1, len(samples) - 1)][0]) / 60
    slope = np.polyfit([s[0] / 60 for s in samples[1:]], [s[1] for s in samples[1:]], 1)[0] if len(samples) > 3 else math.nan
    frame_offsets = [o["frame_offset_ms"] for o in offsets]
    sample_offsets = [o["sample_offset_ms"] for o in offsets if not math.isnan(o["sample_offset_ms"])]
    drift = max(abs(x - frame_offsets[0]) for x in frame_offsets) if frame_offsets else math.nan
    sample_drift = max(sample_offsets) - min(sample_offsets) if sample_offsets else math.nan
    lat = out["tracker"].latencies_ms
    stats = out["stats"]
    table = Table(title=f"emolive bench soak — {config.minutes:g} min, 1 session, {config.size}², motion={config.motion}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("RSS at 10 s / end / peak (MB)", f"{baseline:.1f} / {final:.1f} / {max(s[1] for s in samples):.1f}")
    table.add_row("RSS growth (MB)", f"{growth:+.1f}", style="bold" if growth < RSS_LIMIT_MB else "bold red")
    table.add_row("RSS trend (MB / min, least squares)", fmt(slope, 2))
    table.add_row("turns (with playback_started)", f"{out['turns']} ({len(offsets)})")
    table.add_row("A/V offset per turn, frame-level (ms): min / median / max",
                  f"{fmt(min(frame_offsets, default=math.nan))} / {fmt(statistics.median(frame_offsets) if frame_offsets else math.nan)} / "
                  f"{fmt(max(frame_offsets, default=math.nan))}")
    table.add_row("max A/V offset drift vs. first turn (ms)", fmt(drift), style="bold" if drift < DRIFT_LIMIT_MS else "bold red")
    table.add_row("sample-exact offset spread (ms, incl. push jitter)", fmt(sample_drift, 2))
    table.add_row("playback_started == frame carrying the first sample",
                  f"{sum(o['consistent'] for o in offsets)}/{len(offsets)}")
    table.add_row("sync errors (output voice != pushed voice)", str(out["tracker"].mismatches))
    table.add_row("latency p50 / p95 (ms)", f"{fmt(percentile(lat, 50))} / {fmt(percentile(lat, 95))}")
    table.add_row("clock lag, yield vs. index/25: first min / last min (ms, median)",
                  f"{fmt(statistics.median(out['lag'][:60]))} / {fmt(statistics.median(out['lag'][-60:]))}")
    table.add_row("fps (images)", fmt(out["fps"], 2))
    table.add_row("frames out / dropped / discarded / underruns",
                  f"{stats.frames_out} / {stats.frames_dropped} / {stats.frames_discarded} / {stats.underrun_frames}")
    table.add_row("compute ms / frame (median)", fmt(statistics.median(out["compute"]), 2))
    table.add_row("CPU (% of one core)", fmt(out["cpu"], 0))
    table.add_row("load avg at end", loadavg())
    console.print(table)
    failures = []
    if growth >= RSS_LIMIT_MB:
        failures.append(f"RSS grew {growth:.1f} MB (limit 50)")
    if not drift < DRIFT_LIMIT_MS:
        failures.append(f"A/V offset drifted {drift:.0f} ms (limit 40)")
    if out["tracker"].mismatches:
        failures.append(f"{out['tracker'].mismatches} frames whose voice differs from the pushed audio")
    if failures:
        console.print("[bold red]soak FAILED:[/bold red] " + "; ".join(failures))
        raise SystemExit(1)
    console.print(f"[bold green]soak passed[/bold green]: RSS {growth:+.1f} MB over {minutes:.1f} min, "
                  f"max drift {drift:.0f} ms")

