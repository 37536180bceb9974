"""espeak-ng through ctypes: speech with each phoneme's start sample, named in ARPAbet.

libespeak-ng's phoneme events carry the output sample at which each phoneme starts; their
IPA names are mapped onto ARPAbet classes (:func:`emolive.training.tts.ipa_to_arpabet`). Used by
:func:`emolive.training.tts.synthesize` for ``espeak-ng:<language>`` voices.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading

import numpy as np

from emolive.training.tts import TTSError, ipa_to_arpabet, run_tool


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` from speak_lib.h."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS_IPA = 0x0001 | 0x0002
_POS_CHARACTER = 1
_CHARS_UTF8 = 1


class _Espeak:
    """The process-wide libespeak-ng instance (the library keeps global state: one caller at a time)."""

    def __init__(self) -> None:
        path = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self.lib = ctypes.CDLL(path)
        except OSError as exc:
            raise TTSError("espeak-ng: libespeak-ng is not installed (apt install libespeak-ng1)") from exc
        self.lock = threading.Lock()
        self.rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS_IPA)
        if self.rate <= 0:
            raise TTSError("espeak-ng: espeak_Initialize failed (is espeak-ng-data installed?)")
        self._chunks: list[np.ndarray] = []
        self._starts: list[tuple[str, int]] = []
        self._callback = _SynthCallback(self._on_synth)  # held so ctypes does not free it
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]

    def _on_synth(self, wav: ctypes.POINTER(ctypes.c_short), n: int, events: ctypes.POINTER(_Event)) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                # `sample` is the exact output sample where the phoneme starts (audio_position is ms).
                self._starts.append((event.id.string.decode("utf-8", "replace"), event.sample))
            i += 1
        return 0

    def speak(self, text: str, voice: str) -> tuple[np.ndarray, list[tuple[str, int]]]:
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"unknown espeak-ng voice {voice!r}; see `python -m training.tts --list-voices`")
            self._chunks, self._starts = [], []
            data = text.encode("utf-8")
            status = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != 0:
                raise TTSError(f"espeak-ng:{voice}: espeak_Synth failed with status {status}")
            self.lib.espeak_Synchronize()
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            return pcm, self._starts


@functools.lru_cache(maxsize=1)
def _instance() -> _Espeak:
    return _Espeak()


def speak(text: str, name: str) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
    engine = _instance()
    # espeak_SetVoiceByName matches voice files, not every language code ("en-gb" lives in
    # gmw/en), so codes go through the voice table; "+f3"-style variants pass through.
    lang, plus, variant = name.partition("+")
    pcm, starts = engine.speak(text, _espeak_files().get(lang.lower(), lang) + plus + variant)
    if not len(pcm):
        raise TTSError(f"espeak-ng:{name}: no audio produced")
    sr = engine.rate
    # "(en)"-style names are language-switch markers, not sounds.
    starts = [(sym, s) for sym, s in starts if not sym.startswith("(")]
    raw: list[tuple[str, float, float]] = []
    for (sym, s), (_, nxt) in zip(starts, starts[1:] + [("", len(pcm))]):
        symbol = ipa_to_arpabet(sym)
        if symbol is None and raw:
            raw[-1] = (raw[-1][0], raw[-1][1], nxt / sr)
        else:
            raw.append((symbol or "pau", s / sr, nxt / sr))
    return (pcm.astype(np.float32) / 32768.0), sr, raw


@functools.lru_cache(maxsize=1)
def _espeak_files() -> dict[str, str]:
    """Language code -> voice file ("en-gb" -> "gmw/en"), from ``espeak-ng --voices``."""
    try:
        proc = run_tool(["espeak-ng", "--voices"], "espeak-ng")
    except TTSError:
        return {}
    rows = [line.split() for line in proc.stdout.splitlines()[1:]]
    # columns: Pty, Language, Age/Gender, VoiceName, File, Other languages
    return {row[1].lower(): row[4] for row in rows if len(row) >= 5}


def voices() -> list[str]:
    """The espeak-ng voices installed here, as ``espeak-ng:<language>``."""
    return [f"espeak-ng:{lang}" for lang in _espeak_files()]
