"""Face detection with retries: MediaPipe's face mesh on cheap variants of a portrait.

Tight crops, small faces in large photos, paintings and drawings can defeat face mesh's
built-in detector, so :func:`find_faces` tries, cheapest and most likely first: the image as
it is, padded, face-detector crops of the whole image and of tiles, rescaled, each in three
tones (as is, contrast-equalised, grey). Landmarks come back in source pixels.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from emolive.engine.image_view import ImageView, fit, padded, rescaled, square_crop

MIN_FACE_PX = 48
DETECT_LONG_SIDE = 1024
# How far (fraction of the image) a face mesh may run off the image and still be trusted.
FACE_OVERHANG = 0.02


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


def _clahe(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=3.0, tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _identity(rgb: np.ndarray) -> np.ndarray:
    return rgb


# Colour variants tried, by name: registration re-detects its frame in the one that found the face.
TONES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "original": _identity,
    "clahe": _clahe,
    "grey": _grey,
}


def detect_faces(view: ImageView) -> list[np.ndarray]:
    """Face mesh on ``view`` (shrunk to DETECT_LONG_SIDE); landmarks in source pixels.

    Faces whose mesh runs off the image are dropped: those landmarks are guesses, and a
    padded retry lets the mesh see the whole face."""
    small = fit(view, DETECT_LONG_SIDE)
    h, w = small.image.shape[:2]
    faces = []
    for norm in _MP.mesh(small.image):
        (x0, y0), (x1, y1) = norm[:, :2].min(0), norm[:, :2].max(0)
        if min(x0, y0) >= -FACE_OVERHANG and max(x1, y1) <= 1 + FACE_OVERHANG:
            faces.append(small.to_source(norm * np.array([w, h, w], np.float32)))
    return faces


def _tiles(source: np.ndarray) -> list[ImageView]:
    """Overlapping square tiles half the short side wide: the detectors shrink their input
    to 128-192 px, so a small face in a large photo only shows up in a tile."""
    h, w = source.shape[:2]
    side = min(h, w) // 2
    stride = side // 2

    def starts(extent: int) -> list[int]:
        return sorted({*range(0, extent - side, stride), extent - side})

    return [
        fit(ImageView(source[y : y + side, x : x + side], 1.0, (-x, -y)), DETECT_LONG_SIDE)
        for y in starts(h)
        for x in starts(w)
    ]


def _detector_crop_faces(
    source: np.ndarray, regions: list[ImageView], tone: Callable
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
            crop = square_crop(source, round(cx - side / 2), round(cy - 0.55 * side), side, 512)
            found = detect_faces(ImageView(tone(crop.image), crop.scale, crop.offset))
            if found:
                best = min(found, key=lambda f: np.linalg.norm(landmark_centre(f) - (cx, cy)))
                if not any(landmark_iou(best, f) > 0.5 for f in faces):
                    faces.append(best)
    return faces


def _attempts(source: np.ndarray) -> Iterator[tuple[str, Callable[[], list[np.ndarray]]]]:
    """Detection attempts, cheapest and most likely first, each named for diagnostics."""
    work = fit(ImageView(source), DETECT_LONG_SIDE)
    longest = max(work.image.shape[:2])
    # A tile (half the short side) should fit a MIN_FACE_PX face with room around it.
    tiled = min(source.shape[:2]) // 2 >= 4 * MIN_FACE_PX
    for tone_name, tone in TONES.items():
        toned = ImageView(tone(work.image), work.scale, work.offset)
        yield f"{tone_name}", lambda v=toned: detect_faces(v)
        # Tight crops: the built-in detector wants some context around the face.
        yield f"{tone_name}+pad-edge", lambda v=toned: detect_faces(padded(v, 0.4, True))
        yield f"{tone_name}+pad-grey", lambda v=toned: detect_faces(padded(v, 0.4, False))
        yield f"{tone_name}+detector", lambda t=tone: _detector_crop_faces(source, [work], t)
        if tiled:
            yield f"{tone_name}+tiles", lambda t=tone: _detector_crop_faces(
                source, _tiles(source), t
            )
        if longest < DETECT_LONG_SIDE // 2:
            yield f"{tone_name}+upscale", lambda v=toned: detect_faces(rescaled(v, 2.0))
        yield f"{tone_name}+half", lambda v=toned: detect_faces(rescaled(v, 0.5))


def find_faces(source: np.ndarray) -> tuple[list[np.ndarray], str]:
    """All faces (landmarks in source pixels) from the first attempt that finds any, and
    that attempt's name; ([], "") when none does."""
    for name, attempt in _attempts(source):
        faces = attempt()
        if faces:
            return faces, name
    return [], ""


def landmark_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """x0, y0, x1, y1 of the landmarks, in their pixels."""
    (x0, y0), (x1, y1) = landmarks[:, :2].min(0), landmarks[:, :2].max(0)
    return float(x0), float(y0), float(x1), float(y1)


def landmark_centre(landmarks: np.ndarray) -> np.ndarray:
    """Centre (x, y) of the landmarks' box."""
    x0, y0, x1, y1 = landmark_box(landmarks)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


def landmark_area(landmarks: np.ndarray) -> float:
    """Area of the landmarks' box."""
    x0, y0, x1, y1 = landmark_box(landmarks)
    return (x1 - x0) * (y1 - y0)


def landmark_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two faces' boxes."""
    ax0, ay0, ax1, ay1 = landmark_box(a)
    bx0, by0, bx1, by1 = landmark_box(b)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    return inter / (landmark_area(a) + landmark_area(b) - inter + 1e-9)
