"""Where a live session's frames are computed: the motion step and the render, off the loop.

A frame's motion comes from the shared :class:`~emolive.engine.motion.batching.MotionBatcher`
(batched with the other sessions' steps of the same tick) or from the session's executor;
its picture from a render-worker process (:class:`~emolive.engine.render_workers.RenderWorkers`) or
the same executor. A worker's reply is sent and read on the loop: a thread in between would
wait twice for the interpreter lock. One job at a time per session.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass

import numpy as np

from emolive.engine.motion import MotionModel
from emolive.engine.motion.batching import MotionBatcher, batchable
from emolive.engine.render_workers import FrameRenderer, RenderedFrame, RenderWorkers, VideoRequest, WorkerFrameRenderer
from emolive.engine.rig import Rig


@dataclass
class ComputedFrame:
    """One frame's motion, its picture (None when not rendered) and what it cost."""

    motion: np.ndarray
    rendered: RenderedFrame | None
    compute_ms: float  # model step + render
    job_s: float  # submit -> done, queueing included


class ComputeRoute:
    """Computes one session's frames in order; see the module docstring."""

    def __init__(self, rig: Rig | None, model: MotionModel, executor: concurrent.futures.Executor | None = None,
                 batcher: MotionBatcher | None = None, render_workers: RenderWorkers | None = None) -> None:
        self._model = model
        self._renderer: FrameRenderer | WorkerFrameRenderer | None = None
        if rig is not None:
            self._renderer = render_workers.stream(rig) if render_workers is not None else FrameRenderer(rig)
        self._owns_executor = executor is None
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emolive-session")
        self.batcher = batcher if batcher is not None and batchable(model) else None
        self._job: concurrent.futures.Future | None = None

    @property
    def renders(self) -> bool:
        return self._renderer is not None

    @property
    def worker(self) -> WorkerFrameRenderer | None:
        """The render-worker stream of this session, when a worker process renders it."""
        return self._renderer if isinstance(self._renderer, WorkerFrameRenderer) else None

    async def frame(self, features: np.ndarray, index: int, render: bool, video: VideoRequest | None) -> ComputedFrame:
        """The motion of frame ``index`` from its feature window and, if ``render``, its
        picture (and VP8 packet when ``video`` asks for one)."""
        submitted = time.perf_counter()
        render = render and self._renderer is not None
        motion, motion_ms = None, 0.0
        if self.batcher is not None:
            motion = (await asyncio.wrap_future(self.batcher.submit(self._model, features)))[0]
            motion_ms = (time.perf_counter() - submitted) * 1000.0
        remote = render and isinstance(self._renderer, WorkerFrameRenderer)
        rendered, compute_ms, finished = None, 0.0, time.perf_counter()
        if motion is None or (render and not remote):
            self._job = self._executor.submit(self._compute, features, index, render and not remote, video, motion)
            motion, rendered, compute_ms, finished = await asyncio.wrap_future(self._job)
            self._job = None
        if remote:
            started = time.perf_counter()
            rendered = await self._renderer.render_async(motion, index, video)
            finished = time.perf_counter()
            compute_ms += (finished - started) * 1000.0
        return ComputedFrame(motion, rendered, motion_ms + compute_ms, finished - submitted)

    async def finish(self) -> None:
        """Wait for a job still running in the executor (a cancelled await does not stop it)."""
        if self._job is not None:
            await asyncio.wait([asyncio.wrap_future(self._job)])
            self._job = None

    def release(self) -> None:
        """Close the renderer and the session's own executor; safe after a ``finish`` that
        was given up on (a job still rendering in its thread keeps its renderer)."""
        if self._renderer is not None and (self._job is None or isinstance(self._renderer, WorkerFrameRenderer)):
            self._renderer.close()
        if self._owns_executor:
            self._executor.shutdown(wait=self._job is None)

    def _compute(self, features: np.ndarray, index: int, render: bool, video: VideoRequest | None,
                 motion: np.ndarray | None) -> tuple[np.ndarray, RenderedFrame | None, float, float]:
        """Runs in the executor: the motion (unless the batcher made it) and, if asked, the
        picture; the run time in ms and the perf_counter it finished at."""
        started = time.perf_counter()
        if motion is None:
            motion = self._model.step(features)[0]
        rendered = self._renderer.render(motion, index, video) if render and self._renderer is not None else None
        finished = time.perf_counter()
        return motion, rendered, (finished - started) * 1000.0, finished
