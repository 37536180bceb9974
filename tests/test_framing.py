"""Framing of tight portraits: the default head-and-shoulders crop stays inside the image, so
no frame shows replicated edges (streaks), whatever the head does, and the hair stays in."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from emolive.engine.motion_space import INDEX, NUM_CHANNELS
from emolive.engine.offline import DEFAULT_PORTRAIT, RenderOptions, prepare_avatar
from emolive.engine.render import Renderer

STREAK_ROWS = 8  # a run this long of identical rows or columns at an edge is a visible streak


def longest_edge_run(image: np.ndarray, depth: int = 24) -> int:
    """The longest run of identical consecutive rows (columns) within ``depth`` px of any edge."""
    edges = (image[:depth], image[::-1][:depth], image[:, :depth].transpose(1, 0, 2),
             image[:, ::-1][:, :depth].transpose(1, 0, 2))
    longest = 1
    for edge in edges:
        run = 1
        for a, b in zip(edge, edge[1:]):
            run = run + 1 if np.array_equal(a, b) else 1
            longest = max(longest, run)
    return longest


@pytest.fixture(scope="module")
def tight_headshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled portrait cropped so that the face fills ~65 % of the image width (a selfie)."""
    source = cv2.imread(str(DEFAULT_PORTRAIT))
    path = tmp_path_factory.mktemp("tight") / "tight.jpg"
    cv2.imwrite(str(path), source[30:290, 140:340], [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


def test_a_tight_headshot_renders_without_streaks_and_keeps_the_head(tight_headshot: Path) -> None:
    avatar, rig = prepare_avatar(tight_headshot, RenderOptions())
    x0, y0, x1, y1 = avatar.face_box
    source_width = cv2.imread(str(tight_headshot)).shape[1]
    assert (x1 - x0) / avatar.image.shape[1] >= 0.4  # the face fills the frame
    assert y0 >= 0.1 * (y1 - y0) and x0 > 0 and x1 < 512 and y1 < 512  # face and hair room inside
    assert longest_edge_run(avatar.image) < STREAK_ROWS
    renderer = Renderer(rig)
    for yaw, pitch, jaw in [(0.0, 0.0, 0.0), (0.26, 0.0, 0.6), (-0.26, 0.12, 0.3), (0.0, -0.15, 0.7)]:
        motion = np.zeros(NUM_CHANNELS, np.float32)
        motion[INDEX["headYaw"]], motion[INDEX["headPitch"]], motion[INDEX["jawOpen"]] = yaw, pitch, jaw
        frame = renderer.render(motion)
        assert longest_edge_run(frame) < STREAK_ROWS, (yaw, pitch, jaw)
    assert source_width < 512  # the crop was smaller than the output: upscaled, not padded
