"""Portrait loading, face registration and the on-disk avatar cache.

``register_avatar`` turns a portrait file into an :class:`Avatar`: an upright RGB frame
(by default a square head-and-shoulders crop) with MediaPipe's 478 face-mesh landmarks in
that frame's pixels. Detection retries a few cheap variants of the image (padding,
face-detector crops of the whole image and of tiles, rescaling, contrast) because tight
crops, small faces in large photos, paintings and drawings can defeat face mesh's
built-in detector. Results are cached by the file's content hash, so a
portrait is detected once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import io
import math
import os
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from engine.errors import BadInputError

CACHE_VERSION = 3
MAX_PIXELS = 40_000_000
# Larger portraits are shrunk to this long side as they are decoded: the engine's frames are
# at most 1024 px, so more pixels only cost memory (a 40 MP RGB image is 120 MB per copy).
WORK_LONG_SIDE = 4096
MAX_FILE_BYTES = 256 * 1024 * 1024
MIN_IMAGE_SIDE = 64
MIN_FACE_PX = 48
DETECT_LONG_SIDE = 1024
NUM_LANDMARKS = 478
# How far (fraction of the image) a face mesh may run off the image and still be trusted.
FACE_OVERHANG = 0.02

# Head-and-shoulders framing: crop side over face height, and where the face centre sits.
CROP_FACE_RATIO = 2.6
CROP_FACE_CENTRE_Y = 0.42
# Room kept above the face mesh (which ends at the upper forehead) for the hair, as a fraction
# of the face height, when a tight image forces a smaller square.
CROP_HAIR_ROOM = 0.45
# Room kept below the chin and beside the cheeks (fractions of the face's height and width).
CROP_CHIN_ROOM = 0.06
CROP_SIDE_ROOM = 0.05

# Only these decoders run: Pillow's others (EPS, PSD, ...) are attack surface we don't need.
# Phones' multi-picture JPEGs (MPO) come in through the JPEG decoder.
_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
_GREY = (128, 128, 128)
# Portraits over WORK_LONG_SIDE are decoded one at a time: each holds its full-size pixels
# until shrunk, and concurrent decodes (uploads, rigs built at new sizes) would add up.
_BIG_DECODE = threading.Lock()

Warn = Callable[[str], None]


@dataclass
class Avatar:
    """A registered portrait: the frame the renderer animates and its face landmarks."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    landmarks: np.ndarray  # (478, 3) float32: x, y in pixels of `image`, z scaled like x
    face_box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the landmarks in `image`
    content_hash: str  # sha256 of the source file bytes
    source: str  # path of the source file


def default_cache_dir() -> Path:
    """The engine's cache root: ``$EMOLIVE_CACHE_DIR`` or ``~/.cache/emolive``."""
    env = os.environ.get("EMOLIVE_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "emolive"


# ---------------------------------------------------------------------------------------
# Loading


def load_portrait(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as upright RGB uint8; raise BadInputError if it cannot be used."""
    return _decode(_read_bytes(Path(path)), Path(path).name)


def _read_bytes(path: Path) -> bytes:
    name = path.name
    if not path.is_file():
        raise BadInputError(f"{name}: no such file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise BadInputError(f"{name}: file is larger than {MAX_FILE_BYTES >> 20} MB")
    return path.read_bytes()


def _decode(data: bytes, name: str) -> np.ndarray:
    # Pillow's bomb guard fires (as a warning, then an error) only far above our limit,
    # but a file that trips it is a file we refuse for the same reason.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_FORMATS) as im:
                _check_header(im.size, name)  # Image.open read only the header
                if max(im.size) <= WORK_LONG_SIDE:
                    rgb = _to_rgb(ImageOps.exif_transpose(im))
                else:
                    with _BIG_DECODE:
                        small = _shrunk(im)
                        im.close()  # drops the full-size pixels now, not at the end of the block
                        rgb = _to_rgb(ImageOps.exif_transpose(small))
                    del small
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadInputError(f"{name}: image is over {MAX_PIXELS // 1_000_000} megapixels")
        except BadInputError:
            raise
        except Exception:  # any decoder failure means the same thing to the user
            raise BadInputError(
                f"{name}: is not a readable image (PNG, JPEG, WebP or BMP)"
            ) from None
    return rgb


def _check_header(size: tuple[int, int], name: str) -> None:
    """Refuse by header size, before any pixel is decoded."""
    w, h = size
    if w * h > MAX_PIXELS:
        raise BadInputError(
            f"{name}: image is over {MAX_PIXELS // 1_000_000} megapixels ({w}x{h})"
        )
    if min(w, h) < MIN_IMAGE_SIDE:
        raise BadInputError(f"{name}: image is too small to hold a face ({w}x{h})")


def _shrunk(im: Image.Image) -> Image.Image:
    """A new image: ``im`` decoded with its long side at most WORK_LONG_SIDE, averaging
    blocks of pixels. JPEGs decode at a reduced scale (Pillow's draft mode); other formats
    decode at full size, and the caller closes ``im`` to free those pixels."""
    factor = math.ceil(max(im.size) / WORK_LONG_SIDE)
    im.draft(None, (im.width // factor, im.height // factor))
    if im.mode in ("1", "P"):  # Pillow cannot average palette indices
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    elif im.mode.startswith("I;16"):  # nor reduce 16-bit greys
        im = im.convert("I")
    return im.reduce(math.ceil(max(im.size) / WORK_LONG_SIDE))


def _release_freed_memory() -> None:
    """Hand the heap freed by a registration back to the OS: glibc keeps freed memory for
    reuse, and a server's resident size would stay near its peak after a big portrait."""
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc only
        trim(0)


def _to_rgb(im: Image.Image) -> np.ndarray:
    """Any Pillow mode -> RGB uint8, alpha flattened onto white."""
    if im.mode.startswith("I") or im.mode == "F":
        # Pillow's own conversion clips 16-bit values at 255 instead of rescaling them.
        grey = np.asarray(im, dtype=np.float32)
        if im.mode.startswith("I;16") or grey.max() > 255:
            grey = grey / 257.0
        grey = np.clip(grey, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


# ---------------------------------------------------------------------------------------
# MediaPipe, created once per process


class _MediaPipe:
    """Face mesh and both face detectors, built on first use and shared under one lock
    (the solution objects are not thread-safe, and building them costs ~100 ms)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mesh = None
        self._detectors: tuple = ()

    def _ensure(self) -> None:
        if self._mesh is not None:
            return
        # MediaPipe logs only while its graphs start and run for the first time; the
        # GLOG/absl settings do not reach those C++ threads, so mute fd 2 for that once.
        with _muted_stderr():
            import mediapipe as mp

            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, refine_landmarks=True, max_num_faces=4
            )
            self._detectors = tuple(
                mp.solutions.face_detection.FaceDetection(model_selection=m) for m in (0, 1)
            )
            warm = cv2.cvtColor(cv2.imread(str(_WARMUP_IMAGE)), cv2.COLOR_BGR2RGB)
            self._mesh.process(warm)
            for det in self._detectors:
                det.process(warm)

    def mesh(self, rgb: np.ndarray) -> list[np.ndarray]:
        """All faces' normalised landmarks, each (478, 3)."""
        with self._lock:
            self._ensure()
            result = self._mesh.process(np.ascontiguousarray(rgb))
        faces = result.multi_face_landmarks or []
        return [np.array([(p.x, p.y, p.z) for p in f.landmark], np.float32) for f in faces]

    def detect(self, rgb: np.ndarray) -> list[tuple[float, float, float, float]]:
        """Face boxes (x, y, w, h, normalised) from the short- and full-range detectors."""
        boxes = []
        with self._lock:
            self._ensure()
            results = [det.process(np.ascontiguousarray(rgb)) for det in self._detectors]
        for result in results:
            for d in result.detections or []:
                b = d.location_data.relative_bounding_box
                boxes.append((b.xmin, b.ymin, b.width, b.height))
        return boxes


_WARMUP_IMAGE = Path(__file__).parent / "assets" / "astronaut.jpg"
_MP = _MediaPipe()


@contextmanager
def _muted_stderr() -> Iterator[None]:
    """Point fd 2 at /dev/null (other threads' stderr is lost meanwhile: keep it short)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


# ---------------------------------------------------------------------------------------
# Views: an image derived from the source by a scale and an offset


@dataclass(frozen=True)
class _View:
    """``image`` shows the source so that source pixel p lands at ``p * scale + offset``."""

    image: np.ndarray
    scale: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)

    def to_source(self, landmarks_px: np.ndarray) -> np.ndarray:
        out = landmarks_px.copy()
        out[:, 0] = (out[:, 0] - self.offset[0]) / self.scale
        out[:, 1] = (out[:, 1] - self.offset[1]) / self.scale
        out[:, 2] /= self.scale
        return out

    def to_view(self, landmarks_src: np.ndarray) -> np.ndarray:
        out = landmarks_src.copy()
        out[:, 0] = out[:, 0] * self.scale + self.offset[0]
        out[:, 1] = out[:, 1] * self.scale + self.offset[1]
        out[:, 2] *= self.scale
        return out


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    )


def _rescaled(view: _View, factor: float) -> _View:
    h, w = view.image.shape[:2]
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    fx, fy = nw / w, nh / h  # differ by under a pixel's worth: fx stands for both
    image = _resize(view.image, nw, nh)
    return _View(image, view.scale * fx, (view.offset[0] * fx, view.offset[1] * fy))


def _fit(view: _View, long_side: int) -> _View:
    """Shrink so the long side is at most ``long_side``."""
    longest = max(view.image.shape[:2])
    return view if longest <= long_side else _rescaled(view, long_side / longest)


def _padded(view: _View, fraction: float, replicate: bool) -> _View:
    h, w = view.image.shape[:2]
    px, py = round(w * fraction), round(h * fraction)
    if replicate:
        image = cv2.copyMakeBorder(view.image, py, py, px, px, cv2.BORDER_REPLICATE)
    else:
        image = cv2.copyMakeBorder(view.image, py, py, px, px, cv2.BORDER_CONSTANT, value=_GREY)
    return _View(image, view.scale, (view.offset[0] + px, view.offset[1] + py))


def _square_crop(source: np.ndarray, x0: int, y0: int, side: int, out: int) -> _View:
    """The square [x0, x0+side) x [y0, y0+side) of ``source`` at ``out`` px, with a soft fill
    (:func:`_soft_fill`) where it leaves the image."""
    h, w = source.shape[:2]
    cx0, cy0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    cx1, cy1 = max(min(x0 + side, w), cx0 + 1), max(min(y0 + side, h), cy0 + 1)
    inside = source[cy0:cy1, cx0:cx1]
    pads = (cy0 - y0, y0 + side - cy1, cx0 - x0, x0 + side - cx1)
    if any(p > 0 for p in pads):
        inside = _soft_fill(inside, tuple(max(p, 0) for p in pads))
    scale = out / side
    return _View(_resize(inside, out, out), scale, (-x0 * scale, -y0 * scale))


def _soft_fill(image: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    """``image`` grown by ``pads`` (top, bottom, left, right): mirrored, then blurred more with
    the distance from the image, which stays as it is. Replicated edges would show as streaks."""
    top, bottom, left, right = pads
    mirrored = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_REFLECT_101)
    h, w = mirrored.shape[:2]
    sigma = max(h, w) / 40
    blurred = cv2.GaussianBlur(mirrored, (0, 0), sigma)
    outside = np.full((h, w), 255, np.uint8)
    outside[top : h - bottom, left : w - right] = 0
    distance = cv2.distanceTransform(outside, cv2.DIST_L2, 3)
    sharp = np.clip(1.0 - distance / (2 * sigma), 0.0, 1.0)[..., None]
    return np.round(sharp * mirrored + (1.0 - sharp) * blurred).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Detection with retries


def _clahe(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _identity(rgb: np.ndarray) -> np.ndarray:
    return rgb


_TONES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "original": _identity,
    "clahe": _clahe,
    "grey": _grey,
}


def _detect_faces(view: _View) -> list[np.ndarray]:
    """Face mesh on ``view`` (shrunk to DETECT_LONG_SIDE); landmarks in source pixels.

    Faces whose mesh runs off the image are dropped: those landmarks are guesses, and a
    padded retry lets the mesh see the whole face."""
    small = _fit(view, DETECT_LONG_SIDE)
    h, w = small.image.shape[:2]
    faces = []
    for norm in _MP.mesh(small.image):
        (x0, y0), (x1, y1) = norm[:, :2].min(0), norm[:, :2].max(0)
        if min(x0, y0) >= -FACE_OVERHANG and max(x1, y1) <= 1 + FACE_OVERHANG:
            faces.append(small.to_source(norm * np.array([w, h, w], np.float32)))
    return faces


def _tiles(source: np.ndarray) -> list[_View]:
    """Overlapping square tiles half the short side wide: the detectors shrink their input
    to 128-192 px, so a small face in a large photo only shows up in a tile."""
    h, w = source.shape[:2]
    side = min(h, w) // 2
    stride = side // 2

    def starts(extent: int) -> list[int]:
        return sorted({*range(0, extent - side, stride), extent - side})

    return [
        _fit(_View(source[y : y + side, x : x + side], 1.0, (-x, -y)), DETECT_LONG_SIDE)
        for y in starts(h)
        for x in starts(w)
    ]


def _detector_crop_faces(
    source: np.ndarray, regions: list[_View], tone: Callable
) -> list[np.ndarray]:
    """Face-detector boxes found in ``regions`` -> face mesh on a generous square crop
    around each box."""
    faces: list[np.ndarray] = []
    for region in regions:
        h, w = region.image.shape[:2]
        for bx, by, bw, bh in _MP.detect(tone(region.image)):
            # The box's size rides in the z column, which maps to the source like a length.
            box_px = np.array([[(bx + bw / 2) * w, (by + bh / 2) * h, max(bw * w, bh * h)]])
            cx, cy, extent = region.to_source(box_px)[0]
            # The detector's box stops at the brows: leave more room above than below.
            side = round(2.2 * extent)
            crop = _square_crop(source, round(cx - side / 2), round(cy - 0.55 * side), side, 512)
            found = _detect_faces(_View(tone(crop.image), crop.scale, crop.offset))
            if found:
                best = min(found, key=lambda f: np.linalg.norm(_centre(f) - (cx, cy)))
                if not any(_iou(best, f) > 0.5 for f in faces):
                    faces.append(best)
    return faces


def _attempts(source: np.ndarray) -> Iterator[tuple[str, Callable[[], list[np.ndarray]]]]:
    """Detection attempts, cheapest and most likely first, each named for diagnostics."""
    work = _fit(_View(source), DETECT_LONG_SIDE)
    longest = max(work.image.shape[:2])
    # A tile (half the short side) should fit a MIN_FACE_PX face with room around it.
    tiled = min(source.shape[:2]) // 2 >= 4 * MIN_FACE_PX
    for tone_name, tone in _TONES.items():
        toned = _View(tone(work.image), work.scale, work.offset)
        yield f"{tone_name}", lambda v=toned: _detect_faces(v)
        # Tight crops: the built-in detector wants some context around the face.
        yield f"{tone_name}+pad-edge", lambda v=toned: _detect_faces(_padded(v, 0.4, True))
        yield f"{tone_name}+pad-grey", lambda v=toned: _detect_faces(_padded(v, 0.4, False))
        yield f"{tone_name}+detector", lambda t=tone: _detector_crop_faces(source, [work], t)
        if tiled:
            yield f"{tone_name}+tiles", lambda t=tone: _detector_crop_faces(
                source, _tiles(source), t
            )
        if longest < DETECT_LONG_SIDE // 2:
            yield f"{tone_name}+upscale", lambda v=toned: _detect_faces(_rescaled(v, 2.0))
        yield f"{tone_name}+half", lambda v=toned: _detect_faces(_rescaled(v, 0.5))


def _find_faces(source: np.ndarray) -> tuple[list[np.ndarray], str]:
    """All faces (landmarks in source pixels) from the first attempt that finds any, and
    that attempt's name; ([], "") when none does."""
    for name, attempt in _attempts(source):
        faces = attempt()
        if faces:
            return faces, name
    return [], ""


def _box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    (x0, y0), (x1, y1) = landmarks[:, :2].min(0), landmarks[:, :2].max(0)
    return float(x0), float(y0), float(x1), float(y1)


def _centre(landmarks: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = _box(landmarks)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def _area(landmarks: np.ndarray) -> float:
    x0, y0, x1, y1 = _box(landmarks)
    return (x1 - x0) * (y1 - y0)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ax0, ay0, ax1, ay1 = _box(a)
    bx0, by0, bx1, by1 = _box(b)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    return inter / (_area(a) + _area(b) - inter + 1e-9)


# ---------------------------------------------------------------------------------------
# Framing


def _head_and_shoulders(source: np.ndarray, face: np.ndarray, size: int) -> _View:
    """Square crop around the face with room for the shoulders, inside the image.

    Where that square does not fit (a selfie, a tight headshot), the largest square that does,
    placed to keep the whole face, then as much hair above it as fits: replicated or made-up
    pixels show as streaks once the head moves. Only a face the image cannot hold in a square
    (cut off by the image, or a narrow image) gets a square around the head with a soft fill
    where it leaves the image."""
    h, w = source.shape[:2]
    x0, y0, x1, y1 = _box(face)
    face_w, face_h = x1 - x0, y1 - y0
    side = max(1, round(CROP_FACE_RATIO * face_h))
    left = (x0 + x1) / 2 - side / 2
    top = (y0 + y1) / 2 - CROP_FACE_CENTRE_Y * side
    fits = min(w, h) >= max(face_h * (1 + CROP_CHIN_ROOM), face_w * (1 + 2 * CROP_SIDE_ROOM))
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h and fits:
        side = min(side, w, h)
        left = float(np.clip((x0 + x1) / 2 - side / 2, 0, w - side))
        below_chin = y1 + CROP_CHIN_ROOM * face_h - side  # the highest top that still shows the chin
        top = max(min((y0 + y1) / 2 - CROP_FACE_CENTRE_Y * side, y0 - CROP_HAIR_ROOM * face_h), below_chin)
        top = float(np.clip(top, 0, h - side))
    elif side < max(face_h * (1 + CROP_HAIR_ROOM + CROP_CHIN_ROOM), face_w * (1 + 2 * CROP_SIDE_ROOM)):
        side = round(max(face_h * (1 + CROP_HAIR_ROOM + CROP_CHIN_ROOM), face_w * (1 + 2 * CROP_SIDE_ROOM)))
        left = (x0 + x1) / 2 - side / 2
        top = y0 - CROP_HAIR_ROOM * face_h
    return _square_crop(source, round(left), round(top), side, size)


def _whole_image(source: np.ndarray, size: int) -> _View:
    return _rescaled(_View(source), size / max(source.shape[:2]))


def _refine(frame: _View, expected: np.ndarray, tone: Callable) -> np.ndarray:
    """Landmarks re-detected on the final frame (nearest the expected face), or the
    first pass's landmarks mapped into it when the second run misses."""
    found = _detect_faces(_View(tone(frame.image)))
    if not found:
        return expected
    near = min(found, key=lambda f: np.linalg.norm(_centre(f) - _centre(expected)))
    return near if _iou(near, expected) > 0.3 else expected


def _face_box(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = _box(landmarks)
    h, w = shape[:2]
    return (
        int(np.clip(np.floor(x0), 0, w)),
        int(np.clip(np.floor(y0), 0, h)),
        int(np.clip(np.ceil(x1), 0, w)),
        int(np.clip(np.ceil(y1), 0, h)),
    )


# ---------------------------------------------------------------------------------------
# Cache


def _cache_path(cache_dir: Path, content_hash: str, size: int, keep_framing: bool) -> Path:
    key = hashlib.sha256(
        f"{content_hash}:{size}:{int(keep_framing)}:{CACHE_VERSION}".encode()
    ).hexdigest()
    return cache_dir / "avatars" / f"{key}.npz"


def _load_cached(path: Path, content_hash: str, source: str) -> Avatar | None:
    """The cached avatar, or None if absent, stale or unreadable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            image, landmarks, box = z["image"], z["landmarks"], z["face_box"]
            version, stored_hash = int(z["cache_version"]), str(z["content_hash"])
    except Exception:  # a missing or corrupt entry is just a miss
        return None
    valid = (
        version == CACHE_VERSION
        and stored_hash == content_hash
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and landmarks.shape == (NUM_LANDMARKS, 3)
        and box.shape == (4,)
    )
    if not valid:
        return None
    return Avatar(
        image=image,
        landmarks=landmarks.astype(np.float32),
        face_box=tuple(int(v) for v in box),
        content_hash=content_hash,
        source=source,
    )


def _store(path: Path, avatar: Avatar) -> None:
    """Write atomically, so a crash or a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                image=avatar.image,
                landmarks=avatar.landmarks,
                face_box=np.array(avatar.face_box, np.int32),
                content_hash=np.array(avatar.content_hash),
                source=np.array(avatar.source),
                cache_version=np.array(CACHE_VERSION),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# Registration


def _print_warning(message: str) -> None:
    print(message, file=sys.stderr)


def register_avatar(
    path: str | os.PathLike,
    size: int = 512,
    keep_framing: bool = False,
    cache_dir: str | os.PathLike | None = None,
    warn: Warn | None = None,
) -> Avatar:
    """Load a portrait, find its face and frame it; served from the cache when possible.

    ``size`` is the side of the square crop, or the long side with ``keep_framing``.
    ``cache_dir`` is the cache root (default :func:`default_cache_dir`); entries live in
    its ``avatars/`` folder. ``warn`` receives one-line notices (default: stderr).
    """
    if size < MIN_IMAGE_SIDE:
        raise ValueError(f"size must be at least {MIN_IMAGE_SIDE}, got {size}")
    warn = warn or _print_warning
    path = Path(path)
    data = _read_bytes(path)
    content_hash = hashlib.sha256(data).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = _cache_path(root, content_hash, size, keep_framing)
    cached = _load_cached(entry, content_hash, str(path))
    if cached is not None:
        return cached

    try:
        avatar = _register(_decode(data, path.name), path, content_hash, size, keep_framing, warn)
    except BadInputError as error:
        traceback.clear_frames(error.__traceback__)  # its frames would keep the decoded image alive
        raise
    finally:
        _release_freed_memory()
    try:
        _store(entry, avatar)
    except OSError as e:
        warn(f"{path.name}: could not write the avatar cache ({e.strerror or e})")
    return avatar


def _register(
    source: np.ndarray, path: Path, content_hash: str, size: int, keep_framing: bool, warn: Warn
) -> Avatar:
    faces, attempt = _find_faces(source)
    if not faces:
        raise BadInputError(f"{path.name}: no face found")
    face = max(faces, key=_area)
    if len(faces) > 1:
        warn(f"{path.name}: {len(faces)} faces found, using the largest")

    frame = _whole_image(source, size) if keep_framing else _head_and_shoulders(source, face, size)
    tone = _TONES[attempt.split("+")[0]]
    landmarks = _refine(frame, frame.to_view(face), tone).astype(np.float32)
    box = _face_box(landmarks, frame.image.shape)
    if box[3] - box[1] < MIN_FACE_PX:
        raise BadInputError(
            f"{path.name}: the face is only {box[3] - box[1]} px tall at this size "
            f"(need {MIN_FACE_PX}); use a closer portrait"
        )
    return Avatar(
        image=np.ascontiguousarray(frame.image),
        landmarks=landmarks,
        face_box=box,
        content_hash=content_hash,
        source=str(path),
    )
