"""Writes engine/motion/weights/MODEL_CARD.md from a recipe's metrics."""

from __future__ import annotations

from pathlib import Path


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
        f"- Tokens: {cfg['past_frames']} past motion frames (rolling buffer) + {cfg['hop_frames']} hop frames + "
        f"{cfg['lookahead']} lookahead frames (80 ms); audio window {cfg['audio_past']} past + hop + lookahead video "
        "frames of 80-band log-mel through a 1-D conv encoder; adaLN-Zero from diffusion time + controls "
        "(head-motion intensity, head speed, expressiveness) and the blink clock (time since the model's last blink).",
        "- Output: all 35 motion channels (head pose + ARKit blendshapes) of the next 2 frames.",
        "- Files: " + ", ".join(f"`{k}` {v / 1e6:.1f} MB" for k, v in sorted(size.items())),
        "",
        "## Data",
        f"- {c['train_utterances']} synthesised utterances × {c['copies']} augmented copies = {c['train_clips']} clips, "
        f"{c['train_minutes']:.0f} minutes of audio; {len(c['voices'])} distinct training voices "
        "(flite slt/kal/kal16, festival kal_diphone, espeak-ng English accents and 34 other languages with voice variants).",
        "- Text: fortunes-min / fortunes-de / fortunes-es sentences, Debian word lists, sentences written for phone coverage, "
        "pseudo-words in each language's spelling.",
        f"- Held out (evaluation only): voices {', '.join(c['held_out_voices'])}; the whole language "
        f"`{c['held_out_language']}` ({', '.join(c['held_out_language_voices'])}).",
        "- Targets: phone -> viseme -> blendshapes with dominance-blended coarticulation, bilabial closures pinned, "
        "prosody-driven brows/nods, seeded blinks and head sway (see `training/targets.py`).",
        "- Augmentation: tempo/pitch, EQ, reverb, codecs/band limits, noise, resampling, gain.",
        "- No recorded human speech was used for training.",
        "",
        "## Training (one CPU thread)",
        f"- Corpus {t['corpus_s'] / 60:.1f} min, teacher {t['teacher_s'] / 60:.1f} min "
        f"({tr['teacher_steps_run']} steps × batch {tr['teacher']['batch']}), student {t['student_s'] / 60:.1f} min "
        f"({tr['student']['pairs']} teacher pairs, {tr['student_steps_run']} steps), evaluation {t['eval_s'] / 60:.1f} min; "
        f"total {t['total_s'] / 60:.1f} min. Seed {metrics['seed']}.",
        f"- Teacher loss {tr['teacher_loss_first']:.3f} -> {tr['teacher_loss_last']:.3f}; "
        f"student 2-step error {tr['student_loss_first']:.4f} -> {tr['student_loss_last']:.4f}.",
        "",
        "## Metrics (held-out voices and language)",
        "",
        metrics["table"],
        "",
        "Real recorded speech (never trained on; see training/realspeech.py):",
        "",
        metrics.get("real_table", "(no real speech clips on the machine that trained this)"),
        "",
        "Openness r: Pearson r of jawOpen × (1 − mouthClose) with the phone-based ground truth "
        "(`training.visemes.openness`); closure recall: share of m/b/p closures ≥ 40 ms with a frame whose gap is "
        "under 0.05; offset: median best A/V lag (positive = face late).",
        "",
        "## Limits",
        "- Trained on synthetic speech only; see docs/model.md for the real-voice check.",
        "- Lip targets are a rule-based viseme model, not motion capture.",
    ]
    Path(path).write_text("\n".join(lines) + "\n")
