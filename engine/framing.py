"""Framing: the avatar's frame cut from a portrait, and its landmarks found again in it.

By default a square head-and-shoulders crop around the face; with ``keep_framing`` the
whole image, rescaled.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from emolive.engine.face_detection import detect_faces, landmark_box, landmark_centre, landmark_iou
from emolive.engine.image_view import ImageView, rescaled, square_crop

# Head-and-shoulders framing: crop side over face height, and where the face centre sits.
CROP_FACE_RATIO = 2.6
CROP_FACE_CENTRE_Y = 0.42
# Room kept above the face mesh (which ends at the upper forehead) for the hair, as a fraction
# of the face height, when a tight image forces a smaller square.
CROP_HAIR_ROOM = 0.45
# Room kept below the chin and beside the cheeks (fractions of the face's height and width).
CROP_CHIN_ROOM = 0.06
CROP_SIDE_ROOM = 0.05


def head_and_shoulders(source: np.ndarray, face: np.ndarray, size: int) -> ImageView:
    """Square crop around the face with room for the shoulders, inside the image.

    Where that square does not fit (a selfie, a tight headshot), the largest square that does,
    placed to keep the whole face, then as much hair above it as fits: replicated or made-up
    pixels show as streaks once the head moves. Only a face the image cannot hold in a square
    (cut off by the image, or a narrow image) gets a square around the head with a soft fill
    where it leaves the image."""
    h, w = source.shape[:2]
    x0, y0, x1, y1 = landmark_box(face)
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
    return square_crop(source, round(left), round(top), side, size)


def whole_image(source: np.ndarray, size: int) -> ImageView:
    """The whole image with its long side at ``size``."""
    return rescaled(ImageView(source), size / max(source.shape[:2]))


def refine(frame: ImageView, expected: np.ndarray, tone: Callable) -> np.ndarray:
    """Landmarks re-detected on the final frame (nearest the expected face), or the
    first pass's landmarks mapped into it when the second run misses."""
    found = detect_faces(ImageView(tone(frame.image)))
    if not found:
        return expected
    near = min(found, key=lambda f: np.linalg.norm(landmark_centre(f) - landmark_centre(expected)))
    return near if landmark_iou(near, expected) > 0.3 else expected
