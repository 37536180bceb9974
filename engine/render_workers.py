"""Rendering and encoding a session's frames: in the calling thread, or in worker processes.

A session turns each motion row into a picture (``engine.render.Renderer``) and, while a
WebRTC peer takes VP8, into a VP8 packet (``engine.video.Vp8Encoder``): ~7 ms of CPU for a
512² frame. Both are mostly C (OpenCV, libvpx) that releases the interpreter lock, but the
Python around them does not, and a server's one interpreter also runs every session's event
loop work (RTP, SRTP, Opus, sockets): with 4 sessions on 2 cores that interpreter was the wall
while a quarter of the CPU stood idle. :class:`RenderWorkers` moves the whole stage into
worker processes: a session sends a motion row (~0.3 kB) down a pipe of its own and its event
loop reads the reply when it comes; the worker writes the picture into shared memory the
session owns and replies with the packet. A session stays on one worker, where its encoder's
state lives. Each frame costs the server's interpreter no thread hand-off at all: every one
waits for the lock behind the busy event loop for up to ``sys.getswitchinterval()`` (5 ms).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from engine.render import Renderer
from engine.rig import Rig
from engine.video import Vp8Encoder, video_pts

log = logging.getLogger(__name__)

# A worker that has not exited this long after its control pipe closed is killed.
_EXIT_WAIT_S = 2.0
_START_TIMEOUT_S = 120.0  # a worker's imports take ~1.5 s on an idle 2-core machine
_READY = b"ready"


@dataclass(frozen=True)
class VideoRequest:
    """The VP8 packet wanted with a frame: its target bitrate, and whether it must be a keyframe."""

    bitrate: int
    keyframe: bool = False


@dataclass(frozen=True)
class RenderedFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB
    packet: bytes | None = None  # the frame as VP8, when a VideoRequest came with it
    keyframe: bool = False


class FrameRenderer:
    """Renders one session's frames, and encodes them when asked, in the calling thread
    (one call at a time)."""

    def __init__(self, rig: Rig) -> None:
        self._renderer = Renderer(rig)
        self._encoder: Vp8Encoder | None = None

    def render(self, motion: np.ndarray, index: int, video: VideoRequest | None) -> RenderedFrame:
        """Frame ``index`` of the session's clock: its picture, and its packet if ``video``."""
        image = self._renderer.render(motion)
        if video is None:
            self._encoder = None  # the next request starts a new stream, with a keyframe
            return RenderedFrame(image)
        if self._encoder is None:
            self._encoder = Vp8Encoder()
        encoded = self._encoder.encode(image, video_pts(index), video.bitrate, video.keyframe)
        if encoded is None:
            return RenderedFrame(image)
        return RenderedFrame(image, *encoded)

    def close(self) -> None:
        self._encoder = None


class RenderWorkers:
    """A pool of render processes shared by sessions; thread-safe.

    ``processes`` are spawned at once and the pool is ready when they are (each imports
    OpenCV and the renderer, ~1.5 s; as with any spawned process, a script that makes a pool
    needs ``if __name__ == "__main__"``). A session's :meth:`stream` goes to the worker with
    the fewest streams and talks to it over a pipe of its own, so that its replies can be read
    by whichever thread or event loop waits for them. A worker that dies fails its streams'
    frames (their sessions stop with that error) and is replaced for the streams that come
    after.
    """

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self._context = multiprocessing.get_context("spawn")  # forking a threaded server is unsafe
        self._lock = threading.Lock()
        self._workers = [_Worker(self._context) for _ in range(processes)]
        for worker in self._workers:
            worker.wait_ready()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    @property
    def stream_count(self) -> int:
        return sum(worker.streams for worker in self._workers)

    def stream(self, rig: Rig) -> WorkerFrameRenderer:
        """A renderer for one session's frames on the least loaded worker."""
        with self._lock:
            if self._closed:
                raise RuntimeError("render workers are closed")
            for i, worker in enumerate(self._workers):
                if not worker.process.is_alive():
                    log.warning("render worker %d exited (code %s); starting another",
                                worker.process.pid, worker.process.exitcode)
                    worker.close()
                    self._workers[i] = _Worker(self._context)
                    self._workers[i].wait_ready()
            worker = min(self._workers, key=lambda w: w.streams)
            connection = worker.connect()
        return WorkerFrameRenderer(worker, connection, rig)

    def close(self) -> None:
        """Stop every worker (sessions still rendering fail their frames)."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.close()


class WorkerFrameRenderer:
    """:class:`FrameRenderer` run by a worker process, one frame at a time: ``render`` blocks
    the calling thread, ``render_async`` waits on the caller's event loop (no thread involved:
    the loop reads the reply when the pipe becomes readable).

    The rig goes to the worker before the first frame, from a thread, so that making a
    session on an event loop does not wait for a busy worker to take megabytes.
    """

    def __init__(self, worker: _Worker, connection: Connection, rig: Rig) -> None:
        self._worker = worker
        self._connection = connection
        self._rig: Rig | None = rig
        self._memory = SharedMemory(create=True, size=rig.image.nbytes)
        self._image = np.ndarray(rig.image.shape, np.uint8, buffer=self._memory.buf)
        self._closed = False

    def render(self, motion: np.ndarray, index: int, video: VideoRequest | None) -> RenderedFrame:
        self._open()
        self._send("render", motion, index, video)
        return self._rendered(self._reply())

    async def render_async(self, motion: np.ndarray, index: int, video: VideoRequest | None) -> RenderedFrame:
        if self._rig is not None:
            await asyncio.to_thread(self._open)
        self._send("render", motion, index, video)
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = self._connection.fileno()
        loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(fd)
        return self._rendered(self._reply())  # the worker writes a reply at once: this read does not wait

    def close(self) -> None:
        """Release the worker's stream and the shared picture; idempotent, and it does not wait
        for the worker (an event loop may call it). Call it when no ``render`` is running."""
        if self._closed:
            return
        self._closed = True
        self._connection.close()  # the worker's end reads EOF: it drops the stream
        with self._worker.lock:
            self._worker.streams -= 1
        del self._image
        self._memory.close()
        self._memory.unlink()  # the worker's mapping outlives the name

    def _open(self) -> None:
        if self._rig is not None:
            self._send("open", self._rig, self._memory.name)
            self._rig = None
            self._reply()

    def _send(self, *request: object) -> None:
        if self._closed:
            raise RuntimeError("render on a closed renderer")
        try:
            self._connection.send(request)
        except OSError:
            raise self._exited() from None

    def _reply(self) -> object:
        """The worker's result for the last request, or its error raised here."""
        try:
            result, error = self._connection.recv()
        except (EOFError, OSError):
            raise self._exited() from None
        if error is not None:
            raise RuntimeError(f"render worker: {error}")
        return result

    def _rendered(self, result: object) -> RenderedFrame:
        """A render's reply: the picture is copied out of the shared memory the next frame reuses."""
        packet, keyframe = result  # type: ignore[misc]
        return RenderedFrame(self._image.copy(), packet, keyframe)

    def _exited(self) -> RuntimeError:
        process = self._worker.process
        process.join(_EXIT_WAIT_S)
        return RuntimeError(f"render worker {process.pid} exited (code {process.exitcode})")


class _Worker:
    """One render process and its control pipe, which hands it the ends of streams' pipes."""

    def __init__(self, context: multiprocessing.context.SpawnContext) -> None:
        self._context = context
        self._control, child = context.Pipe()  # a socket pair: it can carry file descriptors
        self.process = context.Process(target=_serve, args=(child,), name="emolive-render", daemon=True)
        self.process.start()
        child.close()
        self.lock = threading.Lock()
        self.streams = 0

    def wait_ready(self) -> None:
        """Wait until the process has imported the renderer (its first frame is then not late)."""
        try:
            if self._control.poll(_START_TIMEOUT_S) and self._control.recv_bytes() == _READY:
                return
        except (EOFError, OSError):
            pass
        self.close()
        raise RuntimeError(f"render worker {self.process.pid} did not start (exit code {self.process.exitcode})")

    def connect(self) -> Connection:
        """A new stream's pipe: our end; the worker gets the other."""
        ours, theirs = self._context.Pipe()
        with self.lock:
            try:
                reduction.send_handle(self._control, theirs.fileno(), self.process.pid)
            except OSError:
                pass  # a dead worker: the stream's first read says so
            self.streams += 1
        theirs.close()
        return ours

    def close(self) -> None:
        self._control.close()  # the worker reads EOF and exits
        self.process.join(_EXIT_WAIT_S)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class _Stream:
    """A session's state in a worker: its renderer and the shared picture it writes."""

    def __init__(self, rig: Rig, memory_name: str) -> None:
        self.renderer = FrameRenderer(rig)
        # Spawned workers share the server's resource tracker: registering the name again on
        # attaching changes nothing, and the session that made it unlinks it.
        self.memory = SharedMemory(name=memory_name)
        self.image = np.ndarray(rig.image.shape, np.uint8, buffer=self.memory.buf)

    def render(self, motion: np.ndarray, index: int, video: VideoRequest | None) -> tuple[bytes | None, bool]:
        frame = self.renderer.render(motion, index, video)
        self.image[...] = frame.image
        return frame.packet, frame.keyframe

    def close(self) -> None:
        del self.image
        self.memory.close()


def _serve(control: Connection) -> None:
    """A worker process: requests from every stream's pipe, each answered on it, until the
    control pipe closes."""
    import cv2

    cv2.setNumThreads(1)  # one frame at a time per process; the pool is the parallelism
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops us
    control.send_bytes(_READY)
    streams: dict[Connection, _Stream | None] = {}
    while True:
        for connection in wait([control, *streams]):
            if connection is control:
                try:
                    fd = reduction.recv_handle(control)
                except (EOFError, OSError):
                    for stream in streams.values():
                        if stream is not None:
                            stream.close()
                    return
                streams[Connection(fd)] = None
                continue
            try:
                op, *args = connection.recv()
            except (EOFError, OSError):  # the session closed its renderer
                stream = streams.pop(connection)
                if stream is not None:
                    stream.close()
                connection.close()
                continue
            try:
                if op == "open":
                    streams[connection] = _Stream(*args)
                    reply = (None, None)
                elif op == "render" and streams[connection] is not None:
                    reply = (streams[connection].render(*args), None)
                else:
                    raise ValueError(f"unexpected request {op!r}")
            except Exception as error:
                reply = (None, f"{type(error).__name__}: {error}")
            try:
                connection.send(reply)
            except OSError:  # closed while we rendered: its EOF comes next
                pass
