"""Acceptance tests of the `emolive` command line, run as a user runs it: the installed
console script in a subprocess, judged by its exit code, its stderr and the files it writes."""

from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from conftest import PORTRAIT, Speech, check_ok, run_emolive
from emolive.engine.motion_space import CHANNELS, HEAD_LIMITS, HEAD_POSE

FRAME_S = 0.04  # one row / frame per 40 ms at the default 25 fps


# --------------------------------------------------------------------------- render


def _probe(path: Path) -> dict:
    with av.open(str(path)) as c:
        video, audio = c.streams.video, c.streams.audio
        assert len(video) == 1, f"{path.name}: {len(video)} video streams"
        v = video[0]
        frames = sum(1 for _ in c.decode(v))
        info = {
            "width": v.codec_context.width,
            "height": v.codec_context.height,
            "fps": Fraction(v.average_rate) if v.average_rate else None,
            "frames": frames,
            "container_s": c.duration / av.time_base if c.duration is not None else None,
            "audio_codecs": [a.codec_context.name for a in audio],
        }
    return info


def test_render_writes_a_playable_mp4(render_slt: Path, speech_slt: Speech, record_property) -> None:
    info = _probe(render_slt)
    video_s = info["frames"] / float(info["fps"])
    audio_s = speech_slt.duration
    record_property("video_s", video_s)
    record_property("container_s", info["container_s"])
    print(f"\n[render] audio {audio_s:.3f} s, video {video_s:.3f} s ({info['frames']} frames), "
          f"container {info['container_s']:.3f} s")
    assert info["fps"] == 25
    assert (info["width"], info["height"]) == (512, 512)
    assert info["audio_codecs"] == ["aac"]
    assert abs(video_s - audio_s) <= 0.040
    assert info["container_s"] is not None and abs(info["container_s"] - audio_s) <= 0.040


def test_render_with_no_inputs_uses_the_bundled_demo(work_dir: Path) -> None:
    out = work_dir / "defaults.mp4"
    check_ok(run_emolive("render", "--quiet", "-o", out))
    info = _probe(out)
    demo_s = sf.info(str(PORTRAIT.parent / "demo_speech.wav")).duration
    assert (info["width"], info["height"], info["fps"]) == (512, 512, 25)
    assert info["audio_codecs"] == ["aac"]
    assert abs(info["frames"] / 25 - demo_s) <= 0.040


# --------------------------------------------------------------------------- motion


def _check_motion_rows(times: np.ndarray, values: np.ndarray, duration: float) -> None:
    n = len(times)
    assert abs(n - duration / FRAME_S) <= 1.0, f"{n} rows for {duration:.3f} s of audio"
    np.testing.assert_allclose(times, np.arange(n) * FRAME_S, atol=1e-3)
    assert np.isfinite(values).all()
    head = values[:, : len(HEAD_POSE)]
    blend = values[:, len(HEAD_POSE) :]
    assert np.all(np.abs(head) <= HEAD_LIMITS + 1e-4), "head pose outside its limits"
    assert blend.min() >= 0.0 and blend.max() <= 1.0, "blendshape outside [0, 1]"
    # Speech, not a constant: the jaw moves.
    jaw = values[:, CHANNELS.index("jawOpen")]
    assert jaw.max() - jaw.min() > 0.2


def test_motion_writes_csv_and_json(work_dir: Path, speech_slt: Speech) -> None:
    csv_path, json_path = work_dir / "motion.csv", work_dir / "motion.json"
    check_ok(run_emolive("motion", speech_slt.wav, "-o", csv_path))
    check_ok(run_emolive("motion", speech_slt.wav, "-o", json_path))

    with csv_path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [[float(x) for x in row] for row in reader]
    assert header[0] == "time"
    assert set(CHANNELS) <= set(header[1:])
    table = np.array(rows)
    values = table[:, [header.index(name) for name in CHANNELS]]
    _check_motion_rows(table[:, 0], values, speech_slt.duration)

    payload = json.loads(json_path.read_text())
    frames = payload["frames"]
    for frame in frames:
        assert "time" in frame and set(CHANNELS) <= set(frame)
    jtimes = np.array([f["time"] for f in frames])
    jvalues = np.array([[f[name] for name in CHANNELS] for f in frames])
    _check_motion_rows(jtimes, jvalues, speech_slt.duration)
    # The two formats carry the same motion.
    assert len(jvalues) == len(values)
    np.testing.assert_allclose(jvalues, values, atol=2e-5)


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def bad_files(work_dir: Path, speech_slt: Speech) -> dict[str, Path]:
    d = work_dir / "bad"
    d.mkdir(exist_ok=True)
    files: dict[str, Path] = {}

    files["text_as_png"] = d / "notes.png"
    files["text_as_png"].write_text("this is not an image\n")

    files["tiny_png"] = d / "tiny.png"
    Image.new("RGB", (1, 1), (200, 150, 120)).save(files["tiny_png"])

    files["gradient_png"] = d / "gradient.png"
    ramp = np.linspace(0, 255, 512, dtype=np.float32)
    grad = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], 255 - ramp[None, :]), axis=-1)
    Image.fromarray(grad.astype(np.uint8)).save(files["gradient_png"])

    files["empty_wav"] = d / "empty.wav"
    sf.write(files["empty_wav"], np.zeros(0, np.int16), 16000, subtype="PCM_16")

    files["nan_wav"] = d / "nan.wav"
    sf.write(files["nan_wav"], np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")

    # Real speech encoded to MP3 by PyAV, then cut in half mid-frame.
    full_mp3 = d / "full.mp3"
    audio = speech_slt.utterance.audio
    rate = speech_slt.utterance.rate
    with av.open(str(full_mp3), "w") as c:
        stream = c.add_stream("libmp3lame", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(audio[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    data = full_mp3.read_bytes()
    files["truncated_mp3"] = d / "truncated.mp3"
    files["truncated_mp3"].write_bytes(data[: len(data) // 2])

    files["three_channel_wav"] = d / "three_channel_11k.wav"
    short = audio[: int(3 * rate)]
    import soxr

    at11k = soxr.resample(short, rate, 11025).astype(np.float32)
    sf.write(files["three_channel_wav"], np.stack([at11k, 0.5 * at11k, -at11k], axis=1), 11025, subtype="PCM_16")

    files["missing"] = d / "does_not_exist.wav"
    files["missing_png"] = d / "does_not_exist.png"
    return files


def _stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


# (portrait key or None for the bundled one, audio key or None for the bundled clip, file named)
BAD_CASES = {
    "text file named .png": ("text_as_png", None, "notes.png"),
    "1x1 png": ("tiny_png", None, "tiny.png"),
    "image with no face": ("gradient_png", None, "gradient.png"),
    "empty wav": (None, "empty_wav", "empty.wav"),
    "NaN wav": (None, "nan_wav", "nan.wav"),
    "missing audio": (None, "missing", "does_not_exist.wav"),
    "missing portrait": ("missing_png", None, "does_not_exist.png"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_clear_line(case: str, bad_files: dict[str, Path], work_dir: Path) -> None:
    portrait_key, audio_key, named = BAD_CASES[case]
    portrait = bad_files[portrait_key] if portrait_key else PORTRAIT
    audio = bad_files[audio_key] if audio_key else PORTRAIT.parent / "demo_speech.wav"
    out = work_dir / f"bad_{portrait_key or audio_key}.mp4"
    proc = run_emolive("render", portrait, audio, "-o", out, "--size", "256", "--quiet")
    lines = _stderr_lines(proc)
    detail = f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert proc.returncode == 2, detail
    assert "Traceback" not in proc.stderr, detail
    assert len(lines) == 1, detail
    assert named in lines[0], detail
    assert not out.exists(), "a failed render left an output file behind"


@pytest.mark.parametrize("key", ["truncated_mp3", "three_channel_wav"])
def test_awkward_but_valid_audio_renders(
    key: str, bad_files: dict[str, Path], work_dir: Path, speech_slt: Speech
) -> None:
    out = work_dir / f"ok_{key}.mp4"
    proc = run_emolive("render", PORTRAIT, bad_files[key], "-o", out, "--size", "256", "--quiet")
    assert proc.returncode == 0, f"exit {proc.returncode}, stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr
    info = _probe(out)
    assert info["frames"] > 25 and info["audio_codecs"] == ["aac"]
    if key == "three_channel_wav":
        assert abs(info["frames"] / 25 - sf.info(str(bad_files[key])).duration) <= 0.040
    else:  # the half of the MP3 before the cut is kept, and no more
        assert abs(info["frames"] / 25 - speech_slt.duration / 2) <= 0.5


def test_missing_audio_for_motion_is_one_clear_line(work_dir: Path) -> None:
    proc = run_emolive("motion", work_dir / "nowhere.wav", "-o", work_dir / "nowhere.csv")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = _stderr_lines(proc)
    assert len(lines) == 1 and "nowhere.wav" in lines[0], proc.stderr


# --------------------------------------------------------------------------- help

HELP = {
    (): ["render", "motion", "bench", "serve", "export", "train", "eval"],
    ("render",): ["portrait", "audio", "-o", "--output", "--size", "--fps", "--seed", "--head-motion",
                  "--expressiveness", "--motion", "--motion-backend", "--keep-framing", "--contact-sheet", "--quiet"],
    ("motion",): ["audio", "-o", "--output", "--fps", "--seed", "--head-motion", "--expressiveness", "--motion",
                  "--motion-backend"],
    ("bench",): ["render", "stream", "soak", "models", "sessions", "browser"],
    ("bench", "render"): ["--size", "--seconds", "--runs", "--motion"],
}


def _subparsers(parser):
    import argparse

    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand the real parser has, so a new one needs help too."""
    from emolive.cli.main import build_parser

    paths, stack = [], [((), build_parser())]
    while stack:
        path, parser = stack.pop()
        paths.append(path)
        sub = _subparsers(parser)
        if sub is not None:
            stack.extend((path + (name,), child) for name, child in sub.choices.items())
    return sorted(paths)


def _parser_options(path: tuple[str, ...]) -> set[str]:
    """Every option string the real parser defines at ``path`` (so new options need help too)."""
    from emolive.cli.main import build_parser

    parser = build_parser()
    for name in path:
        parser = _subparsers(parser).choices[name]
    return {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "emolive")
def test_help_mentions_every_option(path: tuple[str, ...]) -> None:
    proc = run_emolive(*path, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for word in set(HELP.get(path, [])) | _parser_options(path):
        assert word in text, f"`emolive {' '.join(path)} --help` does not mention {word}"
