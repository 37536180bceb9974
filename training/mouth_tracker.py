"""An independent face tracker for rendered videos: what a viewer would measure.

It shares nothing with the engine's avatar code on purpose: it decodes the encoded video
(PyAV) and runs MediaPipe FaceMesh in tracking mode on every frame, so a bug in the
renderer's own bookkeeping cannot hide from it. Per frame it reports

- ``mouth_gap``: inner-lip distance (landmarks 13-14) / face height (10-152);
- ``eye_open_left`` / ``eye_open_right``: lid distance / eye width for the eye on the
  image's left (159-145 / 33-133, the subject's right eye) and on its right
  (386-374 / 362-263, the subject's left eye);
- ``yaw``, ``pitch``, ``roll`` in degrees from the 3D landmarks (x, y in pixels, MediaPipe's
  z at the same scale as x): yaw > 0 when the face turns toward the image's right, pitch > 0
  when the chin lifts, roll > 0 when the face turns clockwise in the image. They read within a
  few degrees of zero for a frontal portrait; compare them between frames rather than
  trusting them as exact angles.

Frames without a face are NaN in every array.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

__all__ = ["VideoTrack", "track_video", "track_frames", "count_blinks", "best_offset_correlation"]

# Symmetric pairs (image-left point, image-right point) that define the face's left-right
# axis; several pairs average out the noise of any one landmark.
_LR_PAIRS = ((33, 263), (133, 362), (234, 454), (61, 291), (127, 356))
_FOREHEAD, _CHIN = 10, 152
# Eye corners: with the chin they span the face's up-down axis; the forehead (10) slopes
# back and would read a frontal face as ~9 degrees chin-down.
_EYE_CORNERS = [33, 133, 362, 263]


@dataclass
class VideoTrack:
    """Per-frame measurements of one video (float32 arrays of length ``n_frames``)."""

    mouth_gap: np.ndarray
    eye_open_left: np.ndarray
    eye_open_right: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    fps: float
    n_frames: int
    size: tuple[int, int]  # (width, height)

    @property
    def face_found(self) -> np.ndarray:
        """True on frames where a face was tracked."""
        return ~np.isnan(self.mouth_gap)


def track_video(path: str | Path) -> VideoTrack:
    """Decode the first video stream of ``path`` and track every frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 25.0
        frames = (frame.to_ndarray(format="rgb24") for frame in container.decode(stream))
        return track_frames(frames, fps=fps)


def track_frames(frames: Iterable[np.ndarray], fps: float = 25.0) -> VideoTrack:
    """Track in-memory RGB uint8 frames (H x W x 3) with FaceMesh in video mode."""
    import mediapipe as mp  # imported late: it is slow to load and only the tracker needs it

    rows: list[tuple[float, ...]] = []
    size = (0, 0)
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=False, refine_landmarks=True, max_num_faces=1,
        min_detection_confidence=0.5, min_tracking_confidence=0.5,
    ) as mesh:
        for rgb in _checked(frames):
            h, w = rgb.shape[:2]
            size = (w, h)
            result = mesh.process(rgb)
            if not result.multi_face_landmarks:
                rows.append((np.nan,) * 6)
                continue
            lm = result.multi_face_landmarks[0].landmark
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lm], np.float64)
            rows.append(_measure(pts))
    table = np.array(rows, np.float32).reshape(-1, 6)
    return VideoTrack(
        mouth_gap=table[:, 0], eye_open_left=table[:, 1], eye_open_right=table[:, 2],
        yaw=table[:, 3], pitch=table[:, 4], roll=table[:, 5],
        fps=float(fps), n_frames=len(table), size=size,
    )


def _checked(frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for rgb in frames:
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"track_frames: expected H x W x 3 uint8 RGB, got {rgb.shape} {rgb.dtype}")
        yield np.ascontiguousarray(rgb)


def _dist(pts: np.ndarray, i: int, j: int) -> float:
    return float(np.linalg.norm(pts[i, :2] - pts[j, :2]))


def _measure(pts: np.ndarray) -> tuple[float, ...]:
    """(mouth_gap, eye_open_left, eye_open_right, yaw, pitch, roll) from 478 landmarks."""
    face_h = _dist(pts, _FOREHEAD, _CHIN)
    mouth = _dist(pts, 13, 14) / face_h
    eye_l = _dist(pts, 159, 145) / _dist(pts, 33, 133)
    eye_r = _dist(pts, 386, 374) / _dist(pts, 362, 263)
    # Face axes in camera space (x right, y down, z into the screen); a frontal face gives
    # the identity. ex: image-left to image-right; ey: eyes to chin, made orthogonal.
    ex = sum(pts[r] - pts[l] for l, r in _LR_PAIRS)
    ex /= np.linalg.norm(ex)
    ey = pts[_CHIN] - pts[_EYE_CORNERS].mean(axis=0)
    ey -= ey.dot(ex) * ex
    ey /= np.linalg.norm(ey)
    ez = np.cross(ex, ey)  # from the face toward the back of the head
    yaw = np.degrees(np.arctan2(-ez[0], ez[2]))
    pitch = np.degrees(np.arctan2(ez[1], np.hypot(ez[0], ez[2])))
    roll = np.degrees(np.arctan2(ex[1], ex[0]))
    return mouth, eye_l, eye_r, yaw, pitch, roll


def count_blinks(eye_open: np.ndarray, fps: float, max_duration: float = 1.0) -> int:
    """Blinks in an eye-openness series: dips below 50% of its median that reopen.

    Reopening needs 65% of the median (hysteresis, so tracker jitter around the threshold is
    not counted twice); dips longer than ``max_duration`` seconds are eyes kept shut, not
    blinks. NaN frames (no face) hold the previous value.
    """
    x = np.asarray(eye_open, np.float64)
    valid = ~np.isnan(x)
    if not valid.any():
        return 0
    # forward-fill NaNs (leading NaNs take the first valid value)
    idx = np.where(valid, np.arange(len(x)), 0)
    np.maximum.accumulate(idx, out=idx)
    x = np.where(valid[idx], x[idx], x[valid][0])
    median = float(np.median(x))
    close_at, open_at = 0.5 * median, 0.65 * median
    blinks, closed_since = 0, None
    for i, v in enumerate(x):
        if closed_since is None and v < close_at:
            closed_since = i
        elif closed_since is not None and v > open_at:
            if (i - closed_since) / fps <= max_duration:
                blinks += 1
            closed_since = None
    return blinks


def best_offset_correlation(a: np.ndarray, b: np.ndarray, max_lag_frames: int) -> tuple[float, int]:
    """Highest Pearson r between ``a[t]`` and ``b[t + lag]`` for |lag| <= ``max_lag_frames``.

    A positive lag means ``b`` runs late relative to ``a``. NaN samples are skipped; lags
    with fewer than 8 valid pairs are not considered. Returns (nan, 0) if no lag qualifies.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    best = (float("nan"), 0)
    for lag in range(-max_lag_frames, max_lag_frames + 1):
        if lag >= 0:
            x, y = a[: max(0, len(b) - lag)], b[lag:]
        else:
            x, y = a[-lag:], b[: max(0, len(a) + lag)]
        n = min(len(x), len(y))
        x, y = x[:n], y[:n]
        ok = ~(np.isnan(x) | np.isnan(y))
        if ok.sum() < 8:
            continue
        xs, ys = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
        denom = np.sqrt((xs * xs).sum() * (ys * ys).sum())
        if denom == 0:
            continue
        r = float((xs * ys).sum() / denom)
        if np.isnan(best[0]) or r > best[0]:
            best = (r, lag)
    return best
