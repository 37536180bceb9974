"""emolive engine: portrait registration, audio features, motion models, renderer, sessions.

The engine knows nothing of HTTP or WebRTC; ``server`` builds on it, never the reverse.
"""
