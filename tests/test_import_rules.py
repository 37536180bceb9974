"""The layering rules, checked on every import statement of the source (module level or inside
a function): the engine never imports the server, the exporters, the benches, the CLI,
training or the integrations; the server never imports the CLI, the benches, the exporters,
training or the integrations.

(import-linter cannot read this layout: its graph builder scans the top-level package's folder
on disk, and ``emolive``'s subpackages are mapped from the repository's top-level folders.)
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "engine": ("server", "export", "bench", "cli", "training", "integrations"),
    "server": ("cli", "bench", "export", "training", "integrations"),
}


def imports(source: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, at any depth."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            # "from emolive import server" imports the package server
            yield from ((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)


def breaches(package: str, source: str) -> list[str]:
    """The imports of ``source`` (a module of ``package``) that its rule forbids."""
    found: dict[int, str] = {}
    for line, module in imports(source):
        for forbidden in FORBIDDEN[package]:
            for name in (f"emolive.{forbidden}", forbidden):
                if (module == name or module.startswith(name + ".")) and line not in found:
                    found[line] = module
    return [f"line {line}: {module}" for line, module in found.items()]


def test_layering_rules_hold() -> None:
    broken = []
    for package in FORBIDDEN:
        files = sorted((ROOT / package).rglob("*.py"))
        assert len(files) > 5, f"no sources found for {package}"
        for path in files:
            broken += [f"{path.relative_to(ROOT)} {breach}" for breach in breaches(package, path.read_text())]
    assert not broken, "forbidden imports:\n" + "\n".join(broken)


def test_a_lazy_forbidden_import_is_caught() -> None:
    """Where the old engine reached into the exporters: an import inside a function."""
    source = "import numpy\n\ndef build():\n    from emolive.export.denoiser import export_denoiser\n"
    assert breaches("engine", source) == ["line 4: emolive.export.denoiser"]
    assert breaches("engine", "from emolive import server\n") == ["line 1: emolive.server"]
    assert breaches("engine", "from emolive.engine.media import OpusEncoder\n") == []
