"""What ``bench stream`` and ``bench soak`` measure with: the exact mapping of pushed voice to
the frames that carry it, CPU and memory from /proc, and the figures of a run."""

from __future__ import annotations

import math
import os
from array import array
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from emolive.bench.speech import RATE

FPS = 25
OUT_PER_FRAME = RATE // FPS
WARMUP_S = 2.0  # excluded from fps and CPU
THUMB_EVERY = 25  # decoded frames compared with the server's render
THUMB = 64


@dataclass
class Hit:
    """A pushed chunk and the frame that carries its first sample."""

    pushed_at: float
    first_in_turn: bool
    frame_index: int
    out_sample: int  # position of the chunk's first sample in the 48 kHz output stream
    left_at: float  # when that frame left (yield / server pump)


class AudioTracker:
    """Exact mapping of pushed samples to output frames; see ``emolive.bench.stream``."""

    def __init__(self, keep_hits: bool = True) -> None:
        self._keep_hits = keep_hits  # False (soak): keep turn starts and latencies only, not every hit
        self.latencies_ms = array("d")
        self._pending: deque[np.ndarray] = deque()  # pushed, not yet seen in output
        self._pending_size = 0
        self._base = 0  # global position of the first pending sample
        self._pushed = 0
        self._chunks: deque[tuple[int, float, bool]] = deque()
        self._new_turn = True
        self.hits: list[Hit] = []
        self.mismatches = 0

    def pushed(self, samples: np.ndarray, at: float) -> None:
        samples = np.asarray(samples, np.int16).reshape(-1)
        self._chunks.append((self._pushed, at, self._new_turn))
        self._new_turn = False
        self._pending.append(samples)
        self._pending_size += len(samples)
        self._pushed += len(samples)

    def end_of_turn(self) -> None:
        self._new_turn = True

    @property
    def new_turn(self) -> bool:
        """The next push starts a turn."""
        return self._new_turn

    def _take(self, n: int) -> np.ndarray:
        parts, need = [], n
        while need:
            head = self._pending[0]
            if len(head) <= need:
                parts.append(self._pending.popleft())
            else:
                parts.append(head[:need])
                self._pending[0] = head[need:]
            need -= len(parts[-1])
        self._pending_size -= n
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def frame(self, index: int, audio: np.ndarray, at: float) -> list[Hit]:
        audio = np.asarray(audio, np.int16).reshape(-1)
        nz = np.flatnonzero(audio)
        n = len(nz)
        if n == 0:
            return []
        if n > self._pending_size:
            self.mismatches += 1
            return []
        expected = self._take(n)
        if not np.array_equal(audio[nz], expected):
            self.mismatches += 1
        start, end = self._base, self._base + n
        self._base = end
        hits = []
        while self._chunks and self._chunks[0][0] < end:
            pos, pushed_at, first = self._chunks.popleft()
            offset = int(nz[max(0, pos - start)])
            hit = Hit(pushed_at, first, index, index * OUT_PER_FRAME + offset, at)
            hits.append(hit)
            self.latencies_ms.append(1000 * (at - pushed_at))
        self.hits.extend(hits if self._keep_hits else [h for h in hits if h.first_in_turn])
        return hits


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values``; NaN for none."""
    return float(np.percentile(np.asarray(values, float), q)) if len(values) else math.nan


def cpu_seconds(pids: Iterable[int] = ()) -> float:
    """CPU time of this process and of ``pids`` (its render worker processes)."""
    t = os.times()
    total = t.user + t.system
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # a worker that exited: its time is lost, as a crash would lose it
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def rss_mb(pids: Iterable[int] = ()) -> float:
    """Resident memory of this process and of ``pids`` (its render worker processes)."""
    total = 0.0
    for pid in ("self", *pids):
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0
        except (OSError, StopIteration):
            return math.nan  # a process gone: no honest total
    return total



@dataclass
class SessionResult:
    """One session's figures over the measurement window."""

    fps: float
    frames: int
    dropped: int
    lat_ms: list[float]
    turn_lat_ms: list[float]
    mismatches: int
    underruns: int = 0
    compute_ms: float = math.nan
    client_fps: float = math.nan
    client_lat_ms: list[float] = field(default_factory=list)
    lost: int = 0
    turns: int = 0
    transport_ms: list[float] = field(default_factory=list)  # webrtc: track -> RTP sender until received at the client
    sent_lat_ms: list[float] = field(default_factory=list)  # webrtc: arrival -> frame handed to the RTP sender


@dataclass
class RunResult:
    """The figures of one run of N sessions."""

    transport: str
    sessions: list[SessionResult]
    cpu_pct_per_session: float
    wall_s: float
    client_cpu_pct: float = math.nan
    loadavg: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def min_fps(self) -> float:
        return min(s.client_fps if self.transport == "webrtc" else s.fps for s in self.sessions)



def thumbnail(image: np.ndarray) -> np.ndarray:
    """The THUMB x THUMB picture client and server compare (the PSNR check)."""
    import cv2

    return cv2.resize(image, (THUMB, THUMB), interpolation=cv2.INTER_AREA)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit pictures, in dB."""
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return 10 * math.log10(255.0**2 / max(mse, 1e-6))

