"""``emolive bench avsync``: the A/V offset a real Chromium shows a viewer, on loopback.

The session is the demo page's TTS path, unchanged: the page (``client_demo``) decodes a WAV,
creates a ``tts`` session, streams the voice over the session WebSocket in real time and
receives face and voice over WebRTC (recvonly video + audio). The voice is a train of sharp,
irregularly spaced vowel-like bursts in silence, so the mouth opens and shuts on each.

What the viewer sees: a ``requestVideoFrameCallback`` probe draws every presented frame's
mouth box into a canvas and records its mean darkness (an open mouth shows its dark cavity)
at ``expectedDisplayTime``, the compositor's display time on the page's ``performance.now()``
clock. What the viewer hears (the headline figure): the voice the ``<video>`` element plays.
``getSynchronizationSources()`` on the audio receiver, polled every 2 ms, gives the RTP
timestamp Chromium last handed to playout and when; plus the output device's delay as
Chromium reports it (``media-playout`` stats), that is when it is heard. The RTP timestamp
minus the sender's random origin (read from aiortc's sender on the server) is the session's
sample count, so the voice the server sent is placed on the page's clock sample by sample.
A second figure taps the same track through WebAudio (MediaStreamAudioSourceNode -> an
AudioWorklet; ``getOutputTimestamp()`` maps each render quantum to when the speakers play it),
as an app that records or processes the voice in WebAudio hears it: that path buffers the
voice ~20-30 ms more than the element does. (The probe mutes the element, whose sound a muted
element still pulls from the receiver, so that what plays is the WebAudio graph.)

The offset is the lag that best aligns the two series (cross-correlation of mouth darkness
with the voice envelope on a 1 ms grid), minus the same lag measured on the source: the
frames and voice the server's frame pump hands the WebRTC tracks (a sink on the session),
each frame shown for its 40 ms slot with its own 1920 voice samples. The source lag is the
motion model's own response (its mouth follows loudness with a short attack), so the
difference is what transport and browser add. Positive: the mouth lags the voice; negative:
the mouth leads it. Only the part after ``SETTLE_S`` counts: Chromium aligns the streams from
the RTCP sender reports, of which aiortc sends one per stream every 0.5-1.5 s, and its audio
jitter buffer takes seconds to shrink after a loaded start.
"""

from __future__ import annotations

import base64
import io
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emolive.bench.report import loadavg
from emolive.engine.formats import FRAME_SIZE

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
]
WS_RATE = 16_000  # what the demo page sends
OUT_RATE = 48_000  # the session's voice out
FPS = 25
LEAD_S = 1.5  # silence first: session set-up and WebRTC connect happen in it
SETTLE_S = 10.0  # of the session: the part before is left out (sender reports, jitter buffers settle)
MAX_LAG_MS = 300
QUANTUM = 128  # WebAudio's render quantum

# Runs in the page, before the demo starts a session: taps the remote tracks as they arrive.
PROBE_JS = r"""
(box) => {
  const probe = window.__avsync = { box, video: [], audio: [], clock: [], ssrc: [], ready: false, error: null,
                                    outputLatency: null, baseLatency: null };
  const worklet = `class Energy extends AudioWorkletProcessor {
      constructor() { super(); this.batch = []; }
      process(inputs, outputs) {
        const input = inputs[0], output = outputs[0];
        let sum = 0, n = 0;
        if (input.length) {
          const x = input[0];
          for (let i = 0; i < x.length; i++) sum += x[i] * x[i];
          n = x.length;
          for (let c = 0; c < output.length; c++) output[c].set(input[Math.min(c, input.length - 1)]);
        }
        this.batch.push(currentFrame, n ? sum / n : 0);
        if (this.batch.length >= 64) { this.port.postMessage(this.batch); this.batch = []; }
        return true;
      } }
    registerProcessor('avsync-energy', Energy);`;
  const video = document.getElementById('video');
  video.muted = true;  // the viewer hears the WebAudio output, which the probe timestamps
  const canvas = new OffscreenCanvas(box[2] - box[0], box[3] - box[1]);
  const g = canvas.getContext('2d', { willReadFrequently: true });
  const onFrame = (_now, meta) => {
    g.drawImage(video, box[0], box[1], canvas.width, canvas.height, 0, 0, canvas.width, canvas.height);
    const px = g.getImageData(0, 0, canvas.width, canvas.height).data;
    let dark = 0;
    for (let i = 0; i < px.length; i += 4) dark += 255 - (0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]);
    probe.video.push([meta.expectedDisplayTime, dark / (px.length / 4), meta.rtpTimestamp || 0]);
    video.requestVideoFrameCallback(onFrame);
  };
  let started = false;
  const start = async (track) => {
    if (started) return;
    started = true;
    try {
      const ctx = new AudioContext({ sampleRate: 48000, latencyHint: 'interactive' });
      await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([worklet], { type: 'text/javascript' })));
      const node = new AudioWorkletNode(ctx, 'avsync-energy', { outputChannelCount: [1] });
      node.port.onmessage = (e) => { for (let i = 0; i < e.data.length; i += 2) probe.audio.push([e.data[i], e.data[i + 1]]); };
      ctx.createMediaStreamSource(new MediaStream([track])).connect(node);
      node.connect(ctx.destination);
      await ctx.resume();
      probe.ctx = ctx;
      probe.outputLatency = ctx.outputLatency; probe.baseLatency = ctx.baseLatency;
      probe.timer = setInterval(() => {
        const ts = ctx.getOutputTimestamp();
        if (ts.performanceTime > 0) probe.clock.push([ts.contextTime, ts.performanceTime]);
        probe.outputLatency = ctx.outputLatency;
      }, 50);
      probe.ready = true;
    } catch (error) { probe.error = String(error); }
  };
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = function (...args) {
    const pc = new Original(...args);
    pc.addEventListener('track', (event) => {
      if (event.track.kind === 'audio') {
        start(event.track);
        let last = null;
        probe.ssrcTimer = setInterval(() => {
          const s = event.receiver.getSynchronizationSources()[0];
          if (s && s.rtpTimestamp !== last) { last = s.rtpTimestamp; probe.ssrc.push([performance.now(), s.timestamp, s.rtpTimestamp]); }
        }, 2);
      }
      else video.requestVideoFrameCallback(onFrame);
    });
    return pc;
  };
  window.RTCPeerConnection.prototype = Original.prototype;
}
"""

STATS_JS = r"""
async () => {
  const out = {};
  (await window.emolive.state.pc.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp') out[s.kind] = s;
    if (s.type === 'media-playout') out.playout = s;
  });
  return out;
}
"""


@dataclass
class Stimulus:
    """Bursts in silence at WS_RATE, and when each starts (s from the first sample)."""

    pcm: np.ndarray
    onsets: list[float]


def stimulus(seconds: float, seed: int = 0) -> Stimulus:
    """A vowel-like buzz (130 Hz, harmonics to 3.5 kHz: the speech band the mouth follows) in
    bursts of 120-320 ms with 5 ms ramps, 300-900 ms apart, after LEAD_S of silence. The
    irregular spacing gives the cross-correlation one clear peak; onsets fall anywhere within
    a video frame, so the 40 ms frame grid averages out."""
    rng = np.random.default_rng(seed)
    total = int(seconds * WS_RATE)
    pcm = np.zeros(total, np.float32)
    onsets = []
    t = LEAD_S
    while True:
        length = rng.uniform(0.12, 0.32)
        if t + length + 0.3 > seconds:
            break
        n = int(length * WS_RATE)
        time_s = np.arange(n) / WS_RATE
        f0 = 130.0 * (1 + 0.03 * np.sin(2 * np.pi * 3 * time_s))
        phase = 2 * np.pi * np.cumsum(f0) / WS_RATE
        buzz = sum(np.sin(k * phase) / k for k in range(1, int(3500 / 130)))
        ramp = np.minimum(1.0, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.005 * WS_RATE))
        start = int(t * WS_RATE)
        pcm[start : start + n] = 0.35 * buzz / np.abs(buzz).max() * ramp
        onsets.append(t)
        t += length + rng.uniform(0.3, 0.9)
    return Stimulus(np.round(pcm * 32767).astype(np.int16), onsets)


def wav_bytes(pcm: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, pcm, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def mouth_box(rig: Any, size: int) -> tuple[int, int, int, int]:
    """x0, y0, x1, y1: the lips and the room the jaw opens into, with margin for head sway."""
    lips = rig.vertices[np.concatenate([rig.mouth.upper_inner, rig.mouth.lower_inner]), :2]
    (x0, y0), (x1, y1) = lips.min(0), lips.max(0)
    width = x1 - x0
    box = (x0 - 0.15 * width, y0 - 0.15 * width, x1 + 0.15 * width, y1 + 0.45 * width)
    return tuple(int(np.clip(round(v), 0, size)) for v in box)  # type: ignore[return-value]


def best_lag_ms(mouth_t: np.ndarray, mouth: np.ndarray, audio_t: np.ndarray, energy: np.ndarray,
                span: tuple[float, float]) -> tuple[float, float]:
    """The lag (ms) by which the mouth series follows the audio envelope, and the peak's
    correlation. ``mouth`` holds from each time to the next (a shown frame); ``energy`` is
    per audio quantum. Both on a 1 ms grid over ``span`` (ms)."""
    grid = np.arange(span[0], span[1], 1.0)
    m = mouth[np.clip(np.searchsorted(mouth_t, grid, side="right") - 1, 0, len(mouth) - 1)]
    env = np.sqrt(energy)
    lags = np.arange(-MAX_LAG_MS, MAX_LAG_MS + 1)
    a = np.interp(grid[:, None] - lags[None, :], audio_t, env)  # audio shifted by each lag
    a = (a - a.mean(0)) / (a.std(0) + 1e-12)
    m = (m - m.mean()) / (m.std() + 1e-12)
    corr = (m[:, None] * a).mean(0)
    k = int(np.argmax(corr))
    if 0 < k < len(lags) - 1:  # parabolic peak: the 1 ms grid is finer than needed, but cheap
        y0, y1, y2 = corr[k - 1], corr[k], corr[k + 1]
        shift = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) if (y0 - 2 * y1 + y2) else 0.0
        return float(lags[k] + shift), float(y1)
    return float(lags[k]), float(corr[k])


class SourceSink:
    """Added to the session: the mouth darkness and the voice of every frame the pump fans out."""

    def __init__(self, box: tuple[int, int, int, int]) -> None:
        self.box = box
        self.frames: list[tuple[int, float]] = []
        self.audio: dict[int, np.ndarray] = {}
        self.rtp_origin: int | None = None

    def put_frame(self, frame: Any) -> None:
        self.audio[frame.index] = np.asarray(frame.audio, np.int16).reshape(-1).copy()
        if frame.image is not None:
            x0, y0, x1, y1 = self.box
            crop = np.asarray(frame.image[y0:y1, x0:x1], np.float32)
            self.frames.append((frame.index, float(255 - (crop @ np.array([0.299, 0.587, 0.114], np.float32)).mean())))


class AudioOrigin:
    """Learns the audio sender's RTP timestamp origin (aiortc picks it at random and has no
    public way to tell it) from the live session's ``sent_observers``: when the track hands the
    sender a packet, the sender has sent the one before, so that packet's pts and the RTP
    timestamp aiortc last sent (its private ``__rtp_timestamp``, read here) are both known."""

    def __init__(self, sender: Any, sink: SourceSink) -> None:
        self._sender = sender
        self._sink = sink
        self._last_pts: int | None = None

    def on_sent(self, kind: str, pts: int, at: float) -> None:
        if kind != "audio":
            return
        if self._last_pts is not None and self._sink.rtp_origin is None:
            self._sink.rtp_origin = (self._sender._RTCRtpSender__rtp_timestamp - self._last_pts) % 2**32
        self._last_pts = pts


async def _watch_audio_origin(live: Any, sink: SourceSink) -> None:
    """Have ``sink`` learn the audio sender's RTP timestamp origin (see :class:`AudioOrigin`)."""
    sender = next(s for s in live.peer.getSenders() if s.track is not None and s.track.kind == "audio")
    live.sent_observers.append(AudioOrigin(sender, sink).on_sent)


@dataclass
class AvSyncResult:
    """Offsets in ms, the mouth's lag behind the voice (> 0: the mouth lags, < 0: it leads),
    net of the motion model's own lag on the source."""

    offset_ms: float  # as the page's <video> plays it: what the viewer sees and hears
    halves_ms: tuple[float, float]  # offset_ms over the first and the second half of the window
    webaudio_offset_ms: float  # the voice as a WebAudio graph hears it (MediaStreamAudioSourceNode)
    source_lag_ms: float
    correlation: float  # of the element-path alignment; the source's is in details
    frames: int
    details: dict = field(default_factory=dict)


def _source_lag(sink: SourceSink, start_index: int, stop_index: int) -> tuple[float, float]:
    idx = np.array([i for i, _ in sink.frames if start_index <= i < stop_index])
    dark = np.array([d for i, d in sink.frames if start_index <= i < stop_index])
    first, last = int(idx.min()), int(idx.max())
    audio_t, energy = _source_energy(sink, first, last)
    return best_lag_ms(idx * 1000.0 / FPS, dark, audio_t / 48, energy,
                       (first * 1000 / FPS + MAX_LAG_MS, (last + 1) * 1000 / FPS - MAX_LAG_MS))


def _source_energy(sink: SourceSink, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """The voice of frames ``first..last`` as the server sent it: each quantum's first sample
    (48 kHz, the session's sample count) and its mean energy."""
    voice = np.concatenate([sink.audio.get(i, np.zeros(OUT_RATE // FPS, np.int16)) for i in range(first, last + 1)])
    voice = voice[: len(voice) // QUANTUM * QUANTUM].astype(np.float64) / 32768
    energy = (voice.reshape(-1, QUANTUM) ** 2).mean(1)
    return first * (OUT_RATE // FPS) + np.arange(len(energy), dtype=np.float64) * QUANTUM, energy


def measure_avsync(server: Any, seconds: float = 20.0, seed: int = 0, headless: bool = True) -> AvSyncResult:
    """One session of ``seconds`` through the demo page in Chromium against ``server`` (a
    running ``emolive.bench.background_server.BackgroundServer`` with loopback ICE); see the module docstring."""
    from playwright.sync_api import sync_playwright

    stim = stimulus(seconds, seed)
    size = FRAME_SIZE
    box = mouth_box(server.app.state.store.rig("default", size), size)
    sink = SourceSink(box)
    registry = server.app.state.registry
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=headless, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=10_000)
            page.evaluate(PROBE_JS, list(box))
            page.evaluate("""b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                window.__fileDone = window.emolive.startFile(bytes.buffer); }""",
                          base64.b64encode(wav_bytes(stim.pcm, WS_RATE)).decode())
            page.wait_for_function("window.emolive.state.session !== null", timeout=10_000)
            session_id = page.evaluate("window.emolive.state.session.session_id")
            live = registry.get(session_id)
            server.loop.call_soon_threadsafe(live.add_sink, sink)
            page.wait_for_function("window.__avsync.ready || window.__avsync.error", timeout=15_000)
            server.call(_watch_audio_origin(live, sink))
            if page.evaluate("window.__avsync.error"):
                raise RuntimeError(f"audio probe failed: {page.evaluate('window.__avsync.error')}")
            page.wait_for_function("window.emolive.state.events.some(e => e.type === 'playback_finished')",
                                   timeout=int((seconds + 15) * 1000))
            time.sleep(1.0)  # the last burst's frames and voice reach the screen and speakers
            stats = page.evaluate(STATS_JS)
            probe = page.evaluate("""() => { const p = window.__avsync; clearInterval(p.timer); clearInterval(p.ssrcTimer);
                return { video: p.video, audio: p.audio, clock: p.clock, ssrc: p.ssrc, timeOrigin: performance.timeOrigin, outputLatency: p.outputLatency,
                         baseLatency: p.baseLatency, sampleRate: p.ctx.sampleRate,
                         t0: window.emolive.state.t0 }; }""")
            server.loop.call_soon_threadsafe(live.remove_sink, sink)
            page.evaluate("window.emolive.stop()")
        finally:
            browser.close()
    return analyse(probe, sink, stats, seconds)


def analyse(probe: dict, sink: SourceSink, stats: dict, seconds: float) -> AvSyncResult:
    video = np.array(probe["video"], np.float64)
    audio = np.array(probe["audio"], np.float64)
    clock = np.array(probe["clock"], np.float64)
    ssrc = np.array(probe["ssrc"], np.float64)
    if len(video) < 50 or len(audio) < 1000 or len(clock) < 10 or len(ssrc) < 100 or sink.rtp_origin is None:
        raise RuntimeError(f"too little measured: {len(video)} frames, {len(audio)} audio quanta, {len(clock)} "
                           f"clock reads, {len(ssrc)} RTP playout reads, RTP origin {sink.rtp_origin}")
    video = video[np.argsort(video[:, 0])]
    t0 = probe["t0"]  # performance.now() when the page began streaming the voice
    lo = max(t0 + SETTLE_S * 1000, video[0, 0]) + MAX_LAG_MS
    hi = min(t0 + seconds * 1000, video[-1, 0]) - MAX_LAG_MS
    if hi - lo < 4000:
        raise RuntimeError(f"measured window too short: {hi - lo:.0f} ms")
    indices = [i for i, _ in sink.frames]
    # The source window: the same part of the session (frame 0 is the session's start, a few
    # hundred ms before the page's t0; the model's lag does not depend on where).
    source_lag, source_corr = _source_lag(sink, int(SETTLE_S * FPS), max(indices) + 1)

    # The <video> element's voice: the RTP timestamp the receiver last handed to playout, at
    # the time it did (getSynchronizationSources), plus the output device's delay as Chromium
    # reports it (media-playout stats); RTP timestamp - the sender's origin = the session's
    # sample count, so the voice the server sent is placed on the page's clock.
    playout = stats.get("playout", {})
    device_ms = _per(playout, "totalPlayoutDelay", "totalSamplesCount")
    device_ms = 0.0 if math.isnan(device_ms) else device_ms
    samples = np.unwrap((ssrc[:, 2] - sink.rtp_origin) % 2**32, period=2**32)
    heard = ssrc[:, 1] - probe["timeOrigin"] + device_ms  # the SSRC timestamp is epoch ms
    # Heard time of sample 0: smoothed, since a 10 ms playout pull names the 20 ms packet it
    # came from, whichever half of it played.
    window = 25
    base = np.median(np.lib.stride_tricks.sliding_window_view(
        np.pad(heard - samples / 48, window // 2, mode="edge"), window), axis=1)
    order = np.argsort(samples)
    sent_at, energy = _source_energy(sink, min(sink.audio), max(sink.audio))
    element_t = sent_at / 48 + np.interp(sent_at, samples[order], base[order])
    element_lag, element_corr = best_lag_ms(video[:, 0], video[:, 1], element_t, energy, (lo, hi))
    mid = (lo + hi) / 2
    halves = tuple(best_lag_ms(video[:, 0], video[:, 1], element_t, energy, span)[0] - source_lag
                   for span in ((lo, mid), (mid, hi)))

    # The WebAudio graph's voice: each render quantum at the time getOutputTimestamp() says the
    # speakers play it (the median of the reads: robust to the odd late timer).
    clock_offset = float(np.median(clock[:, 1] - clock[:, 0] * 1000))
    webaudio_t = audio[:, 0] * 1000 / probe["sampleRate"] + clock_offset
    webaudio_lag, _ = best_lag_ms(video[:, 0], video[:, 1], webaudio_t, audio[:, 1],
                                  (max(lo, webaudio_t[0] + MAX_LAG_MS), min(hi, webaudio_t[-1] - MAX_LAG_MS)))
    details = {
        "source_correlation": source_corr,
        "audio_jitter_buffer_ms": _per(stats.get("audio", {}), "jitterBufferDelay", "jitterBufferEmittedCount"),
        "video_jitter_buffer_ms": _per(stats.get("video", {}), "jitterBufferDelay", "jitterBufferEmittedCount"),
        "audio_device_delay_ms": device_ms,
        "webaudio_output_latency_ms": 1000 * (probe["outputLatency"] or 0),
        "chromium_estimated_playout_diff_ms": _playout_diff(stats),
    }
    return AvSyncResult(element_lag - source_lag, halves, webaudio_lag - source_lag, source_lag, element_corr,
                        len(video), details)


def _per(stats: dict, total: str, count: str) -> float:
    return 1000 * stats[total] / stats[count] if stats.get(count) else math.nan


def _playout_diff(stats: dict) -> float:
    """video - audio estimatedPlayoutTimestamp (sender NTP ms): Chromium's own view of the skew."""
    try:
        return float(stats["video"]["estimatedPlayoutTimestamp"] - stats["audio"]["estimatedPlayoutTimestamp"])
    except (KeyError, TypeError):
        return math.nan


# ------------------------------------------------------------------------------------ the run


@dataclass(frozen=True)
class AvSyncConfig:
    """``emolive bench avsync``'s options (``emolive bench avsync --help`` explains each)."""

    runs: int
    seconds: float
    motion: str
    workers: int
    render_processes: int
    headed: bool


def run_avsync(config: AvSyncConfig) -> None:
    """Measure ``config.runs`` sessions and print each offset and their median."""
    import tempfile

    from emolive.bench.background_server import BackgroundServer
    from emolive.server.config import Settings

    if config.seconds < SETTLE_S + 6:
        raise SystemExit(f"--seconds must be at least {SETTLE_S + 6:.0f}: the first {SETTLE_S:.0f} s are left out")
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is not installed (Debian package chromium)")
    results = []
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir), ice_loopback=True, motion=config.motion, workers=config.workers,
                            render_processes=config.render_processes, max_sessions=2, detach_grace_s=0.5)
        with BackgroundServer(settings) as server:
            for run in range(config.runs):
                r = measure_avsync(server, config.seconds, seed=run, headless=not config.headed)
                results.append(r)
                d = r.details
                print(f"run {run + 1}/{config.runs}: offset {r.offset_ms:+.0f} ms (halves {r.halves_ms[0]:+.0f} / "
                      f"{r.halves_ms[1]:+.0f}; r={r.correlation:.2f}; model's own lag {r.source_lag_ms:+.0f} ms); "
                      f"through WebAudio {r.webaudio_offset_ms:+.0f} ms; {r.frames} frames shown; jitter buffers "
                      f"audio {d['audio_jitter_buffer_ms']:.0f} / video {d['video_jitter_buffer_ms']:.0f} ms; audio "
                      f"device {d['audio_device_delay_ms']:.0f} ms; Chromium's own estimate "
                      f"{-d['chromium_estimated_playout_diff_ms']:+.0f} ms", flush=True)
    offsets = [r.offset_ms for r in results]
    spread = f"range {min(offsets):+.0f} to {max(offsets):+.0f} ms"
    if len(offsets) > 1:
        spread += f", stdev {statistics.stdev(offsets):.0f} ms"
    webaudio = statistics.median(r.webaudio_offset_ms for r in results)
    print(f"A/V offset in Chromium: median {statistics.median(offsets):+.0f} ms over {len(offsets)} runs of "
          f"{config.seconds:.0f} s ({spread}; > 0: the mouth lags the voice); the voice tapped through WebAudio "
          f"instead: median {webaudio:+.0f} ms; load average {loadavg()}")
