"""Writes engine/motion/weights/MODEL_CARD.md from a recipe's metrics."""

from __future__ import annotations

import math
from pathlib import Path

from emolive.training.train import LIP_WEIGHT, SEAL_WEIGHT


def write_model_card(metrics: dict, path: Path) -> None:
    c = metrics["corpus"]
    t = metrics["timings"]
    m = metrics["model"]
    tr = metrics["training"]
    cfg = m["config"]
    size = {p.name: p.stat().st_size for p in Path(path).parent.glob("*.safetensors")}
    lines = [
        "# emolive motion DiT — model card",
        "",
        "Two checkpoints of one architecture: `teacher.safetensors` (rectified flow, 24 Euler steps) and",
        "`student.safetensors` (reflow-distilled, 2 Euler steps; the default motion model).",
        "Produced by `emolive train --install` (see `docs/model.md`); regenerate them the same way.",
        "",
        "## Model",
        f"- DiT denoiser: d={cfg['d_model']}, {cfg['depth']} blocks, {cfg['heads']} heads, MLP ×{cfg['mlp_ratio']}, "
        f"{m['parameters']:,} parameters (float32).",
        f"- Tokens: {cfg['past_frames']} past motion frames (rolling buffer) + {cfg['hop_frames']} hop frame(s) + "
        f"{cfg['lookahead']} lookahead frame(s) ({40 * cfg['lookahead']} ms); audio window {cfg['audio_past']} past + "
        "hop + lookahead video frames of 80-band log-mel"
        + (", normalised per band by the stream's running mean (`emolive.engine.motion.featnorm`)," if cfg.get("feature_norm")
           else "")
        + " through a 1-D conv encoder; adaLN-Zero from diffusion time + controls "
        "(head-motion intensity, head speed, expressiveness) and the blink clock (time since the model's last blink).",
        f"- Output: all 35 motion channels (head pose + ARKit blendshapes) of the next {cfg['hop_frames']} frame(s).",
        "- Files: " + ", ".join(f"`{k}` {v / 1e6:.1f} MB" for k, v in sorted(size.items())),
        "",
        "## Data",
        f"- {c['train_utterances']} synthesised utterances × {c['copies']} augmented copies = {c['train_clips']} clips, "
        f"{c['train_minutes']:.0f} minutes of audio; {len(c['voices'])} distinct training voices "
        "(flite slt/kal/kal16, festival kal_diphone, espeak-ng English accents and 34 other languages with voice variants; "
        "festival ked_diphone, Catalan HTS upc_ca_ona_hts, Czech dita/krb/machac/ph and Finnish suo_fi_lj/hy_fi_mv; "
        "singing: festival kal_diphone and ked_diphone in singing mode on random tunes).",
        "- Text: fortunes-min / fortunes-de / fortunes-es / fortunes-cs / fortunes-ru sentences, Debian word lists, "
        "sentences written for phone coverage (English, Catalan), pseudo-words in each language's spelling.",
        f"- Held out (evaluation only): voices {', '.join(c['held_out_voices'])}; the whole language "
        f"`{c['held_out_language']}` ({', '.join(c['held_out_language_voices'])}).",
        "- Targets: phone -> viseme -> blendshapes with dominance-blended coarticulation, bilabial closures pinned, "
        "prosody-driven brows/nods, seeded blinks and head sway (see `training/targets.py`).",
        "- Augmentation: tempo/pitch, EQ, reverb (synthetic room impulse responses), telephone band + 8 kHz µ-law, "
        "Opus / MP3 / G.722 round trips, low-pass, noise and hum, resampling, gain and level rides.",
        "- No recorded human speech was used for training.",
        "",
        "## Training (one CPU thread)",
        ("- Corpus reused from an earlier run with the same plan and seed (`--reuse-corpus`)"
         if t.get("corpus_reused") else f"- Corpus {t['corpus_s'] / 60:.1f} min") + f", teacher {t['teacher_s'] / 60:.1f} min "
        f"({tr['teacher_steps_run']} steps × batch {tr['teacher']['batch']}), student {t['student_s'] / 60:.1f} min "
        f"({tr['student']['pairs']} teacher pairs, {tr['student_steps_run']} steps), seal and rest calibration "
        f"{t.get('calibration_s', 0.0) / 60:.1f} min, evaluation {t['eval_s'] / 60:.1f} min; "
        f"total {t['total_s'] / 60:.1f} min. Seed {metrics['seed']}.",
        f"- Teacher loss {tr['teacher_loss_first']:.3f} -> {tr['teacher_loss_last']:.3f}; "
        f"student 2-step error {tr['student_loss_first']:.4f} -> {tr['student_loss_last']:.4f}.",
        *([f"- The teacher was fine-tuned from `{Path(tr['teacher']['init_from']).name}` (`emolive train --warm-start`; "
            "v7: the v6 teacher, whose 2-frame hops and lookahead were adapted to one frame)."]
          if tr["teacher"].get("init_from") else []),
        *_phone_loss_lines(tr),
        f"- The lip seal (`mouthClose`) weighs {SEAL_WEIGHT:g}× a non-lip channel in the denoising loss (the other "
        f"lip channels {LIP_WEIGHT:g}×).",
        "",
        "## Lip-seal calibration",
        "Sampling pins the lips' starting noise (every seed gives the same mouth); the seal channel (`mouthClose`) "
        "starts at a calibrated bias instead of 0, so a bilabial closes when the model is fairly, not more than half, "
        "sure of it. Chosen on training voices saying unseen sentences (`emolive.training.corpus.calibration_jobs`), never "
        "on the held-out set: the smallest bias with closure recall ≥ 0.9 and ≤ 3 % of clearly open frames shut "
        "(ground-truth openness ≥ 0.3), else the best recall within that 3 %; the bias is never below 0 (the model's "
        "own sampling), so a model that already shuts more than 3 % keeps 0.",
        "",
        "| model | bias | closure recall | false closures |",
        "|---|---:|---:|---:|",
        *[f"| {kind} | {row[0]:.2f}{' (chosen)' if row[0] == cal['bias'] else ''} | {row[1]:.3f} | {row[2]:.3f} |"
          for kind, cal in metrics.get("seal_calibration", {}).items() for row in cal["table"]],
        *_lip_reader_lines(metrics.get("lip_readers")),
        "",
        "## Rest offset",
        ("In digital silence the model holds a faint expression (its targets idle with a slight smile, squint and brow "
         "drift). The highest level of each expression channel over 16 seeds × 10 s of silence is stored with the weights "
         "and taken off every frame (`emolive.training.evaluate.calibrate_rest_offset`), so silence shows the portrait's "
         "own expression; head pose, blinks and the lip gap are left alone. Largest offsets:"),
        "",
        *[f"- {kind}: " + ", ".join(f"{name} {value:.3f}" for name, value in sorted(offset.items(), key=lambda i: -i[1])[:6])
          for kind, offset in metrics.get("rest_offset", {}).items()],
        "",
        "## Metrics (held-out voices and language)",
        "",
        metrics["table"],
        "",
        "Real recorded speech (never trained on; see training/realspeech.py):",
        "",
        metrics.get("real_table", "(no real speech clips on the machine that trained this)"),
        "",
        "Singing (festival's example songs, sung by its diphone voices; see training/singing.py):",
        "",
        metrics.get("singing_table", "(no singing evaluated)"),
        "",
        "Openness r: Pearson r of the lip gap a viewer sees (`engine.motion_space.mouth_gap`: jawOpen × (1 − mouthClose) "
        "plus what the lip shapes part) with the phone-based ground truth (`emolive.training.visemes.openness`); closure "
        "recall: share of m/b/p closures ≥ 40 ms with a frame whose gap is under 0.05; offset: median best A/V lag "
        "(positive = face late).",
        "",
        "## Limits",
        "- Trained on synthetic speech only; see docs/model.md for the real-voice check.",
        "- Lip targets are a rule-based viseme model, not motion capture.",
        *_unmet_targets(metrics),
    ]
    Path(path).write_text("\n".join(lines) + "\n")


def _gate_clause(gate: float) -> str:
    return "" if math.isinf(gate) else f" and the lip gap is already under {gate:g}"


def _threshold(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _lip_reader_lines(lips: dict | None) -> list[str]:
    """The lip readers (emolive.engine.motion.lipgap, emolive.engine.motion.seal), when the weights have them."""
    if not lips:
        return []
    seal, gap = lips.get("seal_detector"), lips.get("lip_gap")
    lines = ["", "## Lip readers",
             "Two small networks of the same audio window check the student's mouth on the frames a caller gets "
             "(the model's own history is left as it sampled it)."]
    if gap:
        lines.append(
            f"- `lipgap.safetensors`: a {gap['parameters']:,}-parameter regressor trained ({gap['steps']} steps, "
            f"{gap['seconds'] / 60:.1f} min, loss {gap['loss_first']:.4f} -> {gap['loss_last']:.4f}) on the targets' lip "
            f"gap. Each frame's gap moves {lips['blend']:g} of the way from the student's to the regressor's.")
    if seal:
        lines.append(
            f"- `seal.safetensors`: a {seal['parameters']:,}-parameter classifier trained ({seal['steps']} steps, "
            f"{seal['seconds'] / 60:.1f} min, loss {seal['loss_first']:.3f} -> {seal['loss_last']:.3f}) to tell whether "
            "the hop frame lies in a bilabial, closures drawn as a quarter of every batch. Where it is surer than "
            f"{lips['threshold']:g}{_gate_clause(lips['gap_gate'])}, the lips are sealed (`mouthClose` 1, `jawOpen` at most "
            "0.06).")
    lines += [
        "",
        "Calibrated on the same calibration voices (emolive.training.lipreaders): the blend with the highest openness r; "
        "then, for each gap gate, the lowest seal threshold that adds at most 1.5 % of clearly open frames shut; of "
        "those, the one with the highest openness r (the last row is the choice).",
        "",
        "| blend | threshold | gap gate | openness r | closure recall | false closures |",
        "|---:|---:|---:|---:|---:|---:|",
        *[f"| {row['blend']:g} | {_threshold(row['threshold'])} | {row['gap_gate']:g} "
          f"| {row['r']:.3f} | {row['recall']:.3f} | {row['false_closures']:.3f} |" for row in lips["table"]],
    ]
    return lines


def _phone_loss_lines(training: dict) -> list[str]:
    """The teacher's phone-recognition loss (training.train.PhoneHead), when it had one."""
    weight = training["teacher"].get("phone_weight", 0.0)
    if not weight:
        return []
    curve = ""
    if training.get("teacher_phone_loss_last") is not None:
        curve = f"; loss {training['teacher_phone_loss_first']:.2f} -> {training['teacher_phone_loss_last']:.2f}"
    return ["- The teacher's audio encoder also learns to recognise the phone of every 10 ms mel frame (a "
            f"training-only linear readout, cross-entropy weight {weight:g}{curve})."]


def _unmet_targets(metrics: dict) -> list[str]:
    """Lines for the held-out targets (openness r and closure recall ≥ 0.85) the student misses."""
    overall = metrics["models"]["student"]["groups"]["overall"]
    missed = [f"{label} {overall[key]:.3f}" for key, label in (("openness_r", "openness r"),
                                                               ("closure_recall", "closure recall"))
              if overall[key] < 0.85]
    if not missed:
        return []
    return [f"- Below the project's held-out targets (0.85 each): {', '.join(missed)}."]
