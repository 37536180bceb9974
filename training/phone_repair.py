"""Phone timings checked against the audio: TTS engines' pauses and stop closures moved to
where the waveform has them."""

from __future__ import annotations

import numpy as np

from emolive.training.tts import Phone


def _rms_10ms(audio: np.ndarray, rate: int) -> np.ndarray:
    """RMS of each whole 10 ms block of ``audio``."""
    x = np.asarray(audio, np.float64)
    hop = max(1, rate // 100)
    frames = len(x) // hop
    return np.sqrt((x[: frames * hop].reshape(frames, hop) ** 2).mean(axis=1))


def repair_pauses(phones: list[Phone], audio: np.ndarray, rate: int) -> list[Phone]:
    """Voiced 'pau' segments inside speech become part of the phone before them.

    espeak-ng reports some phonemes with no IPA name (vowel transitions, linking sounds) with an
    empty name, which ``emolive.training.tts`` reads as silence; real pauses are quiet, these are not.
    A 'pau' whose RMS is over 12 % of the utterance's loud level (90th percentile of 10 ms RMS)
    is merged into the phone before it.
    """
    rms = _rms_10ms(audio, rate)
    frames = len(rms)
    if frames < 2:
        return list(phones)
    loud = float(np.percentile(rms, 90)) + 1e-9
    out: list[Phone] = []
    for p in phones:
        a, b = int(p.start * 100), max(int(p.start * 100) + 1, int(p.end * 100))
        level = float(rms[a:b].mean()) if a < frames else 0.0
        if p.symbol == "pau" and out and out[-1].symbol != "pau" and level > 0.12 * loud:
            out[-1] = Phone(out[-1].symbol, out[-1].start, p.end)
        elif out and p.symbol == "pau" and out[-1].symbol == "pau":
            out[-1] = Phone("pau", out[-1].start, p.end)
        else:
            out.append(p)
    return out


STOPS = frozenset({"p", "b", "t", "d", "k", "g", "ch", "jh"})


def repair_stop_closures(phones: list[Phone], audio: np.ndarray, rate: int) -> list[Phone]:
    """Give each stop its closure: espeak-ng fires a stop's phoneme event at the burst, so the
    silent closure before it is counted in the phone before. The quiet run (10 ms RMS under 5 %
    of the loud level) at the end of the phone before a stop is moved into the stop."""
    rms = _rms_10ms(audio, rate)
    frames = len(rms)
    if frames < 2:
        return list(phones)
    quiet = rms < 0.05 * (float(np.percentile(rms, 90)) + 1e-9)
    out = list(phones)
    for i in range(1, len(out)):
        stop, prev = out[i], out[i - 1]
        if stop.symbol not in STOPS or prev.symbol == "pau":
            continue
        k = min(frames, int(round(stop.start * 100)))
        first = k
        while first - 1 >= 0 and quiet[first - 1] and (first - 1) / 100 > prev.start + 0.03:
            first -= 1
        if first < k:
            cut = first / 100
            out[i - 1] = Phone(prev.symbol, prev.start, cut)
            out[i] = Phone(stop.symbol, cut, stop.end)
    return out


def repair_espeak_phones(phones: list[Phone], audio: np.ndarray, rate: int) -> list[Phone]:
    return repair_stop_closures(repair_pauses(phones, audio, rate), audio, rate)
