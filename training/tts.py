"""Speech with exact phone timings from the free TTS engines shipped by Debian.

Voices are named ``engine:voice``:

- ``flite:slt|rms|awb|kal|kal16``: ``flite -psdur`` prints each phone's end time as
  synthesised (the unit-selection voices match the audio to the millisecond; the kal
  diphone voices drop about 0.12 s of the final pause, which is clamped).
- ``espeak-ng:<language>`` (``en-us``, ``de``, ``fr``, ... or ``en-us+f3`` variants):
  libespeak-ng is driven through ctypes; its phoneme events carry the output sample at
  which each phoneme starts. Their IPA names are mapped onto ARPAbet classes.
- ``festival:<voice>``: a Scheme script prints the voice's phone set and each Segment's end
  time after ``utt.synth``. US English (radio phone set, ARPAbet already): ``kal_diphone``,
  ``ked_diphone``, ``cmu_us_slt_arctic_hts``. Other languages, whose phone sets are mapped
  through IPA onto the same ARPAbet classes as espeak-ng's: Catalan ``upc_ca_ona_hts`` (HTS),
  Czech ``czech_dita``, ``czech_krb``, ``czech_machac``, ``czech_ph`` (diphone), Finnish
  ``suo_fi_lj_diphone``, ``hy_fi_mv_diphone``, Russian ``msu_ru_nsh_clunits`` (unit
  selection). Text is handed over in the encoding each voice reads (Latin-9, Latin-2, ...).
  A phone no map knows raises ``TTSError`` rather than becoming silence.

Every phone symbol is lower-case ARPAbet; silence is ``pau``. Phones are contiguous and
cover the audio exactly, from 0 to its duration.

CLI: ``python -m training.tts --voice flite:slt --text "Hello." -o out.wav --phones out.tsv``
"""

from __future__ import annotations

import argparse
import functools
import re
import subprocess
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

__all__ = ["Phone", "Utterance", "TTSError", "synthesize", "available_voices", "festival_encode", "main"]

_TIMEOUT_S = 120.0
# Largest gap tolerated between the engine's last phone end and the audio it wrote; kal's
# diphone back end trims ~0.12 s of the final pause, anything larger means a parse error.
_END_TOLERANCE_S = 0.2
_FLITE_VOICES = ("slt", "rms", "awb", "kal", "kal16")


class TTSError(RuntimeError):
    """A TTS engine is missing, failed, or gave timings that do not fit its audio."""


@dataclass(frozen=True)
class Phone:
    """One phone: lower-case ARPAbet symbol ('pau' for silence), start/end in seconds."""

    symbol: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Utterance:
    """Synthesised speech: float32 mono audio at ``rate`` Hz and its contiguous phones."""

    audio: np.ndarray
    rate: int
    phones: list[Phone]
    text: str
    voice: str

    @property
    def duration(self) -> float:
        return len(self.audio) / self.rate


def synthesize(text: str, voice: str = "flite:slt", *, rate: int | None = None) -> Utterance:
    """Speak ``text`` with ``voice`` ("engine:name"); resample to ``rate`` Hz if given."""
    if not text.strip():
        raise ValueError("synthesize: text is empty")
    engine, _, name = voice.partition(":")
    if engine == "flite":
        audio, sr, raw = _flite(text, name or "slt")
    elif engine == "espeak-ng":
        from emolive.training import espeak

        audio, sr, raw = espeak.speak(text, name or "en-us")
    elif engine == "festival":
        audio, sr, raw = _festival(text, name or "kal_diphone")
    else:
        raise ValueError(f"unknown TTS engine in voice {voice!r}; expected flite:, espeak-ng: or festival:")
    phones = _contiguous(raw, len(audio) / sr, voice)
    if rate is not None and rate != sr:
        audio = soxr.resample(audio, sr, rate).astype(np.float32)
        sr = rate
        # Resampling rounds the length; keep the last phone flush with the audio.
        last = phones[-1]
        phones[-1] = Phone(last.symbol, last.start, max(last.start, len(audio) / sr))
    return Utterance(audio=audio, rate=sr, phones=phones, text=text, voice=voice)


def available_voices() -> list[str]:
    """Every voice name ``synthesize`` accepts on this machine (engines not installed are skipped)."""
    from emolive.training import espeak

    return _flite_voices() + espeak.voices() + _festival_voices()


# ---------------------------------------------------------------------------- helpers


def run_tool(cmd: list[str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        # errors='replace': festival echoes words in its voice's 8-bit encoding on stderr.
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise TTSError(f"{what}: {cmd[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise TTSError(f"{what}: {cmd[0]} timed out after {_TIMEOUT_S:.0f} s") from exc
    if proc.returncode != 0:
        raise TTSError(f"{what}: {cmd[0]} exited with {proc.returncode}: {proc.stderr.strip()[:300]}")
    return proc


def _read_wav(path: Path, what: str) -> tuple[np.ndarray, int]:
    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise TTSError(f"{what}: no readable audio written ({exc})") from exc
    return np.ascontiguousarray(audio.mean(axis=1), dtype=np.float32), int(sr)


def _contiguous(raw: list[tuple[str, float, float]], duration: float, voice: str) -> list[Phone]:
    """Clean raw (symbol, start, end) triples into phones that tile [0, duration] exactly."""
    if not raw:
        raise TTSError(f"{voice}: the engine reported no phones")
    if abs(raw[-1][2] - duration) > _END_TOLERANCE_S:
        raise TTSError(f"{voice}: phones end at {raw[-1][2]:.3f} s but the audio lasts {duration:.3f} s")
    phones: list[Phone] = []

    def add(symbol: str, start: float, end: float) -> None:
        if end <= start:
            return
        if symbol == "pau" and phones and phones[-1].symbol == "pau":
            phones[-1] = Phone("pau", phones[-1].start, end)
        else:
            phones.append(Phone(symbol, start, end))

    cursor = 0.0
    for symbol, start, end in raw:
        if start > cursor:  # a gap the engine left unlabelled is silence
            add("pau", cursor, start)
            cursor = start
        end = min(end, duration)
        add(symbol, cursor, end)
        cursor = max(cursor, end)
    add("pau", cursor, duration)
    return phones


# ---------------------------------------------------------------------------- flite


def _flite(text: str, name: str) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
    if name not in _FLITE_VOICES:
        raise ValueError(f"unknown flite voice {name!r}; choose from {', '.join(_FLITE_VOICES)}")
    with tempfile.TemporaryDirectory(prefix="emolive-tts-") as tmp:
        wav = Path(tmp) / "out.wav"
        # -t (not -f) keeps the whole text one utterance, so -psdur times never restart at 0.
        proc = run_tool(["flite", "-voice", name, "-psdur", "-t", text, "-o", str(wav)], f"flite:{name}")
        audio, sr = _read_wav(wav, f"flite:{name}")
    raw: list[tuple[str, float, float]] = []
    start = 0.0
    for symbol, end_s in re.findall(r"(\S+):([0-9.]+)", proc.stdout):
        end = float(end_s)
        raw.append((symbol.lower(), start, end))
        start = end
    return audio, sr, raw


@functools.lru_cache(maxsize=1)
def _flite_voices() -> list[str]:
    try:
        proc = run_tool(["flite", "-lv"], "flite")
    except TTSError:
        return []
    listed = set(proc.stdout.split())
    return [f"flite:{v}" for v in _FLITE_VOICES if v in listed]


# ---------------------------------------------------------------------------- festival

_FESTIVAL_SCRIPT = """\
(voice_{voice})
(set! utt (utt.synth (Utterance Text "{text}")))
(utt.save.wave utt "{wav}" 'riff)
(format t "PHONESET %s\\n" (cadr (assoc 'name (PhoneSet.description '(name)))))
(mapcar (lambda (s) (format t "SEG %s %f\\n" (item.name s) (item.feat s "end")))
        (utt.relation.items utt 'Segment))
"""

# Festival reads the script as bytes and each voice's front end as one 8-bit encoding (the
# ``coding`` in its voice description): a UTF-8 "č" would reach a Czech lexicon as two Latin-2
# letters. Voices not listed here are English and get UTF-8 as before.
_FESTIVAL_CODINGS = {
    "upc_ca_ona_hts": "iso-8859-15",
    "czech_dita": "iso-8859-2", "czech_krb": "iso-8859-2", "czech_machac": "iso-8859-2", "czech_ph": "iso-8859-2",
    "suo_fi_lj_diphone": "iso-8859-1", "hy_fi_mv_diphone": "iso-8859-1",
    "msu_ru_nsh_clunits": "utf-8",
}
# Typographic punctuation that the 8-bit encodings lack; festival reads the ASCII forms the same.
_ASCII_PUNCTUATION = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201c": '"', "\u201d": '"',
                                    "\u201e": '"', "\u00ab": '"', "\u00bb": '"', "\u2013": "-", "\u2014": "-",
                                    "\u2026": "...", "\u00a0": " "})

# The radio phone set of festival's US English voices is ARPAbet already; its silences become pau.
_RADIO_PHONES = frozenset(
    "aa ae ah ao aw ax axr ay b ch d dh dx eh el em en er ey f g hh hv ih iy jh k l m n nx ng ow oy p r s sh t th "
    "uh uw v w y z zh".split()
)
_RADIO_SILENCES = frozenset({"pau", "h#", "brth", "#", "sil"})

# Every other phone set, symbol -> IPA (from its defPhoneSet and the comments beside it; "" is
# silence). The IPA then takes its ARPAbet class from _IPA_TO_ARPABET, the table espeak-ng uses,
# so a sound gets the same viseme whichever engine spoke it.
_CATALAN_VOWELS = {"ax": "ə", "a": "a", "e": "e", "E": "ɛ", "i": "i", "o": "o", "O": "ɔ", "u": "u"}
_FINNISH_SHORT = {
    "a": "ɑ", "e": "e", "i": "i", "o": "o", "u": "u", "y": "y", "@": "æ", "7": "ø",
    "p": "p", "t": "t", "k": "k", "b": "b", "d": "d", "g": "ɡ", "f": "f", "T": "θ", "D": "ð", "s": "s", "S": "ʃ",
    "z": "z", "Z": "ʒ", "h": "h", "v": "ʋ", "m": "m", "n": "n", "N": "ŋ", "l": "l", "L": "l", "r": "r",
    "j": "j", "w": "w",
}
_FESTIVAL_PHONESETS: dict[str, dict[str, str]] = {
    # festival-ca (upc_ca_ona_hts): Llisterri's SAMPA, "1" marks a stressed vowel. r is the tap,
    # rr the trill; central Catalan has no /v/ and writes its affricates as two phones (d Z, t S).
    "upc_catalan-central": {
        **_CATALAN_VOWELS, **{f"{k}1": v for k, v in _CATALAN_VOWELS.items() if k != "ax"},
        "j": "j", "w": "w", "b": "b", "d": "d", "g": "ɡ", "p": "p", "t": "t", "k": "k", "f": "f", "s": "s",
        "z": "z", "S": "ʃ", "Z": "ʒ", "m": "m", "n": "n", "J": "ɲ", "l": "l", "L": "ʎ", "r": "ɾ", "rr": "r",
        "pau": "", "_": "", "#": "",
    },
    # festival-czech (czech_dita/krb/machac/ph): "~" marks the háček letters, ":" length; "_" is
    # the glottal stroke before a word-initial vowel, "n*" the n before k/g, r~ / r~* the voiced /
    # voiceless ř.
    "czech": {
        "a": "a", "a:": "aː", "e": "ɛ", "e:": "ɛː", "i": "ɪ", "i:": "iː", "o": "o", "o:": "oː", "u": "u", "u:": "uː",
        "b": "b", "c": "ts", "c~": "tʃ", "ch": "x", "d": "d", "d~": "ɟ", "dz": "dz", "dz~": "dʒ", "f": "f", "g": "ɡ",
        "h": "ɦ", "j": "j", "k": "k", "l": "l", "m": "m", "n": "n", "n*": "ŋ", "n~": "ɲ", "p": "p", "r": "r",
        "r~": "r̝", "r~*": "r̝̊", "s": "s", "s~": "ʃ", "t": "t", "t~": "c", "v": "v", "z": "z", "z~": "ʒ",
        "_": "ʔ", "#": "",
    },
    # suopuhe (suo_fi_lj / hy_fi_mv): Worldbet-like, @ = ä, 7 = ö, & = schwa, ":" long or geminate.
    "finnish": {
        **_FINNISH_SHORT, **{f"{k}:": f"{v}ː" for k, v in _FINNISH_SHORT.items()},
        "&": "ə", "#": "", "##": "",
    },
    # msu_ru (msu_ru_nsh_clunits): doubled letters are the palatalised consonants; ii..aa the
    # stressed vowels, a e i y u the first degree of reduction, ae ay ur the second.
    "msu_ru": {
        "ii": "i", "yy": "ɨ", "uu": "u", "ee": "e", "oo": "o", "aa": "a",
        "a": "ɐ", "e": "ɪ", "i": "ɪ", "y": "ɨ", "u": "ʊ", "ae": "ə", "ay": "ɪ", "ur": "ʊ",
        **{c: c for c in ("p", "b", "t", "d", "k", "f", "v", "s", "z", "m", "n", "l", "r")},
        **{c + c: c + "ʲ" for c in ("p", "b", "t", "d", "k", "g", "f", "v", "s", "z", "m", "n", "l", "r")},
        "g": "ɡ", "c": "ts", "ch": "tɕ", "sh": "ʂ", "sch": "ɕː", "zh": "ʐ", "h": "x", "hh": "xʲ", "j": "j",
        "pau": "",
    },
}


def _festival_symbol(phoneset: str, symbol: str, voice: str) -> str:
    """One festival Segment name -> lower-case ARPAbet ('pau' for silence); unknown ones raise."""
    if phoneset == "radio":
        if symbol in _RADIO_SILENCES:
            return "pau"
        if symbol in _RADIO_PHONES:
            return symbol
    elif phoneset in _FESTIVAL_PHONESETS:
        ipa = _FESTIVAL_PHONESETS[phoneset].get(symbol)
        if ipa is not None:
            arpabet = ipa_to_arpabet(ipa)
            if arpabet is not None:
                return arpabet
    else:
        raise TTSError(f"{voice}: phone set {phoneset!r} has no ARPAbet map; add it to _FESTIVAL_PHONESETS")
    raise TTSError(f"{voice}: phone {symbol!r} of phone set {phoneset!r} has no ARPAbet class")


def festival_encode(text: str, name: str) -> bytes:
    """``text`` in the encoding festival voice ``name`` reads; ValueError if it has letters that cannot be."""
    coding = _FESTIVAL_CODINGS.get(name, "utf-8")
    text = unicodedata.normalize("NFC", text).translate(_ASCII_PUNCTUATION)
    try:
        return text.encode(coding)
    except UnicodeEncodeError as exc:
        bad = text[exc.start : exc.end]
        raise ValueError(f"festival:{name} reads {coding}, which has no {bad!r}") from None


def _festival(text: str, name: str) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"bad festival voice name {name!r}")
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    voice = f"festival:{name}"
    with tempfile.TemporaryDirectory(prefix="emolive-tts-") as tmp:
        wav = Path(tmp) / "out.wav"
        script = Path(tmp) / "say.scm"
        script.write_bytes(festival_encode(_FESTIVAL_SCRIPT.format(voice=name, text=escaped, wav=wav), name))
        proc = run_tool(["festival", "-b", str(script)], voice)
        if not wav.exists():
            # festival -b reports a missing voice on stderr and still exits 0
            raise TTSError(f"{voice}: no audio written: {proc.stderr.strip()[:300]}")
        audio, sr = _read_wav(wav, voice)
    # The stdout is in the voice's encoding too; phone names and the set's name are ASCII.
    found = re.search(r"^PHONESET (\S+)$", proc.stdout, flags=re.M)
    if not found:
        raise TTSError(f"{voice}: festival did not report its phone set: {proc.stderr.strip()[:300]}")
    raw: list[tuple[str, float, float]] = []
    start = 0.0
    for symbol, end_s in re.findall(r"^SEG (\S+) ([0-9.]+)$", proc.stdout, flags=re.M):
        end = float(end_s)
        raw.append((_festival_symbol(found.group(1), symbol, voice), start, end))
        start = end
    return audio, sr, raw


@functools.lru_cache(maxsize=1)
def _festival_voices() -> list[str]:
    with tempfile.TemporaryDirectory(prefix="emolive-tts-") as tmp:
        script = Path(tmp) / "list.scm"
        script.write_text('(format t "VOICES %l\\n" (voice.list))\n', encoding="utf-8")
        try:
            proc = run_tool(["festival", "-b", str(script)], "festival")
        except TTSError:
            return []
    found = re.search(r"VOICES \((.*)\)", proc.stdout)
    return [f"festival:{v}" for v in found.group(1).split()] if found else []


# ---------------------------------------------------------------------------- IPA

# IPA (as espeak-ng names its phonemes with espeakINITIALIZE_PHONEME_IPA) -> ARPAbet class.
# Languages without an ARPAbet phone get the nearest one by lip and jaw shape, which is all
# the visemes need: front rounded vowels go to the rounded back ones, trills to r, and so on.
_IPA_TO_ARPABET = {
    # vowels and diphthongs
    "i": "iy", "ɪ": "ih", "ɨ": "ih", "ᵻ": "ih", "e": "ey", "eɪ": "ey", "ɛ": "eh", "æ": "ae",
    "a": "aa", "ɑ": "aa", "ɒ": "aa", "ɐ": "ah", "ʌ": "ah", "ɤ": "ah", "ɔ": "ao", "œ": "ao",
    "o": "ow", "oʊ": "ow", "əʊ": "ow", "ø": "ow", "ʊ": "uh", "ʏ": "uh", "u": "uw", "y": "uw",
    "ɯ": "uw", "ʉ": "uw", "ε": "eh", "ɶ": "ao", "ɞ": "ah",
    "ə": "ax", "ɘ": "ax", "ɵ": "ax", "ɜ": "er", "ɚ": "er", "əl": "el",
    "aɪ": "ay", "aʊ": "aw", "ɔɪ": "oy", "ɔʏ": "oy",
    # consonants
    "p": "p", "b": "b", "t": "t", "d": "d", "k": "k", "g": "g", "ɡ": "g", "c": "k", "ɟ": "g",
    "ʈ": "t", "ɖ": "d", "q": "k", "ʔ": "hh", "ɓ": "b", "ɗ": "d", "ʄ": "g", "ɠ": "g", "ʙ": "b",
    "m": "m", "ɱ": "m", "n": "n", "ɲ": "n", "ɳ": "n", "ŋ": "ng", "ɴ": "ng",
    "f": "f", "v": "v", "ɸ": "f", "β": "v", "ʋ": "v", "θ": "th", "ð": "dh", "s": "s", "z": "z",
    "ʃ": "sh", "ʒ": "zh", "ʂ": "sh", "ʐ": "zh", "ɕ": "sh", "ʑ": "zh", "ç": "hh", "ʝ": "y",
    "x": "hh", "ɣ": "g", "χ": "hh", "ħ": "hh", "ʕ": "hh", "h": "hh", "ɦ": "hh",
    "ɧ": "sh", "tʃ": "ch", "ʧ": "ch", "dʒ": "jh", "ʤ": "jh", "ts": "s", "ʦ": "s", "dz": "z",
    "ʣ": "z", "tɕ": "ch", "dʑ": "jh", "pf": "p",
    "r": "r", "ɹ": "r", "ɾ": "dx", "ɽ": "dx", "ɺ": "dx", "ʁ": "r", "ʀ": "r", "ɻ": "r",
    "l": "l", "ɫ": "l", "ʎ": "l", "ɭ": "l", "ɬ": "l", "j": "y", "w": "w", "ɥ": "w", "ɰ": "w",
    "ʍ": "w",
    # eSpeak mnemonics that some language tables still report instead of IPA
    "A": "aa", "S": "sh", "Z": "zh", "T": "th", "D": "dh", "N": "ng", "E": "eh", "O": "ao",
    "X": "hh",
}
# Length, stress and secondary-articulation marks do not change the viseme; neither does
# Danish stød, which some tables write as "?" before the vowel.
_IPA_MODIFIERS = re.compile("[ːˑˈˌ'ʰʲʷˠˤ‿.?\\-]")


def ipa_to_arpabet(name: str) -> str | None:
    """Map one espeak-ng IPA phoneme name to an ARPAbet symbol ('pau' for its '' and '_').

    None means a bare diacritic (a lone nasalisation mark): it colours the phone before it.
    """
    ipa = unicodedata.normalize("NFC", _IPA_MODIFIERS.sub("", name))
    if not ipa or ipa == "_":
        return "pau"
    if ipa in _IPA_TO_ARPABET:  # before diacritics go, so that ç is not read as c
        return _IPA_TO_ARPABET[ipa]
    # Then without diacritics (nasal ɛ̃, centralised ä, syllabic n̩, ...).
    bare = "".join(c for c in unicodedata.normalize("NFD", ipa) if not unicodedata.combining(c))
    bare = unicodedata.normalize("NFC", bare)
    if not bare:
        return None
    # Rare diphthongs and clusters (ɪə, ʊə, ...) take the shape of their first part.
    for size in range(len(bare), 0, -1):
        if bare[:size] in _IPA_TO_ARPABET:
            return _IPA_TO_ARPABET[bare[:size]]
    raise TTSError(f"espeak-ng phoneme {name!r} has no ARPAbet class; add it to _IPA_TO_ARPABET")


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """``python -m training.tts``: synthesise one text to a WAV (PCM16) and a phone TSV."""
    parser = argparse.ArgumentParser(prog="python -m training.tts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--voice", default="flite:slt", help="engine:voice (default flite:slt); see --list-voices")
    parser.add_argument("--text", help="text to speak")
    parser.add_argument("-o", "--output", type=Path, help="WAV file to write (PCM16 mono)")
    parser.add_argument("--phones", type=Path, help="TSV file for the phones: start, end (s), symbol")
    parser.add_argument("--rate", type=int, help="resample to this rate in Hz (default: the voice's own)")
    parser.add_argument("--list-voices", action="store_true", help="print the voices available here and exit")
    args = parser.parse_args(argv)
    if args.list_voices:
        print("\n".join(available_voices()))
        return 0
    if not args.text or not args.output:
        parser.error("--text and -o/--output are required")
    try:
        utt = synthesize(args.text, args.voice, rate=args.rate)
    except (TTSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sf.write(str(args.output), utt.audio, utt.rate, subtype="PCM_16")
    if args.phones:
        rows = ["start\tend\tphone"] + [f"{p.start:.4f}\t{p.end:.4f}\t{p.symbol}" for p in utt.phones]
        args.phones.write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"{args.output}: {utt.duration:.2f} s at {utt.rate} Hz, {len(utt.phones)} phones ({utt.voice})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
