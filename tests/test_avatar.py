"""Portrait loading, face registration and the avatar cache (engine.portrait,
engine.face_detection, engine.framing, engine.avatar).

Every input is built at test time from the bundled astronaut portrait.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from emolive.engine import avatar, face_detection
from emolive.engine.avatar import Avatar, default_cache_dir, register_avatar
from emolive.engine.errors import BadInputError
from emolive.engine.portrait import load_portrait

ASTRONAUT = Path(avatar.__file__).parent / "assets" / "astronaut.jpg"
REPO = Path(__file__).resolve().parents[1]

# MediaPipe face-mesh indices: upper/lower eyelids of both eyes, inner lips.
EYES = [159, 145, 386, 374]
MOUTH = [13, 14]


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test's cache out of ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EMOLIVE_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def astro() -> np.ndarray:
    return load_portrait(ASTRONAUT)


@pytest.fixture(scope="module")
def astro_face(astro: np.ndarray) -> tuple[float, float, float, float]:
    """The astronaut's landmark box in the original 512x512 image."""
    faces, _ = face_detection.find_faces(astro)
    return face_detection.landmark_box(faces[0])


def save(image: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(image).save(path, **kwargs)
    return path


def assert_upright(av: Avatar) -> None:
    lm = av.landmarks
    assert lm[EYES, 1].max() < lm[MOUTH, 1].min(), "eyes must be above the mouth"
    left_eye, right_eye = lm[[159, 145], :2].mean(0), lm[[386, 374], :2].mean(0)
    dx, dy = np.abs(left_eye - right_eye)
    assert dy < 0.3 * dx, "the eyes must be side by side, not stacked"


def assert_head_and_shoulders(av: Avatar, size: int = 512) -> None:
    assert av.image.shape == (size, size, 3) and av.image.dtype == np.uint8
    assert av.landmarks.shape == (478, 3) and av.landmarks.dtype == np.float32
    x0, y0, x1, y1 = av.face_box
    assert (x0, y0) == tuple(np.floor(av.landmarks[:, :2].min(0)).astype(int))
    assert size / 3 <= (x0 + x1) / 2 <= 2 * size / 3, "face centred horizontally"
    assert 0.3 <= (y1 - y0) / size <= 0.5, "face height for a head-and-shoulders frame"
    assert (y0 + y1) / 2 < size / 2, "face above centre, room for the shoulders"
    assert_upright(av)


# ---------------------------------------------------------------------------------------
# The bundled portrait


def test_registers_bundled_portrait(astro: np.ndarray) -> None:
    av = register_avatar(ASTRONAUT)
    assert_head_and_shoulders(av)
    assert av.content_hash == hashlib.sha256(ASTRONAUT.read_bytes()).hexdigest()
    assert av.source == str(ASTRONAUT)
    # z is scaled like x: the face's depth span is a fair fraction of its width.
    width = av.face_box[2] - av.face_box[0]
    assert 0.2 * width < np.ptp(av.landmarks[:, 2]) < 1.2 * width
    # The nose tip sits inside the face box, near its middle.
    nose = av.landmarks[1, :2]
    assert abs(nose[0] - (av.face_box[0] + av.face_box[2]) / 2) < 0.15 * width


def test_keep_framing_keeps_aspect(astro: np.ndarray, tmp_path: Path) -> None:
    wide = cv2.copyMakeBorder(astro, 0, 0, 128, 128, cv2.BORDER_REPLICATE)  # 768 x 512
    av = register_avatar(save(wide, tmp_path / "wide.png"), size=384, keep_framing=True)
    assert av.image.shape == (256, 384, 3)
    x0, y0, x1, y1 = av.face_box
    # The astronaut's face spans x 0.35-0.53 of the original: here shifted by the border.
    assert 0.3 < (x0 + x1) / 2 / 384 < 0.7 and 0 <= x0 < x1 <= 384 and 0 <= y0 < y1 <= 256
    assert_upright(av)


# ---------------------------------------------------------------------------------------
# File formats and loading


def test_exif_orientation_is_applied(astro: np.ndarray, tmp_path: Path) -> None:
    # Orientation 6 = "rotate 90 degrees clockwise to display": store the pixels turned
    # the other way, as a phone held sideways does.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(np.rot90(astro).copy(), tmp_path / "phone.jpg", exif=exif, quality=95)
    loaded = load_portrait(path)
    assert loaded.shape == astro.shape
    assert np.abs(loaded.astype(int) - astro).mean() < 6
    assert_head_and_shoulders(register_avatar(path))


def test_alpha_is_flattened_onto_white(astro: np.ndarray, tmp_path: Path) -> None:
    alpha = np.zeros(astro.shape[:2], np.uint8)
    cv2.ellipse(alpha, (230, 300), (200, 260), 0, 0, 360, 255, -1)
    rgba = np.dstack([np.where(alpha[..., None] > 0, astro, 0), alpha])
    path = save(rgba, tmp_path / "cutout.png")
    loaded = load_portrait(path)
    assert loaded.shape == astro.shape
    assert (loaded[0, 0] == 255).all() and (loaded[-1, -1] == 255).all()
    assert_head_and_shoulders(register_avatar(path))


@pytest.mark.parametrize(
    ("name", "convert", "options"),
    [
        ("grey.png", "L", {}),
        ("palette.png", "P", {}),
        ("cmyk.jpg", "CMYK", {"quality": 95}),
        ("photo.webp", None, {"quality": 90}),
        ("photo.bmp", None, {}),
    ],
)
def test_formats_and_modes(
    astro: np.ndarray, tmp_path: Path, name: str, convert: str | None, options: dict
) -> None:
    image = Image.fromarray(astro)
    (image.convert(convert) if convert else image).save(tmp_path / name, **options)
    loaded = load_portrait(tmp_path / name)
    assert loaded.shape == astro.shape and loaded.dtype == np.uint8
    if convert == "L":
        assert (loaded[..., 0] == loaded[..., 2]).all()
    assert_head_and_shoulders(register_avatar(tmp_path / name))


def test_sixteen_bit_grey_is_rescaled_not_clipped(astro: np.ndarray, tmp_path: Path) -> None:
    grey = cv2.cvtColor(astro, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "deep.png")
    loaded = load_portrait(tmp_path / "deep.png")
    assert np.abs(loaded[..., 0].astype(int) - grey // 257).max() <= 1


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"nowhere\.png: no such file"):
        load_portrait(tmp_path / "nowhere.png")


def test_text_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not a picture\n")
    with pytest.raises(BadInputError, match=r"notes\.png: is not a readable image"):
        register_avatar(path)


def test_truncated_file_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes(ASTRONAUT.read_bytes()[:600])
    with pytest.raises(BadInputError, match=r"cut\.jpg: is not a readable image"):
        load_portrait(path)


def test_tiny_image_is_refused(tmp_path: Path) -> None:
    path = save(np.zeros((1, 1, 3), np.uint8), tmp_path / "dot.png")
    with pytest.raises(BadInputError, match=r"dot\.png: .*too small to hold a face"):
        register_avatar(path)


def test_over_40_megapixels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    Image.new("1", (8000, 5200)).save(path)  # 41.6 MP, a few kB on disk
    with pytest.raises(BadInputError, match=r"huge\.png: image is over 40 megapixels"):
        load_portrait(path)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: what a decompression bomb's
    header looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [7000, 20000])  # under and over Pillow's own bomb limit
def test_size_is_checked_from_the_header(tmp_path: Path, side: int) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(side, side))
    with pytest.raises(BadInputError, match=r"bomb\.png: image is over 40 megapixels"):
        load_portrait(path)


# ---------------------------------------------------------------------------------------
# Hard inputs and the retries


def test_tight_crop_needs_padding(astro: np.ndarray, astro_face, tmp_path: Path) -> None:
    # Upscaled 2x, then cut inside the face: forehead and chin are gone.
    x0, y0, x1, y1 = astro_face
    ix, iy = 0.15 * (x1 - x0), 0.15 * (y1 - y0)
    big = cv2.resize(astro, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    tight = big[int(2 * (y0 + iy)) : int(2 * (y1 - iy)), int(2 * (x0 + ix)) : int(2 * (x1 - ix))]
    _, attempt = face_detection.find_faces(tight)
    assert "pad" in attempt
    # The face runs off the image: the frame holds the whole face, padded around it.
    av = register_avatar(save(tight, tmp_path / "tight.png"))
    assert av.image.shape == (512, 512, 3)
    x0, y0, x1, y1 = av.face_box
    assert 0 < x0 and 0 < y0 and x1 < 512 and y1 < 512
    assert_upright(av)


def painted(astro: np.ndarray) -> np.ndarray:
    bgr = cv2.cvtColor(astro, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(cv2.stylization(bgr, sigma_s=60, sigma_r=0.45), cv2.COLOR_BGR2RGB)


def sketched(astro: np.ndarray) -> np.ndarray:
    bgr = cv2.cvtColor(astro, cv2.COLOR_RGB2BGR)
    _, colour = cv2.pencilSketch(bgr, sigma_s=60, sigma_r=0.07, shade_factor=0.05)
    return cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)


def posterised(astro: np.ndarray) -> np.ndarray:
    poster = (astro // 64) * 64 + 32
    poster[cv2.Canny(astro, 100, 200) > 0] = 0
    return poster


@pytest.mark.parametrize("make", [painted, sketched, posterised])
def test_paintings_and_drawings_register(astro: np.ndarray, tmp_path: Path, make) -> None:
    av = register_avatar(save(make(astro), tmp_path / f"{make.__name__}.png"))
    assert_head_and_shoulders(av)


def test_washed_out_photo_needs_contrast(astro: np.ndarray, tmp_path: Path) -> None:
    faded = (astro * 0.03 + 128 * 0.97).astype(np.uint8)  # 8 grey levels in all
    _, attempt = face_detection.find_faces(faded)
    assert attempt.startswith("clahe")
    assert_head_and_shoulders(register_avatar(save(faded, tmp_path / "faded.png")))


def two_faces(astro: np.ndarray) -> np.ndarray:
    canvas = np.full((512, 900, 3), 200, np.uint8)
    canvas[:, :512] = astro
    small = cv2.resize(astro, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    canvas[100 : 100 + small.shape[0], 560 : 560 + small.shape[1]] = small
    return canvas


def test_largest_of_several_faces_is_used(astro: np.ndarray, tmp_path: Path) -> None:
    warnings: list[str] = []
    path = save(two_faces(astro), tmp_path / "pair.png")
    av = register_avatar(path, warn=warnings.append)
    assert warnings == ["pair.png: 2 faces found, using the largest"]
    assert_head_and_shoulders(av)
    # The big face's crop is the same frame the astronaut alone gives.
    alone = register_avatar(ASTRONAUT)
    assert np.abs(av.image.astype(int) - alone.image).mean() < 12


def test_warnings_go_to_stderr_by_default(
    astro: np.ndarray, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    register_avatar(save(two_faces(astro), tmp_path / "pair.png"))
    assert "pair.png: 2 faces found, using the largest" in capsys.readouterr().err


def test_small_face_in_a_large_photo(astro: np.ndarray, tmp_path: Path) -> None:
    # The detectors shrink their whole input to 128-192 px; only tiles find this face.
    canvas = np.full((2000, 3000, 3), 90, np.uint8)
    canvas[700:1212, 1200:1712] = astro
    assert_head_and_shoulders(register_avatar(save(canvas, tmp_path / "wide.jpg")))


@pytest.mark.parametrize("kind", ["gradient", "noise"])
def test_no_face(tmp_path: Path, kind: str) -> None:
    if kind == "gradient":
        ramp = np.linspace(0, 255, 512, dtype=np.float32)
        image = np.dstack([np.tile(ramp, (512, 1))] * 3).astype(np.uint8)
    else:
        image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    path = save(image, tmp_path / f"{kind}.png")
    with pytest.raises(BadInputError, match=rf"^{kind}\.png: no face found$"):
        register_avatar(path)


def test_face_too_small_for_the_frame(astro: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match=r"astronaut\.jpg: the face is only \d+ px tall"):
        register_avatar(ASTRONAUT, size=96)


# ---------------------------------------------------------------------------------------
# Cache


def test_cache_hit_skips_detection(
    astro: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _cache_in_tmp: Path
) -> None:
    first = register_avatar(ASTRONAUT)
    entries = list((_cache_in_tmp / "avatars").glob("*.npz"))
    assert len(entries) == 1 and not list((_cache_in_tmp / "avatars").glob("*.tmp"))

    def no_detection(*_args, **_kwargs):
        raise AssertionError("detection ran on a cache hit")

    monkeypatch.setattr(avatar, "find_faces", no_detection)
    monkeypatch.setattr(face_detection._MP, "mesh", no_detection)
    # The same bytes under another name are the same avatar.
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(ASTRONAUT.read_bytes())
    second = register_avatar(copy)
    assert np.array_equal(first.image, second.image)
    assert np.array_equal(first.landmarks, second.landmarks)
    assert first.face_box == second.face_box and first.content_hash == second.content_hash
    assert second.source == str(copy)
    # Another size is another entry: it must detect.
    with pytest.raises(AssertionError, match="detection ran"):
        register_avatar(ASTRONAUT, size=256)


def test_corrupt_cache_is_rebuilt(_cache_in_tmp: Path) -> None:
    first = register_avatar(ASTRONAUT)
    (entry,) = (_cache_in_tmp / "avatars").glob("*.npz")
    entry.write_bytes(b"PK\x03\x04 garbage")
    again = register_avatar(ASTRONAUT)
    assert np.array_equal(first.landmarks, again.landmarks)
    with np.load(entry, allow_pickle=False) as z:
        assert z["image"].shape == (512, 512, 3)


def test_explicit_cache_dir(tmp_path: Path, _cache_in_tmp: Path) -> None:
    register_avatar(ASTRONAUT, cache_dir=tmp_path / "elsewhere")
    assert len(list((tmp_path / "elsewhere" / "avatars").glob("*.npz"))) == 1
    assert not _cache_in_tmp.exists()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMOLIVE_CACHE_DIR", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EMOLIVE_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "emolive"


# ---------------------------------------------------------------------------------------
# Process-level behaviour


def test_concurrent_registrations(astro: np.ndarray, tmp_path: Path) -> None:
    paths = [save(np.roll(astro, 8 * i, axis=1), tmp_path / f"p{i}.png") for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        avatars = list(pool.map(register_avatar, paths))
    for av in avatars:
        assert_head_and_shoulders(av)


def test_mediapipe_keeps_quiet(tmp_path: Path) -> None:
    code = (
        "from engine.avatar import register_avatar; "
        f"register_avatar({str(ASTRONAUT)!r}, cache_dir={str(tmp_path)!r})"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
