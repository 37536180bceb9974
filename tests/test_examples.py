"""The examples run against a real server: the WebSocket client gets lip motion and sends on a
clock; the one-command TTS-to-face example gets the face and voice back over WebRTC."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import av
import pytest
import soundfile as sf

from emolive.server.config import Settings
from emolive.bench.background_server import BackgroundServer
from emolive.training.tts import synthesize

EXAMPLE = Path(__file__).parents[1] / "examples" / "ws_client.py"
TTS_TO_FACE = Path(__file__).parents[1] / "examples" / "tts_to_face.py"


def test_ws_client_example_streams_speech_and_saves_motion(tmp_path):
    speech = synthesize("Maybe we should open the window before the meeting.", "flite:slt")
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech.audio, speech.rate, subtype="PCM_16")
    settings = Settings(data_dir=tmp_path / "data", motion="baseline")
    with BackgroundServer(settings) as server:
        result = subprocess.run(
            [sys.executable, str(EXAMPLE), str(wav), "--server", server.url, "-o", str(tmp_path / "motion.csv")],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert "playback_finished" in result.stdout
    with open(tmp_path / "motion.csv") as handle:
        rows = list(csv.DictReader(handle))
    duration = len(speech.audio) / speech.rate
    assert len(rows) >= duration * 25 * 0.9
    assert max(float(row["jawOpen"]) for row in rows) > 0.3


def test_ws_client_sends_in_real_time_without_drift(tmp_path):
    """Chunks go out on a clock: 20 ms chunks of a several-second file take its duration, not
    duration + the send time of every chunk."""
    speech = synthesize("Bob, my papa bought a big map of Panama. Palm trees bob above the bay.", "flite:slt")
    wav = tmp_path / "speech.wav"
    sf.write(wav, speech.audio, speech.rate, subtype="PCM_16")
    with BackgroundServer(Settings(data_dir=tmp_path / "data", motion="baseline")) as server:
        result = subprocess.run(
            [sys.executable, str(EXAMPLE), str(wav), "--server", server.url, "-o", str(tmp_path / "motion.csv")],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 0, result.stderr
    match = re.search(r"sent ([\d.]+) s of audio in ([\d.]+) s", result.stdout)
    audio_s, sent_s = float(match[1]), float(match[2])
    assert sent_s == pytest.approx(audio_s, rel=0.03), result.stdout


def test_tts_to_face_example_in_one_command(tmp_path):
    """The one-command TTS-to-face example: it starts its own server, streams TTS over the
    WebSocket on a clock, gets face and voice back over WebRTC and saves them as an MP4."""
    output = tmp_path / "face.mp4"
    result = subprocess.run([sys.executable, str(TTS_TO_FACE), "Maybe we should open the window.", "-o", str(output)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    match = re.search(r"sent ([\d.]+) s of TTS audio in ([\d.]+) s", result.stdout)
    assert float(match[2]) == pytest.approx(float(match[1]), rel=0.03), result.stdout
    assert re.search(r"-> the same voice out over WebRTC \d+ ms", result.stdout), result.stdout
    with av.open(str(output)) as container:
        kinds = {stream.type: stream.frames for stream in container.streams}
    assert kinds["video"] >= float(match[1]) * 25 * 0.9 and kinds["audio"] > 0
