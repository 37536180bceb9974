"""What every bench prints and writes: a console, figures as text, the load average, JSON."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from rich.console import Console


def console() -> Console:
    """A console as wide as the terminal, or 170 columns when the output is a file or pipe."""
    return Console(width=None if sys.stdout.isatty() else 170)


def fmt(x: float | None, digits: int = 1) -> str:
    """``x`` with ``digits`` decimals; a dash for a figure not measured (None or NaN)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg has them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def write_figures(path: Path, figures: object) -> None:
    """A bench's figures as JSON, NaN (a figure not measured) written as null."""

    def clean(value: object) -> object:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(item) for item in value]
        return value

    path.write_text(json.dumps(clean(figures), indent=1, default=str))
