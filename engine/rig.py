"""The 2.5D warp rig: a portrait's landmarks turned into something motion can move.

Built once per portrait from the 478 MediaPipe landmarks by :func:`build_rig`:

* a triangle mesh over the face, a ring of follow points (hair, ears, neck) and fixed anchors
  around them, so pixels outside the anchor ring are never resampled (:mod:`emolive.engine.rig_mesh`);
* one displacement field per blendshape on the mesh vertices, authored in a canonical face
  frame (eye axis, inter-ocular distance) and so scaled to the portrait
  (:mod:`emolive.engine.rig_bases`);
* per-vertex weights for how strongly each vertex follows the head pose;
* sparse barycentric weights that turn vertex displacements into a dense flow on a grid.

Everything here is plain arrays, so a rig can be cached with ``np.savez`` and rebuilt cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from scipy import sparse
from scipy.spatial import Delaunay

from emolive.engine import face_topology as topo
from emolive.engine.motion_space import BLENDSHAPES
from emolive.engine.rig_bases import blendshape_bases
from emolive.engine.rig_mesh import FaceFrame, RigConfig, RigMesh

BASIS_INDEX = {name: i for i, name in enumerate(BLENDSHAPES)}


@dataclass
class MouthRig:
    """What the mouth compositor needs to know about the portrait's own mouth."""

    upper_inner: np.ndarray  # vertex indices, corner to corner
    lower_inner: np.ndarray
    # A portrait with parted lips keeps its own cavity to show when the mouth opens: the
    # original image, its inner-lip contours, and the line splitting the part that rides the
    # skull (upper teeth) from the part that rides the jaw. None for closed lips.
    cavity_image: np.ndarray | None = None
    cavity_upper: np.ndarray | None = None  # (len(upper_inner), 2)
    cavity_lower: np.ndarray | None = None
    cavity_split: np.ndarray | None = None


@dataclass
class FlowGrid:
    """Barycentric weights from rig vertices to the nodes of a regular grid over a roi."""

    roi: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels
    step: int  # pixels between nodes
    shape: tuple[int, int]  # rows, cols
    matrix: sparse.csr_matrix  # (rows * cols, V)


@dataclass
class Rig:
    """A portrait's rig. See the module docstring."""

    image: np.ndarray  # (H, W, 3) uint8 RGB: the portrait at rest, as it is
    frame: FaceFrame
    vertices: np.ndarray  # (V, 3) rest positions in pixels; z in pixels, towards the camera < 0
    head_weight: np.ndarray  # (V,) how much each vertex follows the head pose
    head_center: np.ndarray  # (3,) pivot of head rotation
    bases: np.ndarray  # (len(BLENDSHAPES), V, 2) pixel displacement at activation 1
    triangles: np.ndarray  # (T, 3)
    grid: FlowGrid  # coarse flow over everything that can move; pixels outside never change
    # Fine flow where detail is finer than the coarse grid: the eyes, whose lids must close
    # over an opening only a few pixels high.
    detail_grids: list[FlowGrid]
    mouth: MouthRig
    anchor_polygon: np.ndarray  # (K, 2) boundary of the region that can move
    inverse_iterations: int
    # False where the landmarks' eyes are not the drawn eyes (anime eyes far larger than a
    # human's): a blink would close a patch beside the eye, so the portrait does not blink.
    blinks: bool = True

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image.shape[:2]

    @property
    def face_width(self) -> float:
        """Pixels per unit of head translation (headTx/headTy are fractions of face width)."""
        return 2.3 * self.frame.iod


def _flow_grid(tri: Delaunay, roi: tuple[int, int, int, int], step: int, n_vertices: int) -> FlowGrid:
    """Barycentric weights of the ``step``-spaced nodes of ``roi`` in the triangles ``tri``."""
    x0, y0, x1, y1 = roi
    xs = np.arange(x0, x1, step, dtype=np.float64) + (step - 1) / 2
    ys = np.arange(y0, y1, step, dtype=np.float64) + (step - 1) / 2
    gx, gy = np.meshgrid(xs, ys)
    points = np.stack([gx.ravel(), gy.ravel()], axis=1)
    simplex = tri.find_simplex(points)
    inside = simplex >= 0
    transform = tri.transform[simplex[inside]]
    partial = np.einsum("nij,nj->ni", transform[:, :2], points[inside] - transform[:, 2])
    bary = np.concatenate([partial, 1 - partial.sum(1, keepdims=True)], axis=1)
    rows = np.repeat(np.nonzero(inside)[0], 3)
    cols = tri.simplices[simplex[inside]].ravel()
    matrix = sparse.csr_matrix(
        (bary.ravel().astype(np.float32), (rows, cols)), shape=(len(points), n_vertices)
    )
    return FlowGrid(roi, step, (len(ys), len(xs)), matrix)


_PARTED_MIN_GAP = 1.5  # pixels between the lips above which the portrait's own cavity is kept
_SPLIT_SAMPLES = 24


def _lip_gap(mesh: RigMesh) -> float:
    """Pixels between the inner lips at the mouth's centre (0 for closed lips)."""
    idx = np.array(topo.LOWER_LIP_MID[:1])
    upper = _contour_height(mesh.face, topo.UPPER_LIP_INNER, mesh.face[idx, 0])
    lower = _contour_height(mesh.face, topo.LOWER_LIP_INNER, mesh.face[idx, 0])
    return float(max(lower[0] - upper[0], 0.0)) * mesh.frame.iod


def _contour_height(face_xy: np.ndarray, contour: tuple[int, ...], query_a: np.ndarray) -> np.ndarray:
    """The face-frame b of a contour (corner-to-corner polyline) at abscissas ``query_a``."""
    pts = face_xy[list(contour)]
    order = np.argsort(pts[:, 0])
    return np.interp(query_a, pts[order, 0], pts[order, 1])


def _teeth_split(image: np.ndarray, upper: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Where a parted mouth's cavity divides into what rides the skull and what rides the
    jaw: at the darkest point of the upper-to-lower lip chords below their top third (the gap
    under the upper teeth's edges, or the shadow above the lower ones). A fixed fraction
    would cut a smile's upper teeth in two, the lower half then dropping with the jaw."""
    luma = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), 1.0)
    t = np.linspace(0.35, 1.0, _SPLIT_SAMPLES, dtype=np.float32)
    chords = upper[:, None, :] + t[None, :, None] * (lower - upper)[:, None, :]
    profile = cv2.remap(luma, chords[..., 0], chords[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    # One fraction for the whole mouth, the median over the inner chords (the corner ones are
    # a point): a corner in shadow would otherwise put its darkest point at the top.
    split = float(np.median(t[np.argmin(profile[1:-1], axis=1)]))
    return (upper + split * (lower - upper)).astype(np.float32)


_EYE_MARGIN_CHROMA = 25.0  # Lab a*b* distance from the skin beyond which a lid margin is not skin


def _eyes_fit_landmarks(image: np.ndarray, mesh: RigMesh) -> bool:
    """Whether skin surrounds both eyes' landmark contours: thin bands just above and below
    each lid margin must have the skin's hue (a quarter of their pixels may not: lashes,
    glasses). A drawn eye larger than the landmarks puts its iris in those bands."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    face = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(face, [np.round(mesh.vertices[list(topo.FACE_OVAL), :2]).astype(np.int32)], 1)
    skin = np.median(lab[face > 0], axis=0)
    iod = mesh.frame.iod
    for contour, outward in ((topo.LEFT_EYE_UPPER, -1), (topo.LEFT_EYE_LOWER, 1),
                             (topo.RIGHT_EYE_UPPER, -1), (topo.RIGHT_EYE_LOWER, 1)):
        margin = mesh.vertices[list(contour), :2]
        band = np.concatenate([margin + [0, outward * 0.02 * iod], (margin + [0, outward * 0.07 * iod])[::-1]])
        mask = np.zeros(image.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(band).astype(np.int32)], 1)
        pixels = lab[mask > 0]
        if len(pixels) == 0:
            continue
        chroma = np.hypot(pixels[:, 1] - skin[1], pixels[:, 2] - skin[2])
        if float(np.percentile(chroma, 75)) > _EYE_MARGIN_CHROMA:
            return False
    return True


def build_rig(image: np.ndarray, landmarks: np.ndarray, config: RigConfig = RigConfig()) -> Rig:
    """Build the rig of a portrait (H, W, 3 uint8 RGB) from its (478, 3) pixel landmarks.

    The rest pose is the portrait as it is; a portrait with parted lips keeps its own cavity
    for the mouth compositor to show when the jaw opens."""
    image = np.ascontiguousarray(image)
    mesh = RigMesh(landmarks, config, image.shape[:2])
    mouth = MouthRig(np.array(topo.UPPER_LIP_INNER), np.array(topo.LOWER_LIP_INNER))
    if _lip_gap(mesh) > _PARTED_MIN_GAP:
        upper = landmarks[mouth.upper_inner, :2].astype(np.float32)
        lower = landmarks[mouth.lower_inner, :2].astype(np.float32)
        mouth = replace(mouth, cavity_image=image, cavity_upper=upper, cavity_lower=lower,
                        cavity_split=_teeth_split(image, upper, lower))
    bases = blendshape_bases(mesh)
    blinks = _eyes_fit_landmarks(image, mesh)
    if not blinks:
        for side in ("Left", "Right"):
            bases[f"eyeBlink{side}"] = np.zeros_like(bases[f"eyeBlink{side}"])
    stacked = np.stack([bases[name] for name in BLENDSHAPES])
    # Anchors never move: that is what keeps the background an exact copy.
    stacked[:, mesh.head_weight == 0] = 0.0
    stacked = mesh.tie(stacked)
    tri = mesh.triangulation()
    return Rig(
        image=image,
        frame=mesh.frame,
        vertices=mesh.vertices.astype(np.float32),
        head_weight=mesh.head_weight,
        head_center=mesh.head_center().astype(np.float32),
        bases=stacked.astype(np.float32),
        triangles=tri.simplices.astype(np.int32),
        grid=_flow_grid(tri, mesh.roi, config.grid_step, mesh.n),
        detail_grids=[_flow_grid(tri, roi, 1, mesh.n) for roi in mesh.eye_rois()],
        mouth=mouth,
        anchor_polygon=mesh.anchor_polygon,
        inverse_iterations=config.inverse_iterations,
        blinks=blinks,
    )
