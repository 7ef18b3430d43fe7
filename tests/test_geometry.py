"""Tests for rtfm_env.geometry: poses, intrinsics, ROS frames, Plücker rays, kinematics."""

import math

import numpy as np
import pytest
import torch
import transforms3d
from hypothesis import given, settings
from hypothesis import strategies as st

from rtfm_env import geometry as g

finite = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False)
angle = st.floats(-math.pi, math.pi, allow_nan=False, allow_infinity=False)
pitch = st.floats(-1.2, 1.2, allow_nan=False, allow_infinity=False)


@st.composite
def rigid(draw):
    q = np.array([draw(st.floats(-1, 1)) for _ in range(4)])
    if np.linalg.norm(q) < 1e-3:
        q = np.array([1.0, 0.0, 0.0, 0.0])
    rot = transforms3d.quaternions.quat2mat(q / np.linalg.norm(q))
    return g.make_pose(rot, [draw(finite), draw(finite), draw(finite)])


@given(rigid(), rigid())
@settings(max_examples=60, deadline=None)
def test_compose_inverse_round_trip(a, b):
    """Composing a pose with its inverse gives the identity; relative_pose undoes compose."""
    np.testing.assert_allclose(g.compose(a, g.invert_pose(a)), np.eye(4), atol=1e-9)
    np.testing.assert_allclose(g.compose(a, g.relative_pose(a, b)), b, atol=1e-8)
    np.testing.assert_allclose(g.invert_pose(g.invert_pose(a)), a, atol=1e-9)


@given(rigid())
@settings(max_examples=30, deadline=None)
def test_invert_matches_numpy_inverse(a):
    """The closed-form rigid inverse equals the general matrix inverse."""
    np.testing.assert_allclose(g.invert_pose(a), np.linalg.inv(a), atol=1e-8)


@given(finite, finite, angle, st.floats(0.1, 3.0), pitch)
@settings(max_examples=60, deadline=None)
def test_camera_pose_state_round_trip(x, z, yaw, h, p):
    """pose_to_state inverts camera_pose, and the camera looks along the yaw heading."""
    pose = g.camera_pose(x, z, yaw, h, p)
    g.check_pose(pose)
    s = g.pose_to_state(pose)
    assert s.x == pytest.approx(x, abs=1e-9) and s.z == pytest.approx(z, abs=1e-9)
    assert s.cam_height == pytest.approx(h, abs=1e-9) and s.pitch == pytest.approx(p, abs=1e-9)
    assert abs(g.angle_difference(s.yaw, yaw)) < 1e-9
    fwd = -pose[:3, 2]
    flat = fwd.copy()
    flat[1] = 0
    np.testing.assert_allclose(flat / np.linalg.norm(flat), g.heading_vector(yaw), atol=1e-9)
    assert fwd[1] == pytest.approx(math.sin(p), abs=1e-9)  # positive pitch looks up


def test_yaw_zero_looks_along_plus_x_and_up_is_y():
    """Yaw 0 faces world +x, the camera's up axis is world +y, right is -z (y-up world)."""
    pose = g.camera_pose(0, 0, 0, 1.5, 0)
    np.testing.assert_allclose(-pose[:3, 2], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(pose[:3, 1], [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(pose[:3, 0], [0, 0, 1], atol=1e-12)
    # a left turn (positive yaw) faces -z: right-handed with y up
    np.testing.assert_allclose(-g.camera_pose(0, 0, math.pi / 2)[:3, 2], [0, 0, -1], atol=1e-12)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.eye(3), "4x4"),
        (np.full((4, 4), np.nan), "NaN"),
        (np.diag([1.0, 1.0, 1.0, 2.0]), "bottom row"),
        (np.diag([2.0, 1.0, 1.0, 1.0]), "rotation"),
        (np.diag([-1.0, 1.0, 1.0, 1.0]), "rotation"),
    ],
)
def test_check_pose_rejects_bad_input(bad, match):
    """Malformed poses raise ValueError naming the problem."""
    with pytest.raises(ValueError, match=match):
        g.check_pose(bad)


def test_intrinsics_matrix():
    """K has f = (H/2)/tan(fov/2) and the principal point at the centre."""
    intr = g.Intrinsics(64, 48, 90.0)
    assert intr.focal == pytest.approx(24.0)
    np.testing.assert_allclose(intr.K, [[24, 0, 32], [0, 24, 24], [0, 0, 1]])
    assert intr.fov_x == pytest.approx(2 * math.degrees(math.atan(32 / 24)))
    assert g.Intrinsics.from_dict(intr.to_dict()) == intr
    with pytest.raises(ValueError, match="fov_y"):
        g.Intrinsics(64, 64, 180.0)
    with pytest.raises(ValueError, match="size"):
        g.Intrinsics(0, 64)


def test_plucker_identity_camera():
    """The identity camera's rays: moment zero, directions through pixel centres, unit length."""
    intr = g.Intrinsics(8, 6, 60.0)
    rays = g.plucker_rays(np.eye(4)[None], intr)
    assert rays.shape == (1, 6, 6, 8)
    d, m = rays[0, :3], rays[0, 3:]
    assert torch.allclose(m, torch.zeros_like(m), atol=1e-7)
    assert torch.allclose(d.norm(dim=0), torch.ones(6, 8), atol=1e-6)
    f = intr.focal
    expect = np.array([(0.5 - 4) / f, -(0.5 - 3) / f, -1.0])
    np.testing.assert_allclose(d[:, 0, 0].numpy(), expect / np.linalg.norm(expect), atol=1e-6)
    assert (d[2] < 0).all()  # OpenGL cameras look down -z


@given(rigid(), rigid())
@settings(max_examples=25, deadline=None)
def test_plucker_in_reference_frame(cam, ref):
    """Rays in a reference frame are the relative camera's rays and pass through its centre."""
    intr = g.Intrinsics(5, 4, 70.0)
    rays = g.plucker_rays(cam, intr, reference=ref, dtype=torch.float64)
    rel = g.relative_pose(ref, cam)
    expect = g.plucker_rays(rel, intr, dtype=torch.float64)
    assert torch.allclose(rays, expect, atol=1e-7)
    d, m = rays[:3], rays[3:]
    o = torch.as_tensor(rel[:3, 3])
    assert torch.allclose((d * m).sum(0), torch.zeros(4, 5, dtype=torch.float64), atol=1e-6)  # d . m = 0
    assert torch.allclose(torch.cross(o[:, None, None].expand_as(d), d, dim=0), m, atol=1e-6)


def test_plucker_batched_and_relative_invariance():
    """Batched rays match per-item rays; moving both cameras rigidly leaves relative rays unchanged."""
    intr = g.Intrinsics(4, 4, 60.0)
    poses = np.stack([g.camera_pose(i, -i, 0.3 * i, 1.5, 0.1) for i in range(3)])
    ref = g.camera_pose(0.5, 0.5, 1.0)
    batched = g.plucker_rays(poses, intr, reference=ref)
    for i in range(3):
        assert torch.allclose(batched[i], g.plucker_rays(poses[i], intr, reference=ref), atol=1e-6)
    shift = g.make_pose(transforms3d.euler.euler2mat(0.0, 0.7, 0.0), [3.0, 0.0, -2.0])
    moved = g.plucker_rays(shift @ poses, intr, reference=shift @ ref)
    assert torch.allclose(batched, moved, atol=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        g.plucker_rays(np.full((4, 4), np.nan), intr)


@given(rigid())
@settings(max_examples=40, deadline=None)
def test_ros_conversion_round_trip(pose):
    """world_to_ros and ros_to_world are exact inverses and keep poses rigid."""
    ros = g.world_to_ros(pose)
    g.check_pose(ros)
    np.testing.assert_allclose(g.ros_to_world(ros), pose, atol=1e-9)


@given(finite, finite, angle)
@settings(max_examples=40, deadline=None)
def test_ros_frames_follow_rep103(x, z, yaw):
    """Odom is x forward, y left, z up; optical frame z forward, y down; yaw keeps its sign."""
    state = g.RobotState(x, z, yaw, 1.5, 0.0)
    optical = g.world_to_ros(state.pose())
    np.testing.assert_allclose(optical[:3, 3], [x, -z, 1.5], atol=1e-9)
    np.testing.assert_allclose(optical[:3, 2], [math.cos(yaw), math.sin(yaw), 0.0], atol=1e-9)
    np.testing.assert_allclose(optical[:3, 1], [0, 0, -1], atol=1e-9)  # image y points down
    base = g.state_to_odom(state)
    np.testing.assert_allclose(base[:3, 3], [x, -z, 0.0], atol=1e-9)
    np.testing.assert_allclose(base[:3, :3], transforms3d.euler.euler2mat(0, 0, yaw, "sxyz"), atol=1e-9)


def test_discrete_kinematics():
    """Forward moves 0.25 m along the heading, turns are 15 degrees, pitch is clipped."""
    s = g.RobotState(1.0, 2.0, 0.0)
    f = g.apply_discrete(s, g.DiscreteAction.FORWARD)
    assert (f.x, f.z) == pytest.approx((1.25, 2.0))
    left = g.apply_discrete(s, g.DiscreteAction.TURN_LEFT)
    assert left.yaw == pytest.approx(math.radians(15))
    assert g.apply_discrete(left, g.DiscreteAction.TURN_RIGHT).yaw == pytest.approx(0.0, abs=1e-12)
    up = s
    for _ in range(10):
        up = g.apply_discrete(up, g.DiscreteAction.LOOK_UP)
    assert up.pitch == pytest.approx(math.radians(45))
    assert g.apply_discrete(s, g.DiscreteAction.STOP) == s
    with pytest.raises(ValueError, match="unknown discrete action"):
        g.apply_discrete(s, 9)


@given(st.floats(-2, 2), st.floats(-3, 3), st.floats(0.0, 2.0), angle)
@settings(max_examples=60, deadline=None)
def test_velocity_integration_matches_fine_euler(v, omega, dt, yaw0):
    """The exact unicycle step agrees with many small Euler steps."""
    s0 = g.RobotState(0.0, 0.0, yaw0)
    exact = g.apply_velocity(s0, v, omega, dt)
    s = s0
    n = 2000
    for _ in range(n):
        h = g.heading_vector(s.yaw)
        s = g.RobotState(s.x + v * dt / n * h[0], s.z + v * dt / n * h[2], s.yaw + omega * dt / n)
    assert exact.x == pytest.approx(s.x, abs=5e-3) and exact.z == pytest.approx(s.z, abs=5e-3)
    assert abs(g.angle_difference(exact.yaw, s.yaw)) < 1e-6


def test_velocity_rejects_non_finite():
    """NaN or infinite velocity commands and NaN states raise ValueError."""
    s = g.RobotState(0, 0, 0)
    for bad in [(math.nan, 0, 1), (0, math.inf, 1), (1, 0, math.nan)]:
        with pytest.raises(ValueError, match="not finite"):
            g.apply_velocity(s, *bad)
    with pytest.raises(ValueError, match="NaN"):
        g.RobotState(math.nan, 0, 0)
