"""What ``emolive export`` can export: a registry of exporters, looked up by name.

An exporter is a function ``export(request: ExportRequest) -> list[GraphFile]`` that writes
its ONNX file(s) and JSON sidecar(s) into ``request.out_dir``, skipping the work when an
up-to-date file (same content hash) is already there. Adding one is one line in
:data:`EXPORTERS` (``"name": "package.module:function"``); the module is imported only when
that exporter runs, so a missing or broken optional exporter never breaks the others.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from emolive.engine.motion.graph_files import DEFAULT_OPSET, GraphFile


# name -> "module:function".
EXPORTERS: dict[str, str] = {
    "denoiser": "emolive.export.denoiser:export_denoiser",
}


@dataclass(frozen=True)
class ExportRequest:
    """Everything an exporter may need; each uses what applies to it."""

    out_dir: Path
    opset: int = DEFAULT_OPSET
    force: bool = False  # rebuild even when an up-to-date file exists


Exporter = Callable[[ExportRequest], list[GraphFile]]


class ExporterUnavailable(RuntimeError):
    """The named exporter is registered but its code is not part of this installation."""


def exporter_names() -> list[str]:
    return list(EXPORTERS)


def get_exporter(name: str) -> Exporter:
    """The export function registered as ``name`` (KeyError if unknown)."""
    target = EXPORTERS[name]
    module_name, _, function = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ExporterUnavailable(f"the {name} exporter ({module_name}) is not part of this installation") from None
        raise
    return getattr(module, function)


def register(name: str, target: str) -> None:
    """Add (or replace) an exporter at run time: ``target`` is ``"module:function"``."""
    if ":" not in target:
        raise ValueError(f"exporter target must be 'module:function', got {target!r}")
    EXPORTERS[name] = target
