"""MiniWorld as a :class:`~rtfm_env.scenes.base.Scene`.

A :class:`MiniWorldScene` wraps one MiniWorld env: ``reset(seed)`` builds MiniWorld's layout
for that seed, :meth:`MiniWorldScene.move` applies discrete actions or velocity commands with
MiniWorld's own collision test (``env.intersect`` with the agent's radius, evaluated for all
points along a move at once), and :meth:`MiniWorldScene.render` draws the ground truth from any
roll-free camera-to-world pose by placing MiniWorld's agent camera there. For planning and
metrics the scene rasterises the same collision test into a free-space grid and runs Dijkstra
over it (16-connected, no corner cutting; :mod:`rtfm_env.scenes.grid`, shared with recorded worlds)
for geodesic distances and shortest paths.

MiniWorld envs are expensive to create and leak GL memory even after ``close()``, so they live
in a module-level pool keyed by (env id, width, height): a scene acquires an env of its own
(two live scenes never share one) and returns it on :meth:`MiniWorldScene.close` (or when it
is garbage collected) for the next scene to ``reset(seed=...)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import threading
import types
import weakref

import gymnasium as gym
import miniworld  # noqa: F401  (registers the MiniWorld-* ids with Gymnasium)
import numpy as np
from miniworld.miniworld import MiniWorldEnv
from miniworld.opengl import FrameBuffer
from pyglet import gl

from rtfm_env.geometry import (
    Intrinsics,
    KinematicsConfig,
    RobotState,
    angle_difference,
    pose_to_state,
)
from rtfm_env.scenes import grid
from rtfm_env.scenes.base import Action, Scene, TopDownMap
from rtfm_env.scenes.grid import FreeSpace
from rtfm_env.scenes.motion import MAX_SUBSTEP, checked_move

__all__ = ["MiniWorldScene", "miniworld_env_ids", "resolve_env_id", "pool_stats", "MAX_IMAGE_SIDE"]

MAP_PIXELS = 512  # pixels, side of the frame buffer the top-down map image is rendered into
MAX_IMAGE_SIDE = 4096  # pixels; larger frame buffers fail or take gigabytes in the GL driver
MAX_RENDER_PITCH = math.radians(89.0)  # radians; MiniWorld's look-at camera degenerates at +-90
ROLL_TOLERANCE = 1e-6  # |y component| of the camera's x axis accepted as "no roll"
INSIDE_TOLERANCE = 1e-9  # metres; a point on a room's edge counts as inside (portals are edges)
GOAL_TRIES = 32  # candidate goals checked against geodesic_distance in sample_goal
Z_NEAR, Z_FAR = 0.04, 100.0  # metres, MiniWorld's perspective clip planes (render_obs)

#: The grid graph (:class:`rtfm_env.scenes.grid.FreeSpace`), under the name it had here.
_FreeSpace = FreeSpace


# --------------------------------------------------------------------------------------
# Env ids
# --------------------------------------------------------------------------------------


def miniworld_env_ids() -> tuple[str, ...]:
    """All MiniWorld env ids registered with Gymnasium, sorted."""
    return tuple(sorted(k for k in gym.registry if k.startswith("MiniWorld-")))


def resolve_env_id(name: str) -> str:
    """Full MiniWorld env id for a full id (``"MiniWorld-Maze-v0"``) or a short name (``"Maze"``).

    Raises:
        ValueError: if ``name`` names no registered MiniWorld env; the message lists the valid ids.
    """
    ids = miniworld_env_ids()
    if isinstance(name, str):
        if name in ids:
            return name
        if f"MiniWorld-{name}-v0" in ids:
            return f"MiniWorld-{name}-v0"
    raise ValueError(f"unknown MiniWorld env id {name!r}; valid ids: {', '.join(ids)}")


# --------------------------------------------------------------------------------------
# The env pool
# --------------------------------------------------------------------------------------


def _compile_static(self: MiniWorldEnv) -> None:
    """``MiniWorldEnv._render_static``, compiled into this env's own display list.

    MiniWorld compiles every env's static geometry into display list 1, but pyglet shares one
    GL object space between all its contexts, so the env reset last would overwrite what every
    other live env draws. Bound to each pooled env in place of the original.
    """
    gl.glNewList(self._rtfm_display_list, gl.GL_COMPILE)
    # The same expressions as MiniWorld's, so lighting matches its own renders exactly.
    gl.glLightfv(gl.GL_LIGHT0, gl.GL_POSITION, (gl.GLfloat * 4)(*self.light_pos + [1]))
    gl.glLightfv(gl.GL_LIGHT0, gl.GL_AMBIENT, (gl.GLfloat * 4)(*self.light_ambient))
    gl.glLightfv(gl.GL_LIGHT0, gl.GL_DIFFUSE, (gl.GLfloat * 4)(*self.light_color))
    gl.glEnable(gl.GL_LIGHTING)
    gl.glEnable(gl.GL_LIGHT0)
    gl.glShadeModel(gl.GL_SMOOTH)
    gl.glEnable(gl.GL_COLOR_MATERIAL)
    gl.glColorMaterial(gl.GL_FRONT_AND_BACK, gl.GL_AMBIENT_AND_DIFFUSE)
    gl.glEnable(gl.GL_TEXTURE_2D)
    for room in self.rooms:
        room._render()
    for ent in self.entities:
        if ent.is_static:
            ent.render()
    gl.glEndList()


def _render_world(self: MiniWorldEnv, frame_buffer: FrameBuffer, render_agent: bool) -> np.ndarray:
    """``MiniWorldEnv._render_world`` drawing this env's own display list (see :func:`_compile_static`)."""
    gl.glCallList(self._rtfm_display_list)
    for ent in self.entities:
        if not ent.is_static and ent is not self.agent:
            ent.render()
    if render_agent:
        self.agent.render()
    return frame_buffer.resolve()


def _make_env(env_id: str, width: int, height: int) -> MiniWorldEnv:
    # MiniWorld prints a line whenever the GL driver lowers the multisample count.
    with contextlib.redirect_stdout(io.StringIO()):
        env = gym.make(
            env_id,
            obs_width=width,
            obs_height=height,
            window_width=MAP_PIXELS,
            window_height=MAP_PIXELS,
            disable_env_checker=True,
        ).unwrapped
    env.domain_rand = False
    env.shadow_window.switch_to()
    env._rtfm_display_list = int(gl.glGenLists(1))
    env._render_static = types.MethodType(_compile_static, env)
    env._render_world = types.MethodType(_render_world, env)
    return env


class _DepthTarget:
    """A single-sample frame buffer with a 32-bit float depth buffer, for exact depth maps.

    MiniWorld's frame buffers keep 16-bit depth, which quantises distance by ~4e-4 z^2 metres
    (4 cm at 10 m). This target quacks like MiniWorld's ``FrameBuffer`` (``width``, ``height``,
    ``bind``, ``resolve``) so ``render_obs`` draws into it, and ``resolve`` returns the depth.
    Frame buffer objects are not shared between GL contexts, so one is made per env, in its context.
    """

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.fbo = gl.GLuint(0)
        gl.glGenFramebuffers(1, ctypes.byref(self.fbo))
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.fbo)
        buffers = ((gl.GL_RGBA8, gl.GL_COLOR_ATTACHMENT0), (gl.GL_DEPTH_COMPONENT32F, gl.GL_DEPTH_ATTACHMENT))
        for fmt, attachment in buffers:
            rb = gl.GLuint(0)
            gl.glGenRenderbuffers(1, ctypes.byref(rb))
            gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, rb)
            gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, fmt, width, height)
            gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, attachment, gl.GL_RENDERBUFFER, rb)
        status = gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        if status != gl.GL_FRAMEBUFFER_COMPLETE:
            raise RuntimeError(f"the GL driver cannot make a float depth frame buffer (status {status:#x})")

    def bind(self) -> None:
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.fbo)
        gl.glViewport(0, 0, self.width, self.height)

    def resolve(self) -> np.ndarray:
        """The depth buffer, (H, W) float32 in [0, 1], top row first."""
        buf = np.empty((self.height, self.width), dtype=np.float32)
        gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
        out = buf.ctypes.data_as(ctypes.POINTER(gl.GLfloat))
        gl.glReadPixels(0, 0, self.width, self.height, gl.GL_DEPTH_COMPONENT, gl.GL_FLOAT, out)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        return np.flipud(buf)  # GL rows start at the bottom


class _EnvPool:
    """Idle MiniWorld envs by (env id, width, height), handed to one scene at a time."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int, int], list[MiniWorldEnv]] = {}
        self._created: dict[tuple[str, int, int], int] = {}
        self._lock = threading.Lock()

    def acquire(self, key: tuple[str, int, int]) -> MiniWorldEnv:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
            self._created[key] = self._created.get(key, 0) + 1
        return _make_env(*key)

    def release(self, key: tuple[str, int, int], env: MiniWorldEnv) -> None:
        with self._lock:
            self._idle.setdefault(key, []).append(env)

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            keys = set(self._created) | set(self._idle)
            return {
                f"{k[0]}@{k[1]}x{k[2]}": {"created": self._created.get(k, 0), "idle": len(self._idle.get(k, []))}
                for k in sorted(keys)
            }


_POOL = _EnvPool()


def pool_stats() -> dict[str, dict[str, int]]:
    """Envs created so far and idle now, per ``"<env id>@<width>x<height>"``."""
    return _POOL.stats()


# --------------------------------------------------------------------------------------
# Free space
# --------------------------------------------------------------------------------------


class _Obstacles:
    """MiniWorld's collision test for a robot of radius ``radius``, vectorised over many points.

    A point is free where it lies inside some room (MiniWorld's ``Room.point_inside``, with the
    boundary counted as inside because portals between rooms are edges) and ``env.intersect``
    finds nothing: no wall segment closer than ``radius`` and no entity closer than ``radius``
    plus its own radius. The arithmetic is MiniWorld's, term for term, so the answers are
    identical; only the loop over points moves into numpy. Entities are taken as fixed (scenes
    never pick them up).
    """

    def __init__(self, env: MiniWorldEnv, radius: float) -> None:
        self.radius = radius
        self.edge_points = np.concatenate([r.outline[:, [0, 2]] for r in env.rooms])  # (E, 2)
        self.edge_normals = np.concatenate([r.edge_norms[:, [0, 2]] for r in env.rooms])  # (E, 2) inward
        self.room_starts = np.cumsum([0] + [r.num_walls for r in env.rooms[:-1]])  # (R,) first edge of each room
        segs = np.asarray(env.wall_segs, dtype=np.float64).reshape(-1, 2, 3)
        self.seg_a = segs[:, 0, [0, 2]]  # (S, 2)
        self.seg_ab = segs[:, 1, [0, 2]] - self.seg_a  # (S, 2)
        self.seg_ab2 = np.sum(self.seg_ab * self.seg_ab, axis=1)  # (S,)
        ents = [e for e in env.entities if e is not env.agent]
        self.ent_pos = np.array([[e.pos[0], e.pos[2]] for e in ents], dtype=np.float64).reshape(-1, 2)  # (M, 2)
        self.ent_reach = np.array([radius + e.radius for e in ents], dtype=np.float64)  # (M,)

    def free(self, points: np.ndarray) -> np.ndarray:
        """Whether the robot's centre may stand at each of ``points`` (N, 2) (x, z); (N,) bool."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        rel = p[:, None, :] - self.edge_points  # (N, E, 2)
        dots = rel[..., 0] * self.edge_normals[:, 0] + rel[..., 1] * self.edge_normals[:, 1]  # (N, E)
        inside = np.minimum.reduceat(dots >= -INSIDE_TOLERANCE, self.room_starts, axis=1).any(axis=1)  # (N,)
        ap = p[:, None, :] - self.seg_a  # (N, S, 2)
        t = np.clip((ap[..., 0] * self.seg_ab[:, 0] + ap[..., 1] * self.seg_ab[:, 1]) / self.seg_ab2, 0.0, 1.0)
        d = self.seg_a + t[..., None] * self.seg_ab - p[:, None, :]  # (N, S, 2) to the closest point
        near_wall = (np.sqrt(d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) < self.radius).any(axis=1)
        e = self.ent_pos - p[:, None, :]  # (N, M, 2)
        near_ent = (np.sqrt(e[..., 0] * e[..., 0] + e[..., 1] * e[..., 1]) < self.ent_reach).any(axis=1)
        return inside & ~near_wall & ~near_ent


def _span(centres: np.ndarray, lo: float, hi: float) -> slice:
    """Indices of sorted ``centres`` within [lo, hi] (widened by a hair)."""
    i0 = int(np.searchsorted(centres, lo - 1e-6, side="left"))
    i1 = int(np.searchsorted(centres, hi + 1e-6, side="right"))
    return slice(i0, i1)


def _rasterise_free(env: MiniWorldEnv, radius: float, cell: float) -> tuple[np.ndarray, float, float]:
    """Free-space grid of a MiniWorld layout: cell centres where the robot's centre may stand.

    The predicate is the one :meth:`MiniWorldScene.is_free` evaluates exactly (inside a room,
    no wall segment closer than ``radius``, no entity closer than ``radius`` + its radius),
    written with the same formulas as MiniWorld's ``intersect``. Each room, wall and entity
    only touches the cells of its bounding box, so the cost is the covered area, not rooms x cells.

    Returns:
        (free (rows, cols) bool, origin_x, origin_z): cell (i, j) is centred at
        (origin_x + (j + 0.5) * cell, origin_z + (i + 0.5) * cell).
    """
    origin_x = math.floor(env.min_x / cell) * cell - cell
    origin_z = math.floor(env.min_z / cell) * cell - cell
    cols = int(math.ceil((env.max_x - origin_x) / cell)) + 1
    rows = int(math.ceil((env.max_z - origin_z) / cell)) + 1
    xs = origin_x + (np.arange(cols) + 0.5) * cell
    zs = origin_z + (np.arange(rows) + 0.5) * cell

    inside = np.zeros((rows, cols), dtype=bool)
    for room in env.rooms:
        rs, cs = _span(zs, room.min_z, room.max_z), _span(xs, room.min_x, room.max_x)
        px, pz = xs[None, cs], zs[rs, None]
        ok = np.ones((len(zs[rs]), len(xs[cs])), dtype=bool)
        for (vx, _, vz), (nx, _, nz) in zip(room.outline, room.edge_norms, strict=True):
            ok &= (px - vx) * nx + (pz - vz) * nz >= -INSIDE_TOLERANCE
        inside[rs, cs] |= ok

    blocked = np.zeros((rows, cols), dtype=bool)
    for seg in env.wall_segs:
        (ax, _, az), (bx, _, bz) = seg
        rs = _span(zs, min(az, bz) - radius, max(az, bz) + radius)
        cs = _span(xs, min(ax, bx) - radius, max(ax, bx) + radius)
        px, pz = xs[None, cs], zs[rs, None]
        abx, abz = bx - ax, bz - az
        ab2 = abx * abx + abz * abz
        t = np.clip(((px - ax) * abx + (pz - az) * abz) / ab2, 0.0, 1.0) if ab2 > 0 else np.zeros_like(px + pz)
        dx, dz = ax + t * abx - px, az + t * abz - pz
        dist = np.sqrt(dx * dx + dz * dz)
        blocked[rs, cs] |= dist < radius
    for ent in env.entities:
        if ent is env.agent:
            continue
        reach = radius + ent.radius
        ex, _, ez = ent.pos
        rs, cs = _span(zs, ez - reach, ez + reach), _span(xs, ex - reach, ex + reach)
        dx, dz = ex - xs[None, cs], ez - zs[rs, None]
        blocked[rs, cs] |= np.sqrt(dx * dx + dz * dz) < reach
    return inside & ~blocked, origin_x, origin_z


# --------------------------------------------------------------------------------------
# The scene
# --------------------------------------------------------------------------------------


class MiniWorldScene(Scene):
    """A MiniWorld env as a scene: seeded layouts, collision-aware motion, ground-truth frames.

    Args:
        env_id: a MiniWorld env id (``"MiniWorld-Maze-v0"``) or its short name (``"Maze"``).
        width: rendered image width, pixels, 1 to :data:`MAX_IMAGE_SIDE` (4096).
        height: rendered image height, pixels, 1 to :data:`MAX_IMAGE_SIDE` (4096).
        fov_y: vertical field of view of rendered images, degrees, in (0, 180).
        kinematics: step sizes of the discrete actions and the pitch limit.
        cell: metres per cell of the free-space grid used for geodesic distance and sampling.
        cam_height: metres above the floor of the camera in states returned by :meth:`reset`
            and :meth:`sample_free_state`.

    Attributes:
        intrinsics: the pinhole intrinsics of :meth:`render`.
        env_id: the full MiniWorld env id.
        seed: the seed of the current layout, None before the first :meth:`reset`.
        radius: the robot's radius in metres (MiniWorld's agent radius).

    Raises:
        ValueError: an unknown env id (the message lists the valid ids) or a bad size, field
            of view, cell or camera height.
    """

    def __init__(
        self,
        env_id: str = "MiniWorld-OneRoom-v0",
        width: int = 64,
        height: int = 64,
        fov_y: float = 60.0,
        kinematics: KinematicsConfig = KinematicsConfig(),  # noqa: B008 (frozen dataclass)
        cell: float = 0.1,
        cam_height: float = 1.5,
    ) -> None:
        self.env_id = resolve_env_id(env_id)
        for name, val in (("width", width), ("height", height)):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or not 0 < val <= MAX_IMAGE_SIDE:
                raise ValueError(f"{name} must be an integer number of pixels in [1, {MAX_IMAGE_SIDE}], got {val!r}")
        # A bool is not a number here: fov_y=True would silently be a 1-degree view.
        for name, val in (("fov_y", fov_y), ("cell", cell), ("cam_height", cam_height)):
            if isinstance(val, bool | np.bool_) or not isinstance(val, int | float | np.integer | np.floating):
                raise ValueError(f"{name} must be a number, got {val!r}")
        if not (math.isfinite(float(fov_y)) and 0.0 < float(fov_y) < 180.0):
            raise ValueError(f"fov_y must be in (0, 180) degrees, got {fov_y!r}")
        self.intrinsics = Intrinsics(int(width), int(height), float(fov_y))
        if not isinstance(kinematics, KinematicsConfig):
            raise TypeError(f"kinematics must be a KinematicsConfig, got {type(kinematics).__name__}")
        if not (math.isfinite(float(cell)) and 0.0 < float(cell) <= 1.0):
            raise ValueError(f"cell must be in (0, 1] metres, got {cell!r}")
        if not (math.isfinite(float(cam_height)) and float(cam_height) > 0.0):
            raise ValueError(f"cam_height must be a positive number of metres, got {cam_height!r}")
        self.kinematics = kinematics
        self.cell = float(cell)  # metres per free-space grid cell
        self.cam_height = float(cam_height)  # metres
        self.seed: int | None = None
        key = (self.env_id, int(width), int(height))
        self._env: MiniWorldEnv | None = _POOL.acquire(key)
        # Hand the env back to the pool on close() or, if the user never calls it, on collection.
        self._release = weakref.finalize(self, _POOL.release, key, self._env)
        self.radius = float(self._env.agent.radius)  # metres; some envs change it per layout (reset)
        self._start: RobotState | None = None
        self._obstacles: _Obstacles | None = None
        self._free_space: FreeSpace | None = None
        self._map_image: np.ndarray | None = None

    def __repr__(self) -> str:
        w, h = self.intrinsics.width, self.intrinsics.height
        state = "closed" if self._env is None else f"seed={self.seed}"
        return f"MiniWorldScene({self.env_id!r}, {w}x{h}, fov_y={self.intrinsics.fov_y}, {state})"

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def miniworld_env(self) -> MiniWorldEnv:
        """The (unwrapped) MiniWorld env this scene holds; its agent is moved by every render."""
        if self._env is None:
            raise RuntimeError(f"{self!r} is closed")
        return self._env

    def _layout_env(self) -> MiniWorldEnv:
        env = self.miniworld_env
        if self.seed is None:
            raise RuntimeError(f"{self!r} has no layout yet: call reset(seed) first")
        return env

    def reset(self, seed: int) -> RobotState:
        """Build MiniWorld's layout for ``seed`` and return MiniWorld's own start placement.

        The same seed gives the same world and bit-identical renders, in any scene of this id
        and resolution. The start state has the agent's position and heading (``dir`` as yaw),
        camera height ``cam_height`` and zero pitch.
        """
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        env = self.miniworld_env
        env.shadow_window.switch_to()
        env.reset(seed=int(seed))
        self.seed = int(seed)
        self.radius = float(env.agent.radius)  # e.g. RoomObjects widens its agent to 1.5 m
        self._obstacles = _Obstacles(env, self.radius)
        self._free_space = None
        self._map_image = None
        x, _, z = env.agent.pos
        yaw = float(angle_difference(float(env.agent.dir), 0.0))
        self._start = RobotState(float(x), float(z), yaw, self.cam_height, 0.0)
        return self._start

    @property
    def start_state(self) -> RobotState:
        """The state :meth:`reset` returned for the current layout."""
        self._layout_env()
        return self._start

    def close(self) -> None:
        """Return the MiniWorld env to the pool; the scene cannot be used afterwards. Idempotent."""
        self._release()
        self._env = None

    # -- rendering -------------------------------------------------------------------------

    def _place_camera(self, pose: np.ndarray) -> MiniWorldEnv:
        """Put MiniWorld's agent camera exactly at ``pose`` (validated)."""
        env = self._layout_env()
        state = pose_to_state(pose)
        pose = np.asarray(pose, dtype=np.float64)
        if abs(pose[1, 0]) > ROLL_TOLERANCE:
            raise ValueError(
                f"pose has a roll (camera x axis has y component {pose[1, 0]:.3g}); MiniWorld's camera keeps "
                "the horizon level, so only poses from camera_pose(x, z, yaw, height, pitch) can be rendered"
            )
        if abs(state.pitch) > MAX_RENDER_PITCH:
            raise ValueError(
                f"pose pitch {math.degrees(state.pitch):.2f} deg is beyond +-{math.degrees(MAX_RENDER_PITCH):.0f} deg, "
                "where MiniWorld's look-at camera is undefined"
            )
        agent = env.agent
        agent.pos = np.array([state.x, 0.0, state.z])
        agent.dir = state.yaw
        agent.cam_height = state.cam_height
        agent.cam_pitch = math.degrees(state.pitch)  # MiniWorld stores pitch in degrees
        agent.cam_fwd_disp = 0.0  # the camera centre is the pose's translation, not ahead of it
        agent.cam_fov_y = self.intrinsics.fov_y
        return env

    def render(self, pose: np.ndarray) -> np.ndarray:
        """Ground-truth RGB (H, W, 3) uint8 from a camera-to-world pose with no roll.

        Raises:
            ValueError: a malformed pose (shape, NaN, not rigid), a rolled camera or |pitch| > 89 deg.
        """
        env = self._place_camera(pose)
        return np.array(env.render_obs(), dtype=np.uint8, copy=True)

    def render_depth(self, pose: np.ndarray) -> np.ndarray:
        """Ground-truth depth (H, W) float32 in metres along the optical axis; inf where nothing is hit.

        Drawn into a float depth buffer (MiniWorld's own ``render_depth`` is 16-bit), so the
        error is below a millimetre within 20 m.
        """
        env = self._place_camera(pose)
        env.shadow_window.switch_to()
        target = getattr(env, "_rtfm_depth_target", None)
        if target is None:
            target = env._rtfm_depth_target = _DepthTarget(self.intrinsics.width, self.intrinsics.height)
        d = env.render_obs(target).astype(np.float64)
        ndc = 2.0 * d - 1.0
        depth = 2.0 * Z_FAR * Z_NEAR / ((Z_FAR + Z_NEAR) - ndc * (Z_FAR - Z_NEAR))
        depth[d >= 1.0] = np.inf
        return depth.astype(np.float32)

    # -- motion ----------------------------------------------------------------------------

    def _free_at(self, x: float, z: float) -> bool:
        return bool(self._obstacles.free(np.array([[x, z]]))[0])

    def is_free(self, x: float, z: float) -> bool:
        """True where the robot's centre may stand: inside a room, clear of walls and entities by its radius."""
        self._layout_env()
        x, z = float(x), float(z)
        if not (math.isfinite(x) and math.isfinite(z)):
            raise ValueError(f"is_free needs finite coordinates, got ({x}, {z})")
        return self._free_at(x, z)

    def move(self, state: RobotState, action: Action) -> tuple[RobotState, bool]:
        """Apply a discrete action id or a ``(v [m/s], omega [rad/s], dt [s])`` command with collisions.

        The translation is checked every ``MAX_SUBSTEP`` metres along its path, so no command
        can tunnel through a wall. If any point is blocked the robot keeps its position (turns
        and pitch changes still apply) and ``collided`` is True.

        Raises:
            ValueError: an unknown discrete id, a non-integer id, or a NaN/inf/negative-dt command.
        """
        self._layout_env()
        return checked_move(state, action, self.kinematics, self._obstacles.free, MAX_SUBSTEP)

    # -- free space and distances ----------------------------------------------------------

    def _grid(self) -> FreeSpace:
        env = self._layout_env()
        if self._free_space is None:
            free, ox, oz = _rasterise_free(env, self.radius, self.cell)
            self._free_space = FreeSpace(free, ox, oz, self.cell)
        return self._free_space

    def geodesic_distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Shortest free-space path length in metres between floor points (x, z); inf if none.

        Exactly the Euclidean distance where the straight segment crosses only free cells;
        otherwise the 16-connected grid distance between the points' cells (never below the
        Euclidean distance). Points in occupied cells use the nearest free cell. The distance
        field of each goal cell is cached, so repeated queries to one goal cost O(1).
        """
        return grid.geodesic_distance(self._grid(), a, b)

    def shortest_path(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Waypoints (N, 2) of floor points (x, z) from ``a`` to ``b``; (0, 2) if unreachable.

        The grid path is shortened greedily: a waypoint is dropped while the segment from the
        previous kept one to the next crosses only free cells. Endpoints in occupied cells are
        replaced by the nearest free cell's centre.
        """
        return grid.shortest_path(self._grid(), a, b)

    def top_down_map(self) -> TopDownMap:
        """The free-space grid and MiniWorld's top view of the same extent (without the agent)."""
        fs = self._grid()
        if self._map_image is None:
            self._map_image = self._render_map(fs)
        return TopDownMap(
            free=fs.free.copy(),
            origin_x=fs.origin_x,
            origin_z=fs.origin_z,
            cell=fs.cell,
            image=self._map_image.copy(),
        )

    def _render_map(self, fs: FreeSpace) -> np.ndarray:
        env = self._env
        img, scale = env.render_top_view(env.vis_fb, render_agent=False, return_scale=True)
        rows, cols = fs.free.shape
        # The top view maps x to columns and z to rows (row 0 at the smallest z), like the grid.
        c0 = round(scale["x_offset"] + fs.origin_x * scale["x_scale"])
        c1 = round(scale["x_offset"] + (fs.origin_x + cols * fs.cell) * scale["x_scale"])
        r0 = round(scale["z_offset"] + fs.origin_z * scale["z_scale"])
        r1 = round(scale["z_offset"] + (fs.origin_z + rows * fs.cell) * scale["z_scale"])
        h, w = img.shape[:2]
        return np.ascontiguousarray(img[max(r0, 0) : min(r1, h), max(c0, 0) : min(c1, w)])

    def sample_free_state(self, rng: np.random.Generator) -> RobotState:
        """A random free state reachable from the start: uniform over those cells, random yaw.

        Restricting to the start's connected free space keeps the robot out of pockets it
        could never leave (e.g. between two boxes and a wall). Height ``cam_height``, pitch 0.
        """
        rng = grid.check_rng(rng)
        fs = self._grid()
        start = fs.snap(np.array([self._start.x, self._start.z]))
        if start is None:
            raise RuntimeError(f"{self!r} has no free space at the resolution cell={self.cell}")
        reachable = np.flatnonzero(np.isfinite(fs.field(start)[0]))
        for _ in range(GOAL_TRIES):
            x, z = fs.centre(int(rng.choice(reachable))) + rng.uniform(-0.5, 0.5, size=2) * self.cell
            if self._free_at(float(x), float(z)):
                break
        else:
            x, z = fs.centre(start)
        yaw = float(rng.uniform(-math.pi, math.pi))
        return RobotState(float(x), float(z), yaw, self.cam_height, 0.0)

    def sample_goal(
        self, rng: np.random.Generator, start_xz: np.ndarray, min_d: float, max_d: float, tries: int = GOAL_TRIES
    ) -> np.ndarray:
        """A free floor point (x, z) reachable from ``start_xz`` at geodesic distance in [min_d, max_d].

        Candidates come straight from the start's distance field (one Dijkstra), so there is no
        rejection sampling over the whole floor; ``tries`` candidates at most are checked
        against :meth:`geodesic_distance`. Where the layout has no point in range the range is
        clipped to what it allows: the goal is drawn from the reachable cells whose distance is
        nearest the range (e.g. the farthest ones when all reachable space is closer than ``min_d``).

        Raises:
            ValueError: a bad range or start point.
            RuntimeError: no free point other than the start is reachable.
        """
        return grid.sample_goal(self._grid(), rng, start_xz, min_d, max_d, tries, repr(self))
