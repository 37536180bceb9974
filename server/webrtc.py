"""WebRTC: the session's outgoing video + voice tracks, the incoming microphone, the peer.

Both outgoing tracks are fed by the session's single frame pump (``LiveSession``), so they
share its clock: video pts = ``frame.index`` on a 90 kHz clock, audio pts = samples at 48 kHz
(``frame.index * 1920`` plus 960 for the second 20 ms half of each 40 ms video frame).

When VP8 and Opus are negotiated (every browser offers both), the tracks hand aiortc packets
instead of raw frames: the VP8 packets the engine session encodes with each render (in its
render job, so in a render worker process when the server has them) and Opus packets encoded
here, both by the encoders of ``emolive.engine.media`` (a fraction of the CPU of aiortc's own). aiortc tells only its own encoder about keyframe requests
(PLI/FIR) and the receiver's bandwidth estimate (REMB), and has no public hook for them;
:func:`_forward_feedback` wraps the video sender's RTCP handler so the track hears them and
passes them to the session. Any other codec gets raw frames, encoded by aiortc.

Loopback ICE: aioice never offers 127.0.0.1 as a host candidate (``aioice.ice.
get_host_addresses`` filters it out). With ``Settings.ice_loopback`` the server wraps that
one function so it also returns 127.0.0.1 — see :func:`enable_loopback_candidates`. Nothing
else in aioice changes, and without the setting nothing is patched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np
from aiortc import (RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpCodecCapability, RTCRtpSender,
                    RTCSessionDescription, MediaStreamTrack)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RTCP_PSFB_APP, RTCP_PSFB_FIR, RTCP_PSFB_PLI, RtcpPsfbPacket, unpack_remb_fci
from aiortc.sdp import SessionDescription
from aiortc.stats import RTCTransportStats

from emolive.server.config import Settings
from emolive.server.errors import ApiError
from emolive.engine.formats import VOICE_RATE
from emolive.engine.media import (OPUS_FRAME, VIDEO_TIME_BASE, VOICE_TIME_BASE, VP8_START_BITRATE, OpusEncoder, video_pts,
                          yuv420p_frame)
from emolive.server.metrics import Metrics
from emolive.server.sessions import LiveSession

log = logging.getLogger("emolive.server")

AUDIO_CHUNK = OPUS_FRAME  # 20 ms at 48 kHz
VP8 = "video/vp8"
OPUS = "audio/opus"
# The outgoing audio queue holds at most this much; past it the oldest is dropped (a stalled
# sender must not build up a delay it would then keep forever).
MAX_AUDIO_BACKLOG_CHUNKS = 25


# ---------------------------------------------------------------------------------------
# Loopback ICE candidates

_loopback_enabled = False


def enable_loopback_candidates() -> None:
    """Make aioice offer 127.0.0.1 as an IPv4 host candidate (process-wide, idempotent).

    aioice gathers host candidates from ``aioice.ice.get_host_addresses(use_ipv4,
    use_ipv6)``, which skips 127.0.0.1, so a browser and a server on the same machine with
    no other route (a container, CI, a laptop offline) never connect. This wraps exactly that
    function; ``Connection`` looks it up in its module at gather time, so every connection
    created afterwards (the server's and, in tests, aiortc clients in the same process)
    also gathers a loopback candidate.
    """
    global _loopback_enabled
    if _loopback_enabled:
        return
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
        if use_ipv4 and "127.0.0.1" not in addresses:
            addresses.append("127.0.0.1")
        return addresses

    get_host_addresses.__wrapped__ = original  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses
    _loopback_enabled = True


def rtc_configuration(settings: Settings) -> RTCConfiguration:
    # aiortc falls back to a public STUN server when iceServers is None; say "none" explicitly.
    # aiortc uses the first STUN and the first TURN URL it is given (aioice takes one of each).
    return RTCConfiguration(iceServers=[RTCIceServer(urls=list(server.urls), username=server.username,
                                                     credential=server.credential)
                                        for server in settings.ice_servers])


# ---------------------------------------------------------------------------------------
# Outgoing tracks


class SessionVideoTrack(MediaStreamTrack):
    """Rendered frames of one session. Keeps only the newest frames: a slow network loses
    video frames, never the clock.

    With VP8 it sends the session's packets. A VP8 packet depends on the one before it, so a
    packet that has to be dropped (or the track's start) makes the track ask the session for a
    keyframe and skip packets until that keyframe arrives.
    """

    kind = "video"

    def __init__(self, live: LiveSession, depth: int = 2) -> None:
        super().__init__()
        self._live = live
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=depth)
        self._started = False
        self.codec = ""  # the negotiated codec's MIME type, set once the answer is made
        self.bitrate = VP8_START_BITRATE
        self._awaiting_keyframe = True

    def start_encoding(self) -> None:
        """Have the session encode VP8 for this track (its codec is VP8)."""
        self._live.engine.encode_video(self.bitrate)

    def stop_encoding(self) -> None:
        if self.codec == VP8:
            self._live.engine.encode_video(None)

    def request_keyframe(self) -> None:
        """The receiver lost the picture (PLI/FIR): the next frame is a keyframe."""
        self._live.engine.request_keyframe()

    def set_target_bitrate(self, bps: int) -> None:
        """The receiver's bandwidth estimate (REMB); the session's encoder clamps it."""
        self.bitrate = bps
        if self.codec == VP8:
            self._live.engine.encode_video(bps)

    def put_frame(self, frame: Any) -> None:
        if not self._started or frame.image is None:
            return
        if self.codec == VP8:
            if frame.packet is None or (self._awaiting_keyframe and not frame.keyframe):
                return
            self._awaiting_keyframe = False
        if self._queue.full():
            if self.codec == VP8:  # every packet after a lost one is undecodable: drop them all
                self._live.count_dropped("webrtc", self._queue.qsize() + 1)
                while not self._queue.empty():
                    self._queue.get_nowait()
                self._awaiting_keyframe = True
                self.request_keyframe()
                return
            self._live.count_dropped("webrtc")
            self._queue.get_nowait()
        self._queue.put_nowait(frame)

    async def recv(self) -> av.VideoFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._started:
            self._started = True
            if self.codec == VP8:
                self.request_keyframe()
        frame = await self._queue.get()
        pts = video_pts(frame.index)
        if self.codec == VP8:
            _notify_sent(self._live, self.kind, pts)
            return _av_packet(frame.packet, pts, VIDEO_TIME_BASE)
        # Conversion runs off the event loop, which carries every session's packets.
        image = await asyncio.get_running_loop().run_in_executor(None, yuv420p_frame, frame.image)
        image.pts = pts
        image.time_base = VIDEO_TIME_BASE
        _notify_sent(self._live, self.kind, pts)
        return image


class SessionAudioTrack(MediaStreamTrack):
    """The voice the face is lip-syncing (48 kHz mono, 20 ms frames), or silence with the
    same timing in puppet mode (the speaker hears themselves already)."""

    kind = "audio"

    def __init__(self, live: LiveSession, silent: bool) -> None:
        super().__init__()
        self._live = live
        self._silent = silent
        self._queue: asyncio.Queue = asyncio.Queue()
        self._started = False
        self.codec = ""  # the negotiated codec's MIME type, set once the answer is made
        self._encoder = OpusEncoder()

    def put_frame(self, frame: Any) -> None:
        if not self._started:
            return
        samples = np.asarray(frame.audio, dtype=np.int16).reshape(-1)
        if self._silent:
            samples = np.zeros_like(samples)
        base = frame.index * len(samples)
        for offset in range(0, len(samples), AUDIO_CHUNK):
            while self._queue.qsize() >= MAX_AUDIO_BACKLOG_CHUNKS:
                self._queue.get_nowait()
            self._queue.put_nowait((base + offset, samples[offset : offset + AUDIO_CHUNK]))

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        self._started = True
        while True:
            pts, chunk = await self._queue.get()
            if self.codec != OPUS:
                _notify_sent(self._live, self.kind, pts)
                return _audio_frame(chunk, pts)
            # Encoded here, on the loop: 0.3 ms, less than a hop to a worker thread and back.
            for packet in self._encoder.encode(chunk, pts):
                _notify_sent(self._live, self.kind, packet.pts)
                return _av_packet(packet.data, packet.pts, VOICE_TIME_BASE)


def _notify_sent(live: LiveSession, kind: str, pts: int) -> None:
    """Tell the session's sent observers (measurement only) that ``kind``'s track hands the
    RTP sender the frame or packet with ``pts``."""
    if live.sent_observers:
        now = time.monotonic()
        for observer in live.sent_observers:
            observer(kind, pts, now)


def _audio_frame(chunk: np.ndarray, pts: int) -> av.AudioFrame:
    audio = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
    audio.sample_rate = VOICE_RATE
    audio.pts = pts
    audio.time_base = VOICE_TIME_BASE
    return audio


def _av_packet(data: bytes, pts: int, time_base: Fraction) -> av.Packet:
    """An encoded packet as aiortc takes it from a track (it only packetizes it)."""
    packet = av.Packet(data)
    packet.pts = pts
    packet.time_base = time_base
    return packet


def _forward_feedback(sender: RTCRtpSender, track: SessionVideoTrack) -> None:
    """Pass the keyframe requests (PLI/FIR) and bandwidth estimates (REMB) the peer sends for
    ``sender`` on to ``track``, after aiortc's own handling (see the module docstring)."""
    handle = sender._handle_rtcp_packet

    async def handle_rtcp_packet(packet: Any) -> None:
        await handle(packet)
        if not isinstance(packet, RtcpPsfbPacket):
            return
        if packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
            track.request_keyframe()
        elif packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, _ = unpack_remb_fci(packet.fci)  # routed here: names this sender's SSRC
            except ValueError:  # another application's feedback
                return
            track.set_target_bitrate(bitrate)

    sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]


def _vp8_first() -> list[RTCRtpCodecCapability]:
    """Every video codec aiortc has, VP8 first (with its retransmission codec)."""
    return sorted(RTCRtpSender.getCapabilities("video").codecs, key=lambda codec: codec.mimeType.lower() != VP8)


def _sent_codecs(pc: RTCPeerConnection) -> dict[RTCRtpSender, str]:
    """Each sender's codec (MIME type, lower case): the first of its m-line in the answer."""
    media = {m.rtp.muxId: m.rtp.codecs for m in SessionDescription.parse(pc.localDescription.sdp).media}
    return {t.sender: media[t.mid][0].mimeType.lower() for t in pc.getTransceivers() if media.get(t.mid)}


# ---------------------------------------------------------------------------------------
# The peer


async def _consume_microphone(live: LiveSession, track: MediaStreamTrack) -> None:
    """Remote audio -> 48 kHz mono s16 -> ``session.push_audio`` (puppet mode); in TTS mode
    the track is drained and ignored."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=VOICE_RATE)
    puppet = live.params.mode == "puppet"
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        if not puppet:
            continue
        for out in resampler.resample(frame):
            samples = out.to_ndarray().reshape(-1)
            if len(samples):
                try:
                    live.engine.push_audio(samples, VOICE_RATE)
                except ValueError as error:  # e.g. too much pending audio: drop, keep going
                    log.warning("session %s: microphone audio dropped: %s", live.id, error)


async def _drain(track: MediaStreamTrack) -> None:
    while True:
        try:
            await track.recv()
        except MediaStreamError:
            return


async def _watch_peer(live: LiveSession, pc: RTCPeerConnection, settings: Settings, gone: asyncio.Event) -> None:
    """A connected peer that sends no packet at all (RTP or RTCP) for ``peer_silence_s`` is
    gone (a browser that was killed sends no DTLS close; ICE consent would take 30 s). One
    that never connects within ``peer_connect_timeout_s`` fails the session (``peer_timeout``):
    browser and server found no route to each other."""
    started = time.monotonic()
    last_count, last_change = -1, started
    while not gone.is_set():
        await asyncio.sleep(0.5)
        if pc.connectionState != "connected":
            last_change = time.monotonic()
            if last_count < 0 and last_change - started > settings.peer_connect_timeout_s:
                if live.peer is pc:
                    live.fail("peer_timeout", f"the WebRTC peer did not connect within "
                                              f"{settings.peer_connect_timeout_s:g} s (no ICE route between "
                                              "client and server: see ICE servers / loopback candidates)")
                gone.set()
            continue
        report = await pc.getStats()
        count = sum(s.packetsReceived for s in report.values() if isinstance(s, RTCTransportStats))
        now = time.monotonic()
        if count != last_count:
            last_count, last_change = count, now
        elif now - last_change > settings.peer_silence_s:
            log.info("session %s: peer silent for %.1f s, closing it", live.id, now - last_change)
            gone.set()


async def answer_offer(live: LiveSession, sdp: str, kind: str, settings: Settings, metrics: Metrics) -> RTCSessionDescription:
    """Build the session's peer connection for a browser offer and return the answer (with
    all candidates: no trickle ICE). A second offer replaces the first peer."""
    if kind != "offer":
        raise ApiError(400, f"expected an SDP offer, got type {kind!r}")
    if live.peer is not None:
        await live.peer.close()
    pc = RTCPeerConnection(rtc_configuration(settings))
    client = object()
    gone = asyncio.Event()
    video = SessionVideoTrack(live)
    audio = SessionAudioTrack(live, silent=live.params.mode == "puppet")
    counted = False

    @pc.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            live.spawn(_consume_microphone(live, track), "microphone")
        else:  # a client's camera is not used; drain it so its frames do not pile up
            live.spawn(_drain(track), "drain")

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        nonlocal counted
        state = pc.connectionState
        log.info("session %s: peer %s", live.id, state)
        if state == "connected" and not counted:
            counted = True
            metrics.peers.inc()
        if state == "failed" and live.peer is pc:
            live.fail("peer_failed", "the WebRTC peer connection failed (ICE or DTLS)")
        if state in ("failed", "closed"):
            gone.set()

    # Made before the offer is applied, so that the answer picks VP8 whatever order the offer
    # lists its codecs in (Safari puts H.264 first): aiortc's own H.264 encoder (libx264 at its
    # default preset) takes ~13 ms per 512² frame, the session's VP8 (engine.video) ~2.5 ms.
    sending_video = pc.addTransceiver(video, direction="sendonly")
    sending_video.setCodecPreferences(_vp8_first())
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    except Exception as error:  # aiortc raises ValueError and friends for SDP it cannot use
        await pc.close()
        raise ApiError(400, f"unusable SDP offer: {error}") from None
    if sending_video.mid is None:  # no video m-line in the offer
        await pc.close()
        raise ApiError(400, "the offer must receive video (add a recvonly video transceiver)")
    _forward_feedback(sending_video.sender, video)
    if any(t.kind == "audio" and t.mid is not None for t in pc.getTransceivers()):
        pc.addTrack(audio)
    live.add_sink(video)
    live.add_sink(audio)
    live.attach(client)
    live.peer = pc

    async def lifetime() -> None:
        watchdog = asyncio.ensure_future(_watch_peer(live, pc, settings, gone))
        try:
            await gone.wait()
        finally:
            watchdog.cancel()
            if live.peer is pc:  # a newer peer's track encodes from now on
                video.stop_encoding()
            live.remove_sink(video)
            live.remove_sink(audio)
            if counted:
                metrics.peers.dec()
            if live.peer is pc:
                live.peer = None
            await pc.close()
            live.detach(client)

    async def close_peer() -> None:
        gone.set()
        await pc.close()

    live.spawn(lifetime(), "peer")
    live.on_close(close_peer)
    try:
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except Exception as error:
        gone.set()
        raise ApiError(400, f"cannot answer this offer: {error}") from None
    codecs = _sent_codecs(pc)
    for track in (video, audio):
        track.codec = next((codec for sender, codec in codecs.items() if sender.track is track), "")
    if video.codec == VP8:
        video.start_encoding()
    return pc.localDescription
