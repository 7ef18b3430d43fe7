"""A world built from a recording as a :class:`~rtfm_env.scenes.base.Scene`: physics without a renderer.

A world file (written by ``rtfm-env world build``) is a :class:`~rtfm_env.memory.SpatialMemory`
of observed RGB-D frames with a free-space map beside them:

* ``attachments["free_space"]``: uint8 (rows, cols), 1 where the robot's centre may stand;
* ``attachments["known_free"]``: uint8 (rows, cols), 1 on the cells the recorded camera path
  crossed (optional: without it every free cell counts as known);
* ``info["free_space"]``: ``origin_x``, ``origin_z`` and ``cell`` (metres) place the grid
  (cell (i, j) covers x in [origin_x + j*cell, +cell) and z in [origin_z + i*cell, +cell), as
  :class:`~rtfm_env.scenes.base.TopDownMap`), plus ``method``, ``height_band`` and
  ``robot_radius``; ``info["cam_height"]`` is the camera's height above the floor.

A :class:`RecordedScene` answers every physics query from that grid with the code MiniWorld
scenes use (:mod:`rtfm_env.scenes.grid`, :mod:`rtfm_env.scenes.motion`): moves with
collisions (discrete actions and ``(v, omega, dt)`` commands, checked along the path),
geodesic distances and shortest paths over the 16-connected free cells, and a top-down map.
Starts (:meth:`RecordedScene.reset`), free states and goals are drawn in the *known-free*
region, the cells the recording crossed, within the connected free space that holds most of
them, because a grid built from depth can hold free cells the camera never saw well; there a
memory camera has little to show. It has no ground-truth renderer: :meth:`RecordedScene.render`
and :meth:`RecordedScene.render_depth` return None, and what the robot sees comes from a memory
camera (``camera="reprojection"`` or ``"model"``) loaded with the same file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import csgraph

from rtfm_env.geometry import Intrinsics, KinematicsConfig, RobotState
from rtfm_env.memory import SpatialMemory
from rtfm_env.scenes import grid
from rtfm_env.scenes.base import Action, Scene, TopDownMap
from rtfm_env.scenes.grid import FreeSpace
from rtfm_env.scenes.motion import MAX_SUBSTEP, checked_move

__all__ = [
    "RecordedScene",
    "WorldFileError",
    "NoFreeSpaceError",
    "BUILD_HINT",
    "ENV_ID_PREFIX",
    "world_env_id",
    "looks_like_file",
]

#: What to run to make a world file that carries a free-space map.
BUILD_HINT = (
    "build one with `rtfm-env world build` (from a rosbag2 recording, a nerfstudio capture or a MiniWorld scene)"
)
#: Env ids of recorded worlds are ``"world:<file stem>"``.
ENV_ID_PREFIX = "world:"
GOAL_TRIES = 32  # candidate goals checked against geodesic_distance in sample_goal
MAP_PIXELS = 512  # pixels, about the longer side of the top-down map's image
#: Colours of the top-down map's image: occupied, free but never crossed by the recording, known free.
MAP_COLOURS = np.array([[70, 70, 78], [196, 200, 206], [250, 250, 245]], dtype=np.uint8)


class WorldFileError(ValueError):
    """A world file cannot be a scene: its free-space map or metadata is missing or malformed."""


class NoFreeSpaceError(WorldFileError):
    """A world file (a saved memory) carries no free-space map: a scene must give its physics."""


def world_env_id(path: str | os.PathLike) -> str:
    """The env id of the world in ``path``: ``"world:<file name without suffix>"``."""
    return ENV_ID_PREFIX + Path(path).stem


def looks_like_file(name: str) -> bool:
    """Whether a ``scene`` name is a world file's path rather than a MiniWorld env id.

    MiniWorld ids (``MiniWorld-Maze-v0``, ``Maze``) have neither a directory part nor a suffix,
    so any name with one is a file (``world.rtfm``, ``./world.rtfm``), as is an existing file.
    """
    if not name:
        return False
    return "/" in name or os.sep in name or bool(Path(name).suffix) or Path(name).expanduser().is_file()


def _number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


class RecordedScene(Scene):
    """The physics of a world file: its free-space grid, with no ground-truth renderer.

    Args:
        path: a world file (``rtfm-env world build``'s output; see the module doc).
        kinematics: step sizes of the discrete actions and the pitch limit.
        memory: the file's :class:`SpatialMemory`, if the caller has loaded it already.

    Attributes:
        path: the world file.
        env_id: ``"world:<file stem>"``.
        intrinsics: the stored frames' intrinsics (a memory camera on this file shows frames
            of this size and field of view).
        info: the world's metadata (``info`` of the file).
        cam_height: metres above the floor of the camera in states this scene returns
            (``info["cam_height"]``, else the recorded cameras' median height).
        radius: the robot radius the free space was inflated by (``info["free_space"]
            ["robot_radius"]``), None when the file does not say.
        known_free: (rows, cols) bool, the free cells the recording crossed.
        seed: the seed of the last :meth:`reset` (None before).

    Raises:
        FileNotFoundError: no file at ``path``.
        MemoryFormatError: the file is not a readable spatial memory.
        NoFreeSpaceError: the file has no free-space map (the message says how to build one).
        WorldFileError: the map or its metadata is malformed or has no free cell, or the frames
            have mixed intrinsics.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        kinematics: KinematicsConfig = KinematicsConfig(),  # noqa: B008 (frozen dataclass)
        memory: SpatialMemory | None = None,
    ) -> None:
        if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a world file's path, got {path!r}")
        if not isinstance(kinematics, KinematicsConfig):
            raise TypeError(f"kinematics must be a KinematicsConfig, got {type(kinematics).__name__}")
        self.path = Path(path)
        if memory is None:
            if not self.path.is_file():
                raise FileNotFoundError(f"no world file at {self.path}")
            memory = SpatialMemory.load(self.path)
        self.kinematics = kinematics
        self.env_id = world_env_id(self.path)
        self.info: dict[str, Any] = dict(memory.info)
        free, known, origin_x, origin_z, cell = self._read_map(memory)
        self._fs = FreeSpace(free, origin_x, origin_z, cell)
        self.known_free = known & free
        self.radius = self._read_radius()
        self.intrinsics = self._read_intrinsics(memory)
        poses = memory.poses(memory.ids)  # (N, 4, 4) camera-to-world
        self.cam_height = self._read_cam_height(poses)
        fwd = -poses[:, :3, 2]  # the cameras look down -z
        self._frame_xz = poses[:, [0, 2], 3]  # (N, 2)
        self._frame_yaw = np.arctan2(-fwd[:, 2], fwd[:, 0])  # (N,) MiniWorld's yaw convention
        self._allowed = self._sampling_nodes()
        self.seed: int | None = None
        self._start: RobotState | None = None
        self._map_image: np.ndarray | None = None

    def __repr__(self) -> str:
        w, h = self.intrinsics.width, self.intrinsics.height
        return f"RecordedScene({str(self.path)!r}, {w}x{h}, fov_y={self.intrinsics.fov_y:g}, seed={self.seed})"

    # -- reading the file ------------------------------------------------------------------

    def _fail(self, why: str) -> WorldFileError:
        return WorldFileError(f"world file {self.path} cannot be a scene: {why}; rebuild it: {BUILD_HINT}")

    def _read_map(self, memory: SpatialMemory) -> tuple[np.ndarray, np.ndarray, float, float, float]:
        grid_info = self.info.get("free_space")
        free = memory.attachments.get("free_space")
        if free is None or not isinstance(grid_info, dict):
            missing = " and ".join(
                what
                for what, absent in (
                    ("no attachment 'free_space'", free is None),
                    ("no info['free_space']", not isinstance(grid_info, dict)),
                )
                if absent
            )
            raise NoFreeSpaceError(
                f"{self.path} has no free-space map ({missing}): it is a saved memory of frames, not a world "
                f"with physics; {BUILD_HINT}, or give a scene for its physics (scene=MiniWorld id)"
            )
        if free.ndim != 2 or free.dtype != np.uint8 or min(free.shape) < 1 or np.any(free > 1):
            raise self._fail(
                f"attachment 'free_space' must be a 2-D uint8 grid of 0 and 1, got {free.dtype} {free.shape}"
            )
        known = memory.attachments.get("known_free")
        if known is None:
            known = free
        elif known.shape != free.shape or known.dtype != np.uint8 or np.any(known > 1):
            raise self._fail(
                f"attachment 'known_free' must be a uint8 grid of 0 and 1 shaped as free_space {free.shape}, "
                f"got {known.dtype} {known.shape}"
            )
        values = {}
        for name in ("origin_x", "origin_z", "cell"):
            value = grid_info.get(name)
            if not (_number(value) and math.isfinite(float(value))):
                raise self._fail(f"info['free_space']['{name}'] must be a finite number of metres, got {value!r}")
            values[name] = float(value)
        if values["cell"] <= 0.0:
            raise self._fail(f"info['free_space']['cell'] must be > 0 metres, got {values['cell']}")
        free_b, known_b = free.astype(bool), known.astype(bool)
        if not free_b.any():
            raise self._fail("its free-space map has no free cell: the robot could stand nowhere")
        if not (free_b & known_b).any():
            raise self._fail("no cell of its free-space map is both free and known_free: starts have nowhere to be")
        return free_b, known_b, values["origin_x"], values["origin_z"], values["cell"]

    def _read_radius(self) -> float | None:
        radius = self.info["free_space"].get("robot_radius")
        return float(radius) if _number(radius) and math.isfinite(float(radius)) and radius >= 0 else None

    def _read_intrinsics(self, memory: SpatialMemory) -> Intrinsics:
        if len(memory) == 0:
            raise self._fail("it holds no frames")
        intrinsics = set(memory.intrinsics_of(memory.ids))
        if len(intrinsics) != 1:
            raise self._fail(f"its frames have different intrinsics {sorted(map(str, intrinsics))}")
        return intrinsics.pop()

    def _read_cam_height(self, poses: np.ndarray) -> float:
        height = self.info.get("cam_height")
        if _number(height) and math.isfinite(float(height)) and height > 0:
            return float(height)
        return float(max(np.median(poses[:, 1, 3]), 1e-3))

    def _sampling_nodes(self) -> np.ndarray:
        """(num_nodes,) bool: known-free nodes in the connected free space holding most known-free cells."""
        fs = self._fs
        known = self.known_free[fs.node_row, fs.node_col]
        _, labels = csgraph.connected_components(fs.graph, directed=False)
        counts = np.bincount(labels[known], minlength=int(labels.max()) + 1)
        return known & (labels == int(np.argmax(counts)))

    # -- Scene interface -------------------------------------------------------------------

    @property
    def free_space(self) -> FreeSpace:
        """The grid graph of the world's free space."""
        return self._fs

    @property
    def start_state(self) -> RobotState:
        """The state the last :meth:`reset` returned."""
        if self._start is None:
            raise RuntimeError(f"{self!r} has no start yet: call reset(seed) first")
        return self._start

    def reset(self, seed: int) -> RobotState:
        """A start for ``seed``: a known-free point, facing as the nearest recorded camera did.

        The point is uniform over the known-free cells of the main free space (see the module
        doc); the heading is that of the recorded frame nearest to it, so the first view looks
        where the recording looked. The same seed gives the same start. Height ``cam_height``,
        pitch 0. The world itself never changes: the seed only picks the start.
        """
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        rng = np.random.default_rng(int(seed))
        x, z = self._sample_point(rng)
        nearest = int(np.argmin(np.sum((self._frame_xz - (x, z)) ** 2, axis=1)))
        self.seed = int(seed)
        self._start = RobotState(x, z, float(self._frame_yaw[nearest]), self.cam_height, 0.0)
        return self._start

    def _sample_point(self, rng: np.random.Generator) -> tuple[float, float]:
        # Every point of a free cell is free, so a uniform point in a uniform cell is uniform over the region.
        node = int(rng.choice(np.flatnonzero(self._allowed)))
        x, z = self._fs.centre(node) + rng.uniform(-0.5, 0.5, size=2) * self._fs.cell
        return float(x), float(z)

    def render(self, pose: np.ndarray) -> None:
        """None: a recorded world has no ground-truth renderer (use a memory camera on the file)."""
        return None

    def render_depth(self, pose: np.ndarray) -> None:
        """None: a recorded world has no ground-truth depth."""
        return None

    def is_free(self, x: float, z: float) -> bool:
        """True where the robot's centre may stand: in a free cell of the grid (False outside it)."""
        x, z = float(x), float(z)
        if not (math.isfinite(x) and math.isfinite(z)):
            raise ValueError(f"is_free needs finite coordinates, got ({x}, {z})")
        return bool(self._fs.cell_is_free(np.array([[x, z]]))[0])

    def move(self, state: RobotState, action: Action) -> tuple[RobotState, bool]:
        """Apply a discrete action id or a ``(v [m/s], omega [rad/s], dt [s])`` command with collisions.

        As :meth:`MiniWorldScene.move <rtfm_env.scenes.miniworld.MiniWorldScene.move>`, against
        the grid: the translation is checked at points at most half a cell (and 5 cm) apart along
        its path, so no command tunnels through a wall; a blocked move keeps the position (turns
        and pitch changes still apply) and reports ``collided``.

        Raises:
            ValueError: an unknown discrete id, a non-integer id, or a NaN/inf/negative-dt command.
        """
        substep = min(MAX_SUBSTEP, 0.5 * self._fs.cell)
        return checked_move(state, action, self.kinematics, self._fs.cell_is_free, substep)

    def geodesic_distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Shortest free-space path length in metres between floor points (x, z); inf if none.

        See :func:`rtfm_env.scenes.grid.geodesic_distance` (the same as MiniWorld scenes).
        """
        return grid.geodesic_distance(self._fs, a, b)

    def shortest_path(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Waypoints (N, 2) of floor points (x, z) from ``a`` to ``b``; (0, 2) if unreachable."""
        return grid.shortest_path(self._fs, a, b)

    def top_down_map(self) -> TopDownMap:
        """The free-space grid, with an image of it: occupied dark, free light, known free lightest."""
        if self._map_image is None:
            shade = self._fs.free.astype(np.int64) + self.known_free  # 0 occupied, 1 free, 2 known free
            scale = max(1, MAP_PIXELS // max(shade.shape))
            image = MAP_COLOURS[shade]
            self._map_image = np.ascontiguousarray(np.repeat(np.repeat(image, scale, axis=0), scale, axis=1))
        fs = self._fs
        return TopDownMap(
            free=fs.free.copy(), origin_x=fs.origin_x, origin_z=fs.origin_z, cell=fs.cell, image=self._map_image.copy()
        )

    def sample_free_state(self, rng: np.random.Generator) -> RobotState:
        """A random known-free state: uniform over the known-free cells of the main free space, random yaw.

        Height ``cam_height``, pitch 0.
        """
        rng = grid.check_rng(rng)
        x, z = self._sample_point(rng)
        yaw = float(rng.uniform(-math.pi, math.pi))
        return RobotState(x, z, yaw, self.cam_height, 0.0)

    def sample_goal(
        self, rng: np.random.Generator, start_xz: np.ndarray, min_d: float, max_d: float, tries: int = GOAL_TRIES
    ) -> np.ndarray:
        """A known-free cell centre (x, z) reachable from ``start_xz`` at geodesic distance in [min_d, max_d].

        As MiniWorld scenes (:func:`rtfm_env.scenes.grid.sample_goal`: the range is clipped to
        what the world allows), with candidates among the known-free cells only.

        Raises:
            ValueError: a bad range or start point.
            RuntimeError: no known-free point other than the start is reachable.
        """
        return grid.sample_goal(self._fs, rng, start_xz, min_d, max_d, tries, repr(self), allowed=self._allowed)
