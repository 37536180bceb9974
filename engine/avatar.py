"""Face registration and the on-disk avatar cache.

``register_avatar`` turns a portrait file into an :class:`Avatar`: an upright RGB frame
(by default a square head-and-shoulders crop) with MediaPipe's 478 face-mesh landmarks in
that frame's pixels. The file is read by :mod:`emolive.engine.portrait`, its faces found by
:mod:`emolive.engine.face_detection` and the frame cut by :mod:`emolive.engine.framing`. Results are cached
by the file's content hash, so a portrait is detected once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emolive.engine.errors import BadInputError
from emolive.engine.face_detection import MIN_FACE_PX, TONES, find_faces, landmark_area, landmark_box
from emolive.engine.formats import FRAME_SIZE
from emolive.engine.framing import head_and_shoulders, refine, whole_image
from emolive.engine.portrait import MIN_IMAGE_SIDE, decode_portrait, read_portrait

CACHE_VERSION = 3
NUM_LANDMARKS = 478

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
    size: int = FRAME_SIZE,
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
    data = read_portrait(path)
    content_hash = hashlib.sha256(data).hexdigest()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    entry = _cache_path(root, content_hash, size, keep_framing)
    cached = _load_cached(entry, content_hash, str(path))
    if cached is not None:
        return cached

    try:
        avatar = _register(decode_portrait(data, path.name), path, content_hash, size, keep_framing, warn)
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
    faces, attempt = find_faces(source)
    if not faces:
        raise BadInputError(f"{path.name}: no face found")
    face = max(faces, key=landmark_area)
    if len(faces) > 1:
        warn(f"{path.name}: {len(faces)} faces found, using the largest")

    frame = whole_image(source, size) if keep_framing else head_and_shoulders(source, face, size)
    tone = TONES[attempt.split("+")[0]]
    landmarks = refine(frame, frame.to_view(face), tone).astype(np.float32)
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


def _release_freed_memory() -> None:
    """Hand the heap freed by a registration back to the OS: glibc keeps freed memory for
    reuse, and a server's resident size would stay near its peak after a big portrait."""
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc only
        trim(0)


def _face_box(landmarks: np.ndarray, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """The landmarks' box in whole pixels, clipped to an image of ``shape``."""
    x0, y0, x1, y1 = landmark_box(landmarks)
    h, w = shape[:2]
    return (
        int(np.clip(np.floor(x0), 0, w)),
        int(np.clip(np.floor(y0), 0, h)),
        int(np.clip(np.ceil(x1), 0, w)),
        int(np.clip(np.ceil(y1), 0, h)),
    )
