"""Speech with ground-truth phones, visemes, and the independent mouth tracker."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile as sf

from emolive.training.mouth_tracker import best_offset_correlation, count_blinks, track_video
from emolive.training.targets import viseme_of
from emolive.training.tts import Phone, TTSError, available_voices, festival_encode, main, synthesize
from emolive.training.visemes import BILABIALS, OPENNESS, closure_intervals, openness

ASSETS = Path(__file__).resolve().parents[1] / "engine" / "assets"
TEXT = "Hello, my name is Bob. I like big apples, and I am happy to meet you. Please, bring the map."
VOICES = ["flite:slt", "espeak-ng:en-us"]
VOWELS = {"aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw", "ax"}


def _db(x: np.ndarray) -> float:
    return float(20 * np.log10(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-9))


@pytest.fixture(scope="module", params=VOICES)
def utt(request: pytest.FixtureRequest):
    if request.param not in available_voices():
        pytest.skip(f"{request.param} is not installed")
    return synthesize(TEXT, request.param)


def test_phones_tile_the_audio(utt) -> None:
    assert utt.audio.dtype == np.float32 and utt.audio.ndim == 1
    assert utt.phones[0].start == 0.0
    assert utt.phones[-1].end == pytest.approx(len(utt.audio) / utt.rate, abs=1e-6)
    for prev, cur in zip(utt.phones, utt.phones[1:]):
        assert cur.start == pytest.approx(prev.end, abs=1e-9)
        assert cur.end > cur.start
    symbols = {p.symbol for p in utt.phones}
    assert symbols == {s.lower() for s in symbols}
    assert {"pau", "m", "b", "p", "aa"} <= symbols
    assert 3.0 < utt.duration < 10.0


def test_pauses_are_quiet_and_vowels_loud(utt) -> None:
    a, r = utt.audio, utt.rate
    margin = int(0.01 * r)
    inner = utt.phones[1:-1]
    pauses = [
        _db(a[int(p.start * r) + margin : int(p.end * r) - margin])
        for p in inner
        if p.symbol == "pau" and p.duration > 0.06
    ]
    vowels = [_db(a[int(p.start * r) : int(p.end * r)]) for p in utt.phones if p.symbol in VOWELS and p.duration > 0.04]
    assert len(pauses) >= 3 and len(vowels) >= 10
    # A pause label shifted by even 10 ms into a word would pull its RMS up to speech level.
    assert max(pauses) < np.median(vowels) - 25.0
    assert np.percentile(vowels, 10) > max(pauses) + 15.0


def test_espeak_pauses_are_sample_exact() -> None:
    if "espeak-ng:de" not in available_voices():
        pytest.skip("espeak-ng is not installed")
    utt = synthesize("Guten Morgen. Mein Name ist Anna, und ich wohne in Berlin.", "espeak-ng:de", rate=16000)
    assert utt.rate == 16000 and utt.phones[-1].end == pytest.approx(utt.duration, abs=1e-6)
    raw = synthesize(utt.text, "espeak-ng:de")
    # espeak-ng writes digital silence for pauses: every sample inside an inner pause is zero.
    inner = [p for p in raw.phones[1:-1] if p.symbol == "pau"]
    assert inner
    for p in inner:
        assert np.all(raw.audio[round(p.start * raw.rate) : round(p.end * raw.rate)] == 0.0)


# One short sentence per festival training voice beyond kal_diphone, in its own language, each
# with bilabials (training.corpus.FESTIVAL_VOICES).
FESTIVAL_SENTENCES = {
    "festival:upc_ca_ona_hts": "La meva mare menja pa amb formatge i vi.",
    "festival:ked_diphone": "Bob, my papa bought a big map.",
    "festival:czech_dita": "Máma mele maso, obě babičky pijí vodu.",
    "festival:czech_krb": "Máma mele maso, obě babičky pijí vodu.",
    "festival:czech_machac": "Máma mele maso, obě babičky pijí vodu.",
    "festival:czech_ph": "Máma mele maso, obě babičky pijí vodu.",
    "festival:suo_fi_lj_diphone": "Pappa ja äiti ostavat omenoita.",
    "festival:hy_fi_mv_diphone": "Pappa ja äiti ostavat omenoita.",
    "festival:msu_ru_nsh_clunits": "Мама мыла раму, а папа пьёт молоко.",
}


@pytest.mark.parametrize("voice", sorted(FESTIVAL_SENTENCES))
def test_festival_voices_give_mapped_contiguous_phones(voice: str) -> None:
    if voice not in available_voices():
        pytest.skip(f"{voice} is not installed")
    utt = synthesize(FESTIVAL_SENTENCES[voice], voice, rate=16000)
    assert utt.rate == 16000 and 1.0 < utt.duration < 6.0
    assert utt.phones[0].start == 0.0 and utt.phones[-1].end == pytest.approx(utt.duration, abs=1e-6)
    for prev, cur in zip(utt.phones, utt.phones[1:]):
        assert cur.start == prev.end and cur.end > cur.start
    for p in utt.phones:
        assert p.symbol in OPENNESS and viseme_of(p.symbol)
    speech = [p for p in utt.phones if p.symbol != "pau"]
    # The text reached the front end whole (an encoding slip spells words letter by letter).
    assert 15 <= len(speech) <= 45
    assert {"m", "p"} <= {p.symbol for p in speech}
    assert sum(p.duration for p in speech) > 0.6 * utt.duration


def test_festival_phone_sets_map_every_phone() -> None:
    from emolive.training.tts import _FESTIVAL_PHONESETS, _RADIO_PHONES, _RADIO_SILENCES, _festival_symbol

    for phoneset, table in {"radio": dict.fromkeys(_RADIO_PHONES | _RADIO_SILENCES), **_FESTIVAL_PHONESETS}.items():
        for symbol in table:
            assert viseme_of(_festival_symbol(phoneset, symbol, "test")), (phoneset, symbol)
    # The mappings that matter most to the lips.
    assert _festival_symbol("czech", "m", "t") == "m" and _festival_symbol("czech", "s~", "t") == "sh"
    assert _festival_symbol("finnish", "p:", "t") == "p" and _festival_symbol("finnish", "7", "t") == "ow"
    assert _festival_symbol("msu_ru", "bb", "t") == "b" and _festival_symbol("msu_ru", "uu", "t") == "uw"
    assert _festival_symbol("upc_catalan-central", "O1", "t") == "ao"
    assert _festival_symbol("upc_catalan-central", "#", "t") == "pau"
    with pytest.raises(TTSError, match="no ARPAbet class"):
        _festival_symbol("czech", "qq", "t")
    with pytest.raises(TTSError, match="no ARPAbet map"):
        _festival_symbol("klingon", "m", "t")


def test_festival_text_goes_in_the_voice_encoding() -> None:
    assert festival_encode("Řeka – „dobrá“", "czech_dita") == "Řeka - \"dobrá\"".encode("iso-8859-2")
    assert festival_encode("l'àvia", "upc_ca_ona_hts") == "l'àvia".encode("iso-8859-15")
    assert festival_encode("Hello", "kal_diphone") == b"Hello"
    with pytest.raises(ValueError, match="iso-8859-1"):
        festival_encode("Żaba", "suo_fi_lj_diphone")


def test_unknown_voice_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="flite voice"):
        synthesize("hi", "flite:nobody")
    with pytest.raises(ValueError, match="engine"):
        synthesize("hi", "sapi:anna")


def test_openness_follows_phones(utt) -> None:
    fps = 25.0
    o = openness(utt.phones, fps=fps)
    assert o.dtype == np.float32 and len(o) == int(np.ceil(utt.duration * fps - 1e-9))
    assert o.min() >= 0.0 and o.max() <= 1.0 and o.max() > 0.8
    centres = (np.arange(len(o)) + 0.5) / fps
    on_bilabial = np.zeros(len(o), bool)
    for p in utt.phones:
        if p.symbol in BILABIALS:
            on_bilabial |= (centres >= p.start) & (centres < p.end)
    assert on_bilabial.any() and np.all(o[on_bilabial] == 0.0)
    assert len(openness(utt.phones, fps=fps, n_frames=len(o) + 10)) == len(o) + 10
    for start, end in closure_intervals(utt.phones):
        assert end - start >= 0.04


def test_closure_intervals_merge_adjacent_bilabials() -> None:
    phones = [Phone("pau", 0.0, 0.1), Phone("ah", 0.1, 0.2), Phone("m", 0.2, 0.23), Phone("p", 0.23, 0.27),
              Phone("iy", 0.27, 0.4), Phone("b", 0.4, 0.42), Phone("pau", 0.42, 0.6)]
    assert closure_intervals(phones) == [(0.2, 0.27)]
    o = openness(phones, fps=100.0)
    assert o[5] < 0.01 and o[15] > 0.8 and o[24] == 0.0 and o[41] == 0.0 and o[55] < 0.01


def test_cli_writes_wav_and_phone_table(tmp_path: Path) -> None:
    wav, tsv = tmp_path / "out.wav", tmp_path / "out.tsv"
    args = ["--voice", "flite:slt", "--text", "Press play.", "-o", str(wav), "--phones", str(tsv), "--rate", "16000"]
    assert main(args) == 0
    audio, rate = sf.read(wav, dtype="int16")
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    assert rate == 16000 and audio.ndim == 1
    assert float(rows[-1][1]) == pytest.approx(len(audio) / rate, abs=1e-3)
    assert "p" in {r[2] for r in rows}


def test_bundled_demo_speech() -> None:
    info = sf.info(ASSETS / "demo_speech.wav")
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 6.0 <= info.duration <= 9.0
    assert (ASSETS / "demo_speech.txt").read_text().strip()
    assert "flite" in (ASSETS / "LICENSE.md").read_text().lower()


# ------------------------------------------------------------------ mouth tracker


def _jaw_drop(img: np.ndarray, lm: np.ndarray, drop: float) -> np.ndarray:
    """Open the portrait's mouth by ``drop`` px: pull the lower face down, paint the cavity dark."""
    if drop <= 0:
        return img.copy()
    h, w = img.shape[:2]
    cx, cy = (lm[13] + lm[14]) / 2
    mouth_w = float(np.linalg.norm(lm[61] - lm[291]))
    chin_y, face_h = lm[152][1], float(np.linalg.norm(lm[10] - lm[152]))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    wx = np.clip(1 - np.abs(xx - cx) / (0.9 * mouth_w), 0, 1)
    wy = np.clip((yy - cy) / 3, 0, 1) * np.clip((chin_y + 0.25 * face_h - yy) / (0.25 * face_h), 0, 1)
    out = cv2.remap(img, xx, yy - drop * wx * wy, cv2.INTER_LINEAR)
    centre, axes = (int(cx), int(cy + drop / 2)), (int(0.38 * mouth_w), int(drop / 2))
    cv2.ellipse(out, centre, axes, 0, 0, 360, (45, 12, 18), -1, cv2.LINE_AA)
    return out


def test_track_video_sees_the_mouth_open(tmp_path: Path) -> None:
    import mediapipe as mp

    bgr = cv2.imread(str(ASSETS / "astronaut.jpg"))
    # The face fills ~1/5 of the photo; crop and enlarge it so the lips span enough pixels.
    img = cv2.resize(cv2.cvtColor(bgr[40:248, 120:328], cv2.COLOR_BGR2RGB), (384, 384), interpolation=cv2.INTER_CUBIC)
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True) as mesh:
        found = mesh.process(img).multi_face_landmarks
    assert found
    lm = np.array([(p.x * img.shape[1], p.y * img.shape[0]) for p in found[0].landmark])
    face_h = float(np.linalg.norm(lm[10] - lm[152]))
    opening = [0.0] * 8 + [0.03, 0.06, 0.09, 0.12, 0.12, 0.09, 0.06, 0.03] + [0.0] * 8
    path = tmp_path / "open.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=25)
        stream.width, stream.height, stream.pix_fmt = img.shape[1], img.shape[0], "yuv420p"
        for k in opening:
            frame = av.VideoFrame.from_ndarray(_jaw_drop(img, lm, k * face_h), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())

    track = track_video(path)
    assert track.n_frames == len(opening) == len(track.mouth_gap) == len(track.yaw)
    assert track.fps == pytest.approx(25.0) and track.size == (384, 384)
    assert track.face_found.all()
    k = np.array(opening)
    closed, wide = track.mouth_gap[k == 0], track.mouth_gap[k >= 0.09]
    assert wide.min() > closed.max() + 0.02
    r, lag = best_offset_correlation(k, track.mouth_gap, 3)
    assert r > 0.9 and lag == 0
    assert np.all(np.abs(track.yaw) < 10) and np.all(np.abs(track.roll) < 10)
    assert count_blinks(track.eye_open_left, track.fps) == 0


def test_count_blinks_and_offset_correlation() -> None:
    eye = np.full(100, 0.3, np.float32)
    eye[10:13] = 0.05  # a blink
    eye[40] = np.nan  # tracker dropout, not a blink
    eye[60:62] = [0.1, 0.17]  # a blink whose reopening hovers near the threshold
    eye[62] = 0.14
    eye[70:98] = 0.02  # eyes kept shut for over a second: not a blink
    assert count_blinks(eye, fps=25.0) == 2

    rng = np.random.default_rng(0)
    a = rng.standard_normal(200)
    b = np.roll(a, 4) + 0.1 * rng.standard_normal(200)
    r, lag = best_offset_correlation(a, b, 8)
    assert lag == 4 and r > 0.95
