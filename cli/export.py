"""``emolive export``: the models as ONNX files (and TensorRT engines where a GPU allows)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emolive.engine.errors import BadInputError

DESCRIPTION = """\
Write emolive's models as ONNX files for ONNX Runtime, TensorRT or any other runtime.

Files are build outputs, named by content hash (denoiser-<kind>-<weights sha256>-<build
key>.onnx) with a JSON sidecar describing inputs, outputs, shapes, opset and source hashes.
A file that is already up to date is not rebuilt; never edit one by hand (delete it or pass
--force). The renderer has no exported form: it runs on the CPU only.

  onnx  export to ONNX (opset >= 17, dynamic batch axis), checked by onnx.checker and
        shape inference
  trt   build TensorRT engines from those ONNX files (needs the tensorrt package and a CUDA GPU)
"""

ONNX_DESCRIPTION = """\
Export models to ONNX, checked by onnx.checker (full check) and strict shape inference.

denoiser: one sampler step of the student motion model (MotionDiT.forward), all float32,
  K = 12 past frames, H = 2 hop frames, A = 12 audio frames:
  input  x_t            (batch, H, 35): the hop's noisy frames, normalised motion units
  input  t              (batch,): diffusion time, 1 = noise, 0 = clean
  input  past           (batch, K, 35): the last K generated frames, normalised
  input  audio          (batch, A, 4, 80): log-mel, 8 frames before the hop, the hop, 2 ahead
  input  controls       (batch, 4): head motion, speed, expressiveness, blink clock
  input  audio_missing  (batch, A): 1 where an audio frame is padding
  output velocity       (batch, H, 35): x <- x + (t_next - t) * velocity
  The sidecar also holds the normalisation (mean, std) and the sampling rule.
"""

TRT_DESCRIPTION = """\
Build TensorRT engines from the ONNX exports (exporting them first if needed), one
optimisation profile over the batch axis, the denoiser in fp16 unless --precision says
otherwise. Needs the tensorrt Python package and a CUDA GPU; without them this prints why
and exits with status 2.
"""


def _common(parser: argparse.ArgumentParser) -> None:
    from emolive.export.registry import DEFAULT_OPSET, exporter_names

    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                        help="directory for the files (created if missing); up-to-date files in it are reused")
    parser.add_argument("--what", choices=[*exporter_names(), "all"], default="all",
                        help="which model(s) to export (default: all that this installation can export)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N",
                        help=f"ONNX opset, at least 17 (default: {DEFAULT_OPSET})")
    parser.add_argument("--force", action="store_true", help="rebuild even if up-to-date files exist")


def add_export_parser(commands) -> argparse.ArgumentParser:
    export = commands.add_parser(
        "export", help="export the models to ONNX (and TensorRT engines where a GPU allows)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    kinds = export.add_subparsers(dest="export", required=True, metavar="FORMAT")
    onnx = kinds.add_parser("onnx", help="export to ONNX files", description=ONNX_DESCRIPTION,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(onnx)
    onnx.add_argument("--verify", action="store_true",
                      help="also compare the denoiser's velocity on ONNX Runtime with the torch module's on "
                           "random inputs at batch sizes 1 to 8")
    trt = kinds.add_parser("trt", help="build TensorRT engines (needs tensorrt and a CUDA GPU)",
                           description=TRT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(trt)
    trt.add_argument("--precision", choices=("auto", "fp16", "fp32"), default="auto",
                     help="engine precision: fp16, fp32, or auto (default): what each model's sidecar asks for, "
                          "fp16 where it says nothing")
    trt.add_argument("--max-batch", type=int, default=8, metavar="N",
                     help="largest batch the engines accept (default: 8)")
    trt.add_argument("--opt-batch", type=int, default=4, metavar="N",
                     help="batch size TensorRT tunes for, at most --max-batch (default: 4)")
    return export


def _check(args: argparse.Namespace) -> None:
    if args.opset < 17:
        raise BadInputError(f"--opset must be at least 17, got {args.opset}")
    if args.output.exists() and not args.output.is_dir():
        raise BadInputError(f"{args.output}: exists and is not a directory")
    if args.export == "trt":
        if not 1 <= args.max_batch <= 1024:
            raise BadInputError(f"--max-batch must be between 1 and 1024, got {args.max_batch}")
        if not 1 <= args.opt_batch <= args.max_batch:
            raise BadInputError(f"--opt-batch must be between 1 and --max-batch ({args.max_batch}), got {args.opt_batch}")


def _export_onnx(args: argparse.Namespace) -> list:
    from emolive.export.registry import ExporterUnavailable, ExportRequest, exporter_names, get_exporter

    request = ExportRequest(out_dir=args.output, opset=args.opset, force=args.force)
    names = exporter_names() if args.what == "all" else [args.what]
    results = []
    for name in names:
        try:
            exporter = get_exporter(name)
        except ExporterUnavailable as error:
            if args.what == "all":
                print(f"{name}: skipped ({error})", file=sys.stderr)
                continue
            raise BadInputError(str(error)) from None
        for result in exporter(request):
            size_mb = result.path.stat().st_size / 1e6
            state = "up to date" if result.cached else f"wrote in {result.seconds:.1f} s"
            print(f"{result.name}: {result.path} ({size_mb:.1f} MB, {state}; sidecar {result.sidecar.name})", file=sys.stderr)
            results.append(result)
    if not results:
        raise BadInputError("nothing to export")
    return results


def _verify_denoiser(result) -> None:
    from emolive.engine.motion.backends import OnnxDenoiser, TorchDenoiser
    from emolive.engine.motion.diffusion import load_cached
    from emolive.engine.motion.onnx_graph import MAX_ABS_DIFF, random_inputs

    model, _ = load_cached(result.info["source"]["weights"])
    onnx, torch_ = OnnxDenoiser(result.path), TorchDenoiser(model)
    worst = max(float(abs(onnx(inputs) - torch_(inputs)).max())
                for inputs in (random_inputs(model.cfg, batch, seed=batch) for batch in range(1, 9)))
    print(f"denoiser parity: max |ONNX Runtime - torch| {worst:.2e} over batch sizes 1-8 (bound {MAX_ABS_DIFF:g})",
          file=sys.stderr)
    if worst > MAX_ABS_DIFF:
        raise RuntimeError(f"denoiser ONNX differs from the torch module by {worst:.2e} (more than {MAX_ABS_DIFF:g})")


def run_export(args: argparse.Namespace) -> None:
    _check(args)
    if args.export == "trt":
        from emolive.engine.motion.tensorrt import build_engines, unavailable_reason

        reason = unavailable_reason()
        if reason:
            raise BadInputError(f"cannot build TensorRT engines: {reason}")
        results = _export_onnx(args)
        for engine in build_engines(results, precision=args.precision, max_batch=args.max_batch,
                                    opt_batch=args.opt_batch, force=args.force,
                                    log=lambda line: print(line, file=sys.stderr)):
            state = "up to date" if engine.cached else f"built in {engine.seconds:.0f} s"
            print(f"{engine.name}: {engine.path} ({engine.precision}, {state})", file=sys.stderr)
        return
    results = _export_onnx(args)
    if args.verify:
        for result in results:
            if result.name == "denoiser":
                _verify_denoiser(result)
