"""LiveKit Agents: the emolive face as an avatar, following ``livekit.agents.voice.avatar``.

- :class:`EmoliveVideoGenerator` is a ``VideoGenerator``: ``push_audio`` takes the agent's
  voice, ``clear_buffer`` interrupts, and iterating it yields, every 40 ms on the face's clock,
  an ``rtc.VideoFrame`` (idle frames in silence) and, while a turn plays, the
  ``rtc.AudioFrame`` of voice that goes with it (delayed by the engine so lips and voice stay in
  sync), then ``AudioSegmentEnd`` when the turn has played out. Run it with ``AvatarRunner``:
  in the agent's own process with ``QueueAudioOutput`` (local mode), or in an avatar worker
  that joins the room as its own participant with ``DataStreamAudioReceiver``.
- :func:`avatar_server` builds that avatar worker: an ``AgentServer`` registered under an
  agent name, so LiveKit's own dispatch spreads avatar jobs over as many worker machines as
  run it; each job joins as the avatar identity it was asked for, publishing on behalf of the
  agent (``lk.publish_on_behalf``).
- :class:`EmoliveAvatarSession` is the agent side of that worker form (an ``AvatarSession``):
  it asks LiveKit to dispatch an avatar job into the room and routes the agent's voice to it
  over a data stream (``DataStreamAudioOutput``).

The face comes from the engine in the process (:class:`~emolive.integrations.face.LocalFace`) or from
a remote ``emolive serve`` (:class:`~emolive.integrations.face.RemoteFace`). Needs
``pip install emolive[livekit]``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np

try:
    from livekit import api, rtc
    from livekit.agents import AgentServer, JobContext, JobRequest, get_job_context
    from livekit.agents.types import ATTRIBUTE_PUBLISH_ON_BEHALF
    from livekit.agents.voice.avatar import (
        AudioSegmentEnd,
        AvatarOptions,
        AvatarRunner,
        AvatarSession,
        DataStreamAudioOutput,
        DataStreamAudioReceiver,
        QueueAudioOutput,
        VideoGenerator,
    )
except ModuleNotFoundError as error:  # pragma: no cover - depends on the extra
    raise ImportError(f"emolive.integrations.livekit needs LiveKit Agents: pip install 'emolive[livekit]' ({error})") from error

from emolive.engine.formats import FRAME_SIZE
from emolive.integrations.face import FPS, VOICE_RATE, Face, FaceFrame

__all__ = ["AVATAR_AGENT_NAME", "EmoliveAvatarSession", "EmoliveVideoGenerator", "avatar_options", "avatar_server",
           "start_local_avatar"]

log = logging.getLogger("emolive.integrations.livekit")

AVATAR_AGENT_NAME = "emolive-avatar"  # what avatar workers register as, and what the agent side dispatches


def avatar_options(size: int = FRAME_SIZE) -> AvatarOptions:
    """The ``AvatarRunner`` options matching the face: ``size``² at 25 fps, 48 kHz mono voice."""
    return AvatarOptions(video_width=size, video_height=size, video_fps=FPS, audio_sample_rate=VOICE_RATE,
                         audio_channels=1)


class EmoliveVideoGenerator(VideoGenerator):
    """The face as a LiveKit ``VideoGenerator``; call :meth:`start` before the runner starts."""

    def __init__(self, face: Face) -> None:
        self.face = face
        self._segment_open = False  # audio pushed since the last AudioSegmentEnd
        self._pending_ends = 0  # segments ended but not yet played out
        self._black: rtc.VideoFrame | None = None

    async def start(self) -> None:
        await self.face.start()

    async def aclose(self) -> None:
        await self.face.close()

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        if isinstance(frame, AudioSegmentEnd):
            if self._segment_open:
                self._segment_open = False
                self._pending_ends += 1
                self.face.end_of_turn()
            return
        samples = np.frombuffer(frame.data, dtype=np.int16).reshape(-1, frame.num_channels)
        self.face.push_audio(samples, frame.sample_rate)
        self._segment_open = True

    def clear_buffer(self) -> None:
        # AvatarRunner reports the interrupted playback itself, from the voice we yielded.
        self.face.interrupt()
        self._segment_open = False
        self._pending_ends = 0

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        picture: rtc.VideoFrame | None = None
        async for item in self.face.stream():
            if isinstance(item, FaceFrame):
                if item.image is not None:
                    height, width = item.image.shape[:2]
                    picture = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGB24, item.image.tobytes())
                # A dropped picture repeats the last one: the video keeps its 25 fps.
                yield picture or self._blank()
                if item.speaking:
                    yield rtc.AudioFrame(item.audio.tobytes(), VOICE_RATE, 1, len(item.audio))
            elif item.type == "playback_finished" and not item.interrupted and self._pending_ends:
                self._pending_ends -= 1
                yield AudioSegmentEnd()

    def _blank(self) -> rtc.VideoFrame:
        if self._black is None:
            size = self.face.size
            self._black = rtc.VideoFrame(size, size, rtc.VideoBufferType.RGB24, bytes(size * size * 3))
        return self._black


async def start_local_avatar(agent_session: Any, room: rtc.Room, face: Face) -> AvatarRunner:
    """Local mode (as bithuman's): the face runs in the agent's own process and publishes in
    its room. Call after ``ctx.connect()`` and before ``agent_session.start(...)``; close the
    returned runner (and its generator's face) at shutdown."""
    generator = EmoliveVideoGenerator(face)
    await generator.start()
    audio = QueueAudioOutput(sample_rate=VOICE_RATE)
    agent_session.output.audio = audio
    runner = AvatarRunner(room, audio_recv=audio, video_gen=generator, options=avatar_options(face.size))
    await runner.start()
    return runner


# -- worker form -------------------------------------------------------------------------


def avatar_server(make_face: Callable[[], Face], *, agent_name: str = AVATAR_AGENT_NAME, **server_options: Any
                  ) -> AgentServer:
    """An ``AgentServer`` whose jobs are avatars: run it (``livekit.agents.cli.run_app``) on
    as many machines as needed; LiveKit dispatches each :class:`EmoliveAvatarSession` to one.

    A job joins as the identity the dispatch metadata names, publishing on behalf of the agent
    that asked; it runs ``AvatarRunner`` + ``DataStreamAudioReceiver`` with a face from
    ``make_face()`` until the agent leaves.
    """
    server = AgentServer(**server_options)

    async def on_request(request: JobRequest) -> None:
        info = json.loads(request.job.metadata or "{}")
        if not info.get("avatar_identity") or not info.get("agent_identity"):
            log.warning("avatar job %s without avatar/agent identity in its metadata: rejected", request.id)
            await request.reject()
            return
        await request.accept(name="emolive avatar", identity=info["avatar_identity"],
                             attributes={ATTRIBUTE_PUBLISH_ON_BEHALF: info["agent_identity"]})

    @server.rtc_session(agent_name=agent_name, on_request=on_request)
    async def run_avatar(ctx: JobContext) -> None:
        await ctx.connect()
        info = json.loads(ctx.job.metadata)
        generator = EmoliveVideoGenerator(make_face())
        await generator.start()
        runner = AvatarRunner(ctx.room, audio_recv=DataStreamAudioReceiver(ctx.room), video_gen=generator,
                              options=avatar_options(generator.face.size))
        agent_left = asyncio.Event()

        def on_participant_disconnected(participant: rtc.RemoteParticipant) -> None:
            if participant.identity == info["agent_identity"]:
                agent_left.set()

        ctx.room.on("participant_disconnected", on_participant_disconnected)
        ctx.room.on("disconnected", lambda *_: agent_left.set())
        try:
            await runner.start()
            await agent_left.wait()
        finally:
            await runner.aclose()
            await generator.aclose()
        ctx.shutdown("the agent left")

    return server


class EmoliveAvatarSession(AvatarSession):
    """The agent side of the worker form: ``await EmoliveAvatarSession().start(session, room)``
    before ``session.start(...)``; the agent's voice then goes to the avatar, which publishes the
    face and the voice in sync on the agent's behalf.

    ``api_url`` / ``api_key`` / ``api_secret`` default to ``LIVEKIT_URL`` / ``LIVEKIT_API_KEY``
    / ``LIVEKIT_API_SECRET``, as for any agent.
    """

    def __init__(self, *, avatar_identity: str = "emolive-avatar", agent_name: str = AVATAR_AGENT_NAME,
                 api_url: str | None = None, api_key: str | None = None, api_secret: str | None = None) -> None:
        super().__init__()
        self._avatar_identity = avatar_identity
        self._agent_name = agent_name
        self._api_args = {"url": api_url, "api_key": api_key, "api_secret": api_secret}

    @property
    def avatar_identity(self) -> str:
        return self._avatar_identity

    @property
    def provider(self) -> str:
        return "emolive"

    async def start(self, agent_session: Any, room: rtc.Room) -> None:
        await super().start(agent_session, room)
        metadata = json.dumps({"avatar_identity": self._avatar_identity,
                               "agent_identity": room.local_participant.identity})
        request = api.CreateAgentDispatchRequest(agent_name=self._agent_name, room=room.name, metadata=metadata)
        job = get_job_context(required=False)
        if job is not None:
            await job.api.agent_dispatch.create_dispatch(request)
        else:
            async with api.LiveKitAPI(**self._api_args) as client:
                await client.agent_dispatch.create_dispatch(request)
        agent_session.output.replace_audio_tail(DataStreamAudioOutput(
            room, destination_identity=self._avatar_identity,
            wait_remote_track=rtc.TrackKind.KIND_VIDEO,  # no reply before the face is on
            wait_playback_start=True,  # AvatarRunner reports lk.playback_started
        ))
