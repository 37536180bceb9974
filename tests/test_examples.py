"""The README's WebSocket client example runs against a real server and gets lip motion."""

import csv
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from server.config import Settings
from server.testing import BackgroundServer
from training.tts import synthesize

EXAMPLE = Path(__file__).parents[1] / "examples" / "ws_client.py"


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
