"""The ``emolive`` command line."""
