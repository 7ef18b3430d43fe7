"""Tests of rtfm_env.viz: resizing, composing panels and drawing episodes on top-down maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtfm_env import viz
from rtfm_env.geometry import RobotState
from rtfm_env.scenes import MiniWorldScene
from rtfm_env.scenes.base import TopDownMap

ROBOT = np.array(viz.COLORS["robot"], dtype=np.uint8)
GOAL = np.array(viz.COLORS["goal"], dtype=np.uint8)


def _grey_map(rows: int = 100, cols: int = 140, cell: float = 0.1) -> TopDownMap:
    """A 14 m x 10 m open floor whose corner is at (x, z) = (-7, -5), drawn plain grey at one pixel per cell."""
    free = np.ones((rows, cols), dtype=bool)
    image = np.full((rows, cols, 3), 128, dtype=np.uint8)
    return TopDownMap(free=free, origin_x=-7.0, origin_z=-5.0, cell=cell, image=image)


def _mask(image: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.all(image == colour, axis=-1)


@pytest.fixture(scope="module")
def scene():
    """A FourRooms scene (MiniWorld env from the shared pool), released after the module."""
    scene = MiniWorldScene("MiniWorld-FourRooms-v0", width=32, height=32)
    scene.reset(0)
    yield scene
    scene.close()


# ---------------------------------------------------------------------------------------
# resize and compose
# ---------------------------------------------------------------------------------------


def test_resize_integer_factor_repeats_pixels():
    """Enlarging by an integer factor turns every pixel into a sharp factor x factor block."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
    out = viz.resize(image, 32)
    assert out.shape == (32, 24, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[::4, ::4], image)
    np.testing.assert_array_equal(out[3::4, 3::4], image)


@pytest.mark.parametrize(("shape", "height", "expected"), [((64, 64), 100, (100, 100)), ((512, 400), 256, (256, 200))])
def test_resize_any_height_keeps_aspect(shape, height, expected):
    """Non-integer scales keep the aspect ratio and a constant image stays constant."""
    image = np.full((*shape, 3), 77, dtype=np.uint8)
    out = viz.resize(image, height)
    assert out.shape == (*expected, 3) and out.dtype == np.uint8
    assert np.all(out == 77)


def test_compose_places_panels_side_by_side():
    """compose() scales panels to one height and separates them by background gaps."""
    view = np.zeros((64, 64, 3), dtype=np.uint8)
    view[:, :32] = 255
    side = np.full((128, 80, 3), 50, dtype=np.uint8)
    out = viz.compose(view, side, gap=4)
    assert out.shape == (128, 128 + 4 + 80, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :128], viz.resize(view, 128))
    assert np.all(out[:, 128:132] == viz.COLORS["background"])
    assert np.all(out[:, 132:] == 50)


@pytest.mark.parametrize(
    "panel",
    [
        np.zeros((8, 8), dtype=np.uint8),
        np.zeros((8, 8, 3), dtype=np.float32),
        np.zeros((8, 8, 4), dtype=np.uint8),
        np.zeros((0, 8, 3), dtype=np.uint8),
    ],
)
def test_compose_rejects_non_rgb_panels(panel):
    """Panels that are not (H, W, 3) uint8 images raise ValueError describing the shape and dtype."""
    with pytest.raises(ValueError, match="panels\\[1\\]"):
        viz.compose(np.zeros((8, 8, 3), dtype=np.uint8), panel)


def test_compose_needs_panels():
    """compose() with nothing to compose raises ValueError."""
    with pytest.raises(ValueError, match="at least one panel"):
        viz.compose()


# ---------------------------------------------------------------------------------------
# MapCanvas
# ---------------------------------------------------------------------------------------


def test_canvas_maps_world_corners_to_image_corners():
    """World x grows along columns and z along rows; the map's corners land on the image's corners."""
    canvas = viz.MapCanvas(_grey_map(), height=200)
    assert canvas.image.shape == (200, 280, 3)
    assert canvas.pixels_per_metre == pytest.approx(20.0)
    np.testing.assert_allclose(canvas.to_pixels(np.array([-7.0, -5.0])), [0.0, 0.0])
    np.testing.assert_allclose(canvas.to_pixels(np.array([7.0, 5.0])), [200.0, 280.0])
    np.testing.assert_allclose(canvas.to_pixels(np.array([[0.0, 0.0], [1.0, -1.0]])), [[100, 140], [80, 160]])


def test_canvas_rejects_bad_points():
    """Floor points must be given as (x, z) pairs."""
    with pytest.raises(ValueError, match=r"\(x, z\)"):
        viz.MapCanvas(_grey_map()).to_pixels(np.zeros(3))


def test_draw_marks_goal_trajectory_and_robot_on_a_copy():
    """draw() puts the goal, the path and the robot where they are, and leaves the base map untouched."""
    canvas = viz.MapCanvas(_grey_map(), height=200)
    base = canvas.image.copy()
    states = [RobotState(-4.0, 0.0, 0.0), RobotState(-2.0, 0.0, 0.0), RobotState(0.0, 0.0, 0.0)]
    out = canvas.draw(states, goal=np.array([4.0, 2.0]), goal_radius=0.5)
    np.testing.assert_array_equal(canvas.image, base)
    goal_rc = canvas.to_pixels(np.array([4.0, 2.0])).round().astype(int)
    assert _mask(out, GOAL)[goal_rc[0], goal_rc[1]]
    robot_rc = canvas.to_pixels(np.array([0.0, 0.0])).round().astype(int)
    assert _mask(out, ROBOT)[robot_rc[0], robot_rc[1]]
    # The path from x = -4 to x = -1 along z = 0 is drawn in the trajectory colour (blended).
    row = canvas.to_pixels(np.array([-2.5, 0.0])).round().astype(int)[0]
    cols = range(int(canvas.to_pixels(np.array([-3.5, 0.0]))[1]), int(canvas.to_pixels(np.array([-1.5, 0.0]))[1]))
    strip = out[row - 1 : row + 2, cols].astype(int)
    assert np.all(np.abs(strip - base[row - 1 : row + 2, cols]).sum(axis=-1).max(axis=0) > 0)
    # Far from everything the map is untouched.
    np.testing.assert_array_equal(out[150:, :50], base[150:, :50])


@pytest.mark.parametrize("yaw", [0.0, math.pi / 2, math.pi, -math.pi / 2, math.radians(30.0)])
def test_robot_marker_points_along_heading(yaw):
    """The robot's triangle tip (its farthest pixel from the centre) points where the base faces."""
    canvas = viz.MapCanvas(_grey_map(), height=400)
    out = canvas.draw([RobotState(0.0, 0.0, yaw)])
    rows, cols = np.nonzero(_mask(out, ROBOT))
    centre = canvas.to_pixels(np.array([0.0, 0.0]))
    offsets = np.stack([rows + 0.5, cols + 0.5], axis=1) - centre
    tip = offsets[np.argmax(np.linalg.norm(offsets, axis=1))]
    facing = canvas.to_pixels(np.array([math.cos(yaw), -math.sin(yaw)])) - centre  # (cos, -sin) in (x, z)
    cos_angle = tip @ facing / (np.linalg.norm(tip) * np.linalg.norm(facing))
    assert cos_angle > math.cos(math.radians(12.0))


def test_draw_without_states_shows_only_the_goal():
    """With no states only the goal is drawn."""
    canvas = viz.MapCanvas(_grey_map(), height=200)
    out = canvas.draw([], goal=np.array([0.0, 0.0]))
    assert _mask(out, GOAL).any() and not _mask(out, ROBOT).any()


# ---------------------------------------------------------------------------------------
# episode_frames with a real scene
# ---------------------------------------------------------------------------------------


def test_episode_frames_from_scene_ground_truth(scene):
    """episode_frames gives one composite per state: the ground-truth view beside the map so far."""
    start = scene.start_state
    states = [start]
    for action in (1, 1, 2, 1):
        states.append(scene.move(states[-1], action)[0])
    frames = viz.episode_frames(scene, states, goal=np.array([start.x + 1.0, start.z]), height=128)
    assert len(frames) == len(states)
    assert all(f.shape == frames[0].shape and f.dtype == np.uint8 for f in frames)
    assert frames[0].shape[0] == 128
    for frame, state in zip(frames, states, strict=True):
        np.testing.assert_array_equal(frame[:, :128], viz.resize(scene.render(state.pose()), 128))
    assert not np.array_equal(frames[0], frames[-1])


def test_episode_frames_uses_given_views(scene):
    """Views passed in (e.g. a learned camera's frames) are shown instead of the ground truth."""
    states = [scene.start_state] * 2
    views = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    views[1] = 255
    frames = viz.episode_frames(scene, states, views=views, height=64)
    assert np.all(frames[0][:, :64] == 0) and np.all(frames[1][:, :64] == 255)


def test_episode_frames_needs_one_view_per_state(scene):
    """A views list of the wrong length raises ValueError."""
    with pytest.raises(ValueError, match="one view per state"):
        viz.episode_frames(scene, [scene.start_state] * 3, views=np.zeros((2, 32, 32, 3), dtype=np.uint8))
