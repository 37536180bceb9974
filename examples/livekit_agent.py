"""A LiveKit agent with the emolive face, in either form:

    python examples/livekit_agent.py dev                    # local: the face runs in this agent
    EMOLIVE_AVATAR=worker python examples/livekit_agent.py dev   # a worker elsewhere renders it

The agent's STT / LLM / TTS are yours to choose (here LiveKit Inference's, which need a LiveKit
Cloud project; any plugin works). Local mode is bithuman's: ``AvatarRunner`` +
``QueueAudioOutput`` in the agent's process. Worker mode dispatches an avatar job to the
workers of examples/livekit_avatar_worker.py and streams the voice to it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from livekit.agents import Agent, AgentServer, AgentSession, JobContext, cli, inference  # noqa: E402

from emolive.integrations.face import LocalFace  # noqa: E402
from emolive.integrations.livekit import EmoliveAvatarSession, start_local_avatar  # noqa: E402

server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    await ctx.connect()
    session = AgentSession(stt=inference.STT("deepgram/nova-3"), llm=inference.LLM("google/gemini-2.5-flash"),
                           tts=inference.TTS("cartesia/sonic-3"))
    if os.environ.get("EMOLIVE_AVATAR") == "worker":
        await EmoliveAvatarSession().start(session, ctx.room)
    else:
        face = LocalFace(size=512)
        runner = await start_local_avatar(session, ctx.room, face)

        async def close_face() -> None:
            await runner.aclose()
            await face.close()

        ctx.add_shutdown_callback(close_face)
    await session.start(agent=Agent(instructions="You are a friendly assistant with a face."), room=ctx.room)
    await session.generate_reply(instructions="Greet the user.")


if __name__ == "__main__":
    cli.run_app(server)
