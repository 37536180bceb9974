"""The renderer as a torch module: the GPU form of :class:`engine.render.Renderer`.

``TorchRenderer(rig)(motion)`` maps a batch of motion rows ``(B, NUM_CHANNELS)`` float32 to
frames ``(B, H, W, 3)`` uint8 RGB, with the same maths as the CPU renderer:

1. clip the motion to its limits; blendshape activations -> vertex displacements (a
   weighted sum of the bases); head pose rotates the displaced vertices in 3D about the head centre;
2. forward flow on the coarse grid by gathering the three barycentric vertices of each node
   (the rig's sparse matrix, stored as per-node indices and weights);
3. Newton inversion of the flow (``grid_sample`` of the forward flow and its Jacobian);
4. bilinear upsampling to pixels (``F.interpolate``, half-pixel centres as ``cv2.resize``);
5. ``grid_sample`` of the portrait over the rig's roi, pasted into the untouched frame;
6. the eyes' full-resolution detail warps, feathered in as the CPU renderer does;
7. the mouth compositor: synthesised cavity (gradient, tongue; teeth for closed-lip
   portraits), the portrait's own cavity pieces moved by similarity fits, and a feathered
   mask of the lip opening (OpenCV's polygon rasterisation as per-pixel edge tests, then
   its Gaussian) over a fixed-size window that follows the mouth.

Conventions that make it match OpenCV (the parity risks):

* ``cv2.remap`` samples at pixel-index coordinates (pixel ``i`` centred at ``i``) with
  replicated borders: that is ``grid_sample(align_corners=True, padding_mode="border")``
  with ``x_norm = 2 x / (W - 1) - 1``; the portrait itself is sampled with mirrored borders
  (``BORDER_REFLECT_101``), which is ``padding_mode="reflection"`` under ``align_corners=True``. OpenCV also rounds sample coordinates to 1/32 pixel
  (``INTER_BITS``), which is reproduced, and rounds uint8 results half-up.
* Where the CPU renderer truncates to uint8 between stages (eye feather, mouth blend) the
  module floors, so that both see the same intermediate integers.

Everything data-dependent is arithmetic on tensors (no Python branching on values), so the
module traces to a static ONNX graph with a dynamic batch axis.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.flow import _MAX_STEP, _MIN_JACOBIAN
from engine.motion_space import BLEND_SLICE, HEAD_LIMITS, INDEX
from engine.mouth import (
    _CAVITY_BOTTOM, _CAVITY_TOP, _LOWER_TEETH, _MIN_OPEN_AREA, _SUBPIXEL_BITS, _TONGUE, _UPPER_TEETH,
)
from engine.render import _feather, rotation_matrix
from engine.rig import BASIS_INDEX, FlowGrid, Rig

# Bumped when the maths of this module changes in a way the source hash would not show.
RENDERER_VERSION = 1

_INTER_TAB = 32.0  # OpenCV's sub-pixel resolution for bilinear remap/warpAffine (1 << INTER_BITS)
_POLY_SUBPIXEL = float(1 << _SUBPIXEL_BITS)  # cv2.fillPoly's shift: vertices on a 1/8 px lattice
_FIXED_ONE = 65536.0  # OpenCV's polygon edges step in 16.16 fixed point (XY_SHIFT)
_FAR = 1.0e6  # a coordinate no pixel of a window has
_MOUTH_MARGIN = 3  # pixels around the opening's bounding box, as in engine.mouth


# ------------------------------------------------------------------------------- helpers


def _sum(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum over a short static axis as a chain of adds.

    ONNX Runtime's ReduceSum/ReduceMean/MatMul kernels may sum in an order that depends on
    the whole tensor's shape, batch size included; elementwise adds do not, so a frame never
    depends on which other frames share its batch (and a 1/32 px rounding cannot flip)."""
    terms = values.unbind(dim)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _matmul3(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) @ (B, 3, 3), batch-invariant (see :func:`_sum`)."""
    return _sum(a.unsqueeze(3) * b.unsqueeze(1), 2)


def _colour(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.asarray(values, np.float32)).view(1, 3, 1, 1)


def _quantise(coords: torch.Tensor) -> torch.Tensor:
    """Sample coordinates on OpenCV's 1/32 pixel lattice (round half to even, as cvRound)."""
    return torch.round(coords * _INTER_TAB) / _INTER_TAB


def _round_half_up(values: torch.Tensor) -> torch.Tensor:
    """OpenCV's fixed-point cast to uint8 rounds halves up."""
    return torch.floor(values + 0.5)


def _sample(field: torch.Tensor, size: tuple[int, int], x: torch.Tensor, y: torch.Tensor, quantise: bool = True,
            padding: str = "border") -> torch.Tensor:
    """``cv2.remap(field, x, y, INTER_LINEAR, BORDER_REPLICATE)`` for a batch; with
    ``padding="reflection"``, ``BORDER_REFLECT_101`` (as the portrait is sampled).

    field (B, C, H, W) with ``size`` = (H, W) as Python ints (static under tracing);
    x, y (B, h, w) in pixel-index coordinates -> (B, C, h, w)."""
    height, width = size
    if quantise:
        x, y = _quantise(x), _quantise(y)
    gx = x * (2.0 / max(width - 1, 1)) - 1.0
    gy = y * (2.0 / max(height - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(field, grid, mode="bilinear", padding_mode=padding, align_corners=True)


def _gradient(field: torch.Tensor, dim: int, n: int) -> torch.Tensor:
    """``np.gradient`` along ``dim`` of length ``n`` (central inside, one-sided at the ends)."""
    if n < 2:
        return torch.zeros_like(field)
    first = field.narrow(dim, 1, 1) - field.narrow(dim, 0, 1)
    last = field.narrow(dim, n - 1, 1) - field.narrow(dim, n - 2, 1)
    if n == 2:
        return torch.cat([first, last], dim)
    inner = (field.narrow(dim, 2, n - 2) - field.narrow(dim, 0, n - 2)) * 0.5
    return torch.cat([first, inner, last], dim)


def _paste(frame: torch.Tensor, size: tuple[int, int], patch: torch.Tensor, roi: tuple[int, int, int, int]) -> torch.Tensor:
    """``frame[..., y0:y1, x0:x1] = patch`` for a frame of ``size`` (H, W), without in-place
    writes (static slices only)."""
    x0, y0, x1, y1 = roi
    height, width = size
    middle = (frame[:, :, y0:y1, :x0], patch, frame[:, :, y0:y1, x1:])
    parts = [part for part, size in zip(middle, (x0, x1 - x0, width - x1)) if size > 0]
    band = torch.cat(parts, dim=3) if len(parts) > 1 else parts[0]
    rows = [part for part, size in zip((frame[:, :, :y0], band, frame[:, :, y1:]), (y0, y1 - y0, height - y1)) if size > 0]
    return torch.cat(rows, dim=2) if len(rows) > 1 else rows[0]


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """The 1D kernel ``cv2.GaussianBlur(float image, (0, 0), sigma)`` uses."""
    size = int(np.rint(sigma * 4 * 2 + 1)) | 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-0.5 * x**2 / sigma**2)
    return (kernel / kernel.sum()).astype(np.float32)


def _gather_table(matrix) -> tuple[np.ndarray, np.ndarray]:
    """A CSR matrix with at most K non-zeros a row -> (rows, K) column indices and weights."""
    matrix = matrix.tocsr()
    counts = np.diff(matrix.indptr)
    k = max(int(counts.max()) if len(counts) else 1, 1)
    index = np.zeros((matrix.shape[0], k), np.int64)
    weight = np.zeros((matrix.shape[0], k), np.float32)
    for slot in range(k):
        rows = np.nonzero(counts > slot)[0]
        where = matrix.indptr[rows] + slot
        index[rows, slot] = matrix.indices[where]
        weight[rows, slot] = matrix.data[where]
    return index, weight


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Batched ``np.interp``: x (B, Q), xp (B, K) increasing, fp (B, K) -> (B, Q)."""
    q = x.unsqueeze(1)
    xl, xr = xp[:, :-1].unsqueeze(2), xp[:, 1:].unsqueeze(2)
    fl, fr = fp[:, :-1].unsqueeze(2), fp[:, 1:].unsqueeze(2)
    width = xr - xl
    slope = (fr - fl) / torch.where(width > 0, width, torch.ones_like(width))
    inside = (q >= xl) & (q < xr)
    value = torch.where(inside, fl + (q - xl) * slope, torch.zeros_like(q * slope)).sum(1)
    value = torch.where(x < xp[:, :1], fp[:, :1].expand_as(value), value)
    return torch.where(x >= xp[:, -1:], fp[:, -1:].expand_as(value), value)


def rotation_matrices(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B,) angles -> (B, 3, 3), the same ``rz @ ry @ rx`` as engine.render.rotation_matrix."""
    cp, sp = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cr, sr = torch.cos(roll), torch.sin(roll)
    zero, one = torch.zeros_like(pitch), torch.ones_like(pitch)

    def mat(*entries: torch.Tensor) -> torch.Tensor:
        return torch.stack(entries, dim=-1).view(-1, 3, 3)

    rx = mat(one, zero, zero, zero, cp, -sp, zero, sp, cp)
    ry = mat(cy, zero, -sy, zero, one, zero, sy, zero, cy)
    rz = mat(cr, -sr, zero, sr, cr, zero, zero, zero, one)
    return _matmul3(_matmul3(rz, ry), rx)


# --------------------------------------------------------------------------- grid warps


class GridWarp(nn.Module):
    """One flow grid of the rig (coarse or eye detail): vertex displacement -> warped roi."""

    def __init__(self, grid: FlowGrid, iterations: int) -> None:
        super().__init__()
        index, weight = _gather_table(grid.matrix)
        self.register_buffer("index", torch.from_numpy(index.reshape(-1)), persistent=False)
        self.register_buffer("weight", torch.from_numpy(weight).unsqueeze(-1), persistent=False)
        self.roi = tuple(int(v) for v in grid.roi)
        self.step = int(grid.step)
        self.shape = tuple(int(v) for v in grid.shape)
        self.iterations = int(iterations)
        x0, y0, x1, y1 = self.roi
        self.size = (y1 - y0, x1 - x0)  # rows, cols of pixels
        rows, cols = self.shape
        self.register_buffer("node_x", torch.arange(cols, dtype=torch.float32).view(1, 1, cols), persistent=False)
        self.register_buffer("node_y", torch.arange(rows, dtype=torch.float32).view(1, rows, 1), persistent=False)
        self.register_buffer("pixel_x", (torch.arange(x1 - x0, dtype=torch.float32) + x0).view(1, 1, -1), persistent=False)
        self.register_buffer("pixel_y", (torch.arange(y1 - y0, dtype=torch.float32) + y0).view(1, -1, 1), persistent=False)

    def forward_flow(self, disp: torch.Tensor) -> torch.Tensor:
        """(B, V, 2) pixel displacements -> (B, 2, rows, cols) forward flow in grid units."""
        batch = disp.shape[0]
        rows, cols = self.shape
        picked = torch.index_select(disp, 1, self.index).view(batch, rows * cols, -1, 2)
        flow = _sum(picked * self.weight, 2)
        return flow.view(batch, rows, cols, 2).permute(0, 3, 1, 2) * (1.0 / self.step)

    def invert(self, forward: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Newton's method on p + F(p) = q, as engine.flow.invert_newton: -> backward (x, y)."""
        fx, fy = forward[:, 0], forward[:, 1]
        rows, cols = self.shape
        jacobian = torch.stack(
            [_gradient(fx, 2, cols) + 1.0, _gradient(fx, 1, rows), _gradient(fy, 2, cols), _gradient(fy, 1, rows) + 1.0], dim=1
        )
        field = torch.cat([forward, jacobian], dim=1)
        qx, qy = self.node_x, self.node_y
        sx, sy = qx - fx, qy - fy
        for _ in range(self.iterations):
            sampled = _sample(field, self.shape, sx, sy)
            rx = sx + sampled[:, 0] - qx
            ry = sy + sampled[:, 1] - qy
            a, b, c, d = sampled[:, 2], sampled[:, 3], sampled[:, 4], sampled[:, 5]
            det = a * d - b * c
            floor = torch.where(det < 0, torch.full_like(det, -_MIN_JACOBIAN), torch.full_like(det, _MIN_JACOBIAN))
            det = torch.where(det.abs() < _MIN_JACOBIAN, floor, det)
            dx = (d * rx - b * ry) / det
            dy = (a * ry - c * rx) / det
            norm = torch.sqrt(dx * dx + dy * dy)
            scale = torch.clamp(_MAX_STEP / torch.clamp(norm, min=1e-6), max=1.0)
            sx = sx - dx * scale
            sy = sy - dy * scale
        return sx - qx, sy - qy

    def maps(self, disp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute source pixel coordinates (B, h, w) for every pixel of the roi."""
        bx, by = self.invert(self.forward_flow(disp))
        if self.step != 1:
            backward = torch.stack([bx, by], dim=1) * float(self.step)
            backward = F.interpolate(backward, size=self.size, mode="bilinear", align_corners=False)
            bx, by = backward[:, 0], backward[:, 1]
        return self.pixel_x + bx, self.pixel_y + by

    def forward(self, image: torch.Tensor, image_size: tuple[int, int], disp: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) float, disp (B, V, 2) -> the warped roi (B, 3, h, w), uint8 values."""
        mx, my = self.maps(disp)
        return _round_half_up(_sample(image, image_size, mx, my, padding="reflection"))


# -------------------------------------------------------------------------------- mouth


class PolygonMask(nn.Module):
    """Feathered polygon masks over a pixel window, as ``engine.mouth._polygon_mask`` draws them.

    On a float image ``cv2.fillPoly`` ignores ``LINE_AA`` and draws a binary polygon with
    every vertex rounded to the nearest pixel: a scanline fill (even-odd spans between edge
    crossings stepped in 16.16 fixed point, from ceil(left) to floor(right)) plus each edge
    as an 8-connected Bresenham line. Both are reproduced as per-pixel tests against every
    edge (no loops, no data-dependent shapes) and match OpenCV 4.11 pixel for pixel on
    random polygons, self-intersecting ones included; then the Gaussian blur
    ``cv2.GaussianBlur`` would apply (zero padding instead of reflection at the window edge,
    where the mask is empty anyway)."""

    def __init__(self, blur_sigma: float) -> None:
        super().__init__()
        kernel = torch.from_numpy(_gaussian_kernel(blur_sigma)) if blur_sigma > 0 else torch.ones(1)
        self.pad = (len(kernel) - 1) // 2
        self.register_buffer("kernel_x", kernel.view(1, 1, 1, -1), persistent=False)
        self.register_buffer("kernel_y", kernel.view(1, 1, -1, 1), persistent=False)

    def forward(self, polygon: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """polygon (B, P, 2) absolute pixels; xs (B, w), ys (B, h): the window's pixel
        columns and rows (consecutive integers) -> (B, 1, h, w) mask in [0, 1]."""
        batch = polygon.shape[0]
        rows, cols = ys.shape[1], xs.shape[1]
        # Window-local coordinates on the 1/8 pixel lattice (fillPoly's shift=3).
        local = torch.round(polygon * _POLY_SUBPIXEL) / _POLY_SUBPIXEL
        vx = (local[..., 0] - xs[:, :1]).unsqueeze(-1).unsqueeze(-1)  # (B, P, 1, 1)
        vy = (local[..., 1] - ys[:, :1]).unsqueeze(-1).unsqueeze(-1)
        # OpenCV rounds every vertex to the nearest pixel for both the fill and the outline.
        row_y = torch.floor(vy + 0.5)
        col_x = torch.floor(vx + 0.5)
        # Edge i runs from vertex i-1 to vertex i.
        prow, pcol = torch.roll(row_y, 1, dims=1), torch.roll(col_x, 1, dims=1)
        Y = torch.arange(rows, dtype=torch.float32).view(1, 1, rows, 1)
        X = torch.arange(cols, dtype=torch.float32).view(1, 1, 1, cols)

        # Scanline fill: edge active on rows [top, bottom); its crossing starts at the top
        # vertex's column and steps by a 16.16 fixed-point slope (truncated, as OpenCV's).
        down = prow < row_y
        top = torch.minimum(prow, row_y)
        bottom = torch.maximum(prow, row_y)
        top_x = torch.where(down, pcol, col_x)
        rise = bottom - top
        run = torch.where(down, col_x - pcol, pcol - col_x) * _FIXED_ONE
        quotient = run / torch.where(rise > 0, rise, torch.ones_like(rise))
        slope = torch.sign(quotient) * torch.floor(torch.abs(quotient)) / _FIXED_ONE  # C integer division
        active = (Y >= top) & (Y < bottom)  # (B, P, h, 1)
        crossing = torch.where(active, top_x + (Y - top) * slope, torch.full_like(slope * Y, _FAR))
        # A span between two crossings covers the columns from ceil(left) to floor(right):
        # a pixel is filled if an odd number of crossings lie left of it, or one lies on it.
        left_of = (crossing < X).to(torch.float32).sum(1)  # (B, h, w)
        on_crossing = (crossing == X).to(torch.float32).sum(1)
        fill = left_of - 2.0 * torch.floor(left_of * 0.5) + on_crossing

        # Outline: cv2.LineIterator, 8-connected, stepping along the major axis from the
        # left end point; the minor offset after k steps is floor((2 k minor + major - 1) / (2 major)).
        swap = col_x < pcol
        ax, ay = torch.where(swap, col_x, pcol), torch.where(swap, row_y, prow)
        bx, by = torch.where(swap, pcol, col_x), torch.where(swap, prow, row_y)
        run, lift = bx - ax, by - ay
        sign = torch.where(lift < 0, -torch.ones_like(lift), torch.ones_like(lift))
        lift = lift.abs()
        x_major = run >= lift
        major = torch.where(x_major, run, lift)
        minor = torch.where(x_major, lift, run)
        twice = 2.0 * torch.clamp(major, min=1.0)

        def minor_offset(k: torch.Tensor) -> torch.Tensor:
            offset = torch.floor((2.0 * minor * k + major - 1.0) / twice)
            return torch.where(major > 0, offset, torch.zeros_like(offset))

        k = X - ax  # x-major edges: one row per column
        row_at = torch.where(x_major & (k >= 0) & (k <= major), ay + sign * minor_offset(k), torch.full_like(k, -_FAR))
        k = (Y - ay) * sign  # y-major edges: one column per row
        col_at = torch.where(~x_major & (k >= 0) & (k <= major), ax + minor_offset(k), torch.full_like(k, -_FAR))
        outline = ((Y == row_at) | (X == col_at)).to(torch.float32).sum(1)

        mask = torch.clamp(fill + outline, 0.0, 1.0).view(batch, 1, rows, cols)
        if self.pad:
            mask = F.conv2d(F.conv2d(mask, self.kernel_x, padding=(0, self.pad)), self.kernel_y, padding=(self.pad, 0))
        return mask


def _similarity(rest: torch.Tensor, moved: torch.Tensor, denom: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """engine.mouth._similarity for a batch: rest (K, 2), moved (B, K, 2), ``denom`` the
    rest contour's centred sum of squares -> the linear part as (a, b) with
    L = [[a, -b], [b, a]] (each (B,)) and the translation (B, 2)."""
    src_mean = rest.mean(0)
    dst_mean = _sum(moved, 1) * (1.0 / moved.shape[1])
    src = rest - src_mean
    dst = moved - dst_mean.unsqueeze(1)
    a = _sum(_sum(src * dst, 2), 1) / denom
    b = _sum(src[:, 0] * dst[..., 1] - src[:, 1] * dst[..., 0], 1) / denom
    tx = dst_mean[:, 0] - (a * src_mean[0] - b * src_mean[1])
    ty = dst_mean[:, 1] - (b * src_mean[0] + a * src_mean[1])
    return a, b, torch.stack([tx, ty], dim=1)


class MouthCompositor(nn.Module):
    """engine.mouth.MouthCompositor over a fixed-size window that follows the mouth."""

    def __init__(self, rig: Rig) -> None:
        super().__init__()
        mouth = rig.mouth
        height, width = rig.image.shape[:2]
        self.height, self.width = int(height), int(width)
        self.register_buffer("upper_index", torch.as_tensor(np.asarray(mouth.upper_inner), dtype=torch.int64), persistent=False)
        self.register_buffer("lower_index", torch.as_tensor(np.asarray(mouth.lower_inner), dtype=torch.int64), persistent=False)
        opening = np.concatenate([np.asarray(mouth.upper_inner), np.asarray(mouth.lower_inner)[::-1]])
        self.register_buffer("opening_index", torch.as_tensor(opening, dtype=torch.int64), persistent=False)
        self.window = mouth_window(rig)  # (rows, cols)
        iod = float(rig.frame.iod)
        self.teeth_height = 0.1 * iod
        self.mask = PolygonMask(max(0.5, 0.008 * iod))
        self.has_cavity = mouth.cavity_image is not None
        if self.has_cavity:
            tuck = (0.025 * iod * rig.frame.v).astype(np.float32)
            upper_piece = np.concatenate([mouth.cavity_upper - tuck, mouth.cavity_split[::-1]])
            lower_piece = np.concatenate([mouth.cavity_split, mouth.cavity_lower[::-1] + tuck])
            cavity = np.ascontiguousarray(mouth.cavity_image.transpose(2, 0, 1))[None]
            self.register_buffer("cavity_image", torch.from_numpy(cavity), persistent=False)
            self.denoms = tuple(
                max(float(((contour - contour.mean(0)) ** 2).sum()), 1e-9)
                for contour in (mouth.cavity_lower.astype(np.float32), mouth.cavity_upper.astype(np.float32))
            )
            for name, value in (("upper_piece", upper_piece), ("lower_piece", lower_piece),
                                ("cavity_upper", mouth.cavity_upper), ("cavity_lower", mouth.cavity_lower)):
                self.register_buffer(name, torch.from_numpy(np.asarray(value, np.float32)), persistent=False)
        rows, cols = self.window
        self.register_buffer("window_x", torch.arange(cols, dtype=torch.float32).view(1, -1), persistent=False)
        self.register_buffer("window_y", torch.arange(rows, dtype=torch.float32).view(1, -1), persistent=False)
        for name, value in (("c_top", _CAVITY_TOP), ("c_bottom", _CAVITY_BOTTOM), ("c_tongue", _TONGUE),
                            ("c_upper_teeth", _UPPER_TEETH), ("c_lower_teeth", _LOWER_TEETH)):
            self.register_buffer(name, _colour(value), persistent=False)

    def forward(self, frame: torch.Tensor, positions: torch.Tensor, jaw_open: torch.Tensor) -> torch.Tensor:
        """frame (B, 3, H, W) uint8 values as float; positions (B, V, 2) displaced vertices;
        jaw_open (B,) -> the frame with the mouth interior drawn in."""
        batch = frame.shape[0]
        rows, cols = self.window
        upper = torch.index_select(positions, 1, self.upper_index)
        lower = torch.index_select(positions, 1, self.lower_index)
        opening = torch.index_select(positions, 1, self.opening_index)  # upper, then lower reversed
        ox, oy = opening[..., 0], opening[..., 1]
        area = 0.5 * torch.abs(_sum(ox * torch.roll(oy, 1, dims=1) - oy * torch.roll(ox, 1, dims=1), 1))
        drawn = (area >= _MIN_OPEN_AREA).to(torch.float32).view(batch, 1, 1, 1)

        # The window: top-left at the opening's box less the margin, kept inside the image.
        left = torch.clamp(torch.floor(ox.min(1).values) - _MOUTH_MARGIN, min=0.0, max=float(self.width - cols))
        top_px = torch.clamp(torch.floor(oy.min(1).values) - _MOUTH_MARGIN, min=0.0, max=float(self.height - rows))
        xs = left.unsqueeze(1) + self.window_x  # (B, cols) absolute pixel x
        ys = top_px.unsqueeze(1) + self.window_y  # (B, rows)
        X = xs.view(batch, 1, 1, cols)
        Y = ys.view(batch, 1, rows, 1)

        canvas = self._cavity(X, Y, xs, ys, ox, oy, upper, lower, jaw_open)
        if self.has_cavity:
            canvas = self._paste_piece(canvas, self.lower_piece, self.cavity_lower, self.denoms[0], lower, X, Y, xs, ys)
            canvas = self._paste_piece(canvas, self.upper_piece, self.cavity_upper, self.denoms[1], upper, X, Y, xs, ys)
        alpha = self.mask(opening, xs, ys) * drawn

        index = (Y * float(self.width) + X).to(torch.int64).view(batch, 1, rows * cols).expand(batch, 3, rows * cols)
        flat = frame.reshape(batch, 3, self.height * self.width)
        region = torch.gather(flat, 2, index).view(batch, 3, rows, cols)
        blended = torch.floor(torch.clamp(region + alpha * (canvas - region), 0.0, 255.0))
        flat = torch.scatter(flat, 2, index, blended.reshape(batch, 3, rows * cols))
        return flat.view(batch, 3, self.height, self.width)

    def _cavity(self, X, Y, xs, ys, ox, oy, upper, lower, jaw_open) -> torch.Tensor:
        batch = X.shape[0]
        top = oy.min(1).values.view(batch, 1, 1, 1)
        bottom = oy.max(1).values.view(batch, 1, 1, 1)
        gap = torch.clamp(bottom - top, min=1.0)
        t = torch.clamp((Y - top) / gap, 0.0, 1.0)
        canvas = self.c_top + t * (self.c_bottom - self.c_top)
        centre_x = (_sum(ox, 1) * (1.0 / ox.shape[1])).view(batch, 1, 1, 1)
        half_width = torch.clamp((ox.max(1).values - ox.min(1).values) * 0.5, min=1.0).view(batch, 1, 1, 1)
        across = torch.clamp(torch.abs(X - centre_x) / half_width, 0.0, 1.0)
        canvas = canvas * (1.0 - 0.45 * across**2)
        tongue = torch.exp(-(((X - centre_x) / (0.45 * half_width)) ** 2) - (((Y - bottom) / (0.35 * gap)) ** 2))
        canvas = canvas + 0.6 * tongue * (self.c_tongue - canvas)
        if not self.has_cavity:
            canvas = self._synthetic_teeth(canvas, X, Y, upper, lower, centre_x, half_width, gap, jaw_open)
        return canvas

    def _synthetic_teeth(self, canvas, X, Y, upper, lower, centre_x, half_width, gap, jaw_open) -> torch.Tensor:
        batch = X.shape[0]
        across = torch.clamp(torch.abs(X - centre_x) / half_width, 0.0, 1.0)  # (B, 1, 1, w)
        shade = 1.0 - 0.6 * across**2
        height = torch.clamp(gap * 0.42, max=self.teeth_height)

        def edge(contour: torch.Tensor) -> torch.Tensor:
            xp, order = torch.sort(contour[..., 0], dim=1)
            fp = torch.gather(contour[..., 1], 1, order)
            return _interp(X.view(batch, -1), xp, fp).view(batch, 1, 1, -1)

        upper_edge, lower_edge = edge(upper), edge(lower)
        visible = (across < 0.8).to(torch.float32)
        below_lip = Y - upper_edge
        upper_alpha = torch.clamp(1.0 - (below_lip - height * (1.0 - 0.5 * across**2)) / 1.5, 0.0, 1.0)
        upper_alpha = upper_alpha * (below_lip > -1).to(torch.float32) * visible * (1.0 - across**4)
        canvas = canvas + upper_alpha * (self.c_upper_teeth * shade - canvas)
        lower_amount = torch.clamp((jaw_open - 0.25) / 0.35, 0.0, 1.0).view(batch, 1, 1, 1)
        above_lip = lower_edge - Y
        lower_alpha = torch.clamp(1.0 - (above_lip - 0.5 * height * lower_amount) / 1.5, 0.0, 1.0)
        lower_alpha = lower_alpha * (above_lip > -1).to(torch.float32) * visible * (1.0 - across**2) * 0.85
        lower_alpha = lower_alpha * (lower_amount > 0).to(torch.float32)
        return canvas + lower_alpha * (self.c_lower_teeth * shade - canvas)

    def _paste_piece(self, canvas, piece, rest, denom, moved, X, Y, xs, ys) -> torch.Tensor:
        """Move one part of the portrait's own cavity with its lip (similarity fit)."""
        batch = X.shape[0]
        a, b, shift = _similarity(rest, moved, denom)
        inv = 1.0 / torch.clamp(a * a + b * b, min=1e-12)
        a4, b4, inv4 = a.view(batch, 1, 1), b.view(batch, 1, 1), inv.view(batch, 1, 1)
        dx = X.view(batch, 1, -1) - shift[:, 0].view(batch, 1, 1)
        dy = Y.view(batch, -1, 1) - shift[:, 1].view(batch, 1, 1)
        src_x = (a4 * dx + b4 * dy) * inv4  # L^-1 = [[a, b], [-b, a]] / (a² + b²)
        src_y = (a4 * dy - b4 * dx) * inv4
        cavity = self.cavity_image.to(torch.float32).expand(batch, -1, -1, -1)
        warped = _round_half_up(_sample(cavity, (self.height, self.width), src_x, src_y))
        px, py = piece[:, 0], piece[:, 1]
        polygon = torch.stack(
            [a.view(batch, 1) * px - b.view(batch, 1) * py + shift[:, :1],
             b.view(batch, 1) * px + a.view(batch, 1) * py + shift[:, 1:]], dim=-1,
        )
        alpha = self.mask(polygon, xs, ys)
        return canvas + alpha * (warped - canvas)


def mouth_window(rig: Rig) -> tuple[int, int]:
    """(rows, cols) of a window that holds the compositor's box for any valid motion.

    The box spans the inner-lip polygon plus a margin. Lip landmarks follow the head
    rigidly: two of them end up ``s R (q_i - q_j)`` apart, where ``s <= e^0.1``, ``R`` is a
    rotation within the pose limits and ``q`` are the rest vertices plus blendshape
    displacements (activations in [0, 1], so each coordinate difference is at most its rest
    difference plus the summed |difference| of the two vertices' bases). Bounding |R|
    entry-wise over the pose box bounds each image axis separately."""
    mouth = rig.mouth
    index = np.concatenate([np.asarray(mouth.upper_inner), np.asarray(mouth.lower_inner)])
    height, width = rig.image.shape[:2]
    if np.any(rig.head_weight[index] < 1.0):  # pragma: no cover - face landmarks always follow the head
        return height, width
    rest = rig.vertices[index].astype(np.float64)
    bases = rig.bases[:, index].astype(np.float64)  # (S, n, 2)
    delta = np.abs(rest[:, None] - rest[None])  # (n, n, 3)
    delta[..., :2] += np.abs(bases[:, :, None] - bases[:, None]).sum(0)
    limit = float(HEAD_LIMITS[0:3].max())
    angles = np.linspace(-limit, limit, 9)
    rotation = np.max([np.abs(rotation_matrix(p, y, r)) for p in angles for y in angles for r in angles], axis=0)
    rotation = np.minimum(rotation * 1.02, 1.0)  # the grid can miss an interior maximum by a hair
    extent = math.exp(float(HEAD_LIMITS[5])) * (delta @ rotation[:2].T).max(axis=(0, 1))  # (x, y)
    cols, rows = (int(math.ceil(e)) + 2 + 2 * _MOUTH_MARGIN + 1 for e in extent)
    return min(rows, height), min(cols, width)


# ------------------------------------------------------------------------------ renderer


class TorchRenderer(nn.Module):
    """The whole renderer: motion (B, NUM_CHANNELS) float32 -> frames (B, H, W, 3) uint8."""

    def __init__(self, rig: Rig) -> None:
        super().__init__()
        height, width = rig.image.shape[:2]
        self.height, self.width = int(height), int(width)
        image = np.ascontiguousarray(rig.image.transpose(2, 0, 1))[None]
        self.register_buffer("image", torch.from_numpy(image), persistent=False)  # uint8
        self.register_buffer("vertices", torch.from_numpy(rig.vertices.astype(np.float32)), persistent=False)
        self.register_buffer("head_weight", torch.from_numpy(rig.head_weight.astype(np.float32)).view(1, -1, 1), persistent=False)
        self.register_buffer("head_center", torch.from_numpy(rig.head_center.astype(np.float32)).view(1, 1, 3), persistent=False)
        bases = rig.bases.astype(np.float32)
        self.num_vertices = int(bases.shape[1])
        self.register_buffer("bases", torch.from_numpy(bases.reshape(len(bases), -1)), persistent=False)
        self.register_buffer("head_limits", torch.from_numpy(HEAD_LIMITS.copy()).view(1, -1), persistent=False)
        self.face_width = float(rig.face_width)
        self.jaw = int(BASIS_INDEX["jawOpen"])
        self.close = int(BASIS_INDEX["mouthClose"])
        self.jaw_channel = int(INDEX["jawOpen"])
        self.blend_start = int(BLEND_SLICE.start)
        self.coarse = GridWarp(rig.grid, rig.inverse_iterations)
        self.details = nn.ModuleList(GridWarp(grid, rig.inverse_iterations) for grid in rig.detail_grids)
        for i, grid in enumerate(rig.detail_grids):
            x0, y0, x1, y1 = grid.roi
            weight = _feather(x1 - x0, y1 - y0)[..., 0]
            self.register_buffer(f"feather_{i}", torch.from_numpy(weight).view(1, 1, y1 - y0, x1 - x0), persistent=False)
        self.mouth = MouthCompositor(rig)

    def vertex_displacement(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, NUM_CHANNELS) clipped motion -> (B, V, 2), as Renderer.vertex_displacement."""
        batch = motion.shape[0]
        act = motion[:, self.blend_start:]
        close = act[:, self.close:self.close + 1] * act[:, self.jaw:self.jaw + 1]
        act = torch.cat([act[:, :self.close], close, act[:, self.close + 1:]], dim=1)
        disp = _sum(act.unsqueeze(2) * self.bases, 1).view(batch, self.num_vertices, 2)
        pitch, yaw, roll, tx, ty, log_scale = (motion[:, i] for i in range(6))
        rotation = rotation_matrices(pitch, yaw, roll) * torch.exp(log_scale).view(batch, 1, 1)
        points = self.vertices.unsqueeze(0) + torch.cat([disp, torch.zeros_like(disp[..., :1])], dim=2)
        centred = points - self.head_center
        posed = _sum(centred.unsqueeze(2) * rotation.unsqueeze(1), 3) + self.head_center  # centred @ R^T
        shift = torch.stack([tx, ty], dim=1).view(batch, 1, 2) * self.face_width
        head = posed[..., :2] + shift - points[..., :2]
        return disp + self.head_weight * head

    def clip(self, motion: torch.Tensor) -> torch.Tensor:
        head = torch.maximum(torch.minimum(motion[:, :6], self.head_limits), -self.head_limits)
        return torch.cat([head, torch.clamp(motion[:, 6:], 0.0, 1.0)], dim=1)

    def render_float(self, motion: torch.Tensor) -> torch.Tensor:
        """(B, C) -> (B, 3, H, W) float32 holding integer values 0..255."""
        motion = self.clip(motion.to(torch.float32))
        batch = motion.shape[0]
        disp = self.vertex_displacement(motion)
        image = self.image.to(torch.float32).expand(batch, -1, -1, -1)
        size = (self.height, self.width)
        frame = _paste(image, size, self.coarse(image, size, disp), self.coarse.roi)
        for i, detail in enumerate(self.details):
            x0, y0, x1, y1 = detail.roi
            region = frame[:, :, y0:y1, x0:x1]
            weight = getattr(self, f"feather_{i}")
            patch = torch.floor(region + weight * (detail(image, size, disp) - region))
            frame = _paste(frame, size, patch, detail.roi)
        positions = self.vertices[:, :2].unsqueeze(0) + disp
        return self.mouth(frame, positions, motion[:, self.jaw_channel])

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        frames = self.render_float(motion)
        return torch.clamp(frames, 0.0, 255.0).permute(0, 2, 3, 1).to(torch.uint8)


__all__ = ["GridWarp", "MouthCompositor", "PolygonMask", "RENDERER_VERSION", "TorchRenderer", "mouth_window"]
