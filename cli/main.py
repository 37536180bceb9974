"""``emolive``: render, motion, look-sheet, serve, bench, export, train and eval.

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

from emolive.engine.errors import BadInputError
from emolive.engine.formats import FRAME_SIZE
from emolive.engine.motion.backends import BACKENDS, DEFAULT_BACKEND
from emolive.engine.motion.registry import DEFAULT_MOTION_MODEL, MOTION_MODELS
from emolive.engine.motion_space import FPS, MotionControls

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1


def _add_motion_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--motion", choices=MOTION_MODELS, default=DEFAULT_MOTION_MODEL,
                        help=f"audio-to-motion model (default: {DEFAULT_MOTION_MODEL})")
    parser.add_argument("--steps", type=int, metavar="N",
                        help="sampling steps of the diffusion models (default: 2 for student, 24 for teacher)")
    parser.add_argument("--motion-backend", choices=BACKENDS, default=DEFAULT_BACKEND,
                        help="where the diffusion models' denoiser runs: onnxruntime (default; CPU, or CUDA/TensorRT "
                             "where this onnxruntime build has them; the ONNX file is exported on first use into "
                             "the cache), torch, or tensorrt (fp16 on a CUDA GPU; refused where unavailable); "
                             "baseline ignores it")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for blinks, head sway and other free motion; same seed, same video (default: 0)")
    parser.add_argument("--head-motion", type=float, default=1.0, metavar="X",
                        help="head movement: 0 still, 1 natural (default), 2 lively")
    parser.add_argument("--expressiveness", type=float, default=1.0, metavar="X",
                        help="brows, cheeks and smiles: 0 flat, 1 natural (default), 2 animated; lips always follow the audio")


def _controls(args: argparse.Namespace) -> MotionControls:
    for name in ("head_motion", "expressiveness"):
        value = getattr(args, name)
        if not 0.0 <= value <= 2.0:
            raise BadInputError(f"--{name.replace('_', '-')} must be between 0 and 2, got {value}")
    return MotionControls(head_motion=args.head_motion, expressiveness=args.expressiveness, seed=args.seed)


def _motion_spec(args: argparse.Namespace) -> str:
    """``--motion`` plus ``--steps`` as a registry spec (``student:4``); refuses a
    ``--motion-backend`` that cannot run here."""
    from emolive.engine.motion.registry import DIFFUSION_MODELS, parse_spec

    spec = args.motion if args.steps is None else f"{args.motion}:{args.steps}"
    try:
        name, _ = parse_spec(spec)
    except ValueError as error:
        raise BadInputError(f"--steps: {error}") from None
    if name in DIFFUSION_MODELS:
        from emolive.engine.motion.backends import unavailable_reason

        reason = unavailable_reason(args.motion_backend)
        if reason:
            raise BadInputError(f"--motion-backend {args.motion_backend} is unavailable: {reason}")
    return spec


def build_parser() -> argparse.ArgumentParser:
    from emolive.engine.offline import DEFAULT_AUDIO, DEFAULT_PORTRAIT

    parser = argparse.ArgumentParser(
        prog="emolive",
        description="Real-time talking portraits: one portrait + speech -> that face talking, blinking and moving.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = commands.add_parser(
        "render", help="render a portrait speaking an audio file to MP4",
        description="Render PORTRAIT speaking AUDIO into an H.264/AAC MP4. With no inputs, renders the bundled demo.",
    )
    render.add_argument("portrait", nargs="?", type=Path, default=DEFAULT_PORTRAIT,
                        help="portrait image: PNG, JPEG, WebP or BMP (default: the bundled astronaut)")
    render.add_argument("audio", nargs="?", type=Path, default=DEFAULT_AUDIO,
                        help="speech: WAV, FLAC, OGG, MP3, M4A, any rate or channel count (default: bundled clip)")
    render.add_argument("-o", "--output", type=Path, default=Path("demo.mp4"), help="output MP4 (default: demo.mp4)")
    render.add_argument("--size", type=int, default=FRAME_SIZE,
                        help=f"output size in pixels, square crop side (default: {FRAME_SIZE})")
    render.add_argument("--keep-framing", action="store_true",
                        help="keep the whole image (long side = --size) instead of a head-and-shoulders crop")
    render.add_argument("--fps", type=float, default=FPS, help=f"output frame rate (default: {FPS})")
    render.add_argument("--contact-sheet", type=Path, metavar="IMAGE",
                        help="also write 8 evenly spaced frames tiled into this PNG or JPEG")
    render.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_motion_options(render)

    motion = commands.add_parser(
        "motion", help="audio -> motion stream (head pose + ARKit blendshapes) as CSV or JSON",
        description="Write one row per video frame: a time column and one named column per motion channel "
                    "(head pose in radians, ARKit blendshapes in [0, 1]), for driving 3D avatars.",
    )
    motion.add_argument("audio", nargs="?", type=Path, default=DEFAULT_AUDIO, help="speech file (default: bundled clip)")
    motion.add_argument("-o", "--output", type=Path, default=Path("motion.csv"),
                        help="output .csv or .json (default: motion.csv)")
    motion.add_argument("--fps", type=float, default=FPS, help=f"rows per second (default: {FPS})")
    _add_motion_options(motion)

    from emolive.cli.bench import add_bench_parser

    add_bench_parser(commands)

    from emolive.cli.look_sheet import add_look_sheet_parser

    add_look_sheet_parser(commands)

    from emolive.cli.serve import add_serve_parser

    add_serve_parser(commands)

    from emolive.cli.export import add_export_parser

    add_export_parser(commands)

    from emolive.cli.eval import add_eval_parser
    from emolive.cli.train import add_train_parser

    add_train_parser(commands)
    add_eval_parser(commands)
    return parser


def _run_render(args: argparse.Namespace) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from emolive.engine.offline import RenderOptions, contact_sheet, render_video

    if not 64 <= args.size <= 2048:
        raise BadInputError(f"--size must be between 64 and 2048, got {args.size}")
    if not 1 <= args.fps <= 60:
        raise BadInputError(f"--fps must be between 1 and 60, got {args.fps}")
    if args.output.suffix.lower() != ".mp4":
        raise BadInputError(f"{args.output}: output must end in .mp4")
    options = RenderOptions(size=args.size, fps=args.fps, keep_framing=args.keep_framing,
                            motion=_motion_spec(args), motion_backend=args.motion_backend, controls=_controls(args))
    sheet_indices: set[int] = set()

    def keep(index: int) -> bool:
        return index in sheet_indices

    with Progress(TextColumn("[bold]rendering"), BarColumn(), TextColumn("{task.completed}/{task.total} frames"),
                  TimeRemainingColumn(), disable=args.quiet, transient=False) as progress:
        task = progress.add_task("render", total=None)

        def on_frame(done: int, total: int) -> None:
            if not sheet_indices:
                sheet_indices.update(int(i) for i in (0.5 + (total - 1) * (k + 0.5) / 8 for k in range(8)))
            progress.update(task, completed=done, total=total)

        frames = render_video(args.portrait, args.audio, args.output, options, on_frame=on_frame,
                              keep_frames=keep if args.contact_sheet else None)
    if args.contact_sheet:
        import cv2

        cv2.imwrite(str(args.contact_sheet), contact_sheet(frames)[..., ::-1])
    print(f"wrote {args.output}", file=sys.stderr)


def _run_motion(args: argparse.Namespace) -> None:
    from emolive.engine.audio import load_audio
    from emolive.engine.offline import RenderOptions, audio_to_motion

    if args.output.suffix.lower() not in (".csv", ".json"):
        raise BadInputError(f"{args.output}: output must end in .csv or .json")
    options = RenderOptions(fps=args.fps, motion=_motion_spec(args), motion_backend=args.motion_backend,
                            controls=_controls(args))
    track = audio_to_motion(load_audio(args.audio), options)
    track.save(args.output)
    print(f"wrote {len(track)} frames to {args.output}", file=sys.stderr)


# Subcommands that live in their own modules, imported only when run: `emolive render` should
# not pay for importing the server, the exporters or the trainer.
_COMMANDS = {
    "bench": ("emolive.cli.bench", "run_bench"),
    "look-sheet": ("emolive.cli.look_sheet", "run_look_sheet"),
    "serve": ("emolive.cli.serve", "run_serve"),
    "export": ("emolive.cli.export", "run_export"),
    "train": ("emolive.cli.train", "run_train"),
    "eval": ("emolive.cli.eval", "run_eval"),
}


def _dispatch(args: argparse.Namespace) -> None:
    if args.command == "render":
        _run_render(args)
    elif args.command == "motion":
        _run_motion(args)
    else:
        module, function = _COMMANDS[args.command]
        getattr(importlib.import_module(module), function)(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _dispatch(args)
    except BadInputError as error:
        print(f"emolive: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception:  # an internal error: the traceback is what a bug report needs
        traceback.print_exc()
        print("emolive: internal error (please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    return 0


if __name__ == "__main__":
    sys.exit(main())
