"""``emolive train``: the whole recipe (corpus -> teacher -> student -> evaluation) in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from emolive.engine.errors import BadInputError


def add_train_parser(commands) -> None:
    train = commands.add_parser(
        "train", help="build the corpus, train the teacher, distil the student, evaluate (one command)",
        description="Synthesise the training corpus (flite, festival, espeak-ng with exact phone timings), train the "
                    "rectified-flow DiT teacher, distil the 2-step student, calibrate the lip seal on training voices, and evaluate "
                    "baseline/teacher/student on the "
                    "held-out voices and language. --scale full takes about 75 minutes on 2 CPU cores; --scale smoke "
                    "runs the same code on a toy corpus in under 2 minutes.",
    )
    train.add_argument("--scale", choices=("full", "smoke"), default="full", help="recipe size (default: full)")
    train.add_argument("--seed", type=int, default=0, help="seed for everything (default: 0)")
    train.add_argument("--out", type=Path, default=Path("artifacts/recipe"),
                       help="work directory for the corpus, weights and metrics (default: artifacts/recipe)")
    train.add_argument("--reuse-corpus", action="store_true",
                       help="skip synthesis when OUT/corpus was built with the same plan and seed")
    train.add_argument("--n-train", type=int, metavar="N", help="training utterances (default: the scale's; 1600 at full)")
    train.add_argument("--teacher-minutes", type=float, metavar="MIN",
                       help="stop the teacher after MIN minutes (a shorter run on a busy machine)")
    train.add_argument("--student-minutes", type=float, metavar="MIN",
                       help="stop the student's distillation after MIN minutes")
    train.add_argument("--warm-start", type=Path, metavar="CHECKPOINT",
                       help="start the teacher from this teacher .safetensors (hop and lookahead may differ) with a "
                            "shorter, gentler schedule than from scratch")
    train.add_argument("--install", action="store_true",
                       help="copy the resulting weights, metrics and model card into engine/motion/weights")
    train.add_argument("--calibrate-rest", type=Path, metavar="WEIGHTS_DIR",
                       help="only recompute the rest offset (the expression the model holds in silence, taken off its "
                            "output) of the teacher and student in WEIGHTS_DIR, e.g. engine/motion/weights, and rewrite "
                            "their metadata, metrics and model card; the weights are unchanged and nothing else runs")
    train.add_argument("--lip-readers", type=Path, metavar="WEIGHTS_DIR",
                       help="only train the lip readers that WEIGHTS_DIR (e.g. engine/motion/weights) lacks for its "
                            "student: the lip-gap regressor (lipgap.safetensors) and the lip-seal detector "
                            "(seal.safetensors; delete a file to train that reader anew), on the corpus in OUT/corpus "
                            "(built with --seed and --scale if it is not there); then calibrate both (blend, seal "
                            "threshold and gap gate), write them there and re-evaluate (metrics and model card); the "
                            "motion weights are unchanged")


def run_train(args: argparse.Namespace) -> None:
    from emolive.training.recipe import recalibrate_rest, retrain_lip_readers, run_recipe

    if args.calibrate_rest is not None:
        if not (args.calibrate_rest / "student.safetensors").is_file():
            raise BadInputError(f"{args.calibrate_rest}: no student.safetensors there")
        recalibrate_rest(args.calibrate_rest)
        return
    if args.lip_readers is not None:
        if not (args.lip_readers / "student.safetensors").is_file():
            raise BadInputError(f"{args.lip_readers}: no student.safetensors there")
        retrain_lip_readers(args.lip_readers, args.out, seed=args.seed, scale=args.scale)
        return
    if args.seed < 0:
        raise BadInputError(f"--seed must be >= 0, got {args.seed}")
    if args.n_train is not None and args.n_train < 1:
        raise BadInputError(f"--n-train must be >= 1, got {args.n_train}")
    if args.warm_start is not None and not args.warm_start.is_file():
        raise BadInputError(f"{args.warm_start}: no such checkpoint")
    for flag in ("teacher_minutes", "student_minutes"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise BadInputError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    run_recipe(args.out, seed=args.seed, scale=args.scale, install=args.install, reuse_corpus=args.reuse_corpus,
               n_train=args.n_train, teacher_minutes=args.teacher_minutes, student_minutes=args.student_minutes,
               warm_start=args.warm_start)
