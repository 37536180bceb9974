"""Lip-sync evaluation on held-out voices and language: ``emolive eval lipsync``.

For every evaluation clip and every model (baseline, teacher, student):

- **openness r**: Pearson r between the model's mouth opening — the lip gap a viewer sees
  (``engine.motion_space.mouth_gap``: the jaw's gap as the renderer seals it, ``jawOpen × (1 −
  mouthClose)``, plus what the lip shapes part) — and the ground truth of
  ``emolive.training.visemes.openness``;
- **closure recall**: the share of bilabial closures (runs of m/b/p ≥ 40 ms) during which the
  mouth closes: some frame overlapping the closure has a lip gap under 0.05 (7 % of a fully
  open jaw);
- **best A/V offset**: the lag (ms, sub-frame by a parabola through the correlation peak) that
  maximises the correlation between model and ground truth; positive = the face is late.

Reported per group and overall (means over clips) for three sets kept apart: held-out TTS
(each held-out voice, the held-out language), real recorded speech (``emolive.training.realspeech``) and
singing (``emolive.training.singing``), with the student's ms per hop (one core) and the largest
frame-to-frame jump at hop boundaries vs inside hops.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from emolive.engine.audio import SILENCE_FEATURE, log_mel, video_frame_features
from emolive.engine.motion import MotionModel, generate
from emolive.engine.motion_space import FPS, SHUT_LIP_GAP, MotionControls, mouth_gap
from emolive.training.tts import Phone
from emolive.training.visemes import closure_intervals, openness

if TYPE_CHECKING:
    from emolive.engine.motion.diffusion import DiffusionMotion

MAX_LAG_FRAMES = 4


def closure_recall(gap: np.ndarray, phones: Sequence[Phone], fps: float = FPS) -> tuple[int, int]:
    """(closures where the mouth closed, closures) for m/b/p runs ≥ 40 ms."""
    lo = np.arange(len(gap)) / fps
    hi = lo + 1.0 / fps
    hits = total = 0
    for start, end in closure_intervals(phones, 0.04):
        frames = np.flatnonzero((hi > start) & (lo < end))
        if not len(frames):
            continue
        total += 1
        hits += bool(np.any(gap[frames] < SHUT_LIP_GAP))
    return hits, total


def best_offset_ms(truth: np.ndarray, pred: np.ndarray, fps: float = FPS, max_lag: int = MAX_LAG_FRAMES) -> float:
    """Lag (ms) of ``pred`` behind ``truth`` with the highest correlation; parabolic sub-frame peak."""
    rs = []
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            a, b = truth[: len(truth) - lag], pred[lag:]
        else:
            a, b = truth[-lag:], pred[: len(pred) + lag]
        n = min(len(a), len(b))
        a, b = a[:n], b[:n]
        rs.append(np.corrcoef(a, b)[0, 1] if n > 8 and a.std() > 0 and b.std() > 0 else -1.0)
    rs = np.nan_to_num(np.array(rs), nan=-1.0)
    k = int(np.argmax(rs))
    offset = float(k - max_lag)
    if 0 < k < len(rs) - 1:
        denom = rs[k - 1] - 2 * rs[k] + rs[k + 1]
        if denom < 0:
            offset += 0.5 * (rs[k - 1] - rs[k + 1]) / denom
    return 1000.0 * offset / fps


@dataclass
class ClipScore:
    group: str
    r: float
    closures_hit: int
    closures: int
    offset_ms: float


def real_language(group: str) -> str | None:
    """The language a real-speech group names first (``real:en_librivox`` -> ``en``); None for others."""
    return group.removeprefix("real:").partition("_")[0] if group.startswith("real:") else None


@dataclass
class ModelScores:
    name: str
    clips: list[ClipScore] = field(default_factory=list)
    boundary_jump: float = float("nan")
    inside_jump: float = float("nan")

    def groups(self) -> list[str]:
        return sorted({c.group for c in self.clips})

    def languages(self) -> list[str]:
        """The languages the real-speech groups name (none for TTS and singing groups)."""
        return sorted({lang for c in self.clips if (lang := real_language(c.group)) is not None})

    def subsets(self) -> list[tuple[str | None, str | None]]:
        """(group, None) for each group, then (None, language) for each real-speech language."""
        return [(g, None) for g in self.groups()] + [(None, lang) for lang in self.languages()]

    def clips_of(self, group: str | None = None, language: str | None = None) -> list[ClipScore]:
        return [c for c in self.clips
                if (group is None or c.group == group) and (language is None or real_language(c.group) == language)]

    def summary(self, group: str | None = None, language: str | None = None) -> tuple[float, float, float]:
        cs = self.clips_of(group, language)
        r = float(np.mean([c.r for c in cs]))
        hits = sum(c.closures_hit for c in cs)
        total = sum(c.closures for c in cs)
        offset = float(np.median([c.offset_ms for c in cs]))
        return r, hits / max(1, total), offset


def score_track(frames: np.ndarray, phones: Sequence[Phone], group: str) -> ClipScore:
    n = len(frames)
    truth = openness(phones, FPS, n)
    gap = mouth_gap(frames)
    r = float(np.corrcoef(truth, gap)[0, 1]) if gap.std() > 0 else 0.0
    hits, total = closure_recall(gap, phones)
    return ClipScore(group, r, hits, total, best_offset_ms(truth, gap))


OPEN_TRUTH = 0.3  # ground-truth openness above which a closed mouth is a false closure


def false_closure_rate(frames: np.ndarray, phones: Sequence[Phone]) -> float:
    """Share of clearly open frames (ground truth ≥ 0.3) where the model's lips are shut."""
    truth = openness(phones, FPS, len(frames))
    open_frames = truth >= OPEN_TRUTH
    return float(np.mean(mouth_gap(frames)[open_frames] < SHUT_LIP_GAP)) if open_frames.any() else 0.0


SEAL_BIASES = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass
class SealCalibration:
    bias: float
    table: list[tuple[float, float, float]]  # (bias, closure recall, false-closure rate) per bias tried


REST_CALIBRATION_SEEDS = tuple(range(100, 116))
REST_CALIBRATION_SECONDS = 10.0


def calibrate_rest_offset(model: DiffusionMotion, seeds: Sequence[int] = REST_CALIBRATION_SEEDS,
                          seconds: float = REST_CALIBRATION_SECONDS) -> np.ndarray:
    """The rest offset of ``model``: per expression channel, the highest level it holds in
    digital silence over 16 seeds (zero for head pose and blinks, which idle on purpose, and for
    the lip gap, whose closing is the seal calibration's).

    The training targets idle with a faint smile, squint and brow drift; taken off the output,
    silence renders as the portrait's own expression and speech keeps its expressions, each
    lower by at most that idle level (a few hundredths)."""
    from emolive.engine.motion.diffusion import EXPRESSION_CHANNELS

    probe = model.new_stream()
    probe.rest_offset = np.zeros_like(model.rest_offset)
    silence = video_frame_features(log_mel(np.zeros(int(seconds * 16000), np.float32)))
    tracks = [generate_tracks(probe, [silence], seed)[0] for seed in seeds]
    offset = np.zeros_like(model.rest_offset)
    offset[EXPRESSION_CHANNELS] = np.max([track[:, EXPRESSION_CHANNELS].max(0) for track in tracks], axis=0)
    return offset


def closure_scores(model: MotionModel, features: Sequence[np.ndarray],
                   clips: Sequence[tuple[np.ndarray, list[Phone], str]], seed: int = 0) -> tuple[float, float]:
    """(closure recall over all clips, mean false-closure rate) of ``model`` on ``clips``
    (``features``: their video-frame features)."""
    hits = total = 0
    false = []
    for track, (_, phones, _) in zip(generate_tracks(model, features, seed), clips):
        h, n = closure_recall(mouth_gap(track), phones)
        hits, total = hits + h, total + n
        false.append(false_closure_rate(track, phones))
    return hits / max(1, total), float(np.mean(false))


def calibrate_seal_bias(model: DiffusionMotion, clips: Sequence[tuple[np.ndarray, list[Phone], str]],
                        min_recall: float = 0.9, max_false: float = 0.03, seed: int = 0) -> SealCalibration:
    """The starting noise of the lip seal (``mouthClose``) that makes bilabials close.

    With the lips' noise pinned, sampling lands on the seal only where the model is more than
    half sure of a bilabial; a missed closure on m/b/p is the most visible lip-sync error, a
    short extra one rarely seen. The smallest bias whose closure recall on ``clips`` (voices
    seen in training, unseen sentences) reaches ``min_recall`` while at most ``max_false`` of
    clearly open frames close; failing that, the bias with the best recall within ``max_false``,
    or 0 (the model's own sampling) when even that shuts more than ``max_false``. A larger bias
    only closes more (bilabials and open frames alike), so the search stops at the first bias
    that is good enough or that closes too many open frames.
    """
    features = [video_frame_features(log_mel(audio)) for audio, _, _ in clips]
    table: list[tuple[float, float, float]] = []
    for bias in SEAL_BIASES:
        if table and (table[-1][2] > max_false or table[-1][1] >= min_recall):
            break
        model.seal_bias = bias
        table.append((bias, *closure_scores(model, features, clips, seed)))
    allowed = [row for row in table if row[2] <= max_false] or table[:1]
    good = [row for row in allowed if row[1] >= min_recall]
    bias = good[0][0] if good else max(allowed, key=lambda row: row[1])[0]
    model.seal_bias = bias
    return SealCalibration(bias, table)


def hop_jumps(frames: np.ndarray, hop: int = 2) -> tuple[float, float]:
    """Largest frame-to-frame change (max over channels) between the last frame of one hop and the
    first of the next vs inside hops. Blinks and the lip seal (``mouthClose``) are left out: they
    are meant to snap within a frame; a pop would show in the head, brows and the jaw."""
    keep = [i for i in range(frames.shape[1]) if "eyeBlink" not in _name(i) and _name(i) != "mouthClose"]
    d = np.abs(np.diff(frames[:, keep], axis=0)).max(axis=1)
    # d[i] is the change from frame i to i + 1: a boundary when i + 1 starts a hop.
    boundary = (np.arange(len(d)) + 1) % hop == 0
    inside = float(d[~boundary].max(initial=0.0)) if hop > 1 else float("nan")  # one-frame hops: all boundaries
    return float(d[boundary].max(initial=0.0)), inside


def _name(i: int) -> str:
    from emolive.engine.motion_space import CHANNELS

    return CHANNELS[i]


def generate_tracks(model: MotionModel, features: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """``[generate(model, f, MotionControls(seed=seed)).frames for f in features]``; a diffusion
    model steps all clips as one batch (one denoiser call per sampler step for all of them),
    which gives the same frames (up to float rounding) many times faster."""
    from emolive.engine.motion import OFFLINE_HOP_FRAMES
    from emolive.engine.motion.diffusion import DiffusionMotion, step_batch

    if not isinstance(model, DiffusionMotion) or len(features) < 2:
        return [generate(model, f, MotionControls(seed=seed)).frames for f in features]
    streams = [model.new_stream() for _ in features]
    la = model.lookahead_frames
    silence = np.full((la, *np.shape(features[0])[1:]), SILENCE_FEATURE, np.float32)
    padded = [np.concatenate([np.asarray(f, np.float32), silence]) for f in features]
    for stream in streams:
        stream.start(MotionControls(seed=seed))
    out: list[list[np.ndarray]] = [[] for _ in features]
    for begin in range(0, max(len(f) for f in features), OFFLINE_HOP_FRAMES):
        live = [i for i, f in enumerate(features) if begin < len(f)]
        chunks = [padded[i][begin : min(begin + OFFLINE_HOP_FRAMES, len(features[i])) + la] for i in live]
        for i, frames in zip(live, step_batch([streams[i] for i in live], chunks)):
            out[i].append(frames)
    return [np.concatenate(parts) for parts in out]


def evaluate_models(models: dict[str, MotionModel], clips: Sequence[tuple[np.ndarray, list[Phone], str]],
                    seed: int = 0, log=print) -> dict[str, ModelScores]:
    """Score each model on (16 kHz audio, phones, group) clips."""
    features = [video_frame_features(log_mel(audio)) for audio, _, _ in clips]
    results: dict[str, ModelScores] = {}
    for name, model in models.items():
        scores = ModelScores(name)
        tracks = generate_tracks(model, features, seed)
        for track, (_, phones, group) in zip(tracks, clips):
            scores.clips.append(score_track(track, phones, group))
        hop = model.cfg.hop_frames if hasattr(model, "cfg") else 2  # the baseline steps like a 2-frame hop
        jumps = [hop_jumps(t, hop) for t in tracks]
        scores.boundary_jump = max(j[0] for j in jumps)
        scores.inside_jump = max((j[1] for j in jumps), default=float("nan"))
        results[name] = scores
        r, rec, off = scores.summary()
        log(f"eval {name}: r {r:.3f} closure recall {rec:.3f} offset {off:+.0f} ms")
    return results


def ms_per_hop(model: MotionModel, seconds: float = 8.0, seed: int = 0) -> float:
    """Median wall-clock ms of one 2-frame hop (80 ms of audio) of ``model`` on speech-like input."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(seed)
        t = np.arange(int(seconds * 16000)) / 16000
        audio = (0.3 * np.sin(2 * np.pi * 140 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
                 + 0.01 * rng.standard_normal(len(t))).astype(np.float32)
        feats = video_frame_features(log_mel(audio))
        model.start(MotionControls(seed=seed))
        times = []
        la = model.lookahead_frames
        for begin in range(0, len(feats) - 2 - la, 2):
            t0 = time.perf_counter()
            model.step(feats[begin : begin + 2 + la])
            times.append(time.perf_counter() - t0)
        return 1000.0 * float(np.median(times[5:] if len(times) > 10 else times))
    finally:
        torch.set_num_threads(threads)


def group_table(results: dict[str, ModelScores], overall: bool = True) -> str:
    """Markdown rows per model and group (closure recall ``n/a`` where a group has no bilabial
    closure), then per language where the groups name one (real speech), then each model's
    overall row."""
    lines = ["| model | group | openness r | closure recall | best offset (ms) |", "|---|---|---:|---:|---:|"]
    for name, s in results.items():
        for group, language in s.subsets() + ([(None, None)] if overall else []):
            cs = s.clips_of(group, language)
            if group is not None:
                label = group
            elif language is not None:
                label = f"**{language}** ({len(cs)} clip{'s' if len(cs) != 1 else ''})"
            else:
                label = "**overall**"
            r, rec, off = s.summary(group, language)
            closures = sum(c.closures for c in cs)
            lines.append(f"| {name} | {label} | {r:.3f} | {f'{rec:.3f}' if closures else 'n/a'} | {off:+.0f} |")
    return "\n".join(lines)


def summaries(results: dict[str, ModelScores]) -> dict[str, dict[str, dict[str, float | None]]]:
    """{model: {group, "language:<code>" (real speech) or "overall": {openness_r, closure_recall
    (None without closures), offset_ms}}}."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for name, s in results.items():
        out[name] = {}
        for group, language in s.subsets() + [(None, None)]:
            key = group or (f"language:{language}" if language else "overall")
            r, rec, off = s.summary(group, language)
            closures = sum(c.closures for c in s.clips_of(group, language))
            out[name][key] = {"openness_r": r, "closure_recall": rec if closures else None, "offset_ms": off}
    return out


def markdown_table(results: dict[str, ModelScores], hop_ms: dict[str, float] | None = None) -> str:
    """The results as a markdown table: one row per model and group, then overall."""
    names = list(results)
    groups = results[names[0]].groups()
    lines = ["| model | group | openness r | closure recall | best offset (ms) |", "|---|---|---:|---:|---:|"]
    for name in names:
        s = results[name]
        for g in groups + [None]:
            r, rec, off = s.summary(g)
            label = g if g is not None else "**overall**"
            lines.append(f"| {name} | {label} | {r:.3f} | {rec:.3f} | {off:+.0f} |")
    lines.append("")
    lines.append("| model | largest jump at hop boundaries | largest jump inside hops | ms per 2 frames, 80 ms of audio (1 core) |")
    lines.append("|---|---:|---:|---:|")
    for name in names:
        s = results[name]
        hop = f"{hop_ms[name]:.2f}" if hop_ms and name in hop_ms else "–"
        inside = "–" if np.isnan(s.inside_jump) else f"{s.inside_jump:.3f}"
        lines.append(f"| {name} | {s.boundary_jump:.3f} | {inside} | {hop} |")
    return "\n".join(lines)
