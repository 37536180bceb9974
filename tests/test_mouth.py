"""The mouth as a viewer sees it: the portrait's own pixels at rest (in silence:
tests/test_look.py), teeth with per-tooth structure under the upper lip when it opens, and
colours that belong to the portrait (a greyscale portrait stays grey)."""

from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from conftest import PORTRAIT, mouth_box
from emolive.engine import face_topology as topo
from emolive.engine.audio import load_audio
from emolive.engine.motion_space import INDEX, rest_frame
from emolive.engine.offline import DEFAULT_AUDIO, RenderOptions, audio_to_motion, prepare_avatar
from emolive.engine.render import Renderer

HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # closed lips, an older face
PORTRAITS = Path(__file__).parent / "portraits"
MAX_GREY_CHROMA_DRIFT = 2.0
# Autocorrelation peak over zero lag along the tooth row: ~0.3 for the teeth drawn here, 0
# (no peak at all) for a flat bar.
MIN_PERIODICITY = 0.15


def _grey_copy(source: Path, directory: Path) -> Path:
    out = directory / f"{source.stem}_grey.png"
    grey = cv2.cvtColor(cv2.imread(str(source)), cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(out), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    return out


@pytest.fixture(scope="module")
def portraits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("portraits")
    return {
        "astronaut": PORTRAIT,  # smiling with her own teeth showing
        "hopper": HOPPER,
        "astronaut_grey": _grey_copy(PORTRAIT, directory),
        "hopper_grey": _grey_copy(HOPPER, directory),
        "painted_grey": PORTRAITS / "hopper_painted_grey.jpg",
        "obama": PORTRAITS / "obama.jpg",  # dark skin, smiling with his own teeth
    }


@pytest.fixture(scope="module")
def rigs(portraits):
    return {name: prepare_avatar(path, RenderOptions()) for name, path in portraits.items()}


def _motion(**channels: float) -> np.ndarray:
    row = rest_frame()
    for name, value in channels.items():
        row[INDEX[name]] = value
    return row


def _chroma(pixels: np.ndarray) -> float:
    """Mean per-pixel spread between the colour channels (0 for grey)."""
    pixels = pixels.astype(np.float32)
    return float((pixels.max(-1) - pixels.min(-1)).mean())


def _profile_along(line: np.ndarray, image: np.ndarray, reach: float) -> np.ndarray:
    """``image`` (one channel) sampled along ``line`` (points, any order), one sample per pixel
    column over the middle ``reach`` of its half-width either side of its centre."""
    order = np.argsort(line[:, 0])
    left, right = line[:, 0].min(), line[:, 0].max()
    centre, half = (left + right) / 2, (right - left) / 2
    xs = np.arange(np.ceil(centre - reach * half), np.floor(centre + reach * half) + 1)
    ys = np.interp(xs, line[order, 0], line[order, 1])
    return cv2.remap(image, xs.astype(np.float32)[None], ys.astype(np.float32)[None], cv2.INTER_LINEAR)[0]


def _upper_row_profile(renderer: Renderer, frame: np.ndarray, motion: np.ndarray, depth_px: float) -> np.ndarray:
    """Luminance along the upper row of teeth, ``depth_px`` below the upper lip's edge, over
    the middle of the mouth, one sample per pixel column."""
    positions = renderer.rig.vertices[:, :2] + renderer.vertex_displacement(motion)
    upper = positions[renderer.rig.mouth.upper_inner]
    luma = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return _profile_along(upper + [0, depth_px], luma, 0.6)


def _periodicity(profile: np.ndarray) -> tuple[float, float]:
    """The lag of the highest autocorrelation peak after zero of a detrended profile, and
    that peak's height over the zero-lag one (0 without any periodic structure)."""
    detail = profile - cv2.GaussianBlur(profile[None], (0, 0), 6.0)[0]
    detail -= detail.mean()
    auto = np.fft.irfft(np.abs(np.fft.rfft(detail, 2 * len(detail))) ** 2)[: len(detail) // 2]
    peaks = [lag for lag in range(2, len(auto) - 1) if auto[lag] > auto[lag - 1] and auto[lag] >= auto[lag + 1] and auto[lag] > 0]
    if not peaks:
        return 0.0, 0.0
    best = max(peaks, key=lambda lag: auto[lag])
    return float(best), float(auto[best] / max(auto[0], 1e-9))


# ---------------------------------------------------------------------------- rest


@pytest.mark.parametrize("name", ["astronaut", "hopper", "astronaut_grey", "hopper_grey", "painted_grey", "obama"])
def test_rest_pose_is_the_portrait(rigs, name: str) -> None:
    """The neutral motion row shows the portrait's own mouth: no teeth hint, no line, and
    lips the portrait shows parted are not sealed."""
    avatar, rig = rigs[name]
    x0, y0, x1, y1 = mouth_box(avatar.landmarks)
    frame = Renderer(rig).render(rest_frame())
    assert np.array_equal(frame[y0:y1, x0:x1], avatar.image[y0:y1, x0:x1])


# ---------------------------------------------------------------------------- colour


@pytest.mark.slow
@pytest.mark.parametrize("name", ["astronaut_grey", "hopper_grey", "painted_grey"])
def test_greyscale_portrait_stays_grey_while_speaking(rigs, name: str, record_property) -> None:
    avatar, rig = rigs[name]
    x0, y0, x1, y1 = mouth_box(avatar.landmarks, margin=8)
    track = audio_to_motion(load_audio(DEFAULT_AUDIO)[: 5 * 16000], RenderOptions())
    renderer = Renderer(rig)
    jaw = track.frames[:, INDEX["jawOpen"]]
    assert jaw.max() > 0.3, "the speech should open the mouth"
    portrait_chroma = _chroma(avatar.image[y0:y1, x0:x1])
    chroma = [_chroma(renderer.render(row)[y0:y1, x0:x1]) for row in track.frames]
    record_property(f"{name}_mouth_chroma_max", round(max(chroma), 3))
    assert max(abs(c - portrait_chroma) for c in chroma) <= MAX_GREY_CHROMA_DRIFT


# ---------------------------------------------------------------------------- teeth


@pytest.mark.parametrize("name", ["hopper", "hopper_grey"])
def test_wide_open_mouth_shows_individual_teeth_under_the_upper_lip(rigs, name: str, record_property) -> None:
    """jawOpen 0.7 on a closed-mouth portrait: the upper row has a dark gap between teeth
    every tooth width, and the upper lip, not a tooth, is what shows above its edge."""
    avatar, rig = rigs[name]
    renderer = Renderer(rig)
    tooth = renderer.mouth.tooth_width
    assert tooth > 3, "synthetic teeth are drawn for closed lips"
    motion = _motion(jawOpen=0.7)
    frame = renderer.render(motion)
    profile = _upper_row_profile(renderer, frame, motion, depth_px=0.35 * tooth)
    period, strength = _periodicity(profile)
    record_property(f"{name}_tooth_period_px", period)
    record_property(f"{name}_central_incisor_px", round(tooth, 2))
    # Front teeth are 0.75-1 central incisor wide in the arch's perspective.
    assert 0.6 * tooth <= period <= 1.25 * tooth and strength >= MIN_PERIODICITY, (period, strength, tooth)

    # The lip covers the top of the row: the rows the upper teeth occupy start under the lip
    # (their gum and crown tops are drawn there), yet above the lip's edge the frame is the
    # warped lip itself, and right below it the teeth, not a dark band, show.
    upper_piece = next(piece for piece in renderer.mouth.pieces if piece.lip == "upper")
    mid = rig.vertices[topo.UPPER_LIP_INNER[5], :2] - upper_piece.origin
    above = np.round(mid - [0, 0.3 * tooth]).astype(int)
    assert upper_piece.image[above[1], above[0], 3] == 255
    toothless = Renderer(rig)
    toothless.mouth.pieces = []
    bare = toothless.render(motion)
    lip = _upper_row_profile(renderer, frame, motion, depth_px=-3.0)
    lip_bare = _upper_row_profile(renderer, bare, motion, depth_px=-3.0)
    assert np.abs(lip - lip_bare).max() <= 2.0, "teeth drawn over the upper lip"
    teeth = _upper_row_profile(renderer, frame, motion, depth_px=1.5)
    cavity = _upper_row_profile(renderer, bare, motion, depth_px=1.5)
    assert teeth.mean() > cavity.mean() + 40, "a dark band between the lip and the teeth"


@pytest.mark.parametrize("name", ["hopper", "hopper_grey"])
def test_no_uniform_white_bar_at_mid_opening(rigs, name: str, record_property) -> None:
    """jawOpen 0.3 on a closed-mouth portrait: the teeth are not one bar (whose shading and
    edges vary too, but with no period along the row)."""
    _, rig = rigs[name]
    renderer = Renderer(rig)
    motion = _motion(jawOpen=0.3)
    tooth = renderer.mouth.tooth_width
    profile = _upper_row_profile(renderer, renderer.render(motion), motion, depth_px=0.3 * tooth)
    period, strength = _periodicity(profile)
    record_property(f"{name}_mid_opening_periodicity", round(strength, 2))
    assert 0.6 * tooth <= period <= 1.25 * tooth and strength >= MIN_PERIODICITY, (period, strength, tooth)


@pytest.mark.parametrize("name", ["astronaut", "obama"])
def test_own_upper_teeth_stay_whole_when_the_jaw_drops(rigs, name: str, record_property) -> None:
    """A smile's own upper teeth ride the skull as one piece: the band they fill at rest
    (from the upper lip down to just above the lower lip) stays as bright with the jaw open,
    instead of its lower part dropping away with the jaw and leaving the cavity."""
    avatar, rig = rigs[name]
    assert rig.mouth.cavity_image is not None, f"{name} shows its own teeth"
    renderer = Renderer(rig)
    upper = rig.vertices[rig.mouth.upper_inner, :2]
    lower = rig.vertices[rig.mouth.lower_inner, :2]
    band = np.concatenate([upper + 0.15 * (lower - upper), (upper + 0.8 * (lower - upper))[::-1]])[2:-2]
    mask = np.zeros(avatar.image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(band).astype(np.int32)], 1)
    luma = lambda image: cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[mask > 0].astype(np.float32).mean()  # noqa: E731
    rest = luma(avatar.image)
    opened = luma(renderer.render(_motion(jawOpen=0.6)))
    record_property("teeth_band_luma", dict(rest=round(rest, 1), open=round(opened, 1)))
    assert opened >= 0.9 * rest, f"upper teeth band darkened from {rest:.0f} to {opened:.0f} with the jaw open"


@pytest.mark.parametrize("name", ["astronaut", "obama"])
def test_wide_open_smile_shows_lower_teeth_and_a_tongue(rigs, name: str, record_property) -> None:
    """jawOpen 0.8 on a smile with its own teeth: below the own upper teeth, a row of lower
    teeth with per-tooth structure and nearly their brightness (not a grey dotted line), and
    behind them a tongue, lit and redder than the dark top of the cavity (not a flat hole)."""
    from emolive.engine.mouth import _similarity

    _, rig = rigs[name]
    renderer = Renderer(rig)
    motion = _motion(jawOpen=0.8)
    frame = renderer.render(motion)
    luma = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    positions = rig.vertices[:, :2] + renderer.vertex_displacement(motion)
    mm = renderer.mouth.tooth_width / 8.5  # pixels per millimetre: an upper central incisor is 8.5 mm wide
    split = rig.mouth.cavity_split

    def moved(points: np.ndarray, lip: np.ndarray, rest: np.ndarray) -> np.ndarray:
        affine = _similarity(rest, positions[lip])
        return points @ affine[:, :2].T + affine[:, 2]

    def along(line: np.ndarray, image: np.ndarray) -> np.ndarray:
        return _profile_along(line, image, 0.5)

    # The lower crowns stand on the split line as the jaw carries it: sample 1.5 mm above it.
    lower_split = moved(split, rig.mouth.lower_inner, rig.mouth.cavity_lower)
    lower_teeth = along(lower_split - [0, 1.5 * mm], luma)
    period, strength = _periodicity(lower_teeth)
    upper_teeth = along(moved(split, rig.mouth.upper_inner, rig.mouth.cavity_upper) - [0, 2.0 * mm], luma)
    record_property(f"{name}_lower_row", dict(period=period, strength=round(strength, 2),
                                              luma=round(float(lower_teeth.mean()), 1),
                                              upper_luma=round(float(upper_teeth.mean()), 1)))
    assert strength >= MIN_PERIODICITY and 3 * mm <= period <= 9 * mm, (period, strength, mm)
    # A dotted grey line measured 0.72-0.74 of the upper teeth here; the row now 0.8-0.9.
    assert lower_teeth.mean() >= 0.78 * upper_teeth.mean(), "the lower teeth are a grey line"

    # Between the upper teeth and the lower crowns' tips: dark behind the upper teeth, the
    # lit tongue lower down.
    top = moved(split, rig.mouth.upper_inner, rig.mouth.cavity_upper)
    tips = lower_split - [0, 3.5 * mm]
    rows = np.array([[along(top + f * (tips - top), frame[..., c].astype(np.float32)).mean() for c in range(3)]
                     for f in np.linspace(0.1, 0.9, 9)])
    row_luma = rows @ [0.299, 0.587, 0.114]
    tongue = rows[np.argmax(row_luma)]
    record_property(f"{name}_cavity", dict(dark=round(float(row_luma.min()), 1), tongue=tongue.round(1).tolist()))
    assert row_luma.max() >= row_luma.min() + 25, f"no tongue: the cavity is one flat dark {row_luma.round(0)}"
    assert np.argmax(row_luma) > np.argmin(row_luma), "the cavity is lighter at the top than at the tongue"
    assert tongue[0] >= tongue[1] + 10, f"the tongue is not red: {tongue.round(0)}"
