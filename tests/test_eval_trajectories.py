"""Tests for rtfm_env.eval.trajectories."""

import math

import numpy as np
import pytest

from rtfm_env.eval.trajectories import (
    SUITE_KINDS,
    SuiteConfig,
    find_revisits,
    landmark_tour,
    make_suite_trajectory,
    round_trip,
)
from rtfm_env.geometry import camera_pose
from rtfm_env.scenes import HELDOUT_IDS, MiniWorldScene

SMALL = SuiteConfig(excursion=40, lead_in=4, loop_steps=80, turn_rotations=2, tour_steps=400, tour_landmarks=3)


@pytest.fixture(scope="module")
def scene():
    s = MiniWorldScene("MiniWorld-YMaze-v0")
    yield s
    s.close()


def _poses(states):
    return np.stack([s.pose() for s in states])


def test_find_revisits_on_known_poses():
    """A pose repeated after leaving is a revisit of its first visit; a pose held in place is not."""
    a, b, c = camera_pose(0, 0, 0), camera_pose(1, 0, 0), camera_pose(0, 0, math.radians(90))
    poses = np.stack([a, a, b, c, a, b])
    assert find_revisits(poses).tolist() == [-1, -1, -1, -1, 0, 2]


@pytest.mark.parametrize(
    ("offset", "yaw_deg", "revisit"),
    [(0.09, 0.0, True), (0.11, 0.0, False), (0.0, 4.9, True), (0.0, 5.1, False)],
)
def test_find_revisits_tolerances(offset, yaw_deg, revisit):
    """Positions within 0.1 m and headings within 5 degrees count; just beyond them does not."""
    poses = np.stack([camera_pose(0, 0, 0), camera_pose(3, 0, 0), camera_pose(offset, 0, math.radians(yaw_deg))])
    assert bool(find_revisits(poses)[2] == 0) is revisit


def test_find_revisits_tolerances_are_parameters():
    """Looser tolerances find a revisit that the defaults reject."""
    poses = np.stack([camera_pose(0, 0, 0), camera_pose(3, 0, 0), camera_pose(0.3, 0, math.radians(12))])
    assert find_revisits(poses)[2] == -1
    assert find_revisits(poses, position_tol=0.5, heading_tol=15.0)[2] == 0


@pytest.mark.parametrize("bad", [np.zeros((3, 3, 3)), np.full((2, 4, 4), np.nan)])
def test_find_revisits_rejects_bad_poses(bad):
    """Wrong shapes and NaN poses raise ValueError naming the problem."""
    with pytest.raises(ValueError, match="shape|NaN"):
        find_revisits(bad)


def test_round_trip_revisits_anchor_after_the_excursion(scene):
    """out_and_back's last frame revisits the anchor exactly `excursion` steps later, collision-free."""
    for seed in range(3):
        start = scene.reset(seed)
        traj = make_suite_trajectory("out_and_back", scene, start, seed, SMALL)
        first = find_revisits(traj.poses())
        assert len(traj) == 1 + SMALL.lead_in + SMALL.excursion
        assert first[-1] == SMALL.lead_in and traj.returns_to[-1] == SMALL.lead_in
        assert not traj.collided.any()
        # It really went somewhere in between: the excursion's farthest point is away from the anchor.
        xz = traj.state_array()[:, :2]
        assert np.linalg.norm(xz - xz[SMALL.lead_in], axis=1).max() > 0.5


@pytest.mark.parametrize("kind", SUITE_KINDS)
@pytest.mark.parametrize("env_id", HELDOUT_IDS)
def test_every_family_revisits_and_respects_walls(kind, env_id):
    """Every family, on every held-out scene, revisits places, and each planned return is found."""
    s = MiniWorldScene(env_id)
    try:
        start = s.reset(1)
        traj = make_suite_trajectory(kind, s, start, 7, SMALL)
        poses = traj.poses()
        first = find_revisits(poses)
        assert (first >= 0).sum() >= 1
        for i in np.flatnonzero(traj.returns_to >= 0):
            j = first[i]
            assert j >= 0 and np.allclose(poses[j], poses[traj.returns_to[i]], atol=1e-6)
        # Every pose the camera took is on free floor: moves went through the scene's collisions.
        assert all(s.is_free(st.x, st.z) for st in traj.states)
    finally:
        s.close()


def test_tour_is_long_and_returns_to_several_landmarks_repeatedly(scene):
    """A 1000-step tour revisits several places, some of them hundreds of steps later."""
    start = scene.reset(2)
    traj = make_suite_trajectory("tour", scene, start, 3, SuiteConfig(tour_steps=1000, tour_landmarks=4))
    assert len(traj) == 1001
    first = find_revisits(traj.poses())
    planned = traj.returns_to[traj.returns_to >= 0]
    assert len(np.unique(planned)) >= 3  # several landmarks
    assert np.bincount(planned).max() >= 3  # each comes back more than once
    dt = np.flatnonzero(first >= 0) - first[first >= 0]
    assert dt.max() >= 300


def test_same_seed_same_trajectory(scene):
    """A seed fixes a trajectory; another seed gives another one."""
    start = scene.reset(0)
    a = make_suite_trajectory("tour", scene, start, 5, SMALL)
    b = make_suite_trajectory("tour", scene, start, 5, SMALL)
    c = make_suite_trajectory("tour", scene, start, 6, SMALL)
    assert np.array_equal(a.poses(), b.poses())
    assert not np.array_equal(a.poses(), c.poses())


def test_bad_options_are_rejected(scene):
    """Unknown kinds list the valid ones; impossible lengths raise ValueError."""
    start = scene.reset(0)
    with pytest.raises(KeyError, match="valid kinds"):
        make_suite_trajectory("spiral", scene, start, 0)
    with pytest.raises(ValueError, match="excursion"):
        next(round_trip(scene, start, 0, excursion=25))
    with pytest.raises(ValueError, match="min_leg"):
        next(landmark_tour(scene, start, 0, min_leg=5, max_leg=2))
    with pytest.raises(ValueError, match="tour_steps"):
        SuiteConfig(tour_steps=0)
