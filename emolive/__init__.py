"""emolive: one portrait and streaming speech in, that face talking at 25 fps out.

The repository's top-level folders install under this one name (see ARCHITECTURE.md):
:mod:`emolive.engine` (the product), :mod:`emolive.server`, :mod:`emolive.integrations`,
:mod:`emolive.export`, :mod:`emolive.bench`, :mod:`emolive.training`, :mod:`emolive.cli`.
"""
