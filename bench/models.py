"""``emolive bench models``: the motion denoiser per backend, and live sessions with and
without batching. A benchmark, never a test: timings depend on the machine and its load
(the load average is printed with every table; compare ratios, not milliseconds).

1. ms per denoiser call (one sampler step) for each backend and batch size, one thread
   (``torch.set_num_threads(1)``, ONNX Runtime ``intra_op_num_threads=1``), the median of
   ``--rounds`` x ``--calls`` calls; backends and batch sizes take turns round by round, so
   a change in the machine's load falls on all of them alike. With them, as a floor, the
   denoiser's weight matrix products alone (the same shapes, every other op left out) in
   ONNX Runtime: no graph rewrite can make a batch cheaper than that.
2. Sessions sustained at 25 fps: N live ``emolive.engine.session.Session`` objects in one process
   (realtime clock, the student's motion, speech queued as one long turn each, ``--workers``
   compute threads as the server), with the motion batcher on and off. A session holds
   25 fps when it emits at least 24 frames per second over the measurement window; N grows
   (doubling, then bisecting) until some session does not. Without ``--video`` the sessions
   make motion only (as WebSocket clients that drive their own 3D avatars); with it they
   also render at ``--size``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emolive.engine.errors import BadInputError
from emolive.engine.motion.backends import BACKENDS

HOLD_FPS = 24.0
WARMUP_S = 1.5

DESCRIPTION = __doc__.split("\n\n", 1)[1]


@dataclass(frozen=True)
class ModelsConfig:
    """``emolive bench models``' options (``emolive bench models --help`` explains each)."""

    motion: str
    backends: str  # comma-separated, as given on the command line
    batches: str
    rounds: int
    calls: int
    session_backend: str
    seconds: float
    max_sessions: int
    workers: int
    video: bool
    size: int
    skip_sessions: bool


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadInputError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1 or max(values) > 256:
        raise BadInputError(f"{option}: values must be between 1 and 256, got {text!r}")
    return values


def _load() -> str:
    return "load average " + " ".join(f"{value:.2f}" for value in os.getloadavg())


def _check(config: ModelsConfig) -> tuple[str, list[str], list[int]]:
    from emolive.engine.motion.registry import DIFFUSION_MODELS, parse_spec

    try:
        name, _ = parse_spec(config.motion)
    except ValueError as error:
        raise BadInputError(f"--motion: {error}") from None
    if name not in DIFFUSION_MODELS:
        raise BadInputError(f"--motion: {name} has no denoiser to measure; choose student or teacher")
    backends = [part.strip() for part in config.backends.split(",") if part.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise BadInputError(f"--backends: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(BACKENDS)}")
    for option, value, low in (("--rounds", config.rounds, 1), ("--calls", config.calls, 1), ("--max-sessions", config.max_sessions, 1),
                               ("--workers", config.workers, 1)):
        if value < low:
            raise BadInputError(f"{option} must be at least {low}, got {value}")
    if not config.seconds > 0:
        raise BadInputError(f"--seconds must be positive, got {config.seconds}")
    if not 64 <= config.size <= 2048:
        raise BadInputError(f"--size must be between 64 and 2048, got {config.size}")
    if not config.skip_sessions:
        from emolive.engine.motion.backends import unavailable_reason

        reason = unavailable_reason(config.session_backend)
        if reason:
            raise BadInputError(f"--session-backend {config.session_backend} is unavailable: {reason}")
    return config.motion, backends, _int_list(config.batches, "--batches")


# ------------------------------------------------------------------------- denoiser calls


def time_denoisers(spec: str, backends: list[str], batches: list[int], rounds: int, calls: int,
                   on_round: Callable[[int], None] | None = None) -> tuple[dict[tuple[str, int], float], dict[str, str]]:
    """Median ms per call for every (backend, batch) that can run, and why the others cannot."""
    import torch

    from emolive.engine.motion.backends import BackendUnavailable
    from emolive.engine.motion.registry import create_motion_model
    from emolive.engine.motion.onnx_graph import random_inputs

    torch.set_num_threads(1)
    denoisers, unavailable = {}, {}
    for backend in backends:
        try:
            denoisers[backend] = create_motion_model(spec, backend).denoiser
        except BackendUnavailable as error:
            unavailable[backend] = str(error)
    cfg = create_motion_model(spec, "torch").cfg
    if "onnxruntime" in denoisers:
        denoisers[MatMulFloor.backend] = MatMulFloor(cfg)
    inputs = {batch: random_inputs(cfg, batch, seed=batch) for batch in batches}
    samples: dict[tuple[str, int], list[float]] = {(b, n): [] for b in denoisers for n in batches}
    for denoiser in denoisers.values():  # warm up (first calls allocate and plan)
        for batch in batches:
            for _ in range(5):
                denoiser(inputs[batch])
    for round_ in range(rounds):
        for backend, denoiser in denoisers.items():
            for batch in batches:
                for _ in range(calls):
                    start = time.perf_counter()
                    denoiser(inputs[batch])
                    samples[backend, batch].append(1000.0 * (time.perf_counter() - start))
        if on_round is not None:
            on_round(round_)
    return {key: statistics.median(values) for key, values in samples.items()}, unavailable


class MatMulFloor:
    """The denoiser's weight MatMuls alone (shapes as :class:`emolive.engine.motion.onnx_graph.GraphDiT` runs
    them, rows scaled by the batch) as one ONNX Runtime graph on one thread."""

    backend = "onnxruntime, weight MatMuls only (floor)"

    def __init__(self, cfg) -> None:
        from emolive.engine.audio import MELS_PER_FRAME, N_MELS

        d, h, hidden = cfg.d_model, cfg.audio_hidden, int(cfg.d_model * cfg.mlp_ratio)
        frames, mels = cfg.audio_frames, cfg.audio_frames * MELS_PER_FRAME
        shapes = [(mels, 3 * N_MELS, h), (mels, 3 * h, h), (frames, MELS_PER_FRAME * h, d), (frames, 3 * d, d),
                  (1, d, (6 * cfg.depth + 2) * d)]
        for block in range(cfg.depth):
            rows = cfg.hop_frames if block == cfg.depth - 1 else cfg.tokens  # the last block: hop queries only
            shapes += [(cfg.tokens, d, 3 * d), (rows, d, d), (rows, d, hidden), (rows, hidden, d)]
        self.shapes = shapes
        self._sessions: dict[int, tuple] = {}

    def _session(self, batch: int) -> tuple:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(batch)
        nodes, weights, inputs, outputs, feed = [], [], [], [], {}
        for i, (rows, k, n) in enumerate(self.shapes):
            weights.append(numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), f"w{i}"))
            inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [batch * rows, k]))
            outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [batch * rows, n]))
            nodes.append(helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"]))
            feed[f"x{i}"] = rng.standard_normal((batch * rows, k)).astype(np.float32)
        graph = helper.make_graph(nodes, "matmuls", inputs, outputs, weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]), feed

    def __call__(self, inputs) -> None:
        batch = len(inputs.x_t)
        if batch not in self._sessions:
            self._sessions[batch] = self._session(batch)
        session, feed = self._sessions[batch]
        session.run(None, feed)


# --------------------------------------------------------------------------- live sessions


@dataclass
class SessionsRun:
    sessions: int
    min_fps: float
    median_fps: float
    batches: int = 0  # batcher calls in the window (batching on)
    mean_batch: float = 0.0

    @property
    def holds(self) -> bool:
        return self.min_fps >= HOLD_FPS


async def _run_sessions(rig, spec: str, backend: str, n: int, batching: bool, seconds: float, workers: int,
                        video: bool, speech: np.ndarray) -> SessionsRun:
    from emolive.engine.motion.batching import MotionBatcher
    from emolive.engine.motion.registry import create_motion_model
    from emolive.engine.motion_space import MotionControls
    from emolive.engine.session import Session
    from emolive.engine.session_types import SessionOptions

    executor = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="bench-models")
    batcher = MotionBatcher() if batching else None
    sessions = [Session(rig, create_motion_model(spec, backend),
                        SessionOptions(controls=MotionControls(seed=i), render_video=video, max_pending_seconds=600),
                        executor=executor, batcher=batcher) for i in range(n)]
    for session in sessions:
        session.push_audio(speech, 16000)
    t0 = time.monotonic()
    window = (t0 + WARMUP_S, t0 + WARMUP_S + seconds)
    counts = [0] * n
    marks: dict[str, tuple[int, int]] = {}

    async def consume(i: int) -> None:
        async for _ in sessions[i].frames():
            now = time.monotonic()
            if window[0] <= now < window[1]:
                counts[i] += 1
            elif now >= window[1]:
                return

    async def mark() -> None:
        if batcher is None:
            return
        await asyncio.sleep(max(0.0, window[0] - time.monotonic()))
        marks["start"] = (batcher.stats.batches, batcher.stats.steps)
        await asyncio.sleep(max(0.0, window[1] - time.monotonic()))
        marks["end"] = (batcher.stats.batches, batcher.stats.steps)

    await asyncio.gather(mark(), *(consume(i) for i in range(n)))
    for session in sessions:
        await session.close()
    if batcher is not None:
        batcher.close()
    executor.shutdown(wait=True)
    fps = [count / seconds for count in counts]
    run = SessionsRun(n, min(fps), statistics.median(fps))
    if marks:
        run.batches = marks["end"][0] - marks["start"][0]
        run.mean_batch = (marks["end"][1] - marks["start"][1]) / max(run.batches, 1)
    return run


def sustained(run: Callable[[int], SessionsRun], limit: int, log: Callable[[SessionsRun], None]) -> tuple[int, list[SessionsRun]]:
    """The largest N <= ``limit`` where ``run(N)`` holds 25 fps: doubling, then bisecting."""
    runs: list[SessionsRun] = []

    def holds(n: int) -> bool:
        result = run(n)
        runs.append(result)
        log(result)
        return result.holds

    good, bad, n = 0, limit + 1, 1
    while n <= limit and holds(n):
        good, n = n, n * 2
    bad = min(n, bad)
    while bad - good > 1:
        middle = (good + bad) // 2
        if holds(middle):
            good = middle
        else:
            bad = middle
    return good, runs


# ------------------------------------------------------------------------------- the run


def run_models(config: ModelsConfig) -> None:
    """Print the denoiser timings, then (unless skipped) the sessions held with batching off and on."""
    from rich.console import Console
    from rich.table import Table

    spec, backends, batches = _check(config)
    console = Console()
    console.print(f"timing the {spec} denoiser: {config.rounds} rounds x {config.calls} calls per backend and batch "
                  f"size ({_load()})", style="dim")
    medians, unavailable = time_denoisers(spec, backends, batches, config.rounds, config.calls)
    load = _load()
    first = batches[0]
    console.print(f"{spec} denoiser: ms per call (one sampler step), 1 thread, median of {config.rounds * config.calls} "
                  f"calls, (× the batch {first} call); {load}", style="bold")
    table = Table()
    table.add_column("backend")
    for batch in batches:
        table.add_column(f"batch {batch}", justify="right")
    for backend in backends + [MatMulFloor.backend]:
        if (backend, first) not in medians and backend not in unavailable:
            continue
        if backend in unavailable:
            table.add_row(backend, *["unavailable"] + ["—"] * (len(batches) - 1))
            continue
        base = medians[backend, first]
        table.add_row(backend, *(f"{medians[backend, batch]:.3f}" + ("" if batch == first else
                                 f" ({medians[backend, batch] / base:.2f}×)") for batch in batches))
    console.print(table)
    for backend, reason in unavailable.items():
        console.print(f"{backend}: {reason}")
    if {"torch", "onnxruntime"} <= set(backends) and {"torch", "onnxruntime"}.isdisjoint(unavailable):
        for batch in batches:
            ratio = medians["onnxruntime", batch] / medians["torch", batch]
            console.print(f"onnxruntime / torch at batch {batch}: {ratio:.2f}×")
    if config.skip_sessions:
        return
    _bench_sessions(config, spec, console)


def _bench_sessions(config: ModelsConfig, spec: str, console) -> None:
    from rich.table import Table

    from emolive.engine.audio import load_audio
    from emolive.engine.offline import DEFAULT_AUDIO, DEFAULT_PORTRAIT, RenderOptions, prepare_avatar

    _, rig = prepare_avatar(DEFAULT_PORTRAIT, RenderOptions(size=config.size))
    clip = load_audio(DEFAULT_AUDIO)
    speech = np.tile(clip, int(np.ceil(16000 * (WARMUP_S + config.seconds + 5) / len(clip))))
    what = f"motion + {config.size}² video" if config.video else "motion only"
    results = {}
    for batching in (False, True):
        label = "on" if batching else "off"

        def run(n: int, batching: bool = batching) -> SessionsRun:
            return asyncio.run(_run_sessions(rig, spec, config.session_backend, n, batching, config.seconds,
                                             config.workers, config.video, speech))

        def log(result: SessionsRun, label: str = label) -> None:
            extra = f", {result.batches} batches of {result.mean_batch:.1f} on average" if result.batches else ""
            console.print(f"batching {label}: {result.sessions} sessions -> min {result.min_fps:.1f} fps, median "
                          f"{result.median_fps:.1f}{extra} ({_load()})", style="dim")

        results[label] = sustained(run, config.max_sessions, log)
    console.print(f"sessions holding >= {HOLD_FPS:g} fps: {spec} on {config.session_backend}, {what}, "
                  f"{config.workers} workers, {config.seconds:g} s windows; {_load()}", style="bold")
    table = Table()
    table.add_column("motion batching")
    table.add_column("sessions", justify="right")
    for label in ("off", "on"):
        count = results[label][0]
        table.add_row(label, f"{count}" + (" (the --max-sessions limit)" if count == config.max_sessions else ""))
    console.print(table)
