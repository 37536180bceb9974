"""The streaming diffusion motion model: :class:`DiffusionMotion` implements ``MotionModel``.

Each hop of ``H`` frames (the checkpoint's config: 1 frame since v7, 2 before) is sampled by a
few Euler steps of the rectified-flow DiT (``emolive.engine.motion.dit``) from seeded noise, conditioned on

- the audio window: the ``audio_past`` (8) frames before the hop, the hop, and ``L`` frames of
  lookahead (1 = 40 ms since v7, 2 before) — exactly what ``MotionModel.step`` is handed, plus
  its own history; with ``feature_norm`` in the config, normalised per band by the stream's
  running mean (:mod:`emolive.engine.motion.featnorm`);
- the rolling buffer of the last ``K`` (16) frames it generated (EMO's motion frames), so hops
  join without pops and head/brow/blink motion continues smoothly;
- the controls: head-motion intensity, head speed, expressiveness;
- the blink clock: time since the last blink onset in its own output (the one piece of history
  older than the buffer that matters: blinks come at a rhythm, not at random).

Two lip readers may ship beside the weights; each reads the same normalised audio window once
per hop. A lip-gap regressor (``lipgap.safetensors``, :mod:`emolive.engine.motion.lipgap`)
moves the frame's jaw part of the way to the lip gap it hears: the mean of two readings with
different errors follows the phones better than either. A lip-seal detector
(``seal.safetensors``, :mod:`emolive.engine.motion.seal`), where it hears a bilabial closure
and the lips are already near shut, seals them (``mouthClose`` 1, the jaw at most where the
training targets hold it on m/b/p): the denoiser alone missed half the closures of recorded
voices.

The frames a caller gets have the checkpoint's *rest offset* taken off the expression
channels: the highest level each holds in digital silence (a faint smile, squint and brow the
training targets' idle drift left in the model). Silence then shows the portrait's own
expression, not the model's idle one; the buffer keeps the model's own values. They also show
the lip gap once: the model's jaw follows how open a sound is and its lip shapes (upper lip
raised, lower lip lowered, funnel) part the lips on top, so the jaw is lowered by what the lips
part (``engine.motion_space.show_gap_once``), and the renderer, or a caller's own avatar, shows
the opening the model means.

A call may ask for any number of frames: they are made in hops of ``H`` (a shorter trailing hop
has its missing frames marked as such), so chunking a stream in multiples of ``H`` frames gives
exactly the frames :func:`emolive.engine.motion.generate` gives. The noise of every hop is
drawn from one generator seeded by ``controls.seed``: same seed, same motion; other seeds move
the head, brows and blinks differently while the lips stay on the audio.

Only the denoiser call depends on where the model runs (``torch``, ``onnxruntime``,
``tensorrt``: :mod:`emolive.engine.motion.backends`); :func:`step_batch` steps many streams at once
with one denoiser call per sampler step for all of them (:mod:`emolive.engine.motion.batching`).

Weights are safetensors files with the config and sampling defaults in their metadata:
``engine/motion/weights/{teacher,student}.safetensors``.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from emolive.engine.audio import MELS_PER_FRAME, N_MELS, SILENCE_FEATURE
from emolive.engine.motion import hop_length
from emolive.engine.motion.backends import Denoiser, DenoiserInputs, TorchDenoiser, create_denoiser
from emolive.engine.motion.dit import AUDIO_CHANNELS, DiTConfig, MotionDiT
from emolive.engine.motion.featnorm import RunningBandMean
from emolive.engine.motion.featnorm import offsets as band_offsets
from emolive.engine.motion.lipgap import WEIGHTS_NAME as LIP_GAP_WEIGHTS_NAME
from emolive.engine.motion.lipgap import LipGapRegressor, load_regressor
from emolive.engine.motion.sampler import sample
from emolive.engine.motion.seal import WEIGHTS_NAME as SEAL_WEIGHTS_NAME
from emolive.engine.motion.seal import SealDetector, load_detector
from emolive.engine.motion_space import (
    CHANNELS,
    HEAD_SLICE,
    INDEX,
    NUM_CHANNELS,
    SHUT_LIP_GAP,
    MotionControls,
    clip_frames,
    show_gap_once,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"
BLINK_CLOCK_S = 6.0  # the blink clock saturates here: "a long time ago"
BLINK_ONSET = 0.5
BLINK_INDEX = INDEX["eyeBlinkLeft"]
assert INDEX["eyeBlinkRight"] == BLINK_INDEX + 1
SEAL_INDEX = INDEX["mouthClose"]
JAW_INDEX = INDEX["jawOpen"]
SEALED_JAW = 0.06  # jawOpen of the training targets on m/b/p frames (median 0.057)
# The channels a rest offset applies to: all but head pose and blinks, which idle on purpose,
# and the lip gap (jawOpen, mouthClose), whose closing is the seal calibration's.
EXPRESSION_CHANNELS = np.array([i for i, name in enumerate(CHANNELS) if i >= HEAD_SLICE.stop
                                and not name.startswith("eyeBlink") and name not in ("jawOpen", "mouthClose")])
FIRST_BLINK_S = (0.3, 2.5)
BLINK_MEAN_S = 3.4


def blink_clock(frames_since_onset: np.ndarray | float, fps: float = 25.0) -> np.ndarray | float:
    """Time since the last blink onset as the model input in [0, 1] (1 = 6 s or more, or never)."""
    return np.minimum(np.asarray(frames_since_onset, np.float64) / fps, BLINK_CLOCK_S) / BLINK_CLOCK_S


def frames_since_blink_onset(blink: np.ndarray, start: float = 1e6) -> np.ndarray:
    """For each frame t: frames since the last onset (eyeBlinkLeft crossing 0.5 upward) before t."""
    blink = np.asarray(blink)
    out = np.empty(len(blink), np.float64)
    since = start
    previous = 0.0
    for t, value in enumerate(blink):
        out[t] = since
        since = 0.0 if (value >= BLINK_ONSET > previous) else since + 1.0
        previous = value
    return out


def save_model(model: MotionDiT, path: str | Path, *, kind: str, steps: int, seal_bias: float = 0.0,
               rest_offset: Sequence[float] | None = None, extra: dict | None = None) -> None:
    """Write weights + config + default step count + calibrations as one safetensors file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    meta = {"config": model.cfg.to_json(), "kind": kind, "steps": str(steps), "seal_bias": repr(float(seal_bias)),
            "format": "emolive-motion-dit-1"}
    if rest_offset is not None:
        meta["rest_offset"] = json.dumps(dict(zip(CHANNELS, map(float, rest_offset))))
    if extra:
        meta["extra"] = json.dumps(extra, sort_keys=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def rest_offset_from_meta(meta: dict) -> np.ndarray:
    """The rest offset a checkpoint's metadata holds, by channel name (zeros if it has none)."""
    offset = np.zeros(NUM_CHANNELS, np.float32)
    for name, value in json.loads(meta.get("rest_offset", "{}")).items():
        offset[INDEX[name]] = value
    return offset


def load_model(path: str | Path) -> tuple[MotionDiT, dict]:
    """(model in eval mode, metadata) from a safetensors file written by :func:`save_model`."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"motion weights not found: {path}")
    with safe_open(str(path), "pt") as handle:
        meta = dict(handle.metadata() or {})
    model = MotionDiT(DiTConfig.from_json(meta["config"]))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, meta


@functools.lru_cache(maxsize=8)
def load_cached(path: str) -> tuple[MotionDiT, dict]:
    """:func:`load_model`, once per resolved path and process (models are read-only)."""
    return load_model(path)


@functools.lru_cache(maxsize=8)
def load_detector_cached(path: str) -> SealDetector:
    """:func:`~emolive.engine.motion.seal.load_detector`, once per path and process (read-only)."""
    return load_detector(path)


@functools.lru_cache(maxsize=8)
def load_regressor_cached(path: str) -> LipGapRegressor:
    """:func:`~emolive.engine.motion.lipgap.load_regressor`, once per path and process (read-only)."""
    return load_regressor(path)


@dataclass(frozen=True)
class LipReading:
    """What the lip readers heard in one hop frame (None: that reader is not there)."""

    sealed: bool = False
    gap: float | None = None


class DiffusionMotion:
    """Streaming DiT motion (teacher or distilled student). Implements MotionModel.

    The denoiser (``denoiser``, default: the torch module) is the only part that depends on
    the backend; noise, sampling, buffer and blink guard are here, the same for all of them."""

    def __init__(self, model: MotionDiT, *, steps: int, name: str = "diffusion", speed: float = 1.0,
                 seal_bias: float = 0.0, rest_offset: np.ndarray | None = None,
                 denoiser: Denoiser | None = None, seal_detector: SealDetector | None = None,
                 lip_gap: LipGapRegressor | None = None) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.model = model
        self.cfg = model.cfg
        self.lookahead_frames = self.cfg.lookahead
        self._prior = model.audio_prior.numpy() if self.cfg.feature_norm else None
        self.steps = steps
        self.name = name
        self.speed = speed
        self.seal_bias = seal_bias
        self.rest_offset = np.zeros(NUM_CHANNELS, np.float32) if rest_offset is None else np.asarray(rest_offset, np.float32)
        if np.delete(self.rest_offset, EXPRESSION_CHANNELS).any():
            raise ValueError("a rest offset applies to expression channels only, not head pose, blinks or the lip gap")
        self.denoiser = denoiser or TorchDenoiser(model)
        for reader in (seal_detector, lip_gap):
            if reader is not None and (reader.cfg.audio_past, reader.cfg.lookahead, self.cfg.hop_frames) != (
                    self.cfg.audio_past, self.cfg.lookahead, 1):
                raise ValueError("the lip readers read one-frame hops with the denoiser's audio window; this checkpoint's differ")
        self.seal_detector = seal_detector
        self.lip_gap = lip_gap
        # The frames a caller gets show the lip gap the model means once, not again on top of
        # what the lip shapes part (False: the model's own jaw, for calibrating the lip readers).
        self.shows_gap_once = True
        self._mean = model.mean.numpy().astype(np.float32)
        self._std = model.std.numpy().astype(np.float32)
        self.start(MotionControls())

    @classmethod
    def from_file(cls, path: str | Path, *, steps: int | None = None, name: str | None = None,
                  speed: float = 1.0, backend: str = "torch") -> DiffusionMotion:
        """Load weights; ``backend`` picks the denoiser's runtime (:mod:`emolive.engine.motion.backends`).
        Lip readers beside the weights (:mod:`emolive.engine.motion.seal`,
        :mod:`emolive.engine.motion.lipgap`) are used with them."""
        model, meta = load_cached(str(Path(path).resolve()))
        folder = Path(path).resolve().parent
        one_frame_hops = model.cfg.hop_frames == 1
        detector_path, regressor_path = folder / SEAL_WEIGHTS_NAME, folder / LIP_GAP_WEIGHTS_NAME
        detector = load_detector_cached(str(detector_path)) if detector_path.is_file() and one_frame_hops else None
        regressor = load_regressor_cached(str(regressor_path)) if regressor_path.is_file() and one_frame_hops else None
        return cls(model, steps=steps or int(meta.get("steps", 2)), name=name or meta.get("kind", "diffusion"),
                   speed=speed, seal_bias=float(meta.get("seal_bias", 0.0)), rest_offset=rest_offset_from_meta(meta),
                   denoiser=create_denoiser(path, model, backend), seal_detector=detector, lip_gap=regressor)

    def new_stream(self) -> DiffusionMotion:
        """Another stream of the same model, settings and denoiser (its own state)."""
        return DiffusionMotion(self.model, steps=self.steps, name=self.name, speed=self.speed,
                               seal_bias=self.seal_bias, rest_offset=self.rest_offset, denoiser=self.denoiser,
                               seal_detector=self.seal_detector, lip_gap=self.lip_gap)

    @property
    def backend(self) -> str:
        return self.denoiser.backend

    def start(self, controls: MotionControls) -> None:
        cfg = self.cfg
        self._controls = controls
        self._rng = np.random.Generator(np.random.PCG64(controls.seed))
        rest = -self._mean / self._std  # the rest frame (all zeros), normalised
        self._buffer = np.tile(rest, (cfg.past_frames, 1)).astype(np.float32)  # normalised past frames
        self._audio = np.full((cfg.audio_past, MELS_PER_FRAME, N_MELS), SILENCE_FEATURE, np.float32)
        self._band_mean = RunningBandMean(self._prior) if self._prior is not None else None
        self._ctrl = [controls.head_motion, self.speed, controls.expressiveness]
        self._since_onset = 1e6
        self._last_blink = 0.0
        # The blink guard (see _guard_blinks) draws from its own stream of the seed.
        self._blink_rng = np.random.Generator(np.random.PCG64([controls.seed, 1]))
        self._guard_wait = 0.0  # frames since the last onset, or since the stream started
        self._guard_due = self._blink_rng.uniform(*FIRST_BLINK_S) * 25.0
        self._guard_profile: list[float] = []

    def step(self, features: np.ndarray) -> np.ndarray:
        return step_batch([self], [features])[0]

    def _hops(self, features: np.ndarray) -> list[tuple[np.ndarray, int]]:
        """Validate ``step()`` input and cut it into hops: (features of the hop and its
        lookahead, padded to ``H + L`` frames; frames to generate, 1 to ``H``)."""
        features = np.asarray(features, dtype=np.float32)
        count = hop_length(features, self.lookahead_frames)
        hop, la = self.cfg.hop_frames, self.lookahead_frames
        hops = []
        for begin in range(0, count, hop):
            n = min(hop, count - begin)
            window = features[begin : begin + n + la]
            if n < hop:
                pad = np.full((hop - n, MELS_PER_FRAME, N_MELS), SILENCE_FEATURE, np.float32)
                window = np.concatenate([window, pad])
            hops.append((window, n))
        return hops

    def _prepare(self, window: np.ndarray, n: int) -> DenoiserInputs:
        """The denoiser inputs of one hop (a batch of 1), ``x_t`` = its seeded noise at t = 1."""
        cfg = self.cfg
        missing = np.zeros((1, cfg.audio_frames), np.float32)
        if n < cfg.hop_frames:
            missing[0, -(cfg.hop_frames - n) :] = 1.0
        noise = self._rng.standard_normal((1, cfg.hop_frames, NUM_CHANNELS)).astype(np.float32)
        # Lips are the audio's: they start from the centre of the noise, so every seed gives
        # the same mouth while head, brows and blinks still follow the seed. The lip seal starts
        # at a calibrated bias: from the centre, a bilabial would close only where the model is
        # more than half sure of it (training.evaluate.calibrate_seal_bias).
        noise[..., AUDIO_CHANNELS] = 0.0
        noise[..., SEAL_INDEX] = self.seal_bias
        controls = np.array([self._ctrl + [float(blink_clock(self._since_onset))]], np.float32)
        audio = np.concatenate([self._audio, window])[None]
        if self._band_mean is not None:
            audio = audio + self._band_mean.offset()
        return DenoiserInputs(noise, np.ones(1, np.float32), self._buffer[None], audio, controls, missing)

    def _finish(self, x0: np.ndarray, window: np.ndarray, n: int, lips: LipReading = LipReading()) -> np.ndarray:
        """The hop's ``n`` frames from its sampled ``x0`` (H, C normalised); advances the state.
        ``lips``: what the lip readers heard in this (one-frame) hop."""
        frames = clip_frames(x0[:n] * self._std + self._mean)
        if self._controls.head_motion == 0.0:
            frames[:, HEAD_SLICE] = 0.0
        self._guard_blinks(frames)
        normed = (frames - self._mean) / self._std
        self._buffer = np.concatenate([self._buffer[n:], normed]).astype(np.float32)
        self._audio = np.concatenate([self._audio, window[:n]])[-self.cfg.audio_past :]
        if self._band_mean is not None:
            self._band_mean.update(window[:n])
        self._apply_lips(frames, lips)
        frames[:, EXPRESSION_CHANNELS] = np.maximum(frames[:, EXPRESSION_CHANNELS] - self.rest_offset[EXPRESSION_CHANNELS], 0.0)
        return show_gap_once(frames) if self.shows_gap_once else frames

    def _apply_lips(self, frames: np.ndarray, lips: LipReading) -> None:
        """What the lip readers heard, on the frames the caller gets (the buffer keeps the model's own)."""
        n = len(frames)
        apply_lips(frames, np.full(n, lips.sealed), None if lips.gap is None else np.full(n, lips.gap, np.float32),
                   self.lip_gap.blend if self.lip_gap is not None else 0.0,
                   self.seal_detector.gap_gate if self.seal_detector is not None else math.inf)

    def audio_windows(self, features: np.ndarray) -> np.ndarray:
        """``(T, A, 4, 80)``: the audio window a stream of this one-frame-hop model hands its
        denoiser (and lip readers) for each frame of ``features``, normalised as the stream does."""
        cfg = self.cfg
        if cfg.hop_frames != 1:
            raise ValueError("audio_windows: one-frame hops only")
        features = np.asarray(features, np.float32)
        pad = np.concatenate([np.full((cfg.audio_past, MELS_PER_FRAME, N_MELS), SILENCE_FEATURE, np.float32), features,
                              np.full((cfg.lookahead, MELS_PER_FRAME, N_MELS), SILENCE_FEATURE, np.float32)])
        windows = pad[np.arange(len(features))[:, None] + np.arange(cfg.audio_frames)]
        if self._prior is not None:
            windows = windows + band_offsets(pad, self._prior)[cfg.audio_past : cfg.audio_past + len(features), None, None, :]
        return windows

    def _guard_blinks(self, frames: np.ndarray) -> None:
        """Update the blink clock; fill a blink in where the model has gone too long without one.

        The model blinks on its own, but less often than people do (about 6 a minute in
        silence against 10-30). When the time since its last blink passes a seeded human
        interval (the training targets' distribution: first within 0.3-2.5 s, then gamma with a
        3.4 s mean), a blink is eased in on both eyes. The frames go into the buffer, so the
        model sees the blink and carries on from it.
        """
        left, right = BLINK_INDEX, BLINK_INDEX + 1
        for row in frames:
            if not self._guard_profile and self._guard_wait >= self._guard_due:
                reopen = int(self._blink_rng.integers(2, 5))
                self._guard_profile = [0.55, 1.0] + [
                    0.5 + 0.5 * math.cos(math.pi * (k + 1) / (reopen + 1)) for k in range(reopen)]
            if self._guard_profile:
                value = self._guard_profile.pop(0)
                row[left] = max(row[left], value)
                row[right] = max(row[right], value)
            value = float(row[left])
            onset = value >= BLINK_ONSET > self._last_blink
            self._since_onset = 0.0 if onset else self._since_onset + 1.0
            self._guard_wait = 0.0 if onset else self._guard_wait + 1.0
            if onset:
                self._guard_due = max(1.0, self._blink_rng.gamma(4.0, BLINK_MEAN_S / 4.0)) * 25.0
            self._last_blink = value


def apply_lips(frames: np.ndarray, sealed: np.ndarray, gaps: np.ndarray | None, blend: float, gap_gate: float) -> None:
    """The lip readers' verdicts on ``frames`` (in place): where the lips are apart, the gap
    moves ``blend`` of the way to the regressor's ``gaps`` (None: no regressor); then the
    ``sealed`` frames whose gap is under ``gap_gate`` close."""
    jaw, close = frames[:, JAW_INDEX], np.clip(frames[:, SEAL_INDEX], 0.0, 1.0)
    gap = jaw * (1.0 - close)
    if gaps is not None:
        # Lips the model shut stay shut: that is its own call of a bilabial, and the regressor,
        # trained for the mean gap, blurs closures. The jaw opens only as far as the new gap
        # needs; a gap narrower than the jaw's is the lips closing over it.
        gap = np.where(gap < SHUT_LIP_GAP, gap, gap + blend * (gaps - gap))
        jaw = np.maximum(jaw, gap)
        frames[:, JAW_INDEX] = jaw
        frames[:, SEAL_INDEX] = np.where(jaw > 0.0, 1.0 - gap / np.maximum(jaw, 1e-6), close)
    seal = sealed & (gap < gap_gate)
    # the lips shut and the jaw where the training targets hold it on m/b/p
    frames[seal, SEAL_INDEX] = 1.0
    frames[seal, JAW_INDEX] = np.minimum(frames[seal, JAW_INDEX], SEALED_JAW)


def default_weights(kind: str) -> Path:
    return WEIGHTS_DIR / f"{kind}.safetensors"


def sample_hops(denoiser: Denoiser, hops: list[DenoiserInputs], steps: int) -> np.ndarray:
    """Sample the hops together: one denoiser call per step for all of them -> (B, H, C) x_0."""
    batch = DenoiserInputs(*(np.concatenate(parts) for parts in zip(*hops)))

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(denoiser(batch._replace(x_t=x.numpy(), t=t.numpy())))

    return sample(velocity, torch.from_numpy(batch.x_t), steps).numpy()


def read_lips(models: Sequence[DiffusionMotion], inputs: Sequence[DenoiserInputs]) -> list[LipReading]:
    """For each model's hop: what its lip readers hear (one call of each reader for all the
    models that share it)."""
    sealed: list[bool] = [False] * len(models)
    gaps: list[float | None] = [None] * len(models)
    for detector, members in _sharing(models, "seal_detector"):
        for i, verdict in zip(members, detector.sealed(np.concatenate([inputs[i].audio for i in members]))):
            sealed[i] = bool(verdict)
    for regressor, members in _sharing(models, "lip_gap"):
        for i, gap in zip(members, regressor.gap(np.concatenate([inputs[i].audio for i in members]))):
            gaps[i] = float(gap)
    return [LipReading(s, g) for s, g in zip(sealed, gaps)]


def _sharing(models: Sequence[DiffusionMotion], reader: str) -> list[tuple[object, list[int]]]:
    """(reader, indices of the models that have it) for each distinct ``reader`` attribute."""
    groups: dict[int, tuple[object, list[int]]] = {}
    for i, model in enumerate(models):
        found = getattr(model, reader)
        if found is not None:
            groups.setdefault(id(found), (found, []))[1].append(i)
    return list(groups.values())


def step_batch(models: Sequence[DiffusionMotion], features: Sequence[np.ndarray]) -> list[np.ndarray]:
    """``[model.step(f) for model, f in zip(models, features)]`` with the sampling of models
    that share a denoiser and a step count batched: one denoiser call per sampler step for all
    of them. Each model keeps its own noise, buffer and blink guard, so the frames are those of
    stepping each model alone (up to the backend's batch-size rounding, about 1e-6)."""
    if len({id(model) for model in models}) != len(models):
        raise ValueError("step_batch: a model may appear only once (it holds one stream's state)")
    plans = [model._hops(f) for model, f in zip(models, features, strict=True)]
    outputs: list[list[np.ndarray]] = [[] for _ in models]
    for round_ in range(max(map(len, plans), default=0)):
        groups: dict[tuple[int, int], list[int]] = {}
        for i, plan in enumerate(plans):
            if round_ < len(plan):
                groups.setdefault((id(models[i].denoiser), models[i].steps), []).append(i)
        for members in groups.values():
            first = models[members[0]]
            inputs = [models[i]._prepare(*plans[i][round_]) for i in members]
            lips = read_lips([models[i] for i in members], inputs)
            for i, x0, heard in zip(members, sample_hops(first.denoiser, inputs, first.steps), lips):
                outputs[i].append(models[i]._finish(x0, *plans[i][round_], lips=heard))
    return [np.concatenate(out) if out else np.zeros((0, NUM_CHANNELS), np.float32) for out in outputs]
