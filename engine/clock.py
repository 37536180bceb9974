"""A live session's clock: when each tick is due and whether its frame can afford a render.

Tick ``k`` is due at ``t0 + k / FPS`` (when not realtime: as soon as the consumer has taken
the previous frame). Compute is modelled as a queue fed on the clock: each job's latency
(queue + run) counts from the later of its tick's deadline and the previous job's end, not
from the loop's wake-up, so a loop that wakes a tick late (other work on the event loop:
WebRTC packets, sockets) does not cost a render.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from emolive.engine.formats import FPS
from emolive.engine.motion.batching import MotionBatcher

# A frame's render is skipped when modelled compute is this far behind the clock ...
RENDER_SLACK_S = 0.5 / FPS
# ... or when the loop itself has fallen this far behind: the frames must catch up anyway.
CATCH_UP_S = 4 / FPS


class FrameClock:
    """Paces one session's frame loop; see the module docstring."""

    def __init__(self, realtime: bool, batcher: MotionBatcher | None = None) -> None:
        self.realtime = realtime
        self._batcher = batcher
        self._start = 0.0
        self._compute_ready = float("-inf")  # loop time the modelled compute queue is free

    def start(self) -> None:
        """Tick 0 is now (on the batcher's grid when sessions share one, so their steps of a
        tick batch together)."""
        self._start = asyncio.get_running_loop().time()
        if self._batcher is not None and self.realtime:
            self._start = self._batcher.align(self._start)

    async def tick(self, index: int, consumer_ready: Callable[[], Awaitable[None]]) -> float:
        """Wait for tick ``index``; returns its deadline (loop time)."""
        deadline = self._start + index / FPS
        if self.realtime:
            await asyncio.sleep(max(0.0, deadline - asyncio.get_running_loop().time()))
        else:
            await consumer_ready()
        return deadline

    def behind(self, deadline: float) -> bool:
        """Whether the frame due at ``deadline`` should drop its render to catch up."""
        if not self.realtime:
            return False
        late = asyncio.get_running_loop().time() - deadline
        return self._compute_ready - deadline > RENDER_SLACK_S or late > CATCH_UP_S

    def computed(self, deadline: float, job_s: float) -> None:
        """Account the job of the frame due at ``deadline``."""
        self._compute_ready = max(self._compute_ready, deadline) + job_s
