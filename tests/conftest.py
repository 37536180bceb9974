"""Shared, session-scoped fixtures for the end-to-end tests: synthesised speech with exact
phone timings, videos rendered once through the real ``emolive`` CLI, the bundled avatar,
and a throw-away avatar cache (``EMOLIVE_CACHE_DIR``) so no test writes ``~/.cache``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "engine" / "assets"
PORTRAIT = ASSETS / "astronaut.jpg"

# ~10 s of speech rich in open vowels and bilabial closures (m, b, p), with pauses at the
# punctuation: the mouth has to open wide and shut completely many times.
LIP_SYNC_TEXT = (
    "Bob, my papa bought a big map of Panama. Palm trees bob above the bay. "
    "Mom and Pam baked apple pie, and I am happy. Maybe a bumpy bus ride calms my mind."
)


def mouth_box(landmarks: np.ndarray, margin: int = 4) -> tuple[int, int, int, int]:
    """The box around a portrait's outer lip contours (pixels), ``margin`` wider on each side."""
    from emolive.engine import face_topology as topo

    lips = landmarks[list(topo.UPPER_LIP_OUTER + topo.LOWER_LIP_OUTER), :2]
    (x0, y0), (x1, y1) = np.floor(lips.min(0) - margin).astype(int), np.ceil(lips.max(0) + margin).astype(int)
    return int(x0), int(y0), int(x1), int(y1)


def emolive_command() -> list[str]:
    """The installed console script next to this interpreter (what a user runs)."""
    script = Path(sys.executable).parent / "emolive"
    if script.exists():
        return [str(script)]
    found = shutil.which("emolive")
    return [found] if found else [sys.executable, "-m", "emolive.cli.main"]


def run_emolive(*args: str | os.PathLike, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess (it inherits ``EMOLIVE_CACHE_DIR``)."""
    return subprocess.run(
        [*emolive_command(), *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def check_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"emolive exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


@dataclass
class Speech:
    """A synthesised utterance saved as a WAV, with its phones (training.tts.Phone)."""

    wav: Path
    utterance: object  # training.tts.Utterance

    @property
    def duration(self) -> float:
        return self.utterance.duration

    @property
    def phones(self) -> list:
        return self.utterance.phones


@pytest.fixture(scope="session", autouse=True)
def emolive_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every engine call and every CLI subprocess of the session caches avatars here."""
    cache = tmp_path_factory.mktemp("emolive-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMOLIVE_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


def _speak(voice: str, work_dir: Path, name: str) -> Speech:
    from emolive.training.tts import available_voices, synthesize

    if voice not in available_voices():
        pytest.skip(f"TTS voice {voice} is not installed")
    utt = synthesize(LIP_SYNC_TEXT, voice)
    assert utt.rate in (16000, 22050), f"{voice} synthesised at {utt.rate} Hz"
    wav = work_dir / f"{name}.wav"
    sf.write(wav, utt.audio, utt.rate, subtype="PCM_16")
    return Speech(wav, utt)


@pytest.fixture(scope="session")
def speech_slt(work_dir: Path) -> Speech:
    """flite slt (16 kHz) speaking LIP_SYNC_TEXT."""
    return _speak("flite:slt", work_dir, "slt")


@pytest.fixture(scope="session")
def speech_espeak(work_dir: Path) -> Speech:
    """espeak-ng en-us (22.05 kHz) speaking LIP_SYNC_TEXT."""
    return _speak("espeak-ng:en-us", work_dir, "espeak")


@pytest.fixture(scope="session")
def silence_wav(work_dir: Path) -> Path:
    """6 s of digital silence, 16 kHz 16-bit: at 10–30 blinks a minute, 1–3 blinks for the
    render tests to see (3 s could hold none)."""
    path = work_dir / "silence.wav"
    sf.write(path, np.zeros(6 * 16000, np.int16), 16000, subtype="PCM_16")
    return path


def _render(work_dir: Path, audio: Path, name: str, *extra: str) -> Path:
    out = work_dir / f"{name}.mp4"
    check_ok(run_emolive("render", PORTRAIT, audio, "-o", out, "--quiet", *extra))
    assert out.is_file() and out.stat().st_size > 0
    return out


@pytest.fixture(scope="session")
def render_slt(work_dir: Path, speech_slt: Speech) -> Path:
    """`emolive render` of the flite slt speech, default options (512 px, 25 fps)."""
    return _render(work_dir, speech_slt.wav, "render_slt")


@pytest.fixture(scope="session")
def render_espeak(work_dir: Path, speech_espeak: Speech) -> Path:
    return _render(work_dir, speech_espeak.wav, "render_espeak")


@pytest.fixture(scope="session")
def render_silence(work_dir: Path, silence_wav: Path) -> Path:
    return _render(work_dir, silence_wav, "render_silence")


@pytest.fixture(scope="session")
def render_lively(work_dir: Path, speech_slt: Speech) -> Path:
    """The slt speech with --head-motion 2 (lively): the background test's worst case."""
    return _render(work_dir, speech_slt.wav, "render_lively", "--head-motion", "2")


@pytest.fixture(scope="session")
def avatar_and_rig():
    """The bundled portrait registered at 512 px (as `emolive render` does) and its rig."""
    from emolive.engine.offline import RenderOptions, prepare_avatar

    return prepare_avatar(PORTRAIT, RenderOptions())
