"""How the rendered face looks, measured where a viewer looks: the frame's edges on tight
headshots (no replicated-edge streaks, the head in frame), the mouth and eyes in silence (the
portrait's own pixels), a full blink (skin and a lash line, no iris, no smudge) and the jaw line while
talking and turning (one edge, not two). ``emolive look-sheet`` renders the same poses for
people to look at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from emolive.cli.look_sheet import POSES, TILE, closeup_path
from conftest import ROOT, PORTRAIT, check_ok, mouth_box, run_emolive
from emolive.engine import face_topology as topo
from emolive.engine.motion_space import HEAD_SLICE, INDEX, rest_frame
from emolive.engine.offline import RenderOptions, audio_to_motion, prepare_avatar
from emolive.engine.render import Renderer

PORTRAITS = ROOT / "tests" / "portraits"
TIGHT = [PORTRAITS / "astronaut_tight.jpg", PORTRAITS / "hopper_tight.jpg"]
MAX_EDGE_RUN = 8  # identical rows or columns in a row at a frame's edge that read as a streak
MIN_SILENCE_PSNR = 38.0
YAW_15 = np.deg2rad(15.0)


def _row(**channels: float) -> np.ndarray:
    motion = rest_frame()
    for name, value in channels.items():
        motion[INDEX[name]] = value
    return motion


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b) ** 2).mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-9))


def _edge_run(frame: np.ndarray) -> int:
    """The longest run of identical rows (columns) starting at any of the frame's 4 edges."""
    longest = 0
    for lines in (frame, frame[::-1], frame.transpose(1, 0, 2), frame.transpose(1, 0, 2)[::-1]):
        run = 1
        while run < len(lines) and np.array_equal(lines[run], lines[0]):
            run += 1
        longest = max(longest, run)
    return longest


# --------------------------------------------------------------------------- framing


@pytest.mark.parametrize("portrait", TIGHT, ids=lambda p: p.stem)
def test_tight_headshot_fills_the_frame_without_streaks(portrait: Path, record_property) -> None:
    avatar, rig = prepare_avatar(portrait, RenderOptions())
    x0, y0, x1, y1 = avatar.face_box
    # A tight headshot: the face spans most of the frame (>= 60 % of the source's width).
    assert x1 - x0 >= 0.55 * 512
    renderer = Renderer(rig)
    rows = [rest_frame(), _row(headYaw=YAW_15, jawOpen=0.6), _row(headYaw=-YAW_15, jawOpen=0.6),
            _row(headPitch=0.2, headTx=0.1), _row(headRoll=0.2, headTy=-0.1, headScale=0.08)]
    runs = [_edge_run(avatar.image)] + [_edge_run(renderer.render(row)) for row in rows]
    record_property("edge_runs", runs)
    assert max(runs) < MAX_EDGE_RUN, f"replicated edge rows/columns: {runs}"
    # The whole face, and room above it for the hair, is in frame.
    height = y1 - y0
    assert x0 > 0 and y1 < 512 and x1 < 512
    assert y0 >= 0.25 * height, f"face top at {y0} px: the hair is cut off"


def test_face_cut_off_by_the_image_gets_a_soft_fill(tmp_path: Path) -> None:
    # The astronaut cut inside her face (forehead and chin gone): the frame must pad, and
    # the padding is a blurred reflection, not replicated edges.
    image = cv2.imread(str(PORTRAIT))
    cut = image[95:165, 170:280]
    path = tmp_path / "cut.png"
    cv2.imwrite(str(path), cv2.resize(cut, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC))
    avatar, _ = prepare_avatar(path, RenderOptions())
    assert _edge_run(avatar.image) < MAX_EDGE_RUN


# --------------------------------------------------------------------------- eyes


def _eye_boxes(avatar, rig) -> list[tuple[int, int, int, int]]:
    margin = 0.1 * rig.frame.iod
    boxes = []
    for contour in (topo.LEFT_EYE_UPPER + topo.LEFT_EYE_LOWER, topo.RIGHT_EYE_UPPER + topo.RIGHT_EYE_LOWER):
        pts = avatar.landmarks[list(contour), :2]
        (x0, y0), (x1, y1) = np.floor(pts.min(0) - margin).astype(int), np.ceil(pts.max(0) + margin).astype(int)
        boxes.append((x0, y0, x1, y1))
    return boxes


def _head_pose_only(row: np.ndarray) -> np.ndarray:
    posed = rest_frame()
    posed[HEAD_SLICE] = row[HEAD_SLICE]
    return posed


def _image_registered_psnr(frame: np.ndarray, portrait: np.ndarray, box: tuple[int, int, int, int]) -> float:
    """PSNR of ``box`` in ``frame`` against the portrait moved onto it by image registration
    alone (template match for the shift, then an ECC homography): independent of the rig."""
    x0, y0, x1, y1 = box
    margin = int(max(12, 0.3 * max(x1 - x0, y1 - y0)))
    height, width = frame.shape[:2]
    X0, Y0, X1, Y1 = max(x0 - margin, 0), max(y0 - margin, 0), min(x1 + margin, width), min(y1 + margin, height)
    frame_crop, portrait_crop = frame[Y0:Y1, X0:X1], portrait[Y0:Y1, X0:X1]
    grey = lambda image: cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)  # noqa: E731
    match = cv2.matchTemplate(grey(frame_crop), grey(portrait[y0:y1, x0:x1]), cv2.TM_CCOEFF_NORMED)
    _, _, _, (mx, my) = cv2.minMaxLoc(match)
    warp = np.array([[1, 0, mx - (x0 - X0)], [0, 1, my - (y0 - Y0)], [0, 0, 1]], np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5)
    _, warp = cv2.findTransformECC(grey(portrait_crop), grey(frame_crop), warp, cv2.MOTION_HOMOGRAPHY, criteria, None, 1)
    registered = cv2.warpPerspective(portrait_crop, warp, frame_crop.shape[1::-1], flags=cv2.INTER_LINEAR)
    inner = (slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0))
    return _psnr(frame_crop[inner], registered[inner].astype(np.float64))


SILENT_PORTRAITS = [PORTRAIT, PORTRAITS / "astronaut_tight.jpg", PORTRAITS / "hopper.jpg", PORTRAITS / "hopper_tight.jpg",
                    PORTRAITS / "obama.jpg", PORTRAITS / "hopper_painted_grey.jpg", PORTRAITS / "sylvie.jpg"]


@pytest.fixture(scope="module")
def silent_track():
    """6 s of digital silence through the live default model, the head idling."""
    return audio_to_motion(np.zeros(6 * 16000, np.float32), RenderOptions())


@pytest.mark.slow
@pytest.mark.parametrize("portrait", SILENT_PORTRAITS, ids=lambda p: p.stem)
def test_silence_is_the_portrait(portrait: Path, silent_track, record_property) -> None:
    """6 s of digital silence, the head idling as it does live: in every frame the mouth box,
    and outside blinks the eye boxes, are the portrait's own pixels (>= 38 dB) moved by the
    frame's head pose; the mouth compositor draws nothing (no teeth hint, no seam).

    Two references: the portrait rendered at the frame's head pose with every expression
    channel at rest (a pure warp of the portrait: the rest row renders it byte for byte), and,
    independent of the rig, the portrait crop registered onto the frame by image alone (a
    template match, then an ECC homography; every 5th frame). The second is looser around
    the eyes: a 2.5D turn's parallax is no homography (4 degrees of yaw cost Hopper's eyes
    behind glasses about 2 dB with v7's idle head), yet it holds 38 dB with the idle head of
    the shipped model."""
    avatar, rig = prepare_avatar(portrait, RenderOptions())
    renderer = Renderer(rig)
    assert np.array_equal(renderer.render(rest_frame()), avatar.image)
    mouth = mouth_box(avatar.landmarks)
    eyes = _eye_boxes(avatar, rig)
    frames = silent_track.frames
    blink = frames[:, [INDEX["eyeBlinkLeft"], INDEX["eyeBlinkRight"]]].max(1)
    assert np.abs(frames[:, HEAD_SLICE]).max() > 0.01, "the head should idle in silence"
    mouth_scores, eye_scores, registered_mouth, registered_eyes = [], [], [], []
    for k, row in enumerate(frames):
        frame = renderer.render(row)
        redrawn = frame.copy()
        renderer.mouth.composite(redrawn, rig.vertices[:, :2] + renderer.vertex_displacement(row))
        assert np.array_equal(redrawn, frame), f"frame {k}: the mouth compositor drew into a silent frame"
        posed = renderer.render(_head_pose_only(row))
        x0, y0, x1, y1 = mouth
        mouth_scores.append(_psnr(frame[y0:y1, x0:x1], posed[y0:y1, x0:x1]))
        if blink[k] <= 0.02:
            eye_scores.append(min(_psnr(frame[y0:y1, x0:x1], posed[y0:y1, x0:x1]) for x0, y0, x1, y1 in eyes))
        if k % 5 == 0:
            registered_mouth.append(_image_registered_psnr(frame, avatar.image, mouth))
            if blink[k] <= 0.02:
                registered_eyes.append(min(_image_registered_psnr(frame, avatar.image, box) for box in eyes))
    record_property("mouth_psnr_min", round(min(mouth_scores), 2))
    record_property("eye_psnr_min", round(min(eye_scores), 2))
    record_property("mouth_image_registered_psnr_min", round(min(registered_mouth), 2))
    record_property("eye_image_registered_psnr_min", round(min(registered_eyes), 2))
    print(f"\n[measure] {portrait.stem}: silence mouth >= {min(mouth_scores):.1f} dB, eyes >= {min(eye_scores):.1f} dB "
          f"(head-pose reference); image-registered: mouth >= {min(registered_mouth):.1f} dB, "
          f"eyes >= {min(registered_eyes):.1f} dB")
    assert len(eye_scores) > 0.7 * len(frames)
    assert min(mouth_scores) >= MIN_SILENCE_PSNR, f"mouth box in silence: worst {min(mouth_scores):.1f} dB"
    assert min(eye_scores) >= MIN_SILENCE_PSNR, f"eye boxes in silence: worst {min(eye_scores):.1f} dB"
    assert min(registered_mouth) >= MIN_SILENCE_PSNR, f"mouth box, image-registered: worst {min(registered_mouth):.1f} dB"
    assert min(registered_eyes) >= MIN_SILENCE_PSNR, f"eye boxes, image-registered: worst {min(registered_eyes):.1f} dB"


def _opening_mask(points: np.ndarray, shape: tuple[int, ...], erode: int) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=erode) > 0 if erode else mask > 0


@pytest.mark.parametrize("portrait", [PORTRAIT, PORTRAITS / "hopper.jpg", PORTRAITS / "obama.jpg"], ids=lambda p: p.stem)
def test_full_blink_is_skin_with_a_lash_line(portrait: Path, record_property) -> None:
    avatar, rig = prepare_avatar(portrait, RenderOptions())
    renderer = Renderer(rig)
    rest = renderer.render(rest_frame())
    closed = renderer.render(_row(eyeBlinkLeft=1.0, eyeBlinkRight=1.0))
    rest_luma, closed_luma = _luma(rest), _luma(closed)
    for upper, lower in ((topo.LEFT_EYE_UPPER, topo.LEFT_EYE_LOWER), (topo.RIGHT_EYE_UPPER, topo.RIGHT_EYE_LOWER)):
        opening = np.concatenate([avatar.landmarks[list(upper), :2], avatar.landmarks[list(lower)[::-1], :2]])
        # The eye's interior, two pixels in from its margin (where the lash line is drawn).
        interior = _opening_mask(opening, rest.shape, erode=2)
        assert interior.sum() >= 10
        # Skin above the eye: the reference for "skin".
        lid = opening[: len(upper)]
        band = np.concatenate([lid - [0, 0.05 * rig.frame.iod], (lid - [0, 0.12 * rig.frame.iod])[::-1]])
        skin_pixels = rest_luma[_opening_mask(band, rest.shape, erode=0)]
        skin, skin_bright = np.median(skin_pixels), np.percentile(skin_pixels, 98)
        # Iris: the darkest third of the open eye, well below the skin.
        iris = interior & (rest_luma < min(np.percentile(rest_luma[interior], 33), 0.7 * skin))
        sclera = interior & (rest_luma > np.percentile(rest_luma[interior], 80))
        assert iris.sum() >= 3
        still_dark = float((closed_luma[iris] < 0.7 * skin).mean())
        still_white = float((closed_luma[sclera] > skin_bright + 5).mean()) if sclera.any() else 0.0
        inside = closed_luma[interior]
        smudge = float(np.percentile(inside, 5) / skin)
        spread = float(inside.std() / skin)
        record_property(f"blink_{upper[0]}", dict(iris_left=still_dark, sclera_left=still_white, p5_over_skin=smudge, std_over_skin=spread))
        # Thresholds from measurements: the renderer that crushed the eye under the lid
        # left 24-90 % of the iris dark, a 5th percentile at 0.18-0.44 of the skin and a
        # std of 0.14-0.36; the drawn lid leaves 0-12 % (glasses' shadow on hopper),
        # 0.63-0.88 and 0.12-0.19.
        assert still_dark <= 0.15, f"{still_dark:.0%} of the iris still shows at full closure"
        assert still_white <= 0.05, f"{still_white:.0%} of the sclera still shows at full closure"
        # No dark smudge: the closed lid's darkest pixels stay near the skin's tone, and
        # the lid is about as even as skin (no blotches).
        assert smudge >= 0.6, f"dark smudge on the closed lid: 5th percentile at {smudge:.2f} of the skin"
        assert spread <= 0.22, f"blotchy closed lid: luminance std {spread:.2f} of the skin"


# --------------------------------------------------------------------------- jaw


def _edge_peaks(luma: np.ndarray, points: np.ndarray, normals: np.ndarray, reach: float) -> list[int]:
    """For each contour point, how many strong peaks the luminance gradient has along the
    contour's normal within ``reach`` px: one is a clean edge, two a doubled one."""
    offsets = np.arange(-reach, reach + 0.5, 0.5, dtype=np.float32)
    xs = (points[:, None, 0] + offsets[None, :] * normals[:, None, 0]).astype(np.float32)
    ys = (points[:, None, 1] + offsets[None, :] * normals[:, None, 1]).astype(np.float32)
    profile = cv2.remap(cv2.GaussianBlur(luma, (0, 0), 0.7), xs, ys, cv2.INTER_LINEAR)
    gradient = np.abs(np.gradient(profile, axis=1))
    counts = []
    for g in gradient:
        strong = g >= 0.5 * g.max()
        peaks = [i for i in range(1, len(g) - 1) if strong[i] and g[i] >= g[i - 1] and g[i] > g[i + 1]]
        # Peaks closer than 1.5 px are one edge's plateau.
        merged = [p for k, p in enumerate(peaks) if k == 0 or p - peaks[k - 1] > 3]
        counts.append(len(merged))
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("pose", ["jaw 0.7", "yaw +15", "yaw -15"])
def test_jaw_line_stays_one_edge(pose: str, record_property) -> None:
    avatar, rig = prepare_avatar(PORTRAIT, RenderOptions())
    renderer = Renderer(rig)
    yaw = {"jaw 0.7": 0.0, "yaw +15": YAW_15, "yaw -15": -YAW_15}[pose]
    motion = _row(jawOpen=0.7, headYaw=yaw)
    chin = [i for i in topo.FACE_OVAL if rig.frame.to_face(avatar.landmarks[[i], :2])[0, 1] > 1.0]
    reach = 0.12 * rig.frame.iod

    def doubled(frame: np.ndarray, positions: np.ndarray) -> float:
        points = positions[chin]
        tangents = np.gradient(points, axis=0)
        normals = np.stack([-tangents[:, 1], tangents[:, 0]], axis=1)
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        return float(np.mean(np.array(_edge_peaks(_luma(frame), points, normals, reach)) >= 2))

    rest = doubled(renderer.render(rest_frame()), rig.vertices[:, :2])
    positions = rig.vertices[:, :2] + renderer.vertex_displacement(motion)
    moved = doubled(renderer.render(motion), positions)
    record_property("doubled_fraction", dict(rest=rest, moved=moved))
    assert moved <= rest + 0.15, f"{pose}: {moved:.0%} of the chin contour shows a doubled edge (rest {rest:.0%})"


# --------------------------------------------------------------------------- command


def test_look_sheet_command(tmp_path: Path) -> None:
    help_text = run_emolive("look-sheet", "--help")
    check_ok(help_text)
    assert "blink" in help_text.stdout and "--output" in help_text.stdout
    out = tmp_path / "sheet.png"
    check_ok(run_emolive("look-sheet", PORTRAIT, PORTRAITS / "hopper_tight.jpg", "-o", out, "--size", "256"))
    faces, closeups = cv2.imread(str(out)), cv2.imread(str(closeup_path(out)))
    assert faces is not None and closeups is not None
    assert faces.shape == (2 * TILE, (len(POSES) + 1) * TILE, 3)
    assert closeups.shape == (2 * 2 * TILE, len(POSES) * 2 * TILE, 3)
    bad = run_emolive("look-sheet", "-o", tmp_path / "sheet.gif")
    assert bad.returncode == 2 and "sheet.gif" in bad.stderr


# --------------------------------------------------------------------------- folds


def _worst_jacobian(renderer: Renderer, motion: np.ndarray) -> float:
    """The smallest area ratio of the rig's forward map over its coarse grid: below 0 the warp
    folds skin over itself, which shows as rings and speckles where the inversion fails."""
    from emolive.engine.flow import forward_flow

    grid = renderer.rig.grid
    flow = forward_flow(grid.matrix, renderer.vertex_displacement(motion), grid.shape, grid.step)
    dxx, dxy = np.gradient(flow[..., 0], axis=1), np.gradient(flow[..., 0], axis=0)
    dyx, dyy = np.gradient(flow[..., 1], axis=1), np.gradient(flow[..., 1], axis=0)
    return float(((1 + dxx) * (1 + dyy) - dxy * dyx).min())


@pytest.mark.parametrize("portrait", [PORTRAIT, *TIGHT, PORTRAITS / "hopper.jpg", PORTRAITS / "obama.jpg"],
                         ids=lambda p: p.stem)
def test_wide_openings_never_fold_the_skin(portrait: Path, record_property) -> None:
    """Thin lips at a wide opening, and a tight headshot whose chin nearly touches the frame:
    the warp stretches and squeezes but does not fold (the old rig folded the lower lip over
    its own skin, Jacobian -1.3, and pinned the chin's skin at the image border, -0.9 to
    -1.1: rings and speckles under the mouth). A few cells at the chin still fold slightly
    with the head nodding (about -0.2), which the inversion absorbs."""
    _, rig = prepare_avatar(portrait, RenderOptions())
    renderer = Renderer(rig)
    rows = [_row(jawOpen=1.0), _row(jawOpen=1.0, mouthClose=0.3), _row(jawOpen=0.8, headPitch=0.2, headTy=0.1)]
    worst = min(_worst_jacobian(renderer, row) for row in rows)
    record_property("min_jacobian", round(worst, 3))
    assert worst > -0.3, f"the warp folds: Jacobian {worst:.2f}"
    assert _worst_jacobian(renderer, _row(jawOpen=1.0)) > 0.05


def test_drawn_eyes_larger_than_the_landmarks_do_not_blink_a_patch() -> None:
    """An anime eye is far larger than the face mesh's eye: a blink would draw a lid beside
    it (a skin patch with a line through the iris). Such a portrait keeps its eyes as drawn;
    photos still blink."""
    _, anime = prepare_avatar(PORTRAITS / "sylvie.jpg", RenderOptions())
    _, photo = prepare_avatar(PORTRAIT, RenderOptions())
    assert not anime.blinks and photo.blinks
    blink = _row(eyeBlinkLeft=1.0, eyeBlinkRight=1.0)
    assert np.array_equal(Renderer(anime).render(blink), Renderer(anime).render(rest_frame()))
    assert not np.array_equal(Renderer(photo).render(blink), Renderer(photo).render(rest_frame()))
