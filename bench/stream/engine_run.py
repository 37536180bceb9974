"""``bench stream --transport engine``: N engine sessions in this process, no server.

The sessions share one worker pool (as the server shares ``Settings.workers`` threads) and
the render processes; "leaves" is ``Session.frames()`` yielding the frame.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import statistics
import time

import numpy as np

from emolive.bench.report import loadavg
from emolive.bench.speech import RATE, Feeder, sleep_until
from emolive.bench.stream.measure import WARMUP_S, AudioTracker, RunResult, SessionResult, cpu_seconds
from emolive.engine.rig import Rig


async def engine_run(rig: Rig, n: int, seconds: float, workers: int, render_processes: int, turns: list[np.ndarray],
                     seed: int, motion: str) -> RunResult:
    """``n`` sessions on ``rig`` fed ``turns`` for a window of ``seconds`` after the warm-up."""
    from emolive.engine.motion.registry import create_motion_model
    from emolive.engine.motion_space import MotionControls
    from emolive.engine.render_workers import RenderWorkers
    from emolive.engine.session import Session, share_cores_between_sessions
    from emolive.engine.session_types import SessionOptions

    share_cores_between_sessions()  # as the server does
    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bench-engine")
    render_workers = RenderWorkers(render_processes) if render_processes else None
    pids = render_workers.pids if render_workers else []
    sessions = [Session(rig, create_motion_model(motion), SessionOptions(controls=MotionControls(seed=seed + i)),
                        executor=executor, render_workers=render_workers) for i in range(n)]
    trackers = [AudioTracker() for _ in range(n)]
    t0 = time.monotonic()
    window = (t0 + WARMUP_S, t0 + WARMUP_S + seconds)
    per_session: list[dict] = [dict(images=0, frames=0, dropped=0, compute=[]) for _ in range(n)]
    marks: dict[str, float] = {}

    async def consume(i: int) -> None:
        session, tracker, acc = sessions[i], trackers[i], per_session[i]
        async for frame in session.frames():
            now = time.monotonic()
            tracker.frame(frame.index, frame.audio, now)
            if window[0] <= now < window[1]:
                acc["frames"] += 1
                acc["images"] += frame.image is not None
                acc["dropped"] += frame.image is None
                acc["compute"].append(session.stats.last_compute_ms)
            if now >= window[1] + 0.5:  # let the last turn's frames out
                return

    async def feed(i: int) -> int:
        session, tracker = sessions[i], trackers[i]

        def push(chunk):
            now = time.monotonic()
            session.push_audio(chunk, RATE)
            tracker.pushed(chunk, now)

        def end_turn():
            session.end_of_turn()
            tracker.end_of_turn()

        feeder = Feeder(turns, np.random.default_rng(seed + i), first_turn=i)
        start = t0 + 0.5 + float(np.random.default_rng(seed + 100 + i).uniform(0, 0.5))
        return await feeder.run(start, window[1] - 0.4, push, end_turn)

    async def mark_cpu() -> None:
        await sleep_until(window[0])
        marks["cpu0"], marks["t0"] = cpu_seconds(pids), time.monotonic()
        await sleep_until(window[1])
        marks["cpu1"], marks["t1"] = cpu_seconds(pids), time.monotonic()

    consumers = [asyncio.ensure_future(consume(i)) for i in range(n)]
    feeders = [asyncio.ensure_future(feed(i)) for i in range(n)]
    await asyncio.gather(mark_cpu(), *consumers)
    turn_counts = await asyncio.gather(*feeders)
    for session in sessions:
        await session.close()
    executor.shutdown(wait=True)
    if render_workers is not None:
        render_workers.close()
    wall = marks["t1"] - marks["t0"]
    results = []
    for i in range(n):
        acc, tracker, stats = per_session[i], trackers[i], sessions[i].stats
        hits = [h for h in tracker.hits if h.pushed_at >= t0]
        results.append(SessionResult(
            fps=acc["images"] / wall, frames=acc["frames"], dropped=acc["dropped"] + stats.frames_discarded,
            lat_ms=[1000 * (h.left_at - h.pushed_at) for h in hits],
            turn_lat_ms=[1000 * (h.left_at - h.pushed_at) for h in hits if h.first_in_turn],
            mismatches=tracker.mismatches, underruns=stats.underrun_frames,
            compute_ms=statistics.median(acc["compute"]) if acc["compute"] else math.nan, turns=turn_counts[i]))
    cpu = 100 * (marks["cpu1"] - marks["cpu0"]) / wall / n
    return RunResult("engine", results, cpu, wall, loadavg=loadavg())
