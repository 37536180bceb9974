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
                    "festival:cmu_us_slt_arctic_hts; the Italian language) unless --corpus names one, runs baseline, "
                    "teacher and student on it, and prints a markdown table; then the same on the real recorded "
                    "speech that ships in packages, and the student's ms per hop.",
    )
    lip.add_argument("--corpus", type=Path, help="an eval.npz written by `emolive train` (default: synthesise it)")
    lip.add_argument("--weights", type=Path, help="folder with teacher/student .safetensors (default: the shipped ones)")
    lip.add_argument("--per-group", type=int, default=12, help="utterances per held-out voice/language (default: 12)")
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

    from emolive.engine.motion.baseline import BaselineMotion
    from emolive.engine.motion.diffusion import WEIGHTS_DIR, DiffusionMotion
    from emolive.training.corpus import load_corpus, plan_corpus, run_jobs
    from emolive.training.evaluate import evaluate_models, markdown_table, ms_per_hop

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
    models = {
        "baseline": BaselineMotion(),
        "teacher": DiffusionMotion.from_file(weights / "teacher.safetensors", steps=args.teacher_steps, name="teacher"),
        "student": DiffusionMotion.from_file(weights / "student.safetensors", steps=args.student_steps, name="student"),
    }
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    results = evaluate_models(models, clips, seed=args.seed, log=log)
    hop = {name: ms_per_hop(m) for name, m in models.items()}
    print(f"## Lip sync on held-out voices and language ({len(clips)} utterances)\n")
    print(markdown_table(results, hop))
    out = {"synthetic": {n: s.summary() for n, s in results.items()}, "ms_per_hop": hop}
    if not args.no_real:
        from emolive.training.realspeech import real_clips

        real = real_clips()
        if real:
            real_results = evaluate_models(models, real, seed=args.seed, log=log)
            print("\n## Real recorded speech (shipped in packages; never trained on)\n")
            lines = ["| model | clip | openness r | closure recall | best offset (ms) |", "|---|---|---:|---:|---:|"]
            for name, s in real_results.items():
                for g in s.groups():
                    r, rec, off = s.summary(g)
                    closures = sum(c.closures for c in s.clips if c.group == g)
                    lines.append(f"| {name} | {g} | {r:.3f} | {f'{rec:.3f}' if closures else 'n/a'} | {off:+.0f} |")
            print("\n".join(lines))
            out["real"] = {n: {g: s.summary(g) for g in s.groups()} for n, s in real_results.items()}
        else:
            print("\n(no real recorded speech found on this machine)")
    print(f"\nstudent: {hop['student']:.2f} ms per 2-frame hop (80 ms of audio) on one core, "
          f"{hop['student'] / 2:.2f} ms per 40 ms")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
