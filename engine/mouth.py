"""The mouth compositor: what shows between the lips once the warp has moved them.

A warp can only stretch the pixels the portrait has; an opening mouth needs pixels it does
not have. Whatever the mouth opens beyond the portrait's own opening is drawn here; at rest
nothing is, so the rest pose is the portrait's own pixels.

The interior is a few *pieces*, each an image in the portrait's rest coordinates that rides
one lip (a similarity fit to that lip's inner contour) over a cavity that darkens with depth
and holds a tongue:

* a portrait with parted lips shows its own cavity: the part above a split line rides the
  upper lip (upper teeth), the part below rides the jaw, with a synthetic lower row in the
  portrait's own tooth colour standing on the split line;
* a closed-mouth portrait gets a synthetic dental arch, drawn once per avatar: individual
  upper and lower teeth whose widths follow an arch seen in perspective, with gaps, a gum
  line under the lip's rest edge (so the lip covers the top of the upper row), shading
  towards the corners and the gums. Its colours come from the portrait (tooth tone from the
  sclera, gums, tongue and cavity from the lips); a greyscale portrait stays grey and a
  flat-shaded drawing gets flat teeth.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from emolive.engine import face_topology as topo
from emolive.engine.rig import MouthRig, Rig

_SUBPIXEL_BITS = 3

# The dental arch in millimetres, from the midline outwards: crown widths along the arch and
# the length of crown below the upper lip's rest edge (above the lower lip's, for the lower
# row). Half the mouth's inner width is taken as _HALF_MOUTH_MM, which is also the arch radius.
_UPPER_WIDTHS_MM = (8.5, 6.5, 7.5, 7.0, 6.5, 10.0)
_UPPER_CROWNS_MM = (8.0, 7.0, 7.5, 6.0, 5.5, 4.5)
_LOWER_WIDTHS_MM = (5.0, 5.5, 6.5, 7.0, 7.0, 11.0)
_LOWER_CROWNS_MM = (3.5, 3.5, 3.8, 3.2, 2.8, 2.2)
_HALF_MOUTH_MM = 25.0
_LOWER_ARCH = 0.9  # the lower arch sits inside the upper one
_GUM_LINE_MM = 2.0  # gum margin above the lip's rest edge, papillae reach 1.2 mm lower
_GUM_DEPTH_MM = 6.0  # gum drawn beyond the margin, all of it under the lip at rest
_CORNER_START = 0.82  # |across| where the teeth start to vanish into the corners

# Below this chroma (mean |channel - grey| over the face) a portrait is greyscale.
_GREY_CHROMA = 2.0
# A portrait is flat-shaded (a drawing, a cel-shaded anime face) when this share of its face
# has a luminance gradient under _FLAT_GRADIENT levels per pixel (photos: about 1 %).
_FLAT_GRADIENT = 0.5
_FLAT_SHARE = 0.25


@dataclass(frozen=True)
class MouthStyle:
    """Colours (float32 RGB) and shading of a portrait's mouth interior."""

    teeth: np.ndarray
    gum: np.ndarray
    tongue: np.ndarray
    cavity_top: np.ndarray
    cavity_bottom: np.ndarray
    flat: bool
    # Tongue mask as clip(gain * mound - offset): soft for photos, nearly hard-edged when flat.
    tongue_gain: float
    tongue_offset: float
    corner_shade: float  # how much darker the cavity is at the corners than at the centre


@dataclass
class MouthPiece:
    """An image that rides one lip. ``image`` is RGB (alpha from ``polygon``) or RGBA (its
    own alpha; zero at the border); ``origin`` is its top-left in rest pixels."""

    image: np.ndarray
    origin: np.ndarray  # (2,) float32
    rest: np.ndarray  # (K, 2) the lip's inner contour at rest, pixels
    lip: str  # "upper" or "lower"
    polygon: np.ndarray | None  # (P, 2) rest pixels, for RGB pieces


def _polygon_mask(shape: tuple[int, int], polygon: np.ndarray, blur: float) -> np.ndarray:
    """An anti-aliased float mask of a polygon given in local pixel coordinates."""
    mask = np.zeros(shape, np.float32)
    points = np.round(polygon * (1 << _SUBPIXEL_BITS)).astype(np.int32)
    cv2.fillPoly(mask, [points], 1.0, lineType=cv2.LINE_AA, shift=_SUBPIXEL_BITS)
    if blur > 0:
        mask = cv2.GaussianBlur(mask, (0, 0), blur)
    return mask


def _similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation taking ``source`` to ``target``
    (2 x 3 affine): a lip contour moves rigidly enough for the teeth behind it."""
    src_mean, dst_mean = source.mean(0), target.mean(0)
    src, dst = source - src_mean, target - dst_mean
    denom = max(float((src**2).sum()), 1e-9)
    a = float((src * dst).sum()) / denom
    b = float((src[:, 0] * dst[:, 1] - src[:, 1] * dst[:, 0]).sum()) / denom
    linear = np.array([[a, -b], [b, a]], np.float32)
    return np.concatenate([linear, (dst_mean - linear @ src_mean)[:, None]], axis=1).astype(np.float32)


def _shoelace(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], np.float32)


def _median_colour(image: np.ndarray, mask: np.ndarray, fallback: tuple[float, float, float]) -> np.ndarray:
    pixels = image[mask > 0]
    return np.median(pixels, axis=0).astype(np.float32) if len(pixels) >= 8 else np.array(fallback, np.float32)


def portrait_style(image: np.ndarray, landmarks: np.ndarray) -> MouthStyle:
    """The mouth interior's colours and shading, read from the portrait (H, W, 3 uint8 RGB)
    and its (478, 2+) pixel landmarks."""
    lm = landmarks[:, :2].astype(np.float32)
    shape = image.shape[:2]

    def fill(*contours: tuple[int, ...]) -> np.ndarray:
        mask = np.zeros(shape, np.uint8)
        for contour in contours:
            cv2.fillPoly(mask, [np.round(lm[list(contour)]).astype(np.int32)], 1)
        return mask

    face = fill(topo.FACE_OVAL)
    skin = face.astype(bool)
    pixels = image[skin].astype(np.float32)
    grey = float(np.abs(pixels - pixels.mean(1, keepdims=True)).mean()) < _GREY_CHROMA
    luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = np.hypot(cv2.Sobel(luma, cv2.CV_32F, 1, 0), cv2.Sobel(luma, cv2.CV_32F, 0, 1)) / 8
    flat = float((gradient[skin] < _FLAT_GRADIENT).mean()) > _FLAT_SHARE

    # Sclera: the brightest part of each eye opening, the iris left out.
    eyes = fill(topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER[::-1], topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER[::-1])
    for iris in (topo.LEFT_IRIS, topo.RIGHT_IRIS):
        centre = lm[iris[0]]
        radius = float(np.linalg.norm(lm[list(iris[1:])] - centre, axis=1).mean())
        cv2.circle(eyes, tuple(int(v) for v in np.round(centre)), int(np.ceil(radius * 1.1)), 0, -1)
    eye_pixels = image[eyes > 0].astype(np.float32)
    if len(eye_pixels) >= 8:
        bright = eye_pixels[_luma(eye_pixels) >= np.percentile(_luma(eye_pixels), 65)]
        sclera = np.median(bright, axis=0).astype(np.float32)
    else:
        sclera = np.array([225.0, 222.0, 215.0], np.float32)
    # Teeth take the sclera's light and a trace of its cast (the sample may catch skin or a
    # reddened eye), an ivory a little darker than the sclera.
    teeth = _luma(sclera) * np.array([0.97, 0.94, 0.86], np.float32) + 0.12 * (sclera - _luma(sclera))
    # Shadowed or hidden eyes read dark: teeth are never darker than the face's skin.
    skin_colour = np.median(pixels, axis=0).astype(np.float32)
    skin_luma = float(_luma(skin_colour))
    teeth *= float(np.clip(max(_luma(teeth), 1.2 * skin_luma), 90, 235)) / max(float(_luma(teeth)), 1.0)
    # Teeth pick up the light the skin is lit by: neutral ivory beside warm skin reads as grey.
    teeth = np.clip(teeth + 0.18 * (skin_colour - skin_luma), 0, 255)

    lips = fill(topo.UPPER_LIP_OUTER + topo.LOWER_LIP_OUTER[::-1]) - fill(topo.UPPER_LIP_INNER + topo.LOWER_LIP_INNER[::-1])
    lip = _median_colour(image, lips, (170.0, 95.0, 95.0))
    colours = {
        "teeth": teeth,
        "gum": np.minimum(lip * 1.08, 255),
        "tongue": np.minimum(lip * 0.92, 255),
        "cavity_top": lip * 0.12,
        "cavity_bottom": lip * (0.12 if flat else 0.3),
    }
    if grey:
        colours = {name: np.repeat(_luma(value), 3).astype(np.float32) for name, value in colours.items()}
    return MouthStyle(
        **{name: np.asarray(value, np.float32) for name, value in colours.items()},
        flat=flat,
        tongue_gain=8.0 if flat else 1.0,
        tongue_offset=3.5 if flat else 0.0,
        corner_shade=0.15 if flat else 0.45,
    )


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


class _Arch:
    """Where a pixel falls on one row of teeth: which tooth, how far across it (0..1), and
    how much the arch has turned away from the camera there (cos of the arch angle)."""

    def __init__(self, widths_mm: tuple[float, ...], radius_mm: float) -> None:
        self.widths = np.array(widths_mm, np.float32)
        self.edges = np.concatenate([[0.0], np.cumsum(self.widths)]).astype(np.float32)
        self.radius = radius_mm

    def locate(self, x_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sine = np.clip(np.abs(x_mm) / self.radius, 0.0, 0.999)
        along = self.radius * np.arcsin(sine)  # arc length from the midline
        tooth = np.clip(np.searchsorted(self.edges, along, side="right") - 1, 0, len(self.widths) - 1)
        t = np.clip((along - self.edges[tooth]) / self.widths[tooth], 0.0, 1.0)
        return tooth, t, np.sqrt(1 - sine**2)


def _row(
    style: MouthStyle, arch: _Arch, crowns_mm: tuple[float, ...], x_mm: np.ndarray, depth_mm: np.ndarray,
    across: np.ndarray, px_per_mm: float, colour: np.ndarray,
) -> np.ndarray:
    """One row of teeth with its gum as RGBA (float, alpha 0..1). ``depth_mm`` is how far a
    pixel lies beyond its lip's rest edge towards the crown tips (negative: under the lip)."""
    tooth, t, facing = arch.locate(x_mm)
    side = 2 * t - 1
    tip = np.array(crowns_mm, np.float32)[tooth] - 1.5 * side**4  # rounded incisal corners
    gum_line = -_GUM_LINE_MM + 1.2 * side**2  # papillae between the teeth
    # Distance to the nearest neighbour, in pixels as the camera sees it: a dark interdental line.
    gap_px = np.minimum(t, 1 - t) * arch.widths[tooth] * facing * px_per_mm
    gap = np.exp(-((gap_px / 0.6) ** 2))
    enamel = np.clip((tip - depth_mm) * px_per_mm + 0.5, 0.0, 1.0) * np.clip((depth_mm - gum_line) * px_per_mm + 0.5, 0.0, 1.0)
    gum = np.clip((gum_line - depth_mm) * px_per_mm + 0.5, 0.0, 1.0) * (depth_mm > -_GUM_LINE_MM - _GUM_DEPTH_MM)
    if style.flat:
        shade = 1.0 - 0.2 * (across > 0.6)
        rgb = colour * (shade * (1 - 0.3 * gap))[..., None]
    else:
        # Rounder towards each tooth's edges, darker towards the back of the mouth and in the
        # lip's shadow, and a little translucent at the tips.
        shade = (0.88 + 0.12 * np.sin(np.pi * t)) * (1 - 0.4 * across**2) * (0.8 + 0.2 * facing)
        shade *= 1 - 0.2 * np.exp(-np.maximum(depth_mm, 0) / 1.5)
        rgb = colour * (shade * (1 - 0.3 * gap))[..., None]
        edge = 0.3 * np.exp(-np.maximum(tip - depth_mm, 0) / 0.8)[..., None]
        rgb += edge * (style.cavity_top - rgb)
    gum_rgb = style.gum * (1 - (0.25 if style.flat else 0.5) * across**2)[..., None]
    cover = enamel + gum
    rgb = (rgb * enamel[..., None] + gum_rgb * gum[..., None]) / np.maximum(cover, 1e-3)[..., None]
    vanish = 1 - _smoothstep(_CORNER_START, 1.0, across)
    return np.concatenate([rgb, (cover * vanish)[..., None]], axis=-1)


def synthetic_teeth(rig: Rig, style: MouthStyle, lower_base: np.ndarray | None = None,
                    lower_shade: float = 0.85) -> tuple[MouthPiece, MouthPiece, float]:
    """Upper and lower rows of teeth for a closed-mouth portrait, in its rest pixels, and the
    width in pixels of an upper central incisor. The lower crowns rise from the lower lip's
    inner edge, or from ``lower_base`` (rest pixels, left to right) when given; either way the
    row rides the lower lip. Lower teeth are ``lower_shade`` as bright as the upper ones."""
    frame, mouth = rig.frame, rig.mouth
    upper = rig.vertices[mouth.upper_inner, :2].astype(np.float64)
    lower = rig.vertices[mouth.lower_inner, :2].astype(np.float64)
    upper_face, lower_face = frame.to_face(upper), frame.to_face(lower)
    base_face = frame.to_face(np.asarray(lower_base, np.float64)) if lower_base is not None else lower_face
    corners = upper_face[[0, -1], 0]
    centre_a = float(corners.mean())
    half_face = max(float(abs(corners[1] - corners[0])) / 2, 1e-3)
    px_per_mm = half_face * frame.iod / _HALF_MOUTH_MM
    reach = (_GUM_LINE_MM + _GUM_DEPTH_MM + max(_UPPER_CROWNS_MM)) * px_per_mm + 3
    points = np.concatenate([upper, lower])
    x0, y0 = np.floor(points.min(0) - reach).astype(int)
    x1, y1 = np.ceil(points.max(0) + reach).astype(int)
    xs, ys = np.meshgrid(np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64))
    face = frame.to_face(np.stack([xs.ravel(), ys.ravel()], axis=1))
    a, b = face[:, 0].reshape(xs.shape), face[:, 1].reshape(xs.shape)
    x_mm = (a - centre_a) / half_face * _HALF_MOUTH_MM
    across = np.minimum(np.abs(x_mm) / _HALF_MOUTH_MM, 1.0)

    def edge(contour: np.ndarray) -> np.ndarray:
        order = np.argsort(contour[:, 0])
        return np.interp(a, contour[order, 0], contour[order, 1])

    mm_per_face = _HALF_MOUTH_MM / half_face
    pieces = []
    for lip, contour, depth, arch, crowns, colour in (
        ("upper", upper, (b - edge(upper_face)) * mm_per_face,
         _Arch(_UPPER_WIDTHS_MM, _HALF_MOUTH_MM), _UPPER_CROWNS_MM, style.teeth),
        ("lower", lower, (edge(base_face) - b) * mm_per_face,
         _Arch(_LOWER_WIDTHS_MM, _LOWER_ARCH * _HALF_MOUTH_MM), _LOWER_CROWNS_MM, style.teeth * lower_shade),
    ):
        rgba = _row(style, arch, crowns, x_mm, depth, across, px_per_mm, colour)
        rgba[..., 3] *= 255
        rgba[[0, -1]] = 0  # a transparent border: samples beyond the piece are nothing
        rgba[:, [0, -1]] = 0
        image = np.clip(np.round(rgba), 0, 255).astype(np.uint8)
        pieces.append(MouthPiece(image, np.array([x0, y0], np.float32), contour.astype(np.float32), lip, None))
    return pieces[0], pieces[1], _UPPER_WIDTHS_MM[0] * px_per_mm


def _own_teeth_colour(mouth: MouthRig, fallback: np.ndarray) -> np.ndarray:
    """The colour of the teeth a parted portrait shows (the brightest third of its cavity
    above the split), so synthetic teeth beside them match; ``fallback`` where it shows none
    (a dark cavity)."""
    mask = np.zeros(mouth.cavity_image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(np.concatenate([mouth.cavity_upper, mouth.cavity_split[::-1]])).astype(np.int32)], 1)
    pixels = mouth.cavity_image[mask > 0].astype(np.float32)
    if len(pixels) < 12:
        return fallback
    luma = _luma(pixels)
    bright = pixels[luma >= np.percentile(luma, 67)]
    colour = np.median(bright, axis=0).astype(np.float32)
    return colour if _luma(colour) > 0.8 * _luma(fallback) else fallback


class MouthCompositor:
    """Draws the inside of the mouth onto a warped frame."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        mouth = rig.mouth
        iod = rig.frame.iod
        self.style = portrait_style(rig.image, rig.vertices)
        if mouth.cavity_image is not None:
            self.style = replace(self.style, teeth=_own_teeth_colour(mouth, self.style.teeth))
        self.feather = max(0.5, 0.008 * iod)
        if mouth.cavity_image is not None:
            # Each piece reaches a little under its lip, so no seam of cavity shows where the
            # piece's edge and the opening's edge are both feathered.
            tuck = (0.025 * iod * rig.frame.v).astype(np.float32)
            origin = np.zeros(2, np.float32)
            # Over the portrait's own lower cavity (the shadow between its teeth and lower lip,
            # riding the jaw), a synthetic lower row whose crowns rise from the split line: at
            # rest they stand behind the upper teeth, and as the jaw drops their full crowns
            # show, in the portrait's own tooth colour (a smile's cavity hardly holds lower
            # teeth; without them a wide opening is a black gap, with crowns measured from the
            # lip a dotted line).
            _, lower_row, self.tooth_width = synthetic_teeth(rig, self.style, mouth.cavity_split, lower_shade=1.0)
            self.pieces = [
                MouthPiece(mouth.cavity_image, origin, mouth.cavity_lower, "lower",
                           np.concatenate([mouth.cavity_split, mouth.cavity_lower[::-1] + tuck])),
                lower_row,
                MouthPiece(mouth.cavity_image, origin, mouth.cavity_upper, "upper",
                           np.concatenate([mouth.cavity_upper - tuck, mouth.cavity_split[::-1]])),
            ]
        else:
            upper, lower, self.tooth_width = synthetic_teeth(rig, self.style)
            self.pieces = [lower, upper]  # the upper row overlaps the lower one
        rest = rig.vertices[:, :2]
        self.rest_area = _shoelace(np.concatenate([rest[mouth.upper_inner], rest[mouth.lower_inner][::-1]]))
        # The interior fades in once the lips part ~0.015 iod (a pixel or so) beyond the
        # portrait's own opening, fully by ~0.045 iod (a lens of central gap g and width w has
        # area 2/3 g w): idle lip motion in silence draws nothing.
        width = float(np.ptp(rest[mouth.upper_inner, 0]))
        self.fade_area = max(0.02 * iod * width, 1.0)
        self.rest_area += 0.5 * self.fade_area

    def composite(self, frame: np.ndarray, positions: np.ndarray) -> None:
        """Draw the mouth interior into ``frame`` (uint8 RGB, modified in place) given the
        displaced vertex ``positions`` (V, 2) of this frame."""
        upper = positions[self.rig.mouth.upper_inner]
        lower = positions[self.rig.mouth.lower_inner]
        opening = np.concatenate([upper, lower[::-1]]).astype(np.float32)
        fade = min(max((_shoelace(opening) - self.rest_area) / self.fade_area, 0.0), 1.0)
        if fade <= 0.0:
            return  # no wider than the portrait's own mouth: its own pixels stay
        height, width = frame.shape[:2]
        margin = 3
        x0, y0 = np.maximum(np.floor(opening.min(0)).astype(int) - margin, 0)
        x1, y1 = np.minimum(np.ceil(opening.max(0)).astype(int) + margin, [width, height])
        if x1 <= x0 or y1 <= y0:
            return
        offset = np.array([x0, y0], np.float32)
        shape = (y1 - y0, x1 - x0)
        canvas = self._cavity(shape, opening - offset)
        for piece in self.pieces:
            self._paste_piece(canvas, piece, upper if piece.lip == "upper" else lower, offset)
        alpha = fade * _polygon_mask(shape, opening - offset, self.feather)[..., None]
        region = frame[y0:y1, x0:x1].astype(np.float32)
        frame[y0:y1, x0:x1] = np.clip(region + alpha * (canvas - region), 0, 255).astype(np.uint8)

    def _cavity(self, shape: tuple[int, int], opening: np.ndarray) -> np.ndarray:
        """The back of the mouth: darkest at the top and corners, the tongue at the bottom."""
        style = self.style
        h, w = shape
        # Every term depends on the row or on the column alone: computed on a (h, 1) column
        # and a (1, w) row and broadcast, in float32, instead of over the whole (h, w) window.
        ys = np.arange(h, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        top, bottom = float(opening[:, 1].min()), float(opening[:, 1].max())
        gap = max(bottom - top, 1.0)
        t = np.clip((ys - top) / gap, 0, 1)[..., None]
        centre_x = float(opening[:, 0].mean())
        half_width = max(float(np.ptp(opening[:, 0])) / 2, 1.0)
        across = np.clip(np.abs(xs - centre_x) / half_width, 0, 1)[..., None]
        canvas = (style.cavity_top + t * (style.cavity_bottom - style.cavity_top)) * (1 - style.corner_shade * across**2)
        # The tongue: a broad mound on the floor of the mouth, its top 0.62 of the way up (the
        # upper teeth and the dark behind them above it), lit on its upper surface and
        # falling into shadow towards the sides.
        rise = np.clip((ys - (bottom - 0.62 * gap)) / (0.15 * gap), 0, 1)
        mound = np.sqrt(np.clip(1 - ((xs - centre_x) / (0.7 * half_width)) ** 2, 0, 1))
        tongue = np.clip(style.tongue_gain * rise * mound - style.tongue_offset, 0, 1)
        light = 0.7 + 0.3 * np.exp(-(((ys - (bottom - 0.48 * gap)) / (0.1 * gap)) ** 2))
        colour = style.tongue * (light * (1 - 0.5 * across[..., 0] ** 2))[..., None]
        canvas += tongue[..., None] * (colour - canvas)
        return canvas

    def _paste_piece(self, canvas: np.ndarray, piece: MouthPiece, moved: np.ndarray, offset: np.ndarray) -> None:
        """Move one piece with the lip it belongs to."""
        affine = _similarity(piece.rest, moved)
        affine[:, 2] -= offset
        h, w = canvas.shape[:2]
        local = affine.copy()  # from the piece's own pixels
        local[:, 2] += affine[:, :2] @ piece.origin
        warped = cv2.warpAffine(piece.image, local, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if piece.polygon is None:
            alpha = warped[..., 3:].astype(np.float32) / 255
            warped = warped[..., :3]
        else:
            polygon = piece.polygon @ affine[:, :2].T + affine[:, 2]
            alpha = _polygon_mask((h, w), polygon, self.feather)[..., None]
        canvas += alpha * (warped.astype(np.float32) - canvas)
