"""The whole recipe in one call: corpus -> teacher -> student -> evaluation -> weights + model card.

``emolive train`` (or ``python -m training.recipe``) runs it. Two scales:

- ``full``: the shipped model (about 65 minutes on 2 CPU cores);
- ``smoke``: the same code on a toy corpus in well under 2 minutes (the test suite runs it).

Everything is seeded from ``--seed``; torch runs on one thread, so the same seed gives the same
weights and metrics.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from emolive.engine.motion.diffusion import DiffusionMotion, load_model, save_model
from emolive.engine.motion.dit import DiTConfig, MotionDiT
from emolive.engine.motion.lipgap import WEIGHTS_NAME as LIP_GAP_WEIGHTS_NAME
from emolive.engine.motion.lipgap import load_regressor, save_regressor
from emolive.engine.motion.seal import WEIGHTS_NAME as SEAL_WEIGHTS_NAME
from emolive.engine.motion.seal import load_detector, save_detector
from emolive.engine.motion.windownet import read_extra
from emolive.training.corpus import (
    HELD_OUT_LANGUAGE,
    HELD_OUT_LANGUAGE_VOICES,
    HELD_OUT_VOICES,
    build_corpus,
    calibration_clips,
    load_corpus,
)
from emolive.training.dataset import WindowSampler, channel_stats
from emolive.training.lipgap import LipGapTrainConfig, train_regressor
from emolive.training.lipreaders import calibrate_lip_readers
from emolive.training.seal import SealTrainConfig, train_detector
from emolive.training.train import DistillConfig, TrainConfig, distill_student, train_teacher
from emolive.training.windownet import history_metrics

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_WEIGHTS = ROOT / "engine" / "motion" / "weights"


@dataclass
class RecipeConfig:
    n_train: int = 1600
    copies: int = 2
    eval_per_group: int = 12
    # One-frame hops and one frame (40 ms) of lookahead: what a live session steps every tick,
    # so offline and live frames are the same, and audio -> frame latency is the baseline's.
    model: DiTConfig = field(default_factory=lambda: DiTConfig(
        past_frames=12, audio_hidden=128, hop_frames=1, lookahead=1, feature_norm=True))
    teacher: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3200, batch=256, context_noise=0.2))
    student: DistillConfig = field(default_factory=lambda: DistillConfig(pairs=8192, steps=800, batch=192))
    seal: SealTrainConfig = field(default_factory=SealTrainConfig)
    lip_gap: LipGapTrainConfig = field(default_factory=LipGapTrainConfig)
    teacher_steps: int = 24
    student_steps: int = 2
    workers: int = 2
    bench_seconds: float = 8.0
    calibration_per_voice: int = 6
    rest_seconds: float = 10.0  # of digital silence per seed for the rest offset


SCALES = {
    "full": RecipeConfig,
    "smoke": lambda: RecipeConfig(
        n_train=16, copies=1, eval_per_group=1, bench_seconds=2.0, calibration_per_voice=1, rest_seconds=1.0, teacher_steps=8,
        model=DiTConfig(past_frames=8, audio_hidden=32, d_model=64, depth=2, heads=2, hop_frames=1, lookahead=1,
                        feature_norm=True),
        teacher=TrainConfig(steps=150, batch=64, lr=3e-3, warmup=20),
        student=DistillConfig(pairs=512, pair_batch=256, steps=30, batch=64, warmup=5),
        seal=SealTrainConfig(steps=30, batch=64),
        lip_gap=LipGapTrainConfig(steps=30, batch=64),
    ),
}


# Fine-tuning a trained teacher (--warm-start): fewer steps at a lower rate than from scratch.
WARM_START = lambda: TrainConfig(steps=1200, batch=256, lr=5e-4, warmup=50, context_noise=0.2)  # noqa: E731

CORPUS_VERSION = 4  # 2: tighter jaw and lip-seal reach in training.targets; 3: singing, no msu_ru_nsh, G.722; 4: reverb at a drawn direct-to-reverberant ratio


def _log(message: str) -> None:
    print(message, flush=True)


def run_recipe(out_dir: Path, seed: int = 0, scale: str = "full", install: bool = False,
               log=_log, reuse_corpus: bool = False, n_train: int | None = None,
               teacher_minutes: float | None = None, student_minutes: float | None = None,
               warm_start: Path | None = None) -> dict:
    """Run everything; returns the metrics dict (also written to ``out_dir/metrics.json``).
    ``n_train`` and the time limits on teacher and student shorten a run on a busy machine;
    ``warm_start`` starts the teacher from a teacher checkpoint (:func:`emolive.training.train.warm_start`)
    with :data:`WARM_START` training instead of the scale's."""
    torch.set_num_threads(1)
    cfg = SCALES[scale]()
    if n_train is not None:
        cfg.n_train = n_train
    if warm_start is not None:
        cfg.teacher = WARM_START()
        cfg.teacher.init_from = str(warm_start)
    if teacher_minutes is not None:
        cfg.teacher.time_limit_s = teacher_minutes * 60.0
    if student_minutes is not None:
        cfg.student.time_limit_s = student_minutes * 60.0
    cfg.teacher.seed = seed
    cfg.student.seed = seed + 1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    paths = _corpus(out_dir / "corpus", cfg, seed, reuse_corpus, timings, log)
    timings["corpus_s"] = time.perf_counter() - t0
    train = load_corpus(paths["train"])
    mean, std = channel_stats(train.targets)
    sampler = WindowSampler(train, cfg.model, mean, std, seed)
    log(f"recipe: {len(sampler)} training windows")

    teacher, teacher_hist = train_teacher(sampler, cfg.model, mean, std, cfg.teacher, log=log)
    timings["teacher_s"] = teacher_hist.seconds
    student, student_hist = distill_student(teacher, sampler, cfg.student, log=log)
    timings["student_s"] = student_hist.seconds

    t1 = time.perf_counter()
    clips = calibration_clips(seed, cfg.calibration_per_voice, cfg.workers)
    calibration = calibrate_seal(teacher, student, cfg, clips, seed, log)
    rest = {kind: calibrate_rest(DiffusionMotion(model, steps=steps, name=kind), cfg.rest_seconds, log)
            for kind, model, steps in (("teacher", teacher, cfg.teacher_steps), ("student", student, cfg.student_steps))}
    timings["calibration_s"] = time.perf_counter() - t1

    weights = out_dir / "weights"
    cfg.seal.seed, cfg.lip_gap.seed = seed + 2, seed + 3
    student_motion = DiffusionMotion(student, steps=cfg.student_steps, name="student", seal_bias=calibration["student"]["bias"])
    metrics_lips = train_lip_readers(sampler, mean, std, student_motion, clips, cfg, weights, timings, log)
    save_model(teacher, weights / "teacher.safetensors", kind="teacher", steps=cfg.teacher_steps,
               seal_bias=calibration["teacher"]["bias"], rest_offset=rest["teacher"], extra={"seed": seed, "scale": scale})
    save_model(student, weights / "student.safetensors", kind="student", steps=cfg.student_steps,
               seal_bias=calibration["student"]["bias"], rest_offset=rest["student"], extra={"seed": seed, "scale": scale})

    t1 = time.perf_counter()
    metrics = evaluate_weights(paths["eval"], weights, cfg.teacher_steps, cfg.student_steps, log=log,
                               bench_seconds=cfg.bench_seconds, seed=seed)
    timings["eval_s"] = time.perf_counter() - t1
    timings["total_s"] = time.perf_counter() - t0
    n_params = sum(p.numel() for p in student.parameters())
    metrics.update({
        "seed": seed, "scale": scale, "timings": timings,
        "corpus": {"train_clips": int(len(train.lengths)), "train_minutes": float(train.lengths.sum() / 25 / 60),
                   "train_utterances": cfg.n_train, "copies": cfg.copies,
                   "voices": sorted(set(map(str, train.voice))),
                   "held_out_voices": list(HELD_OUT_VOICES), "held_out_language": HELD_OUT_LANGUAGE,
                   "held_out_language_voices": list(HELD_OUT_LANGUAGE_VOICES)},
        "model": {"config": json.loads(cfg.model.to_json()), "parameters": n_params},
        "training": {"teacher": asdict(cfg.teacher), "student": asdict(cfg.student),
                     "teacher_loss_first": float(np.mean(teacher_hist.losses[:20])),
                     "teacher_loss_last": float(np.mean(teacher_hist.losses[-20:])),
                     "teacher_phone_loss_first": _mean_or_none(teacher_hist.phone_losses[:20]),
                     "teacher_phone_loss_last": _mean_or_none(teacher_hist.phone_losses[-20:]),
                     "student_loss_first": float(np.mean(student_hist.losses[:10])),
                     "student_loss_last": float(np.mean(student_hist.losses[-10:])),
                     "teacher_steps_run": teacher_hist.steps, "student_steps_run": student_hist.steps},
        "machine": {"cpu_threads": 1, "platform": platform.platform(), "torch": torch.__version__},
        "seal_calibration": calibration,
        "lip_readers": metrics_lips,
        "rest_offset": {kind: _named_offset(offset) for kind, offset in rest.items()},
    })
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    log(metrics["table"])
    log(f"recipe: done in {timings['total_s'] / 60:.1f} min "
        f"(corpus {timings['corpus_s'] / 60:.1f}, teacher {timings['teacher_s'] / 60:.1f}, "
        f"student {timings['student_s'] / 60:.1f}, seal and rest calibration {timings['calibration_s'] / 60:.1f}, "
        f"eval {timings['eval_s'] / 60:.1f})")
    if install:
        SHIPPED_WEIGHTS.mkdir(parents=True, exist_ok=True)
        for name in ("teacher.safetensors", "student.safetensors", SEAL_WEIGHTS_NAME, LIP_GAP_WEIGHTS_NAME):
            (SHIPPED_WEIGHTS / name).write_bytes((weights / name).read_bytes())
            (SHIPPED_WEIGHTS / name).chmod(0o644)
        (SHIPPED_WEIGHTS / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        from emolive.training.model_card import write_model_card

        write_model_card(metrics, SHIPPED_WEIGHTS / "MODEL_CARD.md")
        log(f"recipe: installed weights and model card in {SHIPPED_WEIGHTS}")
    return metrics


def _corpus(corpus_dir: Path, cfg: RecipeConfig, seed: int, reuse: bool, timings: dict, log=print) -> dict[str, Path]:
    """The corpus's train/eval paths: built into ``corpus_dir``, or with ``reuse`` the one there
    when it was built with the same plan, seed and corpus version."""
    stamp = {"n_train": cfg.n_train, "seed": seed, "copies": cfg.copies, "eval_per_group": cfg.eval_per_group,
             "version": CORPUS_VERSION}
    stamp_path = corpus_dir / "stamp.json"
    paths = {"train": corpus_dir / "train.npz", "eval": corpus_dir / "eval.npz"}
    if reuse and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp and all(
            p.is_file() for p in paths.values()):
        log(f"recipe: reusing the corpus in {corpus_dir} (same plan and seed)")
        timings["corpus_reused"] = 1.0
        return paths
    paths = build_corpus(corpus_dir, cfg.n_train, seed, cfg.copies, cfg.workers, cfg.eval_per_group, log=log)
    stamp_path.write_text(json.dumps(stamp))
    return paths


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _named_offset(offset: np.ndarray) -> dict[str, float]:
    from emolive.engine.motion_space import CHANNELS

    return {name: round(float(value), 4) for name, value in zip(CHANNELS, offset) if value > 0}


def calibrate_rest(model: DiffusionMotion, seconds: float = RecipeConfig.rest_seconds, log=print) -> np.ndarray:
    """The rest offset of ``model`` (training.evaluate.calibrate_rest_offset), logged."""
    from emolive.training.evaluate import calibrate_rest_offset

    offset = calibrate_rest_offset(model, seconds=seconds)
    largest = sorted(_named_offset(offset).items(), key=lambda item: -item[1])[:4]
    log(f"recipe: {model.name} rest offset, largest: " + ", ".join(f"{name} {value:.3f}" for name, value in largest))
    return offset


def recalibrate_rest(weights_dir: Path, log=print) -> None:
    """Recompute the rest offset of the teacher and student in ``weights_dir`` and rewrite their
    metadata (the weights themselves unchanged); update metrics.json and the model card there."""
    metrics_path = weights_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    for kind in ("teacher", "student"):
        path = weights_dir / f"{kind}.safetensors"
        model, meta = load_model(path)
        motion = DiffusionMotion(model, steps=int(meta["steps"]), name=kind, seal_bias=float(meta.get("seal_bias", 0.0)))
        offset = calibrate_rest(motion, log=log)
        extra = json.loads(meta["extra"]) if "extra" in meta else None
        save_model(model, path, kind=meta["kind"], steps=int(meta["steps"]), seal_bias=float(meta.get("seal_bias", 0.0)),
                   rest_offset=offset, extra=extra)
        if metrics is not None:
            metrics.setdefault("rest_offset", {})[kind] = _named_offset(offset)
    if metrics is not None:
        from emolive.training.model_card import write_model_card

        metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
        write_model_card(metrics, weights_dir / "MODEL_CARD.md")
    log(f"recipe: rest offsets written into {weights_dir}")


def train_lip_readers(sampler: WindowSampler, mean: np.ndarray, std: np.ndarray, student: DiffusionMotion,
                      clips: list, cfg: RecipeConfig, weights: Path, timings: dict, log=print,
                      keep_existing: bool = False) -> dict:
    """Train the lip readers on ``sampler``'s windows (``mean``/``std``: its motion
    normalisation; with ``keep_existing``, only those ``weights`` lacks), calibrate them with
    ``student`` on the calibration ``clips`` (training.lipreaders) and write them into
    ``weights`` -> their metrics."""
    t1 = time.perf_counter()
    metrics: dict = {}
    detector_path, regressor_path = weights / SEAL_WEIGHTS_NAME, weights / LIP_GAP_WEIGHTS_NAME
    if keep_existing and detector_path.is_file():
        detector, detector_record = load_detector(detector_path), read_extra(detector_path)
    else:
        detector, hist = train_detector(sampler, cfg.seal, log=log)
        metrics["seal_detector"] = {"seed": cfg.seal.seed, **history_metrics(detector, hist, cfg.seal)}
        detector_record = {"seed": cfg.seal.seed, "steps": cfg.seal.steps}
    if keep_existing and regressor_path.is_file():
        regressor, regressor_record = load_regressor(regressor_path), read_extra(regressor_path)
    else:
        regressor, hist = train_regressor(sampler, mean, std, cfg.lip_gap, log=log)
        metrics["lip_gap"] = {"seed": cfg.lip_gap.seed, **history_metrics(regressor, hist, cfg.lip_gap)}
        regressor_record = {"seed": cfg.lip_gap.seed, "steps": cfg.lip_gap.steps}
    table = calibrate_lip_readers(student, detector, regressor, clips, seed=cfg.seal.seed)
    timings["lip_readers_s"] = time.perf_counter() - t1
    save_detector(detector, detector_path, extra=detector_record)
    save_regressor(regressor, regressor_path, extra=regressor_record)
    chosen = table[-1]
    log(f"recipe: lip readers: blend {regressor.blend}, seal threshold {detector.threshold}, gap gate "
        f"{detector.gap_gate} (student with them: r {chosen.r:.3f}, closure recall {chosen.recall:.3f}, "
        f"false closures {chosen.false_closures:.3f} on {len(clips)} calibration utterances)")
    metrics.update(blend=regressor.blend, threshold=detector.threshold, gap_gate=detector.gap_gate,
                   table=[asdict(row) for row in table])
    return metrics


def retrain_lip_readers(weights_dir: Path, out_dir: Path, seed: int = 0, scale: str = "full",
                        reuse_corpus: bool = True, log=print) -> dict:
    """Train the lip readers ``weights_dir`` lacks for its student (weights unchanged) on the
    recipe's corpus in ``out_dir``, calibrate them all, write them there and re-evaluate:
    update metrics.json and the model card."""
    torch.set_num_threads(1)
    cfg = SCALES[scale]()
    cfg.seal.seed, cfg.lip_gap.seed = seed + 2, seed + 3
    paths = _corpus(out_dir / "corpus", cfg, seed, reuse_corpus, {}, log)
    model, meta = load_model(weights_dir / "student.safetensors")
    train = load_corpus(paths["train"])
    mean, std = model.mean.numpy(), model.std.numpy()
    sampler = WindowSampler(train, model.cfg, mean, std, seed)
    if model.cfg.feature_norm and not np.allclose(sampler.audio_prior, model.audio_prior.numpy(), atol=1e-4):
        raise ValueError(f"{paths['train']} is not the corpus the weights in {weights_dir} were trained on")
    student = DiffusionMotion(model, steps=int(meta["steps"]), name="student", seal_bias=float(meta.get("seal_bias", 0.0)))
    timings: dict[str, float] = {}
    metrics_path = weights_dir / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    lips = train_lip_readers(sampler, mean, std, student, calibration_clips(seed, cfg.calibration_per_voice, cfg.workers),
                             cfg, weights_dir, timings, log, keep_existing=True)
    trained_before = metrics.get("lip_readers") or {"seal_detector": metrics.pop("seal_detector", None)}
    for reader in ("seal_detector", "lip_gap"):  # the training record of a reader kept as it was
        if reader not in lips and trained_before.get(reader) is not None:
            lips[reader] = trained_before[reader]
    t1 = time.perf_counter()
    metrics.update(evaluate_weights(paths["eval"], weights_dir, cfg.teacher_steps, cfg.student_steps, log=log,
                                    bench_seconds=cfg.bench_seconds, seed=seed))
    metrics["lip_readers"] = lips
    metrics["timings"].update(timings, eval_s=time.perf_counter() - t1)
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    from emolive.training.model_card import write_model_card

    write_model_card(metrics, weights_dir / "MODEL_CARD.md")
    log(metrics["table"])
    return metrics


def calibrate_seal(teacher: MotionDiT, student: MotionDiT, cfg: RecipeConfig, clips: list, seed: int, log=print) -> dict:
    """Seal bias of each model (training.evaluate.calibrate_seal_bias) on training voices saying
    unseen sentences (``clips``) -> {kind: {"bias", "table": [(bias, closure recall, false closures)]}}."""
    from emolive.training.evaluate import calibrate_seal_bias

    out = {}
    for kind, model, steps in (("teacher", teacher, cfg.teacher_steps), ("student", student, cfg.student_steps)):
        result = calibrate_seal_bias(DiffusionMotion(model, steps=steps, name=kind), clips, seed=seed)
        out[kind] = {"bias": result.bias, "table": result.table}
        best = next(row for row in result.table if row[0] == result.bias)
        log(f"recipe: {kind} seal bias {result.bias} (closure recall {best[1]:.3f}, "
            f"false closures {best[2]:.3f} on {len(clips)} calibration utterances)")
    return out


def evaluate_weights(eval_path: Path, weights: Path, teacher_steps: int | None, student_steps: int | None, log=print,
                     max_clips: int | None = None, bench_seconds: float = 8.0, seed: int = 0) -> dict:
    """Baseline / teacher / student of ``weights`` on an evaluation corpus: :func:`evaluate_clips`."""
    ev = load_corpus(eval_path)
    clips = [(ev.audio[i], ev.phones[i], str(ev.group[i])) for i in range(len(ev.lengths))]
    if max_clips is not None:
        clips = clips[:max_clips]
    return evaluate_clips(clips, weights, teacher_steps, student_steps, log=log, bench_seconds=bench_seconds, seed=seed)


def evaluate_clips(clips: list, weights: Path, teacher_steps: int | None, student_steps: int | None, log=print,
                   bench_seconds: float = 8.0, seed: int = 0, real: bool = True) -> dict:
    """Baseline / teacher / student on held-out TTS and singing clips (kept apart by their
    ``sing:`` groups) and, with ``real``, on the real recorded speech packages ship -> metrics
    dict: ``models`` / ``table`` (TTS), ``singing`` / ``singing_table``, ``real`` / ``real_table``."""
    from emolive.engine.motion.baseline import BaselineMotion
    from emolive.training.evaluate import evaluate_models, group_table, markdown_table, ms_per_hop, summaries
    from emolive.training.realspeech import real_clips

    models = {
        "baseline": BaselineMotion(),
        "teacher": DiffusionMotion.from_file(weights / "teacher.safetensors", steps=teacher_steps, name="teacher"),
        "student": DiffusionMotion.from_file(weights / "student.safetensors", steps=student_steps, name="student"),
    }
    tts = [c for c in clips if not c[2].startswith("sing:")]
    results = evaluate_models(models, tts, seed=seed, log=log)
    hop = {name: ms_per_hop(m, seconds=bench_seconds) for name, m in models.items()}
    out: dict = {"table": markdown_table(results, hop), "ms_per_hop": hop, "models": {}}
    for name, s in results.items():
        per = summaries({name: s})[name]
        inside = None if np.isnan(s.inside_jump) else s.inside_jump  # one-frame hops have no inside
        out["models"][name] = {"groups": per, "boundary_jump": s.boundary_jump, "inside_jump": inside}
    sets = [("singing", [c for c in clips if c[2].startswith("sing:")])]
    if real:
        sets.append(("real", real_clips()))
    for key, subset in sets:
        if subset:
            log(f"eval: {key} ({len(subset)} clips)")
            scored = evaluate_models(models, subset, seed=seed, log=log)
            out[key] = summaries(scored)
            out[f"{key}_table"] = group_table(scored)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.recipe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--install", action="store_true", help="copy the weights + model card into engine/motion/weights")
    parser.add_argument("--reuse-corpus", action="store_true",
                        help="skip synthesis when OUT/corpus was built with the same plan and seed")
    parser.add_argument("--n-train", type=int, help="training utterances (default: the scale's, 1600 at full)")
    parser.add_argument("--teacher-minutes", type=float, help="stop the teacher after this many minutes")
    parser.add_argument("--student-minutes", type=float, help="stop the student's distillation after this many minutes")
    parser.add_argument("--warm-start", type=Path, help="start the teacher from this teacher checkpoint")
    args = parser.parse_args(argv)
    run_recipe(args.out, args.seed, args.scale, args.install, reuse_corpus=args.reuse_corpus, n_train=args.n_train,
               teacher_minutes=args.teacher_minutes, student_minutes=args.student_minutes, warm_start=args.warm_start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
