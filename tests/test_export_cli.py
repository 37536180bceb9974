"""``emolive export`` around the exporters: the registry, the providers, the TensorRT refusal
and the help. The denoiser's export itself is tested in test_export_denoiser.py."""

from __future__ import annotations

import argparse

import pytest

from conftest import run_emolive


def test_providers_are_chosen_best_first():
    from emolive.engine.motion.backends import choose_providers

    assert choose_providers(["CPUExecutionProvider", "CUDAExecutionProvider"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_trt_is_refused_clearly_where_unavailable(tmp_path):
    from emolive.engine.motion.tensorrt import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("tensorrt and a CUDA GPU are present: `export trt` would build engines")
    proc = run_emolive("export", "trt", "-o", tmp_path, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emolive: error: cannot build TensorRT engines:"), proc.stderr


def test_unavailable_exporters_are_reported_not_crashed():
    from emolive.export.registry import EXPORTERS, ExporterUnavailable, get_exporter, register

    register("missing-for-test", "emolive.export.no_such_module:export")
    try:
        with pytest.raises(ExporterUnavailable):
            get_exporter("missing-for-test")
    finally:
        EXPORTERS.pop("missing-for-test", None)


@pytest.mark.parametrize("path", [("export",), ("export", "onnx"), ("export", "trt")], ids=" ".join)
def test_every_export_option_is_explained(path):
    from emolive.cli.main import build_parser

    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    text = parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice.description for choice in action.choices.values())
            continue
        assert action.help and all(option in text for option in action.option_strings), action.option_strings
