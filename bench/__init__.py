"""The benchmarks behind ``emolive bench``: timings and long runs, never tests.

Each module measures one thing and takes its settings as a typed dataclass; ``emolive.cli.bench``
holds the thin commands that parse options into them. What the server offers for
measurement (``LiveSession.sent_observers``, ``SessionRegistry.engine_type``) is all the
benches use of its insides: nothing of the server is patched.
"""
