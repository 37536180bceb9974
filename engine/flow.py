"""Dense flow from vertex displacements, and its inversion for backward warping.

The rig gives a forward map x -> x + F(x) (where each rest pixel goes). ``cv2.remap`` needs
the backward map (where each output pixel comes from): the solution p of p + F(p) = q.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import sparse

_MIN_JACOBIAN = 0.04  # a lid squeezed to 4 % of its height still inverts stably
_MAX_STEP = 6.0  # grid units; keeps a Newton step inside the neighbourhood it was linearised in
_NEAR_MAX_STEP2 = 0.99 * _MAX_STEP**2  # squared step length above which the exact length is checked


def node_grid(rows: int, cols: int) -> np.ndarray:
    """(rows, cols, 2) float32 grid of (x, y) node indices."""
    gx, gy = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    return np.stack([gx, gy], axis=-1)


def forward_flow(matrix: sparse.csr_matrix, disp: np.ndarray, shape: tuple[int, int], step: int) -> np.ndarray:
    """Vertex displacements (V, 2) in pixels -> forward flow on the grid, in grid units."""
    flow = np.asarray(matrix @ disp, dtype=np.float32).reshape(shape[0], shape[1], 2)
    return flow / step


def invert_newton(forward: np.ndarray, nodes: np.ndarray, iterations: int) -> np.ndarray:
    """Backward flow (grid units) by Newton's method on p + F(p) = q.

    Plain fixed-point iteration crawls where the warp squeezes tissue (a closing eyelid
    compresses the eye to a few percent of its height); Newton, with the Jacobian of the
    piecewise-linear forward map, lands in one or two steps."""
    # F and its Jacobian are sampled together (one remap of 6 channels, not two), and the
    # arithmetic runs on contiguous planes: the same numbers as per-channel sampling, in
    # fewer and cheaper numpy calls (this runs for every frame, holding the GIL).
    planes = np.ascontiguousarray(np.moveaxis(forward, -1, 0))
    dx, dy = np.gradient(planes, axis=2), np.gradient(planes, axis=1)
    dx[0] += 1
    dy[1] += 1
    field = cv2.merge([planes[0], planes[1], dx[0], dy[0], dx[1], dy[1]])
    q = np.ascontiguousarray(np.moveaxis(nodes, -1, 0))
    s = q - planes  # (2, rows, cols): where each node's source is
    step = np.empty_like(s)
    for _ in range(iterations):
        sampled = np.moveaxis(cv2.remap(field, s[0], s[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE), -1, 0).copy()
        rx, ry = s + sampled[:2] - q
        a, b, c, d = sampled[2:]
        det = a * d - b * c
        small = np.abs(det) < _MIN_JACOBIAN
        if small.any():
            det = np.where(small, np.copysign(_MIN_JACOBIAN, det), det)
        np.divide(d * rx - b * ry, det, out=step[0])
        np.divide(a * ry - c * rx, det, out=step[1])
        # Only a step longer than _MAX_STEP is shortened; the exact test runs only when some
        # step comes near it.
        if float((step[0] * step[0] + step[1] * step[1]).max()) > _NEAR_MAX_STEP2:
            step *= np.minimum(1.0, _MAX_STEP / np.maximum(np.hypot(step[0], step[1]), 1e-6))
        s -= step
    return cv2.merge(list(s - q))


def upsample(backward: np.ndarray, step: int, size: tuple[int, int]) -> np.ndarray:
    """Grid-unit backward flow -> per-pixel backward flow in pixels over a (width, height) roi."""
    if step == 1:
        return backward
    return cv2.resize(backward * step, size, interpolation=cv2.INTER_LINEAR)
