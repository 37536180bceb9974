"""The rig's mesh: the face frame it is measured in and the vertices the warp moves.

The vertices are the 478 landmarks (depth flattened by :attr:`RigConfig.depth_scale`), three
rings scaled from the face oval (hair and neck follow the head, then a falloff, then fixed
anchors: pixels outside the anchor ring are never resampled) and a box around the region
of interest. Each vertex carries how strongly it follows the head pose.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from emolive.engine import face_topology as topo


@dataclass(frozen=True)
class RigConfig:
    """Geometry choices of the rig, in inter-ocular distances (iod) unless noted."""

    grid_step: int = 4  # pixels between flow grid nodes
    hair_ring: float = 1.3  # follow ring (hair, ears, neck), × face-oval radius
    falloff_ring: float = 1.6
    anchor_ring: float = 1.95  # beyond this the image is copied untouched
    jaw_drop: float = 0.42  # lower-lip travel at jawOpen = 1
    spread: float = 0.16  # how far a handle's pull reaches into surrounding skin
    lid_skin: float = 0.17  # height of lid skin that stretches over the eye in a blink (below the brow)
    # A 2D warp cannot show a cheek sliding past the silhouette behind it: flattening the
    # face's depth keeps ±15° of yaw free of folds while the parallax still reads as a turn.
    depth_scale: float = 0.5
    inverse_iterations: int = 3  # Newton steps per frame (99th-percentile residual < 1 px)


@dataclass
class FaceFrame:
    """The canonical face frame: origin between the eyes, u along the eye line (image
    right), v perpendicular towards the chin, lengths in inter-ocular distances."""

    origin: np.ndarray  # (2,)
    u: np.ndarray  # (2,)
    v: np.ndarray  # (2,)
    iod: float

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray) -> "FaceFrame":
        right_eye = landmarks[list(topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER), :2].mean(0)
        left_eye = landmarks[list(topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER), :2].mean(0)
        axis = left_eye - right_eye
        iod = float(np.linalg.norm(axis))
        u = axis / iod
        return cls((right_eye + left_eye) / 2, u, np.array([-u[1], u[0]]), iod)

    def to_face(self, points: np.ndarray) -> np.ndarray:
        """Pixel (N, 2) -> face coordinates (N, 2) as (a along u, b along v)."""
        rel = (points[:, :2] - self.origin) / self.iod
        return np.stack([rel @ self.u, rel @ self.v], axis=1)

    def to_pixels(self, du: np.ndarray, dv: np.ndarray) -> np.ndarray:
        """Face-frame displacements (N,), (N,) -> pixel displacements (N, 2)."""
        return (np.outer(du, self.u) + np.outer(dv, self.v)) * self.iod


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """0 below ``edge0``, 1 above ``edge1``, a smooth cubic between."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class RigMesh:
    """A portrait's rig vertices (pixels), their face-frame coordinates and head weights."""

    def __init__(self, landmarks: np.ndarray, config: RigConfig, image_size: tuple[int, int]) -> None:
        self.config = config
        self.image_size = image_size
        self.landmarks = landmarks.astype(np.float64)
        self.frame = FaceFrame.from_landmarks(self.landmarks)
        self._build_vertices()
        self.face = self.frame.to_face(self.vertices)
        self.n = len(self.vertices)

    def _build_vertices(self) -> None:
        """Landmarks, the three rings, the roi's box and their head weights."""
        lm = self.landmarks.copy()
        lm[:, 2] *= self.config.depth_scale
        oval = lm[list(topo.FACE_OVAL)]
        centre = oval[:, :2].mean(0)
        chin_b = self.frame.to_face(lm[[topo.CHIN]])[0, 1]
        rings, weights = [], []
        for scale, top_weight, neck_weight in (
            (self.config.hair_ring, 1.0, 0.55),
            (self.config.falloff_ring, 0.45, 0.2),
            (self.config.anchor_ring, 0.0, 0.0),
        ):
            ring = oval.copy()
            ring[:, :2] = centre + scale * (oval[:, :2] - centre)
            below_jaw = smoothstep(chin_b - 0.9, chin_b + 0.2, self.frame.to_face(ring)[:, 1])
            rings.append(ring)
            weights.append(top_weight + (neck_weight - top_weight) * below_jaw)
        self.anchor_polygon = rings[-1][:, :2].astype(np.float32)
        height, width = self.image_size
        x0, y0 = np.floor(np.maximum(self.anchor_polygon.min(0) - 2, 0)).astype(int)
        x1, y1 = np.ceil(np.minimum(self.anchor_polygon.max(0) + 2, [width, height])).astype(int)
        step = self.config.grid_step
        x1 = min(x0 + -(-(x1 - x0) // step) * step, width)
        y1 = min(y0 + -(-(y1 - y0) // step) * step, height)
        self.roi = (int(x0), int(y0), int(x1), int(y1))
        box = np.array(
            [[x, y, 0.0] for x in np.linspace(x0 - 1, x1 + 1, 9) for y in (y0 - 1, y1 + 1)]
            + [[x, y, 0.0] for y in np.linspace(y0 - 1, y1 + 1, 9)[1:-1] for x in (x0 - 1, x1 + 1)]
        )
        self.vertices = np.concatenate([lm] + rings + [box])
        self.head_weight = np.concatenate(
            [np.ones(len(lm))] + weights + [np.zeros(len(box))]
        ).astype(np.float32)
        self.is_landmark = np.arange(len(self.vertices)) < len(lm)
        self._tie_box_inside_anchors(len(self.vertices) - len(box))

    def _tie_box_inside_anchors(self, first_box: int) -> None:
        """Where the image cuts the anchor ring (a tight headshot), the roi's box lies on the
        image edge inside the moving region: pinning it there squeezes the skin between it
        and the face (a chin near the frame's bottom folds over itself when the jaw drops).
        Such box vertices move as the mesh around them would: barycentric in the mesh
        without the box."""
        inner = Delaunay(self.vertices[:first_box, :2], qhull_options="QJ")
        box = self.vertices[first_box:, :2]
        simplex = inner.find_simplex(box)
        ring = cv2.pointPolygonTest
        inside = np.array([s >= 0 and ring(self.anchor_polygon, (float(x), float(y)), False) > 0
                           for s, (x, y) in zip(simplex, box)], bool)
        transform = inner.transform[simplex[inside]]
        partial = np.einsum("nij,nj->ni", transform[:, :2], box[inside] - transform[:, 2])
        self.tied = first_box + np.nonzero(inside)[0]
        self.tie_sources = inner.simplices[simplex[inside]]
        self.tie_weights = np.concatenate([partial, 1 - partial.sum(1, keepdims=True)], axis=1)
        self.vertices[self.tied, 2] = np.einsum("nk,nk->n", self.tie_weights, self.vertices[self.tie_sources, 2])
        self.head_weight[self.tied] = np.einsum("nk,nk->n", self.tie_weights, self.head_weight[self.tie_sources])

    def tie(self, bases: np.ndarray) -> np.ndarray:
        """(B, V, 2) bases with the tied box vertices following the mesh around them."""
        bases[:, self.tied] = np.einsum("nk,bnkc->bnc", self.tie_weights, bases[:, self.tie_sources])
        return bases

    def triangulation(self) -> Delaunay:
        """Delaunay triangles over the vertices (QJ: qhull joggles degenerate input instead of failing)."""
        return Delaunay(self.vertices[:, :2], qhull_options="QJ")

    def eye_rois(self) -> list[tuple[int, int, int, int]]:
        """Boxes around each eye and the lid skin above it, with room for the head to move."""
        height, width = self.image_size
        margin = 0.3 * self.frame.iod
        rois = []
        for contour in (topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER, topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER):
            pts = self.vertices[list(contour), :2]
            x0, y0 = np.floor(pts.min(0) - margin).astype(int)
            x1, y1 = np.ceil(pts.max(0) + margin).astype(int)
            rois.append((max(int(x0), 0), max(int(y0), 0), min(int(x1), width), min(int(y1), height)))
        return rois

    def head_center(self) -> np.ndarray:
        """The pivot of head rotation: behind the face, a quarter iod below the nose tip."""
        oval = self.vertices[list(topo.FACE_OVAL)]
        nose = self.vertices[topo.NOSE_TIP]
        centre = np.array([oval[:, 0].mean(), nose[1], oval[:, 2].mean() + 0.7 * self.frame.iod])
        return centre + np.r_[self.frame.v * 0.25 * self.frame.iod, 0.0]
