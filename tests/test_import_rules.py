"""The layering rules, checked by import-linter on the real import graph (contracts in
pyproject.toml): the engine never imports the server, the exporters, the CLI or training."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_layering_contracts_hold() -> None:
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True) == 0


def test_a_forbidden_import_breaks_the_contract(tmp_path: Path) -> None:
    """The checker sees imports made inside functions too (where the old engine reached into
    the exporters): the motion backends import the denoiser graph lazily, so a contract
    forbidding that import must fail."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_packages = ["engine"]\n\n'
        '[[tool.importlinter.contracts]]\nname = "canary"\ntype = "forbidden"\n'
        'source_modules = ["engine.motion.backends"]\nforbidden_modules = ["engine.motion.onnx_graph"]\n'
    )
    assert lint_imports(config_filename=str(config), no_cache=True) != 0
