"""The ``denoiser`` exporter of ``emolive export``: the shipped student's denoiser graph
(:mod:`emolive.engine.motion.onnx_graph`, which the engine also builds into its cache on first use)."""

from __future__ import annotations

from emolive.engine.motion.graph_files import GraphFile
from emolive.engine.motion.onnx_graph import export_denoiser_for_weights
from emolive.export.registry import ExportRequest


def export_denoiser(request: ExportRequest) -> list[GraphFile]:
    """The registry's entry point: the shipped student's denoiser."""
    from emolive.engine.motion.diffusion import default_weights

    return [export_denoiser_for_weights(default_weights("student"), request.out_dir, opset=request.opset,
                                        force=request.force)]
