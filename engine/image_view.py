"""Image views: an image derived from a source image by a scale and an offset.

Face detection looks at padded, rescaled and cropped versions of a portrait, and framing cuts
the avatar's frame out of it; an :class:`ImageView` carries the mapping back, so landmarks
found in any view land in source pixels (and source landmarks in the view).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_GREY = (128, 128, 128)


@dataclass(frozen=True)
class ImageView:
    """``image`` shows the source so that source pixel p lands at ``p * scale + offset``."""

    image: np.ndarray
    scale: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)

    def to_source(self, landmarks_px: np.ndarray) -> np.ndarray:
        """(N, 3) points in this view's pixels -> source pixels (z scales like x)."""
        out = landmarks_px.copy()
        out[:, 0] = (out[:, 0] - self.offset[0]) / self.scale
        out[:, 1] = (out[:, 1] - self.offset[1]) / self.scale
        out[:, 2] /= self.scale
        return out

    def to_view(self, landmarks_src: np.ndarray) -> np.ndarray:
        """(N, 3) points in source pixels -> this view's pixels."""
        out = landmarks_src.copy()
        out[:, 0] = out[:, 0] * self.scale + self.offset[0]
        out[:, 1] = out[:, 1] * self.scale + self.offset[1]
        out[:, 2] *= self.scale
        return out


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area averaging to shrink (no aliasing), cubic to enlarge."""
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(
        image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    )


def rescaled(view: ImageView, factor: float) -> ImageView:
    """``view`` scaled by ``factor``."""
    h, w = view.image.shape[:2]
    nw, nh = max(1, round(w * factor)), max(1, round(h * factor))
    fx, fy = nw / w, nh / h  # differ by under a pixel's worth: fx stands for both
    image = _resize(view.image, nw, nh)
    return ImageView(image, view.scale * fx, (view.offset[0] * fx, view.offset[1] * fy))


def fit(view: ImageView, long_side: int) -> ImageView:
    """Shrink so the long side is at most ``long_side``."""
    longest = max(view.image.shape[:2])
    return view if longest <= long_side else rescaled(view, long_side / longest)


def padded(view: ImageView, fraction: float, replicate: bool) -> ImageView:
    """``view`` with a border of ``fraction`` of its size each side: its edge pixels
    replicated, or flat grey."""
    h, w = view.image.shape[:2]
    px, py = round(w * fraction), round(h * fraction)
    if replicate:
        image = cv2.copyMakeBorder(view.image, py, py, px, px, cv2.BORDER_REPLICATE)
    else:
        image = cv2.copyMakeBorder(view.image, py, py, px, px, cv2.BORDER_CONSTANT, value=_GREY)
    return ImageView(image, view.scale, (view.offset[0] + px, view.offset[1] + py))


def square_crop(source: np.ndarray, x0: int, y0: int, side: int, out: int) -> ImageView:
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
    return ImageView(_resize(inside, out, out), scale, (-x0 * scale, -y0 * scale))


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
