"""The renderer: one motion frame -> one image of the portrait in that pose.

Per frame: blendshape activations -> vertex displacements (one small matrix product) ->
head pose applied to the displaced vertices in 3D -> dense forward flow on a coarse grid
through the rig's barycentric weights -> inverted by fixed-point iteration -> upsampled ->
``cv2.remap`` of the moving region only -> eyelid and mouth compositors. Pixels outside the rig's anchor
ring are copied from the portrait, never resampled.
"""

from __future__ import annotations

import cv2
import numpy as np

from emolive.engine.eyelids import EyelidCompositor
from emolive.engine.flow import forward_flow, invert_newton, node_grid, upsample
from emolive.engine.motion_space import BLEND_SLICE, INDEX, clip_frames
from emolive.engine.mouth import MouthCompositor
from emolive.engine.rig import BASIS_INDEX, FlowGrid, Rig


def rotation_matrix(pitch: float, yaw: float, roll: float) -> np.ndarray:
    """Image-space rotation (x right, y down, z away from the camera): yaw > 0 turns the face
    towards image right, pitch > 0 nods the chin down, roll > 0 tilts clockwise."""
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    cr, sr = np.cos(roll), np.sin(roll)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ ry @ rx


_DETAIL_FEATHER = 4  # pixels over which a fine patch blends into the coarse warp
_LID_DETAIL_THRESHOLD = 0.02


class _GridWarp:
    """Warps the rig image over one flow grid's roi."""

    def __init__(self, image: np.ndarray, grid: FlowGrid, iterations: int) -> None:
        self.image = image
        self.grid = grid
        self.iterations = iterations
        x0, y0, x1, y1 = grid.roi
        self.size = (x1 - x0, y1 - y0)
        self.pixels = node_grid(y1 - y0, x1 - x0) + np.array([x0, y0], np.float32)
        self.nodes = node_grid(*grid.shape)

    def warp(self, disp: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The warped roi, written into ``out`` (a view of the roi) when given."""
        grid = self.grid
        forward = forward_flow(grid.matrix, disp, grid.shape, grid.step)
        backward = invert_newton(forward, self.nodes, self.iterations)
        maps = upsample(backward, grid.step, self.size)
        maps += self.pixels
        # One two-channel map: split x and y planes would each be copied by OpenCV first.
        # Samples past the image mirror it: a replicated edge pixel smears into a streak.
        return cv2.remap(self.image, maps, None, cv2.INTER_LINEAR, dst=out, borderMode=cv2.BORDER_REFLECT_101)


def _feather(width: int, height: int) -> np.ndarray:
    """(H, W, 1) weights: 1 inside, ramping to 0 at the border."""
    ramp_x = np.minimum(np.arange(width) + 1, np.arange(width)[::-1] + 1) / _DETAIL_FEATHER
    ramp_y = np.minimum(np.arange(height) + 1, np.arange(height)[::-1] + 1) / _DETAIL_FEATHER
    return np.clip(np.minimum.outer(ramp_y, ramp_x), 0, 1).astype(np.float32)[..., None]


class Renderer:
    """Renders motion frames of one portrait. Not thread-safe: one per worker."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.mouth = MouthCompositor(rig)
        self.eyelids = EyelidCompositor(rig)
        self._coarse = _GridWarp(rig.image, rig.grid, rig.inverse_iterations)
        self._details = [(_GridWarp(rig.image, grid, rig.inverse_iterations), _feather(*_size(grid))) for grid in rig.detail_grids]
        self._bases = rig.bases.reshape(len(rig.bases), -1)
        self._jaw, self._close = BASIS_INDEX["jawOpen"], BASIS_INDEX["mouthClose"]
        self._lid_channels = [INDEX[f"{shape}{side}"] for shape in ("eyeBlink", "eyeWide", "cheekSquint") for side in ("Left", "Right")]

    def vertex_displacement(self, motion: np.ndarray) -> np.ndarray:
        """(V, 2) pixel displacement of every rig vertex for one motion frame."""
        rig = self.rig
        activations = motion[BLEND_SLICE].copy()
        # mouthClose seals only what the jaw opened, as in ARKit: lips the portrait shows
        # parted stay as the portrait has them.
        activations[self._close] *= activations[self._jaw]
        # einsum, not @: this product is too small for BLAS, whose idle worker thread would
        # otherwise spin between frames and eat a core.
        disp = np.einsum("b,bv->v", activations, self._bases).reshape(-1, 2)
        pitch, yaw, roll, tx, ty, log_scale = (float(v) for v in motion[:6])
        points = rig.vertices.copy()
        points[:, :2] += disp
        rotation = rotation_matrix(pitch, yaw, roll) * np.exp(log_scale)
        posed = np.einsum("vi,ji->vj", points - rig.head_center, rotation) + rig.head_center
        posed[:, :2] += np.array([tx, ty]) * rig.face_width
        return disp + rig.head_weight[:, None] * (posed[:, :2] - points[:, :2])

    def render(self, motion: np.ndarray) -> np.ndarray:
        """One motion frame (NUM_CHANNELS,) -> (H, W, 3) uint8 RGB."""
        motion = clip_frames(motion)
        disp = self.vertex_displacement(motion)
        out = self.rig.image.copy()
        x0, y0, x1, y1 = self.rig.grid.roi
        self._coarse.warp(disp, out[y0:y1, x0:x1])
        # The coarse grid follows the eyes well while the lids are still; only a moving lid
        # needs the fine patches.
        lids_moving = float(motion[self._lid_channels].max()) > _LID_DETAIL_THRESHOLD
        for detail, weight in self._details if lids_moving else ():
            x0, y0, x1, y1 = detail.grid.roi
            region = out[y0:y1, x0:x1].astype(np.float32)
            out[y0:y1, x0:x1] = (region + weight * (detail.warp(disp) - region)).astype(np.uint8)
        positions = self.rig.vertices[:, :2] + disp
        self.eyelids.composite(out, positions, motion)
        self.mouth.composite(out, positions)
        return out


def _size(grid: FlowGrid) -> tuple[int, int]:
    x0, y0, x1, y1 = grid.roi
    return x1 - x0, y1 - y0
