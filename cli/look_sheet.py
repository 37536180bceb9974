"""``emolive look-sheet``: fixed poses of a fixed set of portraits, enlarged, for people to
look at (the renderer's visual regression check; docs/look_sheet*.jpg are made by it)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from emolive.engine import face_topology as topo
from emolive.engine.errors import BadInputError
from emolive.engine.formats import FRAME_SIZE
from emolive.engine.motion_space import INDEX, rest_frame

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT_DIR = ROOT / "tests" / "portraits"
TILE = 224  # px of one face tile
CLOSEUP_SCALE = 3  # nearest-neighbour enlargement of the eye and mouth crops
_YAW_15 = np.deg2rad(15.0)


@dataclass(frozen=True)
class Pose:
    """One column of the sheet: a label and the motion channels it sets."""

    label: str
    channels: tuple[tuple[str, float], ...]

    def row(self) -> np.ndarray:
        motion = rest_frame()
        for name, value in self.channels:
            motion[INDEX[name]] = value
        return motion


POSES: tuple[Pose, ...] = (
    Pose("rest", ()),
    Pose("jaw 0.35", (("jawOpen", 0.35),)),
    Pose("jaw 0.8", (("jawOpen", 0.8),)),
    Pose("blink", (("eyeBlinkLeft", 1.0), ("eyeBlinkRight", 1.0))),
    Pose("yaw +15 jaw 0.6", (("headYaw", _YAW_15), ("jawOpen", 0.6))),
    Pose("yaw -15 jaw 0.6", (("headYaw", -_YAW_15), ("jawOpen", 0.6))),
)


def default_portraits() -> list[Path]:
    """The bundled portrait and the test portraits (see tests/portraits/LICENSE.md)."""
    from emolive.engine.offline import DEFAULT_PORTRAIT

    return [DEFAULT_PORTRAIT, *sorted(PORTRAIT_DIR.glob("*.jpg"))]


def _box(points: np.ndarray, margin: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """A box around ``points`` grown by ``margin`` of its larger side, clipped to ``shape``."""
    (x0, y0), (x1, y1) = points.min(0), points.max(0)
    grow = margin * max(x1 - x0, y1 - y0)
    h, w = shape[:2]
    return (max(int(x0 - grow), 0), max(int(y0 - grow), 0), min(int(x1 + grow) + 1, w), min(int(y1 + grow) + 1, h))


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    cv2.putText(tile, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to fit (width, height), centred on black."""
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_NEAREST if scale >= 2 else cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (nw, nh), interpolation=interpolation)
    canvas = np.zeros((height, width, 3), np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    canvas[y : y + nh, x : x + nw] = small
    return canvas


def render_poses(portrait: Path, size: int = FRAME_SIZE) -> tuple[np.ndarray, list[np.ndarray]]:
    """The registered portrait's landmarks and one rendered frame per pose in POSES."""
    from emolive.engine.offline import RenderOptions, prepare_avatar
    from emolive.engine.render import Renderer

    avatar, rig = prepare_avatar(portrait, RenderOptions(size=size))
    renderer = Renderer(rig)
    return avatar.landmarks, [renderer.render(pose.row()) for pose in POSES]


def sheets(portraits: list[Path], size: int = FRAME_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(faces, closeups): one row per portrait, one column per pose. Faces are the whole
    frame at rest, then the head in each pose, at TILE px; closeups are the eyes above the mouth, enlarged CLOSEUP_SCALE times with
    nearest-neighbour so every rendered pixel shows."""
    face_rows, closeup_rows = [], []
    for portrait in portraits:
        landmarks, frames = render_poses(portrait, size)
        xy = landmarks[:, :2]
        face = _box(xy, 0.2, frames[0].shape)
        eyes = _box(xy[list(topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER + topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER)], 0.12, frames[0].shape)
        mouth = _box(xy[list(topo.UPPER_LIP_OUTER + topo.LOWER_LIP_OUTER)], 0.35, frames[0].shape)
        faces, closeups = [_label(_fit(frames[0], TILE, TILE), f"{portrait.stem}: frame")], []
        for pose, frame in zip(POSES, frames):
            x0, y0, x1, y1 = face
            faces.append(_label(_fit(frame[y0:y1, x0:x1], TILE, TILE), f"{portrait.stem}: {pose.label}"))
            crops = []
            for x0, y0, x1, y1 in (eyes, mouth):
                crop = frame[y0:y1, x0:x1]
                crops.append(cv2.resize(crop, None, fx=CLOSEUP_SCALE, fy=CLOSEUP_SCALE, interpolation=cv2.INTER_NEAREST))
            width = 2 * TILE
            stacked = np.concatenate([_fit(c, width, TILE) for c in crops], axis=0)
            closeups.append(_label(stacked, f"{portrait.stem}: {pose.label}"))
        face_rows.append(np.concatenate(faces, axis=1))
        closeup_rows.append(np.concatenate(closeups, axis=1))
    return np.concatenate(face_rows, axis=0), np.concatenate(closeup_rows, axis=0)


def closeup_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}_closeup{output.suffix}")


def add_look_sheet_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "look-sheet", help="render fixed poses of a set of portraits into images to look at",
        description="Render each portrait at rest, with the jaw at 0.35 and 0.8, in a full blink and turned "
                    "±15 degrees while talking, and tile the frames: OUT gets the heads, OUT_closeup the eyes "
                    "and mouth enlarged 3x (nearest neighbour). With no portraits, uses the bundled one and "
                    "tests/portraits/ (tight headshots, a smile with teeth, an older face, greyscale, a drawing).",
    )
    parser.add_argument("portraits", nargs="*", type=Path, metavar="PORTRAIT",
                        help="portrait images (default: the bundled portrait and tests/portraits/*.jpg)")
    parser.add_argument("-o", "--output", type=Path, default=Path("look_sheet.jpg"),
                        help="output JPEG or PNG; the close-ups go next to it as NAME_closeup.EXT (default: look_sheet.jpg)")
    parser.add_argument("--size", type=int, default=FRAME_SIZE, help=f"render size in pixels (default: {FRAME_SIZE})")


def run_look_sheet(args: argparse.Namespace) -> None:
    if args.output.suffix.lower() not in (".jpg", ".jpeg", ".png"):
        raise BadInputError(f"{args.output}: output must end in .jpg, .jpeg or .png")
    if not 64 <= args.size <= 2048:
        raise BadInputError(f"--size must be between 64 and 2048, got {args.size}")
    portraits = args.portraits or default_portraits()
    faces, closeups = sheets(portraits, args.size)
    quality = [cv2.IMWRITE_JPEG_QUALITY, 75]
    for path, image in ((args.output, faces), (closeup_path(args.output), closeups)):
        if not cv2.imwrite(str(path), image[..., ::-1], quality):
            raise BadInputError(f"{path}: could not write the image")
        print(f"wrote {path}", file=sys.stderr)
