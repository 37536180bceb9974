"""``bench stream``: one run of N sessions, or a sweep of N until a session falls below 24 fps."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import numpy as np

from emolive.bench.report import console as make_console
from emolive.bench.speech import CHUNK, RATE, speech_turns
from emolive.bench.stream.measure import RunResult
from emolive.bench.stream.report import session_table, sweep_table
from emolive.engine.errors import BadInputError
from emolive.engine.rig import Rig

HOLD_FPS = 24.0


@dataclass(frozen=True)
class StreamConfig:
    """``emolive bench stream``'s options (``emolive bench stream --help`` explains each)."""

    sessions: int
    size: int
    seconds: float
    transport: str  # "engine" or "webrtc"
    sweep: bool
    max_sessions: int
    workers: int
    render_processes: int
    seed: int
    motion: str


def prepare_rig(size: int) -> Rig:
    """The bundled avatar's rig at ``size``²."""
    from emolive.engine.offline import DEFAULT_PORTRAIT, RenderOptions, prepare_avatar

    _, rig = prepare_avatar(DEFAULT_PORTRAIT, RenderOptions(size=size))
    return rig


def _one_run(config: StreamConfig, n: int, turns: list[np.ndarray], rig: Rig | None) -> RunResult:
    if config.transport == "engine":
        from emolive.bench.stream.engine_run import engine_run

        assert rig is not None
        return asyncio.run(engine_run(rig, n, config.seconds, config.workers, config.render_processes, turns,
                                      config.seed, config.motion))
    from emolive.bench.stream.webrtc_run import webrtc_run

    return webrtc_run(n, config.seconds, config.workers, config.render_processes, config.size, config.seed,
                      config.motion)


def run_stream(config: StreamConfig) -> None:
    """Print the sessions' table of one run, or of every step of a sweep and the sweep's."""
    if config.sessions < 1:
        raise BadInputError(f"--sessions must be at least 1, got {config.sessions}")
    if not 64 <= config.size <= 1024 or config.size % 2:
        raise BadInputError(f"--size must be an even number between 64 and 1024, got {config.size}")
    if config.seconds < 5:
        raise BadInputError(f"--seconds must be at least 5, got {config.seconds}")
    console = make_console()
    turns, source = speech_turns()
    rig = prepare_rig(config.size) if config.transport == "engine" else None
    console.print(f"speech: {source}, {sum(len(t) for t in turns) / RATE:.1f} s; pushed at {RATE} Hz in "
                  f"{1000 * CHUNK // RATE} ms chunks, pauses 0.4–1.2 s, end_of_turn after each turn; "
                  f"{config.workers} engine worker threads, {config.render_processes} render processes; "
                  f"{os.cpu_count()} CPUs", style="dim")
    if not config.sweep:
        run = _one_run(config, config.sessions, turns, rig)
        console.print(session_table(run, config.size, config.seconds, config.motion))
        for note in run.notes:
            console.print(note, style="dim")
        return
    runs: list[RunResult] = []
    n = config.sessions
    while n <= config.max_sessions:
        console.print(f"sweep: {n} session(s)…", style="dim")
        run = _one_run(config, n, turns, rig)
        runs.append(run)
        console.print(session_table(run, config.size, config.seconds, config.motion))
        if run.min_fps < HOLD_FPS:
            break
        n += 1
    console.print(sweep_table(runs, config.size, config.seconds, config.transport, config.motion))
    good = [len(r.sessions) for r in runs if r.min_fps >= HOLD_FPS]
    if good:
        console.print(f"[bold]largest N with every session ≥ 24 fps at {config.size}²: {max(good)}[/bold]")
    else:
        console.print(f"[bold red]no N holds ≥ 24 fps at {config.size}² (from N={config.sessions})[/bold red]")
    if runs and runs[-1].min_fps >= HOLD_FPS:
        console.print(f"(stopped at --max-sessions {config.max_sessions})", style="dim")
