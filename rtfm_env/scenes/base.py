"""The Scene interface: the physics of a world and, where it has one, its renderer.

The physics are walls, free space and goals; the renderer gives ground truth.

A scene never decides what the agent *sees* through the frame model; cameras do. It answers
where the robot may go (:meth:`Scene.move`), what the world looks like from a camera pose
when ground truth exists (:meth:`Scene.render`), and distances along free space
(:meth:`Scene.geodesic_distance`) for SPL.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from rtfm_env.geometry import Intrinsics, KinematicsConfig, RobotState

__all__ = ["Scene", "TopDownMap", "Action"]

#: A move is a discrete action id (see :class:`rtfm_env.geometry.DiscreteAction`) or a
#: continuous command ``(v [m/s], omega [rad/s], dt [s])``.
Action = int | tuple[float, float, float]


@dataclass
class TopDownMap:
    """A floor-plan raster of a scene.

    ``free[i, j]`` is True where the robot's centre may stand (walls and entities inflated by
    the robot radius). Cell (i, j) covers world x in [origin_x + j*cell, origin_x + (j+1)*cell)
    and z in [origin_z + i*cell, origin_z + (i+1)*cell): rows grow with +z, columns with +x.
    ``image`` is an RGB uint8 picture of the same extent (any resolution) for display.
    """

    free: np.ndarray  # (rows, cols) bool
    origin_x: float  # metres, world x of the grid's corner
    origin_z: float  # metres, world z of the grid's corner
    cell: float  # metres per cell
    image: np.ndarray  # (h, w, 3) uint8

    def world_to_cell(self, x: np.ndarray | float, z: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Grid indices (row, col) of world points; may be out of range."""
        col = np.floor((np.asarray(x) - self.origin_x) / self.cell).astype(int)
        row = np.floor((np.asarray(z) - self.origin_z) / self.cell).astype(int)
        return row, col

    def cell_to_world(self, row: np.ndarray | int, col: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """World (x, z) of cell centres."""
        x = self.origin_x + (np.asarray(col) + 0.5) * self.cell
        z = self.origin_z + (np.asarray(row) + 0.5) * self.cell
        return x, z


class Scene(ABC):
    """A world: collision-aware motion, optional ground-truth rendering, geodesic distance.

    Attributes:
        intrinsics: the camera intrinsics that :meth:`render` uses.
        kinematics: the step sizes of the discrete actions that :meth:`move` applies.
        env_id: an identifier of the world family (e.g. ``"MiniWorld-Maze-v0"``).
        seed: the seed of the current layout (set by :meth:`reset`).
    """

    intrinsics: Intrinsics
    kinematics: KinematicsConfig
    env_id: str
    seed: int | None = None

    @abstractmethod
    def reset(self, seed: int) -> RobotState:
        """Build the layout for ``seed`` (same seed, same world) and return a free start state."""

    @abstractmethod
    def move(self, state: RobotState, action: Action) -> tuple[RobotState, bool]:
        """Apply an action with collision checking; returns (new state, collided).

        A blocked move leaves the robot where it was (turns and pitch changes always apply).
        """

    @abstractmethod
    def render(self, pose: np.ndarray) -> np.ndarray | None:
        """Ground-truth RGB (H, W, 3) uint8 from a camera-to-world pose, or None if unavailable."""

    def render_depth(self, pose: np.ndarray) -> np.ndarray | None:
        """Ground-truth depth (H, W) float32 in metres along the optical axis, or None."""
        return None

    @abstractmethod
    def is_free(self, x: float, z: float) -> bool:
        """True where the robot's centre may stand."""

    @abstractmethod
    def geodesic_distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Shortest free-space path length in metres between floor points (x, z); inf if none."""

    @abstractmethod
    def shortest_path(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Waypoints (N, 2) of floor points (x, z) from ``a`` to ``b`` along free space."""

    @abstractmethod
    def top_down_map(self) -> TopDownMap:
        """The floor plan of the current layout."""

    @abstractmethod
    def sample_free_state(self, rng: np.random.Generator) -> RobotState:
        """A random free state (uniform over free space, random yaw)."""

    def sample_goal(
        self, rng: np.random.Generator, start_xz: np.ndarray, min_d: float, max_d: float, tries: int = 200
    ) -> np.ndarray:
        """A free floor point (x, z) at a geodesic distance in [min_d, max_d] from ``start_xz``.

        Rejection sampling over :meth:`sample_free_state`; if no point in range is found, the
        reachable point whose distance is closest to the range is returned, so a small layout
        still yields a goal. Raises ``RuntimeError`` when nothing is reachable at all.
        """
        best, best_gap = None, np.inf
        for _ in range(tries):
            s = self.sample_free_state(rng)
            p = np.array([s.x, s.z])
            d = self.geodesic_distance(np.asarray(start_xz, dtype=np.float64), p)
            if not np.isfinite(d):
                continue
            if min_d <= d <= max_d:
                return p
            gap = min_d - d if d < min_d else d - max_d
            if gap < best_gap:
                best, best_gap = p, gap
        if best is None:
            raise RuntimeError(f"no reachable goal from {tuple(start_xz)} in {self.env_id!r} after {tries} tries")
        return best

    def close(self) -> None:  # noqa: B027 (optional hook: scenes without resources need nothing)
        """Release resources (renderers, windows)."""
