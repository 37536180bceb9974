"""Errors the engine raises for input a user can fix."""


class BadInputError(ValueError):
    """Input that cannot be used: a missing or corrupt file, a portrait without a face, audio
    that holds no signal. The message is one line and names the offending file."""
