"""The rig's blendshape bases: one displacement field per ARKit blendshape on the mesh.

Each basis is the pixel displacement of every vertex at activation 1, authored in the
canonical face frame (so in inter-ocular distances, scaled to the portrait): lips, cheeks and
brows move a few handles and the skin around them follows with a Gaussian falloff; the jaw
and the lids move along smooth ramps across the face.
"""

from __future__ import annotations

import cv2
import numpy as np

from emolive.engine import face_topology as topo
from emolive.engine.rig_mesh import RigMesh, smoothstep

# Share of the eye opening the warp closes at eyeBlink = 1: the lid skin drops a little and
# the eye is squeezed only that much; engine.eyelids draws the lid over the rest.
BLINK_WARP_CLOSE = 0.3


def blendshape_bases(mesh: RigMesh) -> dict[str, np.ndarray]:
    """Every blendshape's (V, 2) pixel displacement at activation 1, by name."""
    author = _Author(mesh)
    return {**author.mouth_bases(), **author.eye_bases(), **author.brow_bases()}


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


class _Author:
    """Authors the bases on one mesh; one method per group of blendshapes."""

    def __init__(self, mesh: RigMesh) -> None:
        # The mesh's arrays under the names every basis below reads.
        self.config, self.frame, self.landmarks = mesh.config, mesh.frame, mesh.landmarks
        self.vertices, self.face, self.n = mesh.vertices, mesh.face, mesh.n
        self.is_landmark, self.head_weight = mesh.is_landmark, mesh.head_weight
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

    def _lip_profile(self, idx: np.ndarray) -> np.ndarray:
        """1 at the lips' centre, falling towards the corners: mouths open as an oval."""
        x = (self.face[idx, 0] - self.mouth_a) / self.mouth_half_width
        return np.clip(1 - 0.65 * x**2, 0.3, 1.0)

    def _side_weight(self, idx: np.ndarray, side: int) -> np.ndarray:
        """How much a lip vertex belongs to one side: side=+1 subject's left (image right)."""
        x = side * (self.face[idx, 0] - self.mouth_a) / self.mouth_half_width
        return smoothstep(-0.3, 0.9, x)

    def jaw_weight(self) -> np.ndarray:
        """How much each vertex rides the jaw (the lips get their own profile)."""
        a = np.abs(self.face[:, 0] - self.mouth_a)
        lower_outer_b = self.face[list(topo.LOWER_LIP_MID), 1].max()
        weight = smoothstep(self.corner_b - 0.05, lower_outer_b, self.face[:, 1])
        weight *= 1 - smoothstep(0.35, 1.35, a)
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
                "upper_outer": (zero(lips["upper_outer"]), -0.055 * smoothstep(-0.5, 0.6, side * (self.face[lips["upper_outer"], 0] - self.mouth_a) / self.mouth_half_width)),
                "upper_inner": (zero(lips["upper_inner"]), -0.06 * smoothstep(-0.5, 0.6, side * (self.face[lips["upper_inner"], 0] - self.mouth_a) / self.mouth_half_width)),
            })
            bases[f"mouthLowerDown{suffix}"] = self._lips_basis({
                "lower_inner": (zero(lips["lower_inner"]), 0.07 * smoothstep(-0.5, 0.6, side * (self.face[lips["lower_inner"], 0] - self.mouth_a) / self.mouth_half_width)),
                "lower_outer": (zero(lips["lower_outer"]), 0.06 * smoothstep(-0.5, 0.6, side * (self.face[lips["lower_outer"], 0] - self.mouth_a) / self.mouth_half_width)),
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
        along = smoothstep(-0.15, 0.05, x) * (1 - smoothstep(0.95, 1.15, x))
        above = y <= y_upper
        inside = (y > y_upper) & (y < y_lower)
        below = y >= y_lower
        span = np.maximum(y_lower - y_upper, 1e-6)
        shift = np.zeros(self.n)
        travel = close * opening
        shift[above] = travel[above] * (1 - smoothstep(0, lid, y_upper[above] - y[above]))
        shift[inside] = travel[inside] * (y_lower[inside] - y[inside]) / span[inside]
        lift = raise_lower * opening.max()
        if lift:
            shift[inside] -= lift * (y[inside] - y_upper[inside]) / span[inside]
            shift[below] -= lift * (1 - smoothstep(0, 1.2 * lid, y[below] - y_lower[below]))
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
