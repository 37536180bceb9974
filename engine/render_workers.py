"""Rendering and encoding a session's frames: in the calling thread, or in worker processes.

A session turns each motion row into a picture (``emolive.engine.render.Renderer``) and, while a
WebRTC peer takes VP8, into a VP8 packet (``emolive.engine.media.Vp8Encoder``): ~7 ms of CPU for a
512² frame. Both are mostly C (OpenCV, libvpx) that releases the interpreter lock, but the
Python around them does not, and a server's one interpreter also runs every session's event
loop work (RTP, SRTP, Opus, sockets): with 4 sessions on 2 cores that interpreter was the wall
while a quarter of the CPU stood idle. :class:`RenderWorkers` moves the whole stage into
worker processes: a session sends a motion row (~0.3 kB) over a socket of its own and its
event loop reads the reply when it comes; the worker writes the picture into shared memory
the session owns and replies with the packet. A session stays on one worker, where its
encoder's state lives. Each frame costs the server's interpreter no thread hand-off at all:
every one waits for the lock behind the busy event loop for up to ``sys.getswitchinterval()``.

Sessions never die with a worker. A worker that exits (or stops answering) is killed if need
be and swapped for a spare process started beforehand; each of its sessions re-opens its
stream on a live worker and renders the frame again, so its client sees a short freeze. The
transport (:class:`Channel`) frames every message itself and reads it whole through the
event loop's socket API, so it works whatever blocking mode the loop leaves the socket in
(uvloop's readers switch descriptors to non-blocking).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from emolive.engine.render import Renderer
from emolive.engine.rig import Rig
from emolive.engine.media import Vp8Encoder, video_pts

log = logging.getLogger(__name__)

# A worker that has not exited this long after its control pipe closed is killed.
_EXIT_WAIT_S = 2.0
_START_TIMEOUT_S = 120.0  # a worker's imports take ~1.5 s on an idle 2-core machine
# A worker that takes this long to answer one request is taken for hung and replaced.
REPLY_TIMEOUT_S = 5.0
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
        self._encoder.target_bitrate = video.bitrate
        packets = self._encoder.encode(image, video_pts(index), video.keyframe)
        if not packets:
            return RenderedFrame(image)
        return RenderedFrame(image, packets[0].data, packets[0].keyframe)

    def close(self) -> None:
        self._encoder = None


class RenderWorkerError(RuntimeError):
    """A render worker could not render a frame: it reported an error, or its replacement
    failed too."""


class StreamBroken(Exception):
    """The other end of a :class:`Channel` closed it, or a message came in malformed."""


class Channel:
    """Pickled messages over a stream socket, each behind an 8-byte length.

    ``send``/``recv`` block the calling thread (the worker's side); ``send_async``/
    ``recv_async`` go through the running loop's socket API (the session's side). Every read
    takes a whole message, however the bytes arrive.
    """

    _HEADER = struct.Struct("!Q")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    @classmethod
    def encode(cls, message: object) -> bytes:
        payload = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
        return cls._HEADER.pack(len(payload)) + payload

    def send(self, message: object) -> None:
        self.sock.setblocking(True)
        self.sock.sendall(self.encode(message))

    def recv(self) -> object:
        self.sock.setblocking(True)
        (size,) = self._HEADER.unpack(self._read(self._HEADER.size))
        return self._decode(self._read(size))

    async def send_async(self, data: bytes) -> None:
        """Send a message made by :meth:`encode`."""
        self.sock.setblocking(False)
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def recv_async(self) -> object:
        self.sock.setblocking(False)
        (size,) = self._HEADER.unpack(await self._read_async(self._HEADER.size))
        return self._decode(await self._read_async(size))

    def close(self) -> None:
        self.sock.close()

    def _read(self, size: int) -> bytearray:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            count = self.sock.recv_into(view[got:])
            if not count:
                raise StreamBroken("closed by the other end")
            got += count
        return buffer

    async def _read_async(self, size: int) -> bytearray:
        loop = asyncio.get_running_loop()
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            count = await loop.sock_recv_into(self.sock, view[got:])
            if not count:
                raise StreamBroken("closed by the other end")
            got += count
        return buffer

    @staticmethod
    def _decode(payload: bytearray) -> object:
        try:
            return pickle.loads(payload)
        except Exception as error:
            raise StreamBroken(f"malformed message: {error}") from None


class RenderWorkers:
    """A pool of render processes shared by sessions, with one spare; thread-safe.

    ``processes`` (and the spare) are spawned at once and the pool is ready when they are
    (each imports OpenCV and the renderer, ~1.5 s; as with any spawned process, a script
    that makes a pool needs ``if __name__ == "__main__"``). A session's :meth:`stream` goes
    to the worker with the fewest streams. A worker that dies is swapped for the spare
    (:meth:`replace`) and a new spare is started in the background.
    """

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self._context = multiprocessing.get_context("spawn")  # forking a threaded server is unsafe
        self._lock = threading.Lock()
        started = [_Worker(self._context) for _ in range(processes + 1)]
        for worker in started:
            worker.wait_ready()
        self._workers, self._spare = started[:-1], started[-1]
        self._refilling: threading.Thread | None = None
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The serving workers' process ids (not the spare's)."""
        with self._lock:
            return [worker.process.pid for worker in self._workers]

    @property
    def stream_count(self) -> int:
        with self._lock:
            return sum(worker.streams for worker in self._workers)

    def stream(self, rig: Rig) -> WorkerFrameRenderer:
        """A renderer for one session's frames; it joins a worker at its first frame."""
        if self._closed:
            raise RuntimeError("render workers are closed")
        return WorkerFrameRenderer(self, rig)

    def connect(self) -> tuple[_Worker, Channel]:
        """A new stream on the live worker with the fewest streams (may wait for a spawn)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("render workers are closed")
            for worker in [w for w in self._workers if not w.process.is_alive()]:
                self._swap(worker)
            worker = min(self._workers, key=lambda w: w.streams)
            return worker, worker.connect()

    def replace(self, worker: _Worker, reason: str) -> None:
        """Take ``worker`` out of service (killed if it still runs) and put the spare in its
        place; a no-op for a worker already replaced. May wait for a spawn: call off the loop."""
        with self._lock:
            if self._closed or worker not in self._workers:
                return
            log.warning("render worker %d %s; replacing it", worker.process.pid, reason)
            self._swap(worker)

    def close(self) -> None:
        """Stop every worker (sessions still rendering fail their frames)."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
            spare, self._spare = self._spare, None
            refilling = self._refilling
        if refilling is not None:
            refilling.join()
        for worker in [*workers, spare]:
            if worker is not None:
                worker.close()

    def _swap(self, worker: _Worker) -> None:
        """Under the lock: the spare (or a fresh process) takes ``worker``'s place, and
        ``worker`` is stopped (killed if it still runs)."""
        spare, self._spare = self._spare, None
        if spare is None or not spare.process.is_alive():
            spare = _Worker(self._context)
            spare.wait_ready()
        self._workers[self._workers.index(worker)] = spare
        worker.close(wait=False)
        if self._refilling is None or not self._refilling.is_alive():
            self._refilling = threading.Thread(target=self._refill, name="emolive-render-spare", daemon=True)
            self._refilling.start()

    def _refill(self) -> None:
        spare = _Worker(self._context)
        try:
            spare.wait_ready()
        except RuntimeError:
            log.exception("spare render worker did not start")
            return
        with self._lock:
            if not self._closed and self._spare is None:
                self._spare, spare = spare, None
        if spare is not None:
            spare.close()


class WorkerFrameRenderer:
    """:class:`FrameRenderer` run by a worker process, one frame at a time, awaited on the
    caller's event loop. If its worker dies or hangs, the frame is rendered again on another
    (the stream re-opened there; the encoder restarts with a keyframe)."""

    def __init__(self, pool: RenderWorkers, rig: Rig) -> None:
        self._pool = pool
        self._rig = rig
        self._worker: _Worker | None = None
        self._channel: Channel | None = None
        self._memory = SharedMemory(create=True, size=rig.image.nbytes)
        self._image = np.ndarray(rig.image.shape, np.uint8, buffer=self._memory.buf)
        self._closed = False
        self.reopened = 0  # streams re-opened on another worker after one failed

    @property
    def worker_pid(self) -> int | None:
        """The process rendering this stream now (None before its first frame)."""
        return self._worker.process.pid if self._worker is not None else None

    async def render_async(self, motion: np.ndarray, index: int, video: VideoRequest | None) -> RenderedFrame:
        request = Channel.encode(("render", motion, index, video))
        try:
            return self._rendered(await self._call(request))
        except (StreamBroken, OSError, TimeoutError) as error:
            await self._reopen(error)
        try:
            return self._rendered(await self._call(request))
        except (StreamBroken, OSError, TimeoutError) as error:
            raise RenderWorkerError(f"render worker failed again after a restart: {error}") from error

    def close(self) -> None:
        """Release the worker's stream and the shared picture; idempotent, and it does not wait
        for the worker (an event loop may call it). Call it when no render is running."""
        if self._closed:
            return
        self._closed = True
        self._leave()
        del self._image
        self._memory.close()
        self._memory.unlink()  # the worker's mapping outlives the name

    async def _call(self, request: bytes) -> object:
        """Send ``request`` to the worker (joining one first) and return its reply."""
        if self._closed:
            raise RuntimeError("render on a closed renderer")
        if self._channel is None:
            await self._join()
        channel = self._channel
        await channel.send_async(request)
        return await _reply(channel)

    async def _join(self) -> None:
        """Open this stream on a worker: the rig goes over once, pickled off the loop."""
        worker, channel = await asyncio.to_thread(self._pool.connect)
        self._worker, self._channel = worker, channel
        opening = await asyncio.to_thread(Channel.encode, ("open", self._rig, self._memory.name))
        await channel.send_async(opening)
        await _reply(channel)

    async def _reopen(self, error: BaseException) -> None:
        worker = self._worker
        self._leave()
        if worker is None:
            raise RenderWorkerError(f"render worker: {error}") from None
        started = time.monotonic()
        # A killed worker's socket closes a moment before its exit status can be read.
        while worker.process.is_alive() and time.monotonic() - started < 0.5 and not isinstance(error, TimeoutError):
            await asyncio.sleep(0.01)
        if worker.process.is_alive():
            reason = "did not answer in time" if isinstance(error, TimeoutError) else f"broke a stream ({error})"
        else:
            reason = f"exited (code {worker.process.exitcode})"
        await asyncio.to_thread(self._pool.replace, worker, reason)
        self.reopened += 1
        await self._join()

    def _leave(self) -> None:
        if self._channel is not None:
            self._channel.close()  # the worker reads EOF: it drops the stream
            self._channel = None
        if self._worker is not None:
            with self._worker.lock:
                self._worker.streams -= 1
            self._worker = None

    def _rendered(self, result: object) -> RenderedFrame:
        """A render's reply: the picture is copied out of the shared memory the next frame reuses."""
        packet, keyframe = result  # type: ignore[misc]
        return RenderedFrame(self._image.copy(), packet, keyframe)


async def _reply(channel: Channel) -> object:
    """The worker's reply on ``channel`` (:func:`_result`), waited for at most REPLY_TIMEOUT_S."""
    # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancel that arrives as
    # the reply does, and a session's closing frame loop then ran on (tests/test_server_ops.py).
    async with asyncio.timeout(REPLY_TIMEOUT_S):
        reply = await channel.recv_async()
    return _result(reply)


def _result(reply: object) -> object:
    """A worker's reply: its result, or the error it reported raised here."""
    result, error = reply  # type: ignore[misc]
    if error is not None:
        raise RenderWorkerError(f"render worker: {error}")
    return result


class _Worker:
    """One render process and its control pipe, which hands it the sockets of new streams."""

    def __init__(self, context: multiprocessing.context.SpawnContext) -> None:
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

    def connect(self) -> Channel:
        """A new stream's channel: our end; the worker gets the other."""
        ours, theirs = socket.socketpair()
        with self.lock:
            try:
                reduction.send_handle(self._control, theirs.fileno(), self.process.pid)
            except OSError:
                pass  # a dead worker: the stream's first read says so
            self.streams += 1
        theirs.close()
        return Channel(ours)

    def close(self, wait: bool = True) -> None:
        """Stop the process: its control pipe closes (it exits), and it is killed if it does
        not within ``_EXIT_WAIT_S`` — or at once without ``wait``."""
        self._control.close()
        if wait:
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
    """A worker process: requests from every stream's channel, each answered on it, until
    the control pipe closes."""
    import cv2

    cv2.setNumThreads(1)  # one frame at a time per process; the pool is the parallelism
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops us
    control.send_bytes(_READY)
    streams: dict[Channel, _Stream | None] = {}

    def drop(channel: Channel) -> None:
        stream = streams.pop(channel)
        if stream is not None:
            stream.close()
        channel.close()

    while True:
        for ready in wait([control, *streams]):
            if ready is control:
                try:
                    fd = reduction.recv_handle(control)
                except (EOFError, OSError):
                    for channel in list(streams):
                        drop(channel)
                    return
                streams[Channel(socket.socket(fileno=fd))] = None
                continue
            channel = ready
            try:
                op, *args = channel.recv()
            except (StreamBroken, OSError):  # the session closed its renderer
                drop(channel)
                continue
            try:
                if op == "open":
                    streams[channel] = _Stream(*args)
                    reply = (None, None)
                elif op == "render" and streams[channel] is not None:
                    reply = (streams[channel].render(*args), None)
                else:
                    raise ValueError(f"unexpected request {op!r}")
            except Exception as error:
                reply = (None, f"{type(error).__name__}: {error}")
            try:
                channel.send(reply)
            except OSError:  # closed while we rendered: its EOF comes next
                pass
