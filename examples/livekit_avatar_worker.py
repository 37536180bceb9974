"""An emolive avatar worker for LiveKit Agents: run it on as many machines as you like; LiveKit
dispatches each agent's avatar job to one of them (its own load balancing), and the job joins
the agent's room as the avatar, publishing the face and the voice on the agent's behalf.

    pip install 'emolive[livekit]'
    export LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=...
    python examples/livekit_avatar_worker.py start                   # engine in this process
    python examples/livekit_avatar_worker.py start --face-server http://127.0.0.1:8000

The agent side (see examples/livekit_agent.py) calls ``EmoliveAvatarSession().start(session,
room)``, which asks LiveKit for a job of this worker's agent name (``emolive-avatar``).
``--face-server`` takes the face from an ``emolive serve`` (e.g. a bigger CPU box next to the
worker) instead of rendering in the worker.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from livekit.agents import cli  # noqa: E402

from emolive.integrations.face import Face, LocalFace, RemoteFace  # noqa: E402
from emolive.integrations.livekit import avatar_server  # noqa: E402


def face_factory(server: str | None, size: int, motion: str):
    def make_face() -> Face:
        return RemoteFace(server, size=size, motion=motion) if server else LocalFace(size=size, motion=motion)

    return make_face


def main() -> None:
    # Our own options come before LiveKit's CLI (start, dev, ...), which parses the rest.
    server = os.environ.get("EMOLIVE_FACE_SERVER")
    if "--face-server" in sys.argv:
        at = sys.argv.index("--face-server")
        server = sys.argv[at + 1]
        del sys.argv[at: at + 2]
    size = int(os.environ.get("EMOLIVE_FACE_SIZE", "512"))
    motion = os.environ.get("EMOLIVE_MOTION", "baseline")
    cli.run_app(avatar_server(face_factory(server, size, motion)))


if __name__ == "__main__":
    main()
