"""The renderer: one motion frame -> one image of the portrait in that pose.

Per frame: blendshape activations -> vertex displacements (one small matrix product) ->
head pose applied to the displaced vertices in 3D -> dense forward flow on a coarse grid
through the rig's barycentric weights -> inverted by fixed-point iteration -> upsampled ->
``cv2.remap`` of the moving region only -> mouth compositor. Pixels outside the rig's anchor
ring are copied from the portrait, never resampled.
"""

from __future__ import annotations

import cv2
import numpy as np

from engine.flow import forward_flow, invert_newton, node_grid, upsample
from engine.motion_space import BLEND_SLICE, INDEX, clip_frames
from engine.mouth import MouthCompositor
from engine.rig import BASIS_INDEX, Rig


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


class Renderer:
    """Renders motion frames of one portrait. Not thread-safe: one per worker."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.mouth = MouthCompositor(rig)
        x0, y0, x1, y1 = rig.roi
        self._roi_size = (x1 - x0, y1 - y0)
        self._pixel_grid = node_grid(y1 - y0, x1 - x0) + np.array([x0, y0], np.float32)
        self._nodes = node_grid(*rig.grid_shape)
        self._bases = rig.bases.reshape(len(rig.bases), -1)
        self._jaw, self._close = BASIS_INDEX["jawOpen"], BASIS_INDEX["mouthClose"]

    def vertex_displacement(self, motion: np.ndarray) -> np.ndarray:
        """(V, 2) pixel displacement of every rig vertex for one motion frame."""
        rig = self.rig
        activations = motion[BLEND_SLICE].copy()
        # mouthClose seals only what the jaw opened, as in ARKit.
        activations[self._close] *= activations[self._jaw]
        disp = (activations @ self._bases).reshape(-1, 2)
        pitch, yaw, roll, tx, ty, log_scale = (float(v) for v in motion[:6])
        points = rig.vertices.copy()
        points[:, :2] += disp
        rotation = rotation_matrix(pitch, yaw, roll) * np.exp(log_scale)
        posed = (points - rig.head_center) @ rotation.T + rig.head_center
        posed[:, :2] += np.array([tx, ty]) * rig.face_width
        return disp + rig.head_weight[:, None] * (posed[:, :2] - points[:, :2])

    def render(self, motion: np.ndarray) -> np.ndarray:
        """One motion frame (NUM_CHANNELS,) -> (H, W, 3) uint8 RGB."""
        motion = clip_frames(motion)
        rig = self.rig
        disp = self.vertex_displacement(motion)
        forward = forward_flow(rig.flow_matrix, disp, rig.grid_shape, rig.grid_step)
        backward = invert_newton(forward, self._nodes, rig.inverse_iterations)
        maps = self._pixel_grid + upsample(backward, rig.grid_step, self._roi_size)
        x0, y0, x1, y1 = rig.roi
        out = rig.image.copy()
        out[y0:y1, x0:x1] = cv2.remap(rig.image, maps[..., 0], maps[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        self.mouth.composite(out, rig.vertices[:, :2] + disp, float(motion[INDEX["jawOpen"]]))
        return out
