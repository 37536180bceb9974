"""The demo page served at ``/`` by ``emolive serve`` (static files, no build step)."""
