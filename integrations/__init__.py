"""emolive as the face of voice-agent stacks: Pipecat (:mod:`integrations.pipecat`) and
LiveKit Agents (:mod:`integrations.livekit`), over one face source (:mod:`integrations.face`).

Importing this package needs neither framework: each adapter module imports its own
(``pip install emolive[pipecat]`` / ``emolive[livekit]``).
"""
