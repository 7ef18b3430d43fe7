"""Camera geometry: poses, intrinsics, ROS frame conversion, Plücker rays and robot kinematics.

Conventions (see DESIGN.md):

* World frame: right-handed, metres, y up, floor at y = 0 (as MiniWorld and OpenGL).
* A camera pose is camera-to-world, a 4x4 float64 matrix. Camera axes are OpenGL style:
  x right, y up, the camera looks down -z.
* A robot moves on the floor: its base is (x, z, yaw) plus a camera height and pitch.
  ``yaw`` follows MiniWorld's ``agent.dir``: the base faces (cos yaw, 0, -sin yaw), so a
  positive yaw change turns the robot left (counter-clockwise seen from above).
* ROS side (REP-103/105): the ``odom`` frame is x forward, y left, z up; a camera's optical
  frame is z forward, x right, y down. :func:`world_to_ros` / :func:`ros_to_world` are the
  one place where the conversion happens.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import transforms3d

__all__ = [
    "Intrinsics",
    "RobotState",
    "make_pose",
    "invert_pose",
    "compose",
    "relative_pose",
    "check_pose",
    "camera_pose",
    "pose_to_state",
    "world_to_ros",
    "ros_to_world",
    "state_to_odom",
    "WORLD_TO_ODOM",
    "OPENGL_TO_OPTICAL",
    "plucker_rays",
    "DiscreteAction",
    "KinematicsConfig",
    "apply_discrete",
    "apply_velocity",
    "heading_vector",
    "angle_difference",
]


# --------------------------------------------------------------------------------------
# SE(3) poses
# --------------------------------------------------------------------------------------


def check_pose(pose: np.ndarray, name: str = "pose") -> np.ndarray:
    """Return ``pose`` as a float64 (4, 4) rigid transform or raise ``ValueError``.

    Rejects wrong shapes, NaN or infinite entries, a bottom row other than (0, 0, 0, 1), and
    a rotation block that is not orthonormal with determinant +1 (tolerance 1e-4).
    """
    arr = np.asarray(pose, dtype=np.float64)
    if arr.shape != (4, 4):
        raise ValueError(f"{name} must be a 4x4 camera-to-world matrix, got shape {arr.shape}")
    # Checked on Python floats: a dozen numpy calls on a 4x4 cost ~40 us, and every camera call
    # and retrieval checks a pose (np.allclose alone costs ~100 us).
    r0, r1, r2, bottom = arr.tolist()
    if not all(map(math.isfinite, (*r0, *r1, *r2, *bottom))):
        raise ValueError(f"{name} contains NaN or infinite values: {arr.tolist()}")
    if max(abs(bottom[0]), abs(bottom[1]), abs(bottom[2]), abs(bottom[3] - 1.0)) > 1e-6:
        raise ValueError(f"{name} bottom row must be (0, 0, 0, 1), got {bottom}")
    a, b, c = r0[:3], r1[:3], r2[:3]
    gram = (  # R R^T - I, entry by entry (symmetric: six of them)
        a[0] * a[0] + a[1] * a[1] + a[2] * a[2] - 1.0,
        b[0] * b[0] + b[1] * b[1] + b[2] * b[2] - 1.0,
        c[0] * c[0] + c[1] * c[1] + c[2] * c[2] - 1.0,
        a[0] * b[0] + a[1] * b[1] + a[2] * b[2],
        a[0] * c[0] + a[1] * c[1] + a[2] * c[2],
        b[0] * c[0] + b[1] * c[1] + b[2] * c[2],
    )
    det = a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0]) + a[2] * (b[0] * c[1] - b[1] * c[0])
    if max(map(abs, gram)) > 1e-4 or det < 0:
        raise ValueError(f"{name} rotation block is not a proper rotation (orthonormal, det +1)")
    return arr




def make_pose(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Build a 4x4 rigid transform from a 3x3 rotation and a 3-vector translation."""
    return transforms3d.affines.compose(
        np.asarray(translation, dtype=np.float64), np.asarray(rotation, dtype=np.float64), np.ones(3)
    )


def invert_pose(pose: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform (R^T, -R^T t), exact for rotations; works on (..., 4, 4)."""
    pose = np.asarray(pose, dtype=np.float64)
    rot_t = np.swapaxes(pose[..., :3, :3], -1, -2)
    out = np.zeros_like(pose)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, pose[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def compose(*poses: np.ndarray) -> np.ndarray:
    """Compose transforms left to right: ``compose(a, b, c) == a @ b @ c``."""
    out = np.eye(4)
    for p in poses:
        out = out @ np.asarray(p, dtype=np.float64)
    return out


def relative_pose(reference: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Pose of ``pose`` expressed in the frame of ``reference`` (both camera-to-world)."""
    return invert_pose(reference) @ np.asarray(pose, dtype=np.float64)


# --------------------------------------------------------------------------------------
# Intrinsics
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics with square pixels and the principal point at the image centre."""

    width: int  # pixels
    height: int  # pixels
    fov_y: float = 60.0  # vertical field of view, degrees (MiniWorld's default)

    def __post_init__(self) -> None:
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if not (0.0 < float(self.fov_y) < 180.0) or not math.isfinite(self.fov_y):
            raise ValueError(f"fov_y must be in (0, 180) degrees, got {self.fov_y}")

    @property
    def focal(self) -> float:
        """Focal length in pixels (fx = fy)."""
        return 0.5 * self.height / math.tan(math.radians(self.fov_y) / 2.0)

    @property
    def fov_x(self) -> float:
        """Horizontal field of view, degrees."""
        return math.degrees(2.0 * math.atan(0.5 * self.width / self.focal))

    @property
    def K(self) -> np.ndarray:  # noqa: N802 (the matrix's usual name)
        """3x3 camera matrix in the computer-vision convention (x right, y down, z forward)."""
        f = self.focal
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])

    def to_dict(self) -> dict:
        """JSON-ready form: width, height, fov_y."""
        return {"width": int(self.width), "height": int(self.height), "fov_y": float(self.fov_y)}

    @classmethod
    def from_dict(cls, d: dict) -> Intrinsics:
        """Inverse of :meth:`to_dict`."""
        return cls(int(d["width"]), int(d["height"]), float(d["fov_y"]))


# --------------------------------------------------------------------------------------
# Robot state <-> camera pose
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RobotState:
    """A robot on the floor: base position and heading plus its camera's height and pitch."""

    x: float  # metres
    z: float  # metres
    yaw: float  # radians, MiniWorld's convention: facing (cos yaw, 0, -sin yaw)
    cam_height: float = 1.5  # metres above the floor
    pitch: float = 0.0  # radians, positive looks up

    def __post_init__(self) -> None:
        vals = (self.x, self.z, self.yaw, self.cam_height, self.pitch)
        if not all(math.isfinite(float(v)) for v in vals):
            raise ValueError(f"robot state has NaN or infinite values: {self}")

    @property
    def position(self) -> np.ndarray:
        """Base position on the floor, (x, 0, z)."""
        return np.array([self.x, 0.0, self.z])

    def pose(self) -> np.ndarray:
        """Camera-to-world pose of this state's camera."""
        return camera_pose(self.x, self.z, self.yaw, self.cam_height, self.pitch)

    def replace(self, **kw: float) -> RobotState:
        """A copy with some fields changed."""
        return replace(self, **kw)

    def as_array(self) -> np.ndarray:
        """(x, z, yaw, cam_height, pitch) as float64."""
        return np.array([self.x, self.z, self.yaw, self.cam_height, self.pitch], dtype=np.float64)


def heading_vector(yaw: float) -> np.ndarray:
    """Unit vector on the floor that a base with this yaw faces."""
    return np.array([math.cos(yaw), 0.0, -math.sin(yaw)])


def camera_pose(x: float, z: float, yaw: float, cam_height: float = 1.5, pitch: float = 0.0) -> np.ndarray:
    """Camera-to-world pose of a camera at (x, cam_height, z) with the given yaw and pitch.

    The rotation is R_y(yaw - pi/2) @ R_x(pitch): with yaw = 0 the camera looks along +x.
    """
    rot = transforms3d.euler.euler2mat(yaw - math.pi / 2.0, pitch, 0.0, axes="ryxz")
    return make_pose(rot, [x, cam_height, z])


def pose_to_state(pose: np.ndarray) -> RobotState:
    """Inverse of :func:`camera_pose` for a camera with no roll."""
    pose = check_pose(pose)
    fwd = -pose[:3, 2]  # the camera looks down -z
    pitch = math.asin(float(np.clip(fwd[1], -1.0, 1.0)))
    yaw = math.atan2(-fwd[2], fwd[0]) if math.hypot(fwd[0], fwd[2]) > 1e-9 else 0.0
    return RobotState(float(pose[0, 3]), float(pose[2, 3]), yaw, float(pose[1, 3]), pitch)


def angle_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """Signed smallest difference a - b of angles in radians, in [-pi, pi)."""
    return (np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi


# --------------------------------------------------------------------------------------
# ROS (REP-103/105) frames
# --------------------------------------------------------------------------------------

#: Rotation taking world coordinates (y up) to ROS odom coordinates (x forward, y left, z up):
#: odom = (x, -z, y). A base with yaw 0 faces world +x, which is odom +x, and yaw keeps its sign.
WORLD_TO_ODOM = np.array(
    [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
#: Camera axes: OpenGL (x right, y up, -z forward) to optical (x right, y down, z forward).
OPENGL_TO_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])


def world_to_ros(pose: np.ndarray) -> np.ndarray:
    """Convert a camera-to-world pose (OpenGL camera, y-up world) to the ROS convention.

    Returns the pose of the camera's *optical* frame (z forward, x right, y down) in the
    REP-103 ``odom`` frame (x forward, y left, z up). This is the one conversion between the
    two conventions in the project; :func:`ros_to_world` is its exact inverse.
    """
    return WORLD_TO_ODOM @ np.asarray(pose, dtype=np.float64) @ OPENGL_TO_OPTICAL


def ros_to_world(pose: np.ndarray) -> np.ndarray:
    """Inverse of :func:`world_to_ros`: optical-frame pose in odom -> OpenGL camera-to-world."""
    return WORLD_TO_ODOM.T @ np.asarray(pose, dtype=np.float64) @ OPENGL_TO_OPTICAL


def state_to_odom(state: RobotState) -> np.ndarray:
    """Pose of the robot's ``base_link`` (x forward, y left, z up) in ``odom``, 4x4.

    The base frame is the camera frame at floor height with no pitch, re-expressed through
    :func:`world_to_ros`, then rotated from optical axes to body axes (x forward, y left, z up).
    """
    base_cam = camera_pose(state.x, state.z, state.yaw, 0.0, 0.0)
    optical_to_body = np.array(
        [[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    ).T  # columns: body x = optical z, body y = -optical x, body z = -optical y
    return world_to_ros(base_cam) @ optical_to_body


# --------------------------------------------------------------------------------------
# Plücker rays
# --------------------------------------------------------------------------------------


def plucker_rays(
    poses: torch.Tensor | np.ndarray,
    intrinsics: Intrinsics,
    reference: torch.Tensor | np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-pixel Plücker ray maps of a batch of cameras, in a reference camera's frame.

    Args:
        poses: (..., 4, 4) camera-to-world poses (OpenGL camera axes).
        intrinsics: shared pinhole intrinsics; rays go through pixel centres.
        reference: (..., 4, 4) camera-to-world pose of the reference camera, broadcastable
            against ``poses``; rays are expressed in its camera frame. ``None`` uses the world frame.
        dtype: output dtype (computation is in float64 and cast at the end).

    Returns:
        (..., 6, H, W): unit direction d (3 channels) then moment m = o x d (3 channels), where
        o is the camera centre, both in the reference frame. The identity camera's rays have
        moment zero and directions ((u - cx) / f, -(v - cy) / f, -1) normalised.
    """
    poses_t = _as_float64(poses)
    if poses_t.shape[-2:] != (4, 4):
        raise ValueError(f"poses must have shape (..., 4, 4), got {tuple(poses_t.shape)}")
    if not torch.isfinite(poses_t).all():
        raise ValueError("poses contain NaN or infinite values")
    if reference is not None:
        ref = _as_float64(reference)
        poses_t = _invert_torch(ref) @ poses_t
    rot = poses_t[..., :3, :3]  # (..., 3, 3)
    ox, oy, oz = poses_t[..., 0, 3], poses_t[..., 1, 3], poses_t[..., 2, 3]  # camera centre, (...,) each
    zero = torch.zeros_like(ox)
    # o x d is linear in d: [o]_x d with the cross-product matrix [o]_x. Both halves of the ray are
    # then one (6, 3) map of the camera-frame directions: d = R d_cam, m = [o]_x R d_cam.
    skew = torch.stack(
        [torch.stack([zero, -oz, oy], -1), torch.stack([oz, zero, -ox], -1), torch.stack([-oy, ox, zero], -1)], -2
    )  # (..., 3, 3)
    rows = torch.cat([rot, skew @ rot], dim=-2)  # (..., 6, 3)
    return torch.einsum("...ij,jhw->...ihw", rows, _pixel_directions(intrinsics)).to(dtype)  # (..., 6, H, W)


@functools.lru_cache(maxsize=16)
def _pixel_directions(intrinsics: Intrinsics) -> torch.Tensor:
    """(3, H, W) float64 unit directions through the pixel centres, camera frame (OpenGL axes); cached: never modify."""
    h, w, f = intrinsics.height, intrinsics.width, intrinsics.focal
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij"
    )
    dirs = torch.stack([(u - w / 2.0) / f, -(v - h / 2.0) / f, -torch.ones_like(u)])  # (3, H, W)
    return dirs / dirs.norm(dim=0, keepdim=True)


def _as_float64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return x.to(torch.float64) if torch.is_tensor(x) else torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _invert_torch(pose: torch.Tensor) -> torch.Tensor:
    rot_t = pose[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(pose)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ pose[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


# --------------------------------------------------------------------------------------
# Kinematics
# --------------------------------------------------------------------------------------


class DiscreteAction:
    """Discrete action ids shared by the envs and the recorder (Habitat's order first)."""

    STOP = 0
    FORWARD = 1
    TURN_LEFT = 2
    TURN_RIGHT = 3
    LOOK_UP = 4
    LOOK_DOWN = 5
    NAMES = ("stop", "forward", "turn_left", "turn_right", "look_up", "look_down")


@dataclass(frozen=True)
class KinematicsConfig:
    """Step sizes of the discrete actions and limits of the camera's pitch."""

    forward_step: float = 0.25  # metres per forward action
    turn_step: float = math.radians(15.0)  # radians per turn action
    pitch_step: float = math.radians(15.0)  # radians per look up/down action
    max_pitch: float = math.radians(45.0)  # radians, |pitch| is clipped here


def apply_discrete(state: RobotState, action: int, cfg: KinematicsConfig = KinematicsConfig()) -> RobotState:
    """The state a discrete action leads to, ignoring collisions (the scene checks those)."""
    a = int(action)
    if a == DiscreteAction.STOP:
        return state
    if a == DiscreteAction.FORWARD:
        step = heading_vector(state.yaw) * cfg.forward_step
        return state.replace(x=state.x + step[0], z=state.z + step[2])
    if a == DiscreteAction.TURN_LEFT:
        return state.replace(yaw=float(angle_difference(state.yaw + cfg.turn_step, 0.0)))
    if a == DiscreteAction.TURN_RIGHT:
        return state.replace(yaw=float(angle_difference(state.yaw - cfg.turn_step, 0.0)))
    if a == DiscreteAction.LOOK_UP:
        return state.replace(pitch=min(state.pitch + cfg.pitch_step, cfg.max_pitch))
    if a == DiscreteAction.LOOK_DOWN:
        return state.replace(pitch=max(state.pitch - cfg.pitch_step, -cfg.max_pitch))
    raise ValueError(f"unknown discrete action {action!r}; valid: {dict(enumerate(DiscreteAction.NAMES))}")


def apply_velocity(state: RobotState, v: float, omega: float, dt: float) -> RobotState:
    """Integrate a unicycle command exactly over ``dt`` seconds, ignoring collisions.

    Args:
        state: the state to start from.
        v: forward speed, m/s (positive moves along the heading).
        omega: yaw rate, rad/s (positive turns left, as ROS's angular.z).
        dt: duration, s.
    """
    for name, val in (("v", v), ("omega", omega), ("dt", dt)):
        if not math.isfinite(float(val)):
            raise ValueError(f"velocity command {name}={val} is not finite")
    if dt < 0:
        raise ValueError(f"dt must be >= 0, got {dt}")
    yaw0, yaw1 = state.yaw, state.yaw + omega * dt
    if abs(omega) < 1e-9:
        dx, dz = v * dt * math.cos(yaw0), -v * dt * math.sin(yaw0)
    else:
        r = v / omega
        dx = r * (math.sin(yaw1) - math.sin(yaw0))
        dz = r * (math.cos(yaw1) - math.cos(yaw0))
    return state.replace(x=state.x + dx, z=state.z + dz, yaw=float(angle_difference(yaw1, 0.0)))
