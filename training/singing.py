"""Singing with exact phone timings: festival's singing mode (``text2wave -mode singing``).

Festival's singing mode (``singing-mode.scm``, shipped with festival) reads a score in its XML
(``<SINGING BPM=..>``, ``<DURATION BEATS=..><PITCH NOTE=..>word</PITCH></DURATION>``,
``<REST BEATS=..>``) and sings it with a diphone voice: each syllable's vowel is stretched to
its note's length at its note's pitch, consonants keep their spoken length. The Segment
relation then holds the sung phones with their times, exactly as for speech
(:mod:`emolive.training.tts`). Sung vowels hold the jaw open for their whole length, while bilabials
still close the lips: the motion model must learn both.

- training: random melodies (:func:`random_song`) on English words, sung by ``kal_diphone`` and
  ``ked_diphone``;
- evaluation: the songs festival ships as examples (``/usr/share/doc/festival/examples/songs``:
  Daisy Bell, America, Do-Re-Mi, Loch Lomond, ...), whose lyrics and tunes never appear in
  training (:func:`eval_songs`).

HTS voices ignore the score's durations, so only diphone voices sing.
"""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from emolive.training.tts import TTSError, Utterance, _contiguous, _festival_symbol, _read_wav, run_tool

SINGERS = ("kal_diphone", "ked_diphone")
SONGS = Path("/usr/share/doc/festival/examples/songs")
_NOTES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")

# One utterance per score: every Segment with its end time, and the wave of each utterance.
_SING_SCRIPT = """\
(voice_{voice})
(set! emolive_parts 0)
(define (emolive_out utt)
  (set! emolive_parts (+ emolive_parts 1))
  (utt.save.wave utt (format nil "{tmp}/part%d.wav" emolive_parts) 'riff)
  (format t "UTT %d\\n" emolive_parts)
  (format t "PHONESET %s\\n" (cadr (assoc 'name (PhoneSet.description '(name)))))
  (mapcar (lambda (s) (format t "SEG %s %f\\n" (item.name s) (item.feat s "end")))
          (utt.relation.items utt 'Segment))
  utt)
(set! tts_hooks (list utt.synth emolive_out))
(tts_file "{score}" 'singing)
"""


def sing(score: str, voice: str = "kal_diphone") -> Utterance:
    """Sing a singing-mode XML score with festival diphone ``voice`` -> audio and timed phones."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", voice):
        raise ValueError(f"bad festival voice name {voice!r}")
    name = f"festival-sing:{voice}"
    with tempfile.TemporaryDirectory(prefix="emolive-sing-") as tmp:
        score_path = Path(tmp) / "score.xml"
        score_path.write_text(score, encoding="utf-8")
        script = Path(tmp) / "sing.scm"
        script.write_text(_SING_SCRIPT.format(voice=voice, tmp=tmp, score=score_path), encoding="utf-8")
        proc = run_tool(["festival", "-b", str(script)], name)
        parts = sorted(Path(tmp).glob("part*.wav"), key=lambda p: int(p.stem[4:]))
        if not parts:
            raise TTSError(f"{name}: no audio written: {proc.stderr.strip()[:300]}")
        waves = [_read_wav(p, name) for p in parts]
    rates = {sr for _, sr in waves}
    if len(rates) != 1:
        raise TTSError(f"{name}: utterances at different rates {sorted(rates)}")
    rate = rates.pop()
    raw: list[tuple[str, float, float]] = []
    offset = 0.0
    for chunk, (audio, _) in zip(proc.stdout.split("UTT ")[1:], waves):
        phoneset = re.search(r"^PHONESET (\S+)$", chunk, flags=re.M)
        if not phoneset:
            raise TTSError(f"{name}: festival did not report its phone set")
        start = 0.0
        for symbol, end_s in re.findall(r"^SEG (\S+) ([0-9.]+)$", chunk, flags=re.M):
            end = min(float(end_s), len(audio) / rate)
            raw.append((_festival_symbol(phoneset.group(1), symbol, name), offset + start, offset + end))
            start = max(start, end)
        offset += len(audio) / rate
    audio = np.concatenate([a for a, _ in waves]).astype(np.float32)
    return Utterance(audio=audio, rate=rate, phones=_contiguous(raw, len(audio) / rate, name), text=score,
                     voice=name)


def random_song(words: list[str], rng: random.Random) -> str:
    """A random score: 6-14 words, one or two notes each, on a scale in a singable range for a
    male diphone voice (G2-E4), with rests between phrases; tempo 60-150 BPM."""
    bpm = rng.randrange(60, 151)
    root = rng.randrange(43, 52)  # MIDI G2..D#3
    scale = [0, 2, 4, 5, 7, 9, 11, 12, 14, 16] if rng.random() < 0.7 else [0, 2, 3, 5, 7, 8, 10, 12, 14, 15]
    degree = rng.randrange(0, 5)
    lines = [f'<?xml version="1.0"?>\n<!DOCTYPE SINGING PUBLIC "-//SINGING//DTD SINGING mark up//EN" '
             f'"Singing.v0_1.dtd" []>\n<SINGING BPM="{bpm}">']
    for i in range(rng.randrange(6, 15)):
        word = rng.choice(words)
        notes, beats = [], []
        for _ in range(1 if rng.random() < 0.7 else 2):
            degree = min(len(scale) - 1, max(0, degree + rng.choice((-2, -1, -1, 0, 1, 1, 2))))
            midi = root + scale[degree]
            notes.append(f"{_NOTES[midi % 12]}{midi // 12 - 1}")
            beats.append(rng.choice(("0.5", "0.5", "1.0", "1.0", "1.5", "2.0", "3.0")))
        lines.append(f'<DURATION BEATS="{",".join(beats)}"><PITCH NOTE="{",".join(notes)}">{escape(word)}'
                     f"</PITCH></DURATION>")
        if i and rng.random() < 0.15:
            lines.append(f'<REST BEATS="{rng.choice(("0.5", "1.0"))}"></REST>')
    lines.append("</SINGING>")
    return "\n".join(lines)


def eval_songs() -> list[tuple[str, str]]:
    """(name, score) of festival's example songs, the singing evaluation set."""
    return [(p.stem, p.read_text(encoding="latin-1")) for p in sorted(SONGS.glob("*.xml"))]
