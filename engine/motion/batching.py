"""Batched motion for many live streams: :class:`MotionBatcher`.

Sessions that run diffusion models hand their motion steps (model + features, as
``model.step(features)`` would take them) to one shared batcher instead of stepping the
model themselves. The batcher's thread gathers the steps that arrive together — until every
member (a session whose clock runs) has handed one in, ``max_batch`` are waiting, or
``window_s`` has passed since the first — and runs them as one
:func:`emolive.engine.motion.diffusion.step_batch`: one denoiser call per sampler step for all of
them. Each stream's state (noise, rolling buffer, blink guard) stays in its own model, so
every stream gets the frames it would get alone.

Members tick together: :meth:`MotionBatcher.align` puts a session's clock on the shared
25 fps grid, so the steps of one tick arrive within the event loop's handling of that tick.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from emolive.engine.motion import MotionModel, hop_length
from emolive.engine.motion_space import FPS


@dataclass(frozen=True)
class BatchingConfig:
    window_s: float = 0.005  # longest wait for the rest of a tick's steps after the first
    max_batch: int = 64  # a batch runs as soon as this many steps wait

    def __post_init__(self) -> None:
        if not 0.0 <= self.window_s <= 1.0:
            raise ValueError(f"window_s must be between 0 and 1 s, got {self.window_s}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")


@dataclass
class BatcherStats:
    batches: int = 0  # step_batch calls
    steps: int = 0  # motion steps run (one per session per tick)
    largest: int = 0  # most steps in one batch


def batchable(model: MotionModel) -> bool:
    """Whether ``model``'s steps can be batched (the diffusion models)."""
    # A diffusion model exists only once its module (and torch) is imported; importing them
    # here would stall the caller, often the event loop, for seconds on a baseline session.
    diffusion = sys.modules.get("emolive.engine.motion.diffusion")
    return diffusion is not None and isinstance(model, diffusion.DiffusionMotion)


class MotionBatcher:
    """Runs the motion steps of many streams in batches, on its own thread; thread-safe."""

    def __init__(self, config: BatchingConfig = BatchingConfig()) -> None:
        self.config = config
        self.stats = BatcherStats()
        self._cond = threading.Condition()
        self._pending: list[tuple[MotionModel, np.ndarray, Future]] = []
        self._first_at = 0.0  # monotonic time the oldest pending step arrived
        self._members = 0
        self._epoch: float | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    def join(self) -> None:
        """One more stream hands in a step every tick."""
        with self._cond:
            self._members += 1

    def leave(self) -> None:
        with self._cond:
            self._members = max(0, self._members - 1)
            self._cond.notify_all()  # the batch may be complete without the leaver

    def align(self, now: float) -> float:
        """The first tick of the shared 25 fps grid at or after ``now`` (any monotonic clock
        all members use, such as the event loop's)."""
        with self._cond:
            if self._epoch is None:
                self._epoch = now
            ticks = math.ceil(round((now - self._epoch) * FPS, 6))
            return self._epoch + ticks / FPS

    def submit(self, model: MotionModel, features: np.ndarray) -> Future:
        """Queue ``model.step(features)``; the future holds its frames (or its error)."""
        if not batchable(model):
            raise TypeError(f"motion model {model.name!r} cannot be batched")
        hop_length(features, model.lookahead_frames)  # bad input fails here, not its batch-mates
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise RuntimeError("submit on a closed MotionBatcher")
            if not self._pending:
                self._first_at = time.monotonic()
            self._pending.append((model, features, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="emolive-motion-batcher", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return future

    def step(self, model: MotionModel, features: np.ndarray) -> np.ndarray:
        """``model.step(features)``, batched with whatever else arrives meanwhile (blocking)."""
        return self.submit(model, features).result()

    def close(self) -> None:
        """Stop the thread; steps still waiting fail with RuntimeError. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _ready(self) -> bool:
        waiting = len(self._pending)
        return waiting >= max(self._members, 1) or waiting >= self.config.max_batch

    def _take(self) -> list[tuple[MotionModel, np.ndarray, Future]] | None:
        """The next batch (None once closed), waiting as the config says."""
        with self._cond:
            while not self._closed:
                if self._pending:
                    remaining = self._first_at + self.config.window_s - time.monotonic()
                    if self._ready() or remaining <= 0:
                        batch = self._pending[: self.config.max_batch]
                        del self._pending[: len(batch)]
                        self._first_at = time.monotonic()
                        return batch
                    self._cond.wait(remaining)
                else:
                    self._cond.wait()
            for _, _, future in self._pending:
                if future.set_running_or_notify_cancel():
                    future.set_exception(RuntimeError("MotionBatcher closed"))
            self._pending.clear()
            return None

    def _serve(self) -> None:
        from emolive.engine.motion.diffusion import step_batch

        while (batch := self._take()) is not None:
            # A step whose session gave up on it (cancelled) is not run: its model stays put.
            batch = [item for item in batch if item[2].set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                results = step_batch([model for model, _, _ in batch], [features for _, features, _ in batch])
            except Exception as error:  # every waiting session gets the error
                for _, _, future in batch:
                    future.set_exception(error)
                continue
            self.stats.batches += 1
            self.stats.steps += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            for (_, _, future), frames in zip(batch, results):
                future.set_result(frames)
