"""The mouth compositor: what shows between the lips once the warp has moved them.

A warp can only stretch the pixels the portrait has; an opening mouth needs pixels it does
not have. The portrait's own cavity (if its lips are parted) is split into the part that
rides the skull (upper teeth) and the part that rides the jaw (lower teeth); each is moved by
an affine fit to its lip contour. Whatever opens between them, or the whole cavity for a
closed-mouth portrait, is synthesised: a dark gradient, a tongue, and a hint of teeth.
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.rig import Rig

_SUBPIXEL_BITS = 3
_CAVITY_TOP = np.array([28.0, 10.0, 12.0], np.float32)
_CAVITY_BOTTOM = np.array([96.0, 38.0, 42.0], np.float32)
_TONGUE = np.array([150.0, 68.0, 72.0], np.float32)
_UPPER_TEETH = np.array([228.0, 222.0, 208.0], np.float32)
_LOWER_TEETH = np.array([196.0, 190.0, 178.0], np.float32)
_MIN_OPEN_AREA = 2.0  # px²: below this the lips touch and nothing is drawn


def _polygon_mask(shape: tuple[int, int], polygon: np.ndarray, blur: float) -> np.ndarray:
    """An anti-aliased float mask of a polygon given in local pixel coordinates."""
    mask = np.zeros(shape, np.float32)
    points = np.round(polygon * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(mask, [points], 1.0, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    if blur > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), blur)
    return mask


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking ``source`` to ``target``
    (2 x 3 affine): a lip contour moves rigidly enough for the teeth behind it."""
    src_mean, dst_mean = source.mean(0), target.mean(0)
    src, dst = source - src_mean, target - dst_mean
    denom = max(float((src**2).sum()), 1e-9)
    a = float((src * dst).sum()) / denom
    b = float((src[:, 0] * dst[:, 1] - src[:, 1] * dst[:, 0]).sum()) / denom
    linear = np.array([[a, -b], [b, a]], np.float32)
    return np.concatenate([linear, (dst_mean - linear @ src_mean)[:, None]], axis=1).astype(np.float32)


def _shoelace(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


class MouthCompositor:
    """Draws the inside of the mouth onto a warped frame."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        mouth = rig.mouth
        self.has_cavity = mouth.cavity_image is not None
        if self.has_cavity:
            # Each piece reaches a little under its lip, so no seam of cavity shows where the
            # piece's edge and the opening's edge are both feathered.
            tuck = (0.025 * rig.frame.iod * rig.frame.v).astype(np.float32)
            self.upper_piece = np.concatenate([mouth.cavity_upper - tuck, mouth.cavity_split[::-1]])
            self.lower_piece = np.concatenate([mouth.cavity_split, mouth.cavity_lower[::-1] + tuck])
        iod = rig.frame.iod
        self.teeth_height = 0.1 * iod
        self.feather = max(0.5, 0.008 * iod)

    def composite(self, frame: np.ndarray, positions: np.ndarray, jaw_open: float) -> None:
        """Draw the mouth interior into ``frame`` (uint8 RGB, modified in place) given the
        displaced vertex ``positions`` (V, 2) of this frame."""
        upper = positions[self.rig.mouth.upper_inner]
        lower = positions[self.rig.mouth.lower_inner]
        opening = np.concatenate([upper, lower[::-1]]).astype(np.float32)
        if _shoelace(opening) < _MIN_OPEN_AREA:
            return
        height, width = frame.shape[:2]
        margin = 3
        x0, y0 = np.maximum(np.floor(opening.min(0)).astype(int) - margin, 0)
        x1, y1 = np.minimum(np.ceil(opening.max(0)).astype(int) + margin, [width, height])
        if x1 <= x0 or y1 <= y0:
            return
        offset = np.array([x0, y0], np.float32)
        shape = (y1 - y0, x1 - x0)
        canvas = self._cavity(shape, opening - offset, upper - offset, lower - offset, jaw_open)
        if self.has_cavity:
            mouth = self.rig.mouth
            self._paste_piece(canvas, self.lower_piece, mouth.cavity_lower, lower, offset)
            self._paste_piece(canvas, self.upper_piece, mouth.cavity_upper, upper, offset)
        alpha = _polygon_mask(shape, opening - offset, self.feather)[..., None]
        region = frame[y0:y1, x0:x1].astype(np.float32)
        frame[y0:y1, x0:x1] = np.clip(region + alpha * (canvas - region), 0, 255).astype(np.uint8)

    def _cavity(
        self, shape: tuple[int, int], opening: np.ndarray, upper: np.ndarray, lower: np.ndarray, jaw_open: float
    ) -> np.ndarray:
        h, w = shape
        # Every term depends on the row or on the column alone: computed on a (h, 1) column
        # and a (1, w) row and broadcast, in float32, instead of over the whole (h, w) window.
        ys = np.arange(h, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        top, bottom = float(opening[:, 1].min()), float(opening[:, 1].max())
        gap = max(bottom - top, 1.0)
        t = np.clip((ys - top) / gap, 0, 1)[..., None]
        centre_x = float(opening[:, 0].mean())
        half_width = max(float(np.ptp(opening[:, 0])) / 2, 1.0)
        across = np.clip(np.abs(xs - centre_x) / half_width, 0, 1)[..., None]
        # Corners of the mouth are deeper in shadow than its centre.
        canvas = (_CAVITY_TOP + t * (_CAVITY_BOTTOM - _CAVITY_TOP)) * (1 - 0.45 * across**2)
        tongue = np.exp(-(((xs - centre_x) / (0.45 * half_width)) ** 2)) * np.exp(-(((ys - bottom) / (0.35 * gap)) ** 2))
        canvas += 0.6 * tongue[..., None] * (_TONGUE - canvas)
        if not self.has_cavity:
            self._synthetic_teeth(canvas, upper, lower, centre_x, half_width, gap, jaw_open)
        return canvas

    def _synthetic_teeth(
        self, canvas: np.ndarray, upper: np.ndarray, lower: np.ndarray,
        centre_x: float, half_width: float, gap: float, jaw_open: float,
    ) -> None:
        """A portrait with closed lips gets a hint of teeth under the upper lip (and of the
        lower teeth when the jaw drops far), shaded darker towards the corners."""
        h, w = canvas.shape[:2]
        xs = np.arange(w, dtype=np.float32)
        across = np.clip(np.abs(xs - centre_x) / half_width, 0, 1)
        shade = (1 - 0.6 * across**2)[None, :, None]
        height = min(self.teeth_height, 0.42 * gap)
        ys = np.arange(h, dtype=np.float32)[:, None]
        upper_edge = np.interp(xs, *self._sorted(upper))[None, :]
        lower_edge = np.interp(xs, *self._sorted(lower))[None, :]
        visible = (across < 0.8)[None, :]
        below_lip = ys - upper_edge
        upper_alpha = np.clip(1 - (below_lip - height * (1 - 0.5 * across[None, :] ** 2)) / 1.5, 0, 1) * (below_lip > -1)
        upper_alpha = (upper_alpha * visible * (1 - across[None, :] ** 4))[..., None]
        canvas += upper_alpha * (_UPPER_TEETH * shade - canvas)
        lower_amount = float(np.clip((jaw_open - 0.25) / 0.35, 0, 1))
        if lower_amount > 0:
            above_lip = lower_edge - ys
            lower_height = 0.5 * height * lower_amount
            lower_alpha = np.clip(1 - (above_lip - lower_height) / 1.5, 0, 1) * (above_lip > -1)
            lower_alpha = (lower_alpha * visible * (1 - across[None, :] ** 2))[..., None] * 0.85
            canvas += lower_alpha * (_LOWER_TEETH * shade - canvas)

    @staticmethod
    def _sorted(contour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(contour[:, 0])
        return contour[order, 0], contour[order, 1]

    def _paste_piece(
        self, canvas: np.ndarray, piece: np.ndarray, rest: np.ndarray, moved: np.ndarray, offset: np.ndarray
    ) -> None:
        """Move one part of the portrait's own cavity with the lip it belongs to."""
        affine = _similarity(rest, moved)
        affine[:, 2] -= offset
        h, w = canvas.shape[:2]
        warped = cv2.warpAffine(self.rig.mouth.cavity_image, affine, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        polygon = piece @ affine[:, :2].T + affine[:, 2]
        alpha = _polygon_mask((h, w), polygon, self.feather)[..., None]
        canvas += alpha * (warped.astype(np.float32) - canvas)
