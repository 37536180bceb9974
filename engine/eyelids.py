"""The eyelid compositor: a blink drawn as the upper lid sliding over the eye.

Squeezing the eye under a warped lid (what the mesh alone can do) leaves the iris and the
lashes crushed into a dark smudge, with specks of sclera at the corners. Instead the warp
only lowers the lid skin a little; here the lid itself is drawn over the eye: the skin band
above the lashes stretched down to the lid's edge (so the portrait's own skin, crease and
light), shaded darker towards the edge where the lid curves away, with a lash line drawn
along the edge in the portrait's own lash tone. At full closure the lid reaches past the
lower lid's margin, so no iris or sclera pixel is left.
"""

from __future__ import annotations

import cv2
import numpy as np

from emolive.engine import face_topology as topo
from emolive.engine.motion_space import INDEX
from emolive.engine.rig import Rig
from emolive.engine.rig_bases import BLINK_WARP_CLOSE

# In inter-ocular distances: the band of lid skin above the lashes that stretches over the
# eye, how far above the eye's margin the lashes reach, and the lash line's thickness.
_SKIN_BAND = 0.1
_LASH_REACH = 0.05
_LASH_WIDTH = 0.022
_EDGE_SHADE = 0.08  # how much darker the lid is at its edge than its skin band
_MIN_BLINK = 0.02  # below this the lid is left to the warp


def _smoothstep(edge0: float, edge1: float, x: np.ndarray | float) -> np.ndarray:
    t = np.clip((np.asarray(x, np.float32) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class EyelidCompositor:
    """Draws closing upper lids onto a warped frame."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        iod = rig.frame.iod
        self.band = _SKIN_BAND * iod
        self.reach = _LASH_REACH * iod
        self.lash_width = max(0.8, _LASH_WIDTH * iod)
        self.eyes = []
        if not rig.blinks:
            return
        for side, upper, lower in (("Left", topo.LEFT_EYE_UPPER, topo.LEFT_EYE_LOWER),
                                   ("Right", topo.RIGHT_EYE_UPPER, topo.RIGHT_EYE_LOWER)):
            tone = self._lash_tone(np.array(upper))
            self.eyes.append((INDEX[f"eyeBlink{side}"], np.array(upper), np.array(lower), tone))

    def _lash_tone(self, upper: np.ndarray) -> np.ndarray:
        """The portrait's lash colour: the darkest pixels just above the upper lid's margin."""
        image = self.rig.image
        pts = self.rig.vertices[upper, :2]
        mask = np.zeros(image.shape[:2], np.uint8)
        band = np.concatenate([pts, (pts - [0, self.reach])[::-1]])
        cv2.fillPoly(mask, [np.round(band).astype(np.int32)], 1)
        pixels = image[mask > 0].astype(np.float32)
        if len(pixels) < 4:
            return np.zeros(3, np.float32)
        luma = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
        return pixels[luma <= np.percentile(luma, 20)].mean(0)

    def composite(self, frame: np.ndarray, positions: np.ndarray, motion: np.ndarray) -> None:
        """Draw both upper lids into ``frame`` (uint8 RGB, in place); ``positions`` are the
        displaced vertices (V, 2) of this frame."""
        for channel, upper, lower, tone in self.eyes:
            blink = float(motion[channel])
            if blink > _MIN_BLINK:
                self._lid(frame, positions[upper], positions[lower], blink, tone)

    def _lid(self, frame: np.ndarray, upper: np.ndarray, lower: np.ndarray, blink: float, tone: np.ndarray) -> None:
        height, width = frame.shape[:2]
        # The upper margin as the warp left it, and where the lid's edge is now: the warp
        # lowered the margin by BLINK_WARP_CLOSE of the opening, the lid covers the rest.
        left, right = float(min(upper[:, 0].min(), lower[:, 0].min())), float(max(upper[:, 0].max(), lower[:, 0].max()))
        x0 = max(int(np.floor(left)) - 2, 0)
        x1 = min(int(np.ceil(right)) + 3, width)
        top = float(upper[:, 1].min()) - self.reach - self.band
        y0 = max(int(np.floor(top)) - 2, 0)
        y1 = min(int(np.ceil(lower[:, 1].max())) + 3, height)
        if x1 - x0 < 3 or y1 - y0 < 3:
            return
        xs = np.arange(x0, x1, dtype=np.float32)
        u = self._interp(xs, upper)
        lo = np.maximum(self._interp(xs, lower), u)
        share = (blink - BLINK_WARP_CLOSE * blink) / max(1 - BLINK_WARP_CLOSE * blink, 1e-3)
        covers = float(_smoothstep(0.0, 0.35, blink))  # lashes at the margin covered as the lid starts
        # At full closure the lid reaches half a pixel past the lower margin.
        edge = u + share * (lo - u) + 0.6 * float(_smoothstep(0.85, 1.0, blink))
        band_top = u - self.reach - self.band
        source_bottom = u - self.reach * covers
        # The band [band_top, source_bottom] is stretched over [band_top, edge].
        ys = np.arange(y0, y1, dtype=np.float32)[:, None]
        span = np.maximum(edge - band_top, 1e-3)[None, :]
        t = np.clip((ys - band_top[None, :]) / span, 0.0, 1.0)
        map_y = band_top[None, :] + t * (source_bottom - band_top)[None, :]
        map_x = np.broadcast_to(xs[None, :], map_y.shape)
        window = frame[y0:y1, x0:x1]
        maps = np.stack([map_x - x0, map_y - y0], axis=-1).astype(np.float32)
        lid = cv2.remap(window, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
        # Each column is stretched on its own: a little blur along the lid hides the streaks.
        lid = cv2.GaussianBlur(lid, (5, 1), 1.0)
        # The lid turns away from the light towards its edge.
        lid *= 1 - _EDGE_SHADE * covers * t[..., None] ** 2
        # Coverage: from the band's top (where the stretch is the identity) to the edge,
        # tapered over a pixel at the eye's corners.
        inside = np.clip(edge[None, :] + 0.5 - ys, 0.0, 1.0) * (ys >= band_top[None, :] - 0.5)
        corners = np.clip(np.minimum(xs - left, right - xs) + 0.5, 0.0, 1.0)[None, :]
        alpha = (inside * corners)[..., None]
        # The lash line along the edge, thinner towards the corners.
        across = np.clip((xs - left) / max(right - left, 1.0), 0.0, 1.0)
        half = 0.5 * self.lash_width * (0.45 + 0.55 * np.sin(np.pi * across))[None, :]
        lash = np.clip(half + 0.5 - np.abs(ys - edge[None, :]), 0.0, 1.0) * corners * (0.85 * covers)
        region = window.astype(np.float32)
        out = region + alpha * (lid - region)
        out += lash[..., None] * (tone - out)
        window[:] = np.clip(out + 0.5, 0, 255).astype(np.uint8)

    @staticmethod
    def _interp(xs: np.ndarray, contour: np.ndarray) -> np.ndarray:
        order = np.argsort(contour[:, 0])
        return np.interp(xs, contour[order, 0], contour[order, 1]).astype(np.float32)
