"""``emolive eval lipsync``: lip-sync metrics of baseline, teacher and student on held-out speech."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emolive.engine.errors import BadInputError


def add_eval_parser(commands) -> None:
    ev = commands.add_parser("eval", help="evaluations (lip sync on held-out voices and language)")
    kinds = ev.add_subparsers(dest="eval", required=True, metavar="KIND")
    lip = kinds.add_parser(
        "lipsync", help="openness r, bilabial closure recall and A/V offset per held-out voice/language",
        description="Synthesises the held-out evaluation set (voices flite:awb, flite:rms, "
                    "festival:cmu_us_slt_arctic_hts; the Italian language; festival's example songs in singing mode) "
                    "unless --corpus names one, runs baseline, teacher and student on it, and prints three markdown "
                    "tables kept apart: held-out TTS, the real recorded speech that ships in packages (CMU ARCTIC, "
                    "alsa-utils, the msu_ru_nsh recordings, pocketsphinx's test recordings, Asterisk's English "
                    "prompts; a row per language as well as per source), and singing; then the student's ms per hop.",
    )
    lip.add_argument("--corpus", type=Path, help="an eval.npz written by `emolive train` (default: synthesise it)")
    lip.add_argument("--weights", type=Path, help="folder with teacher/student .safetensors (default: the shipped ones)")
    lip.add_argument("--per-group", type=int, default=12,
                     help="utterances per held-out voice/language, and songs per singer (default: 12)")
    lip.add_argument("--student-steps", type=int, default=None, help="student sampling steps (default: its own, 2)")
    lip.add_argument("--teacher-steps", type=int, default=None, help="teacher sampling steps (default: its own, 24)")
    lip.add_argument("--seed", type=int, default=0, help="corpus and motion seed (default: 0)")
    lip.add_argument("--no-real", action="store_true", help="skip the real recorded speech")
    lip.add_argument("--json", type=Path, help="also write the metrics as JSON here")


def run_eval(args: argparse.Namespace) -> None:
    if args.eval == "lipsync":
        run_lipsync(args)


def run_lipsync(args: argparse.Namespace) -> None:
    import json

    import torch

    from emolive.engine.motion.diffusion import WEIGHTS_DIR
    from emolive.training.corpus import load_corpus, plan_corpus, run_jobs
    from emolive.training.recipe import evaluate_clips

    torch.set_num_threads(1)
    weights = args.weights or WEIGHTS_DIR
    for name in ("teacher", "student"):
        if not (weights / f"{name}.safetensors").is_file():
            raise BadInputError(f"{weights}: no {name}.safetensors (run `emolive train --install` first)")
    if not 1 <= args.per_group <= 200:
        raise BadInputError(f"--per-group must be between 1 and 200, got {args.per_group}")
    if args.corpus is not None:
        if not args.corpus.is_file():
            raise BadInputError(f"{args.corpus}: no such evaluation corpus")
        ev = load_corpus(args.corpus)
        clips = [(ev.audio[i], ev.phones[i], str(ev.group[i])) for i in range(len(ev.lengths))]
    else:
        from emolive.training.tts import Phone

        plan = plan_corpus(0, args.seed, args.per_group)
        clips = []
        for made in run_jobs([(job, 1) for job in plan.eval], workers=2, log=lambda _: None):
            if made:
                c = made[0]
                clips.append((c["audio"], [Phone(*p) for p in c["phones"]], c["group"]))
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    out = evaluate_clips(clips, weights, args.teacher_steps, args.student_steps, log=log, seed=args.seed,
                         real=not args.no_real)
    tts = sum(1 for c in clips if not c[2].startswith("sing:"))
    print(f"## Lip sync on held-out TTS voices and language ({tts} utterances)\n")
    print(out["table"])
    print("\n## Real recorded speech (shipped in packages; never trained on)\n")
    print(out.get("real_table", "(skipped)" if args.no_real else "(no real recorded speech found on this machine)"))
    print(f"\n## Singing ({len(clips) - tts} songs; festival singing mode, tunes never trained on)\n")
    print(out.get("singing_table", "(no singing clips)"))
    hop = out["ms_per_hop"]["student"]
    print(f"\nstudent: {hop:.2f} ms per 2 frames (80 ms of audio) on one core")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
