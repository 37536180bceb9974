"""emolive as the face of voice-agent stacks: Pipecat (:mod:`emolive.integrations.pipecat`) and
LiveKit Agents (:mod:`emolive.integrations.livekit`), over one face source (:mod:`emolive.integrations.face`).

Importing this package needs neither framework: each adapter module imports its own
(``pip install emolive[pipecat]`` / ``emolive[livekit]``).
"""
