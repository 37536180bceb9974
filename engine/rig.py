"""The 2.5D warp rig: a portrait's landmarks turned into something motion can move.

Built once per portrait from the 478 MediaPipe landmarks:

* a triangle mesh over the face, a ring of follow points (hair, ears, neck) and fixed anchors
  around them, so pixels outside the anchor ring are never resampled;
* one displacement field per blendshape on the mesh vertices, authored in a canonical face
  frame (eye axis, inter-ocular distance) and so scaled to the portrait;
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

from engine import face_topology as topo
from engine.motion_space import BLENDSHAPES

BASIS_INDEX = {name: i for i, name in enumerate(BLENDSHAPES)}
# Share of the eye opening the warp closes at eyeBlink = 1: the lid skin drops a little and
# the eye is squeezed only that much; engine.eyelids draws the lid over the rest.
BLINK_WARP_CLOSE = 0.3


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


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _spread(
    positions: np.ndarray, handles: np.ndarray, handle_disp: np.ndarray, radius: float
) -> np.ndarray:
    """Displacement for every vertex: handles move exactly as given, the skin around them
    follows with a Gaussian falloff of ``radius`` pixels, far vertices stay put."""
    diff = positions[:, None, :] - positions[handles][None, :, :]
    kernel = np.exp(-(diff**2).sum(-1) / (2 * radius**2))
    disp = (kernel @ handle_disp) / np.maximum(kernel.sum(1, keepdims=True), 1.0)
    disp[handles] = handle_disp
    return disp


def _contour_height(face_xy: np.ndarray, contour: tuple[int, ...], query_a: np.ndarray) -> np.ndarray:
    """The face-frame b of a contour (corner-to-corner polyline) at abscissas ``query_a``."""
    pts = face_xy[list(contour)]
    order = np.argsort(pts[:, 0])
    return np.interp(query_a, pts[order, 0], pts[order, 1])


class _Builder:
    """Authors the rig's bases; one method per group of blendshapes."""

    def __init__(self, landmarks: np.ndarray, config: RigConfig, image_size: tuple[int, int]) -> None:
        self.config = config
        self.image_size = image_size
        self.landmarks = landmarks.astype(np.float64)
        self.frame = FaceFrame.from_landmarks(self.landmarks)
        self._build_vertices()
        self.face = self.frame.to_face(self.vertices)
        self.n = len(self.vertices)
        mouth = self.face[list(topo.UPPER_LIP_INNER[5:6] + topo.LOWER_LIP_INNER[5:6])].mean(0)
        corners = self.face[list(topo.MOUTH_CORNERS)]
        self.mouth_a = float(mouth[0])
        self.mouth_half_width = float(abs(corners[1, 0] - corners[0, 0]) / 2)
        self.corner_b = float(corners[:, 1].mean())
        self.lip_sets = {
            "upper_outer": np.array(topo.UPPER_LIP_OUTER[1:-1]),
            "upper_inner": np.array(topo.UPPER_LIP_INNER[1:-1]),
            "lower_inner": np.array(topo.LOWER_LIP_INNER[1:-1]),
            "lower_outer": np.array(topo.LOWER_LIP_OUTER[1:-1]),
            "corners": np.array(topo.MOUTH_CORNERS + topo.INNER_CORNERS),
        }
        # Not a lip set: the other bases spread their lip handles' pull over it.
        self.lower_lip_body = self._inside_lower_lip()
        self.all_lips = np.unique(np.concatenate(list(self.lip_sets.values())))

    def _inside_lower_lip(self) -> np.ndarray:
        """Landmarks strictly inside the lower lip (between its inner and outer contours)."""
        outline = self.landmarks[list(topo.LOWER_LIP_INNER) + list(topo.LOWER_LIP_OUTER[::-1]), :2]
        outline = outline.astype(np.float32)
        edge = set(topo.LOWER_LIP_INNER + topo.LOWER_LIP_OUTER + topo.UPPER_LIP_INNER + topo.UPPER_LIP_OUTER)
        return np.array([i for i, (x, y) in enumerate(self.landmarks[:, :2])
                         if i not in edge and cv2.pointPolygonTest(outline, (float(x), float(y)), False) > 0], int)

    # --- mesh -------------------------------------------------------------------------

    def _build_vertices(self) -> None:
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
            below_jaw = _smoothstep(chin_b - 0.9, chin_b + 0.2, self.frame.to_face(ring)[:, 1])
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

    # --- bases --------------------------------------------------------------------------

    def _lip_profile(self, idx: np.ndarray) -> np.ndarray:
        """1 at the lips' centre, falling towards the corners: mouths open as an oval."""
        x = (self.face[idx, 0] - self.mouth_a) / self.mouth_half_width
        return np.clip(1 - 0.65 * x**2, 0.3, 1.0)

    def _side_weight(self, idx: np.ndarray, side: int) -> np.ndarray:
        """How much a lip vertex belongs to one side: side=+1 subject's left (image right)."""
        x = side * (self.face[idx, 0] - self.mouth_a) / self.mouth_half_width
        return _smoothstep(-0.3, 0.9, x)

    def jaw_weight(self) -> np.ndarray:
        """How much each vertex rides the jaw (the lips get their own profile)."""
        a = np.abs(self.face[:, 0] - self.mouth_a)
        lower_outer_b = self.face[list(topo.LOWER_LIP_MID), 1].max()
        weight = _smoothstep(self.corner_b - 0.05, lower_outer_b, self.face[:, 1])
        weight *= 1 - _smoothstep(0.35, 1.35, a)
        weight *= self.head_weight
        weight[~self.is_landmark] *= 0.6
        weight[self.lip_sets["upper_outer"]] = 0
        weight[self.lip_sets["upper_inner"]] = 0
        return weight

    def _lips_basis(self, moves: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """A basis given by face-frame (du, dv) for named lip sets; every other lip vertex is
        pinned so a pull on one lip never leaks into the other."""
        du = np.zeros(self.n)
        dv = np.zeros(self.n)
        for name, (set_du, set_dv) in moves.items():
            idx = self.lip_sets[name]
            du[idx] += set_du
            dv[idx] += set_dv
        handles = self.all_lips
        disp = self.frame.to_pixels(du[handles], dv[handles])
        return _spread(self.vertices[:, :2], handles, disp, self.config.spread * self.frame.iod)

    def mouth_bases(self) -> dict[str, np.ndarray]:
        cfg = self.config
        lips = self.lip_sets
        jaw = self.jaw_weight()
        bases: dict[str, np.ndarray] = {}

        jaw_dv = jaw * cfg.jaw_drop
        # The lower lip moves as one body: landmarks inside it riding the jaw's ramp would lag
        # its edges, and the inner edge would fold over them (thin lips, wide openings).
        lower_lip = np.concatenate([lips["lower_inner"], self.lower_lip_body, lips["lower_outer"]])
        jaw_dv[lower_lip] = cfg.jaw_drop * self._lip_profile(lower_lip)
        jaw_dv[list(topo.MOUTH_CORNERS + topo.INNER_CORNERS)] = 0.3 * cfg.jaw_drop
        corner_in = np.zeros(self.n)
        corner_in[list(topo.MOUTH_CORNERS)] = np.array([1.0, -1.0]) * 0.04 * cfg.jaw_drop
        bases["jawOpen"] = self.frame.to_pixels(corner_in, jaw_dv)

        seal = np.zeros(self.n)
        seal[lower_lip] = -cfg.jaw_drop * self._lip_profile(lower_lip)
        bases["mouthClose"] = self.frame.to_pixels(np.zeros(self.n), seal)

        zero = lambda idx: np.zeros(len(idx))  # noqa: E731 - tiny local shorthand
        centre = lambda idx: self._lip_profile(idx)  # noqa: E731
        corner_sign = np.array([-1.0, 1.0, -1.0, 1.0])  # image-left corners move to -u outward

        def corners(du: float, dv: float) -> tuple[np.ndarray, np.ndarray]:
            return corner_sign * du, np.full(4, dv)

        bases["mouthFunnel"] = self._lips_basis({
            "corners": corners(-0.09, 0.0),
            "upper_outer": (zero(lips["upper_outer"]), -0.035 * centre(lips["upper_outer"])),
            "upper_inner": (zero(lips["upper_inner"]), -0.045 * centre(lips["upper_inner"])),
            "lower_inner": (zero(lips["lower_inner"]), 0.07 * centre(lips["lower_inner"])),
            "lower_outer": (zero(lips["lower_outer"]), 0.05 * centre(lips["lower_outer"])),
        })
        pucker_du = {n: -0.12 * (self.face[lips[n], 0] - self.mouth_a) / self.mouth_half_width for n in lips}
        bases["mouthPucker"] = self._lips_basis({
            "corners": corners(-0.14, 0.0),
            "upper_outer": (pucker_du["upper_outer"], -0.02 * centre(lips["upper_outer"])),
            "upper_inner": (pucker_du["upper_inner"], zero(lips["upper_inner"])),
            "lower_inner": (pucker_du["lower_inner"], zero(lips["lower_inner"])),
            "lower_outer": (pucker_du["lower_outer"], 0.025 * centre(lips["lower_outer"])),
        })
        bases["mouthRollLower"] = self._lips_basis(
            {"lower_outer": (zero(lips["lower_outer"]), -0.04 * centre(lips["lower_outer"]))}
        )
        bases["mouthRollUpper"] = self._lips_basis(
            {"upper_outer": (zero(lips["upper_outer"]), 0.035 * centre(lips["upper_outer"]))}
        )

        for side, suffix in ((1, "Left"), (-1, "Right")):
            side_corners = np.array([0.0, 1.0, 0.0, 1.0]) if side == 1 else np.array([1.0, 0.0, 1.0, 0.0])

            def corner_move(du: float, dv: float) -> tuple[np.ndarray, np.ndarray]:
                return side_corners * side * du, side_corners * dv

            def lip_side(name: str, du: float, dv: float) -> tuple[np.ndarray, np.ndarray]:
                w = self._side_weight(lips[name], side) ** 1.5
                return side * du * w, dv * w

            def drag(du: float, dv: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
                """The corner moves; the lips on that side follow it part of the way."""
                return {"corners": corner_move(du, dv), **{n: lip_side(n, 0.6 * du, 0.5 * dv) for n in lips if n != "corners"}}

            bases[f"mouthSmile{suffix}"] = self._with_cheek(self._lips_basis(drag(0.08, -0.08)), side, -0.04)
            bases[f"mouthStretch{suffix}"] = self._lips_basis(drag(0.08, 0.03))
            bases[f"mouthFrown{suffix}"] = self._lips_basis(drag(-0.01, 0.07))
            bases[f"mouthPress{suffix}"] = self._lips_basis({
                "upper_outer": lip_side("upper_outer", 0.0, 0.025),
                "lower_outer": lip_side("lower_outer", 0.0, -0.025),
            })
            bases[f"mouthUpperUp{suffix}"] = self._lips_basis({
                "upper_outer": (zero(lips["upper_outer"]), -0.055 * _smoothstep(-0.5, 0.6, side * (self.face[lips["upper_outer"], 0] - self.mouth_a) / self.mouth_half_width)),
                "upper_inner": (zero(lips["upper_inner"]), -0.06 * _smoothstep(-0.5, 0.6, side * (self.face[lips["upper_inner"], 0] - self.mouth_a) / self.mouth_half_width)),
            })
            bases[f"mouthLowerDown{suffix}"] = self._lips_basis({
                "lower_inner": (zero(lips["lower_inner"]), 0.07 * _smoothstep(-0.5, 0.6, side * (self.face[lips["lower_inner"], 0] - self.mouth_a) / self.mouth_half_width)),
                "lower_outer": (zero(lips["lower_outer"]), 0.06 * _smoothstep(-0.5, 0.6, side * (self.face[lips["lower_outer"], 0] - self.mouth_a) / self.mouth_half_width)),
            })
        return bases

    def _with_cheek(self, basis: np.ndarray, side: int, lift: float) -> np.ndarray:
        cheek = np.array(topo.LEFT_CHEEK if side == 1 else topo.RIGHT_CHEEK)
        # The eyes are pinned: a smile's cheek must not drag the lids (an idle smile would
        # otherwise keep the eyes from ever resting on the portrait's own pixels).
        eyes = np.array(topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER + topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER)
        handles = np.concatenate([cheek, self.all_lips, eyes])
        disp = np.concatenate([self.frame.to_pixels(np.zeros(len(cheek)), np.full(len(cheek), lift)),
                               basis[self.all_lips], np.zeros((len(eyes), 2))])
        cheek_basis = _spread(self.vertices[:, :2], handles, disp, 1.6 * self.config.spread * self.frame.iod)
        return np.where(self.is_landmark[:, None], cheek_basis, basis)

    def lip_gap(self) -> float:
        """Pixels between the inner lips at the mouth's centre (0 for closed lips)."""
        idx = np.array(topo.LOWER_LIP_MID[:1])
        upper = _contour_height(self.face, topo.UPPER_LIP_INNER, self.face[idx, 0])
        lower = _contour_height(self.face, topo.LOWER_LIP_INNER, self.face[idx, 0])
        return float(max(lower[0] - upper[0], 0.0)) * self.frame.iod

    def eye_bases(self) -> dict[str, np.ndarray]:
        bases = {}
        for suffix, upper, lower in (
            ("Left", topo.LEFT_EYE_UPPER, topo.LEFT_EYE_LOWER),
            ("Right", topo.RIGHT_EYE_UPPER, topo.RIGHT_EYE_LOWER),
        ):
            bases[f"eyeBlink{suffix}"] = self._lid_basis(upper, lower, close=BLINK_WARP_CLOSE, raise_lower=0.0)
            bases[f"eyeWide{suffix}"] = self._lid_basis(upper, lower, close=-0.28, raise_lower=0.0)
            bases[f"cheekSquint{suffix}"] = self._lid_basis(upper, lower, close=0.0, raise_lower=0.22)
        return bases

    def _lid_basis(self, upper: tuple[int, ...], lower: tuple[int, ...], close: float, raise_lower: float) -> np.ndarray:
        """Lids in the eye's own frame: ``close`` moves the upper lid down by that share of the
        eye opening (lid skin above stretches, the eyeball between is squeezed under it);
        ``raise_lower`` lifts the lower lid and the cheek below it."""
        lm = self.landmarks[:, :2]
        outer, inner = lm[upper[0]], lm[upper[-1]]
        axis = inner - outer
        width = float(np.linalg.norm(axis))
        ex = axis / width
        ey = np.array([-ex[1], ex[0]])
        if ey @ self.frame.v < 0:
            ey = -ey
        rel = self.vertices[:, :2] - outer
        x = rel @ ex / width
        y = rel @ ey / width

        def contour(indices: tuple[int, ...]) -> np.ndarray:
            pts = lm[list(indices)] - outer
            px, py = pts @ ex / width, pts @ ey / width
            order = np.argsort(px)
            return np.interp(x, px[order], py[order])

        y_upper, y_lower = contour(upper), contour(lower)
        opening = np.maximum(y_lower - y_upper, 0.0)
        lid = self.config.lid_skin * self.frame.iod / width
        along = _smoothstep(-0.15, 0.05, x) * (1 - _smoothstep(0.95, 1.15, x))
        above = y <= y_upper
        inside = (y > y_upper) & (y < y_lower)
        below = y >= y_lower
        span = np.maximum(y_lower - y_upper, 1e-6)
        shift = np.zeros(self.n)
        travel = close * opening
        shift[above] = travel[above] * (1 - _smoothstep(0, lid, y_upper[above] - y[above]))
        shift[inside] = travel[inside] * (y_lower[inside] - y[inside]) / span[inside]
        lift = raise_lower * opening.max()
        if lift:
            shift[inside] -= lift * (y[inside] - y_upper[inside]) / span[inside]
            shift[below] -= lift * (1 - _smoothstep(0, 1.2 * lid, y[below] - y_lower[below]))
        shift *= along * self.is_landmark
        return np.outer(shift * width, ey)

    def brow_bases(self) -> dict[str, np.ndarray]:
        iod = self.frame.iod
        pins = np.array(topo.LEFT_EYE_UPPER + topo.RIGHT_EYE_UPPER + topo.LEFT_EYE_LOWER + topo.RIGHT_EYE_LOWER)
        radius = 1.5 * self.config.spread * iod

        def lift(moves: dict[tuple[int, ...], tuple[float, float]], sign_u: float = 1.0) -> np.ndarray:
            handles, disp = [pins], [np.zeros((len(pins), 2))]
            for idx, (du, dv) in moves.items():
                handles.append(np.array(idx))
                disp.append(self.frame.to_pixels(np.full(len(idx), du * sign_u), np.full(len(idx), dv)))
            out = _spread(self.vertices[:, :2], np.concatenate(handles), np.concatenate(disp), radius)
            return out * self.is_landmark[:, None]

        bases = {"browInnerUp": lift({
            topo.LEFT_BROW_INNER: (0.0, -0.11), topo.RIGHT_BROW_INNER: (0.0, -0.11),
            topo.LEFT_BROW_OUTER: (0.0, -0.03), topo.RIGHT_BROW_OUTER: (0.0, -0.03),
        })}
        for suffix, brow, inner, outer, side in (
            ("Left", topo.LEFT_BROW, topo.LEFT_BROW_INNER, topo.LEFT_BROW_OUTER, 1.0),
            ("Right", topo.RIGHT_BROW, topo.RIGHT_BROW_INNER, topo.RIGHT_BROW_OUTER, -1.0),
        ):
            bases[f"browDown{suffix}"] = lift({brow: (0.0, 0.07), inner: (-0.03, 0.08)}, sign_u=side)
            bases[f"browOuterUp{suffix}"] = lift({outer: (0.0, -0.11), brow: (0.0, -0.04)})
        return bases

    # --- flow --------------------------------------------------------------------------

    def triangulation(self) -> Delaunay:
        return Delaunay(self.vertices[:, :2], qhull_options="QJ")

    def flow_grid(self, tri: Delaunay, roi: tuple[int, int, int, int], step: int) -> FlowGrid:
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
            (bary.ravel().astype(np.float32), (rows, cols)), shape=(len(points), self.n)
        )
        return FlowGrid(roi, step, (len(ys), len(xs)), matrix)

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
        oval = self.vertices[list(topo.FACE_OVAL)]
        nose = self.vertices[topo.NOSE_TIP]
        centre = np.array([oval[:, 0].mean(), nose[1], oval[:, 2].mean() + 0.7 * self.frame.iod])
        return centre + np.r_[self.frame.v * 0.25 * self.frame.iod, 0.0]


_PARTED_MIN_GAP = 1.5  # pixels between the lips above which the portrait's own cavity is kept
_SPLIT_SAMPLES = 24


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


def _eyes_fit_landmarks(image: np.ndarray, builder: _Builder) -> bool:
    """Whether skin surrounds both eyes' landmark contours: thin bands just above and below
    each lid margin must have the skin's hue (a quarter of their pixels may not: lashes,
    glasses). A drawn eye larger than the landmarks puts its iris in those bands."""
    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)
    face = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(face, [np.round(builder.vertices[list(topo.FACE_OVAL), :2]).astype(np.int32)], 1)
    skin = np.median(lab[face > 0], axis=0)
    iod = builder.frame.iod
    for contour, outward in ((topo.LEFT_EYE_UPPER, -1), (topo.LEFT_EYE_LOWER, 1),
                             (topo.RIGHT_EYE_UPPER, -1), (topo.RIGHT_EYE_LOWER, 1)):
        margin = builder.vertices[list(contour), :2]
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
    builder = _Builder(landmarks, config, image.shape[:2])
    mouth = MouthRig(np.array(topo.UPPER_LIP_INNER), np.array(topo.LOWER_LIP_INNER))
    if builder.lip_gap() > _PARTED_MIN_GAP:
        upper = landmarks[mouth.upper_inner, :2].astype(np.float32)
        lower = landmarks[mouth.lower_inner, :2].astype(np.float32)
        mouth = replace(mouth, cavity_image=image, cavity_upper=upper, cavity_lower=lower,
                        cavity_split=_teeth_split(image, upper, lower))
    bases = {**builder.mouth_bases(), **builder.eye_bases(), **builder.brow_bases()}
    blinks = _eyes_fit_landmarks(image, builder)
    if not blinks:
        for side in ("Left", "Right"):
            bases[f"eyeBlink{side}"] = np.zeros_like(bases[f"eyeBlink{side}"])
    stacked = np.stack([bases[name] for name in BLENDSHAPES])
    # Anchors never move: that is what keeps the background an exact copy.
    stacked[:, builder.head_weight == 0] = 0.0
    stacked = builder.tie(stacked)
    tri = builder.triangulation()
    return Rig(
        image=image,
        frame=builder.frame,
        vertices=builder.vertices.astype(np.float32),
        head_weight=builder.head_weight,
        head_center=builder.head_center().astype(np.float32),
        bases=stacked.astype(np.float32),
        triangles=tri.simplices.astype(np.int32),
        grid=builder.flow_grid(tri, builder.roi, config.grid_step),
        detail_grids=[builder.flow_grid(tri, roi, 1) for roi in builder.eye_rois()],
        mouth=mouth,
        anchor_polygon=builder.anchor_polygon,
        inverse_iterations=config.inverse_iterations,
        blinks=blinks,
    )
