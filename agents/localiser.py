"""A scripted ImageNav policy that sees: it maps the landmarks around it and finds the goal image's place among them.

:class:`LandmarkLocaliser` is for ``RTFM/ImageNav-v0`` made with ``landmarks=True`` and
``depth=True``. It reads what a robot with an RGB-D camera and odometry has: the view
(``rgb``), its depth (``depth``), its own pose (``pose``: odometry, no map of the scene) and
the goal image (``imagegoal``), plus what the task publishes about its landmarks (their
colours and sizes: :data:`~rtfm_env.envs.objectnav.OBJECT_KINDS`, ``BOX_SIZE``,
``BALL_SIZE``), never where they stand, where the goal is or the geodesic distance. Its
success therefore depends on what the camera shows: shown grey frames and no depth (the
``blind`` camera) it maps nothing and stops where it stands. It is the ImageNav counterpart of
:class:`agents.seeker.ColourSeeker`, the vision policy that ``RTFM/ImageNav-v0``'s blind check
and camera rankings need; ``noise`` and ``scan_turns`` grade its skill.

Per episode:

1. **Scan**: turn in place ``scan_turns`` times (24 is a full circle of 15-degree turns). Every
   view is back-projected with its depth and pose: a subsampled point cloud (for the free-floor
   map the planner uses) and, per landmark colour (:func:`landmark_labels`), the floor points
   of its pixels. A landmark's position is the centroid of its points pushed back by half its
   radius (the camera sees its near side).
2. **Localise**: for every candidate place (a lattice of ``search`` metres over the free floor
   the scan saw) and heading (``headings`` in a circle), each mapped landmark is projected into
   a virtual view: its column, its left and right edges, its top and bottom rows. The pose
   whose projections best match the goal image's colour blobs wins (squared pixel errors, each
   capped; edges that the goal image's border clips are not compared; a mapped landmark that
   the goal image lacks but the pose would show well inside the view costs ``missing``).
3. **Go**: a breadth-first path over the free cells to the chosen place, followed with turns
   and forward steps (a blocked step marks a short fan of cells ahead occupied and the path is
   re-planned); stop within ``arrive`` metres of it.
"""

from __future__ import annotations

import math
import zlib
from collections import deque
from typing import Any

import numpy as np

from agents.base import Agent
from rtfm_env.geometry import DiscreteAction, Intrinsics, angle_difference, pose_to_state

__all__ = ["LandmarkLocaliser", "landmark_labels"]

_FLOOR_BAND = 0.1  # metres above the floor (and below the ceiling) that do not count as obstacles
#: Hue tolerance, degrees: a pixel is a landmark's colour when its hue is this close to the colour's.
_HUE_TOLERANCE = 15.0
_MIN_SATURATION = 0.5  # MiniWorld's walls, floors and ceilings are far less saturated than its objects
_MIN_VALUE = 40.0 / 255.0  # darker pixels carry no reliable hue


def landmark_labels(rgb: np.ndarray) -> np.ndarray:
    """(H, W) int: the OBJECT_KINDS index of the landmark colour each pixel of ``rgb`` (H, W, 3) uint8 shows, -1: none.

    Each pixel goes to the kind whose colour's hue is nearest to its own, within
    :data:`_HUE_TOLERANCE` degrees, if it is saturated and bright enough to have a hue (shading
    changes brightness, not hue, so a landmark keeps its label lit or in shadow). The kinds'
    colours are MiniWorld's (red, green, blue, yellow, purple): blue and purple are 33 degrees
    apart, red and yellow 60.
    """
    from matplotlib.colors import rgb_to_hsv
    from miniworld.entity import COLORS

    from rtfm_env.envs.objectnav import OBJECT_KINDS

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"landmark_labels needs an (H, W, 3) image, got shape {rgb.shape}")
    hsv = rgb_to_hsv(rgb.astype(np.float64) / 255.0)
    kind_hues = np.array([rgb_to_hsv(np.asarray(COLORS[k.color], dtype=np.float64))[0] for k in OBJECT_KINDS])
    gap = np.abs(hsv[..., 0, None] - kind_hues)  # (H, W, K), in turns
    gap = np.minimum(gap, 1.0 - gap) * 360.0  # degrees around the hue circle
    labels = np.argmin(gap, axis=-1)
    ok = (np.min(gap, axis=-1) <= _HUE_TOLERANCE) & (hsv[..., 1] >= _MIN_SATURATION) & (hsv[..., 2] >= _MIN_VALUE)
    return np.where(ok, labels, -1)


class LandmarkLocaliser(Agent):
    """Scan, map the landmarks, find the pose whose view puts them where the goal image has them, walk there, stop.

    See the module docstring for the method.

    Args:
        intrinsics: the camera's pinhole intrinsics (its resolution and field of view).
        scan_turns: turns of the initial scan (24 = a full circle of 15-degree turns; fewer see
            fewer landmarks, which makes a weaker policy).
        turn_step: radians per turn action.
        forward_step: metres per forward action.
        grid: metres between the planner's cells.
        stride: pixel stride of the free-floor point cloud's back-projection.
        search: metres between candidate places.
        headings: candidate headings in a circle.
        min_pixels: pixels a colour needs in a view to count as a landmark seen.
        pixel_sigma: pixels; a projection error of this size costs 1.
        cap: the most one compared edge may cost (a bad match is bad, not infinitely so).
        missing: the cost of a mapped landmark the goal image lacks where the pose would show it.
        noise: probability of replacing each action with a random move or turn (never a stop).
        seed: seeds the noise, with each episode's goal image.
        arrive: metres from the chosen place at which the agent stops.
        max_range: metres; depth at or beyond it (and depth 0) is no return.
    """

    def __init__(
        self,
        intrinsics: Intrinsics,
        *,
        scan_turns: int = 24,
        turn_step: float = math.radians(15.0),
        forward_step: float = 0.25,
        grid: float = 0.25,
        stride: int = 4,
        search: float = 0.125,
        headings: int = 72,
        min_pixels: int = 4,
        pixel_sigma: float = 1.5,
        cap: float = 16.0,
        missing: float = 9.0,
        noise: float = 0.0,
        seed: int = 0,
        arrive: float = 0.3,
        max_range: float = 50.0,
    ) -> None:
        if isinstance(scan_turns, bool) or not isinstance(scan_turns, (int, np.integer)) or scan_turns < 0:
            raise ValueError(f"scan_turns must be an integer >= 0, got {scan_turns!r}")
        for name, value in (("turn_step", turn_step), ("forward_step", forward_step), ("grid", grid),
                            ("search", search), ("pixel_sigma", pixel_sigma), ("arrive", arrive),
                            ("max_range", max_range)):  # fmt: skip
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(noise, (int, float)) and 0.0 <= noise <= 1.0):
            raise ValueError(f"noise must be a probability in [0, 1], got {noise!r}")
        self.intrinsics = intrinsics
        self.scan_turns = int(scan_turns)
        self.turn_step = float(turn_step)
        self.forward_step = float(forward_step)
        self.grid = float(grid)
        self.stride = int(stride)
        self.search = float(search)
        self.n_headings = int(headings)
        self.min_pixels = int(min_pixels)
        self.pixel_sigma = float(pixel_sigma)
        self.cap = float(cap)
        self.missing = float(missing)
        self.noise = float(noise)
        self.seed = int(seed)
        self.arrive = float(arrive)
        self.max_range = float(max_range)
        from rtfm_env.envs.objectnav import BALL_SIZE, BOX_SIZE, OBJECT_KINDS

        self._n_kinds = len(OBJECT_KINDS)
        # Per kind: (radius of the footprint's bounding circle, height), metres.
        box_r = 0.5 * math.hypot(BOX_SIZE[0], BOX_SIZE[2])
        self._sizes = [(box_r, BOX_SIZE[1]) if k.shape == "box" else (0.5 * BALL_SIZE, BALL_SIZE) for k in OBJECT_KINDS]
        # Rays of the pixels in the camera frame (OpenGL axes: x right, y up, looking down -z).
        h, w, f = intrinsics.height, intrinsics.width, intrinsics.focal
        v, u = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        self._rays = np.stack([(u - w / 2) / f, -(v - h / 2) / f, -np.ones_like(u)], axis=-1)  # (H, W, 3)
        self.reset()

    @classmethod
    def for_env(cls, env: Any, **kwargs: Any) -> LandmarkLocaliser:
        """The agent for an RTFM env: its camera's intrinsics and step sizes (not its scene or goal)."""
        scene = env.unwrapped.scene
        kin = scene.kinematics
        return cls(scene.intrinsics, turn_step=kin.turn_step, forward_step=kin.forward_step, **kwargs)

    def reset(self) -> None:
        """Forget the map, the landmarks, the goal and the path; the noise stream restarts with the next episode."""
        self._points: list[np.ndarray] = []  # (N, 3) world points per stored view
        self._origins: list[np.ndarray] = []  # camera centres of the stored views
        self._marks: dict[int, list[np.ndarray]] = {}  # kind -> (N, 2) floor points of its pixels, per view
        self._mark_origins: dict[int, list[np.ndarray]] = {}  # kind -> camera (x, z) per view
        self._turns = 0
        self._target: np.ndarray | None = None  # (x, z) of the place headed for
        self._path: list[tuple[int, int]] = []
        self._free: np.ndarray | None = None  # planner grid, True where free
        self._origin = np.zeros(2)  # world (x, z) of cell (0, 0)
        self._last: tuple[int, np.ndarray] | None = None  # the last action and the pose it was taken at
        self._rng: np.random.Generator | None = None
        self.estimate: dict[str, Any] | None = None  # the localisation's result, for inspection

    # ------------------------------------------------------------------------------ acting

    def act(self, observation: dict[str, Any]) -> int:
        """The action for one observation (``rgb``, ``depth``, ``pose`` and ``imagegoal`` are read).

        With ``noise``, a random move or turn instead with that probability. The noise stream
        is seeded by ``seed`` and the episode's goal image, so an episode's noise is the same
        whichever env of a batch runs it, and differs between episodes.
        """
        if "depth" not in observation:
            raise KeyError("LandmarkLocaliser needs a depth observation: make the env with depth=True")
        pose = np.asarray(observation["pose"], dtype=np.float64)
        if self._rng is None:
            goal = np.ascontiguousarray(observation["imagegoal"])
            self._rng = np.random.default_rng([self.seed, zlib.crc32(goal.tobytes())])
        if self._last is not None and self._last[0] == DiscreteAction.FORWARD and np.allclose(self._last[1], pose):
            self._blocked(pose)
        action = self._choose(observation, pose)
        if self.noise and self._rng.random() < self.noise:
            action = int(self._rng.integers(1, 4))  # a move or a turn: noise never stops an episode
        self._last = (action, pose.copy())
        return action

    def _choose(self, observation: dict[str, Any], pose: np.ndarray) -> int:
        if self._target is None:
            self._store(observation, pose)
            if self._turns < self.scan_turns:
                self._turns += 1
                return DiscreteAction.TURN_LEFT
            self._localise(np.asarray(observation["imagegoal"]), pose)
        return self._go(pose)

    # ------------------------------------------------------------------------------ mapping

    def _store(self, observation: dict[str, Any], pose: np.ndarray) -> None:
        depth = np.asarray(observation["depth"], dtype=np.float64)
        valid = np.isfinite(depth) & (depth > 0) & (depth < self.max_range)
        sub = np.zeros_like(valid)
        sub[:: self.stride, :: self.stride] = True
        keep = valid & sub
        self._points.append(pose[:3, 3] + (self._rays[keep] * depth[keep, None]) @ pose[:3, :3].T)
        self._origins.append(pose[:3, 3].copy())
        labels = landmark_labels(observation["rgb"])
        for kind in range(self._n_kinds):
            mask = (labels == kind) & valid
            if mask.sum() < self.min_pixels:
                continue
            pts = pose[:3, 3] + (self._rays[mask] * depth[mask, None]) @ pose[:3, :3].T
            self._marks.setdefault(kind, []).append(pts[:, [0, 2]])
            self._mark_origins.setdefault(kind, []).append(pose[[0, 2], 3].copy())

    def landmarks(self) -> dict[int, np.ndarray]:
        """Kind -> estimated floor (x, z) centre of each landmark seen so far."""
        out = {}
        for kind, chunks in self._marks.items():
            centroid = np.concatenate(chunks).mean(axis=0)
            away = centroid - np.mean(self._mark_origins[kind], axis=0)
            norm = float(np.linalg.norm(away))
            push = 0.5 * self._sizes[kind][0]
            out[kind] = centroid + (away / norm * push if norm > 1e-6 else 0.0)
        return out

    def _free_grid(self, pose: np.ndarray) -> None:
        """Cells the scan's rays crossed at floor level, less those with something above the floor."""
        pts = np.concatenate(self._points) if self._points else np.zeros((0, 3))
        cam = pose[:3, 3]
        floor_y = cam[1] - 10.0  # refined below from the points the rays hit below the camera
        low = pts[:, 1] < cam[1] - 0.5
        if low.any():
            floor_y = float(np.percentile(pts[low, 1], 5))
        ceiling = float(np.percentile(pts[:, 1], 95)) if len(pts) else cam[1] + 1.0
        xz = np.concatenate([pts[:, [0, 2]], cam[None, [0, 2]]])
        self._origin = xz.min(axis=0) - 2 * self.grid
        shape = tuple(np.ceil((xz.max(axis=0) + 2 * self.grid - self._origin) / self.grid).astype(int) + 1)
        seen = np.zeros(shape, bool)
        blocked = np.zeros(shape, bool)
        obstacle = (pts[:, 1] > floor_y + _FLOOR_BAND) & (pts[:, 1] < ceiling - _FLOOR_BAND)
        # Free space: along each ray from the camera to a point, up to the point (less a margin).
        for origin, p in zip(self._origins, self._points, strict=True):
            if not len(p):
                continue
            d = p[:, [0, 2]] - origin[[0, 2]]
            length = np.linalg.norm(d, axis=1)
            samples = np.linspace(0.0, 1.0, 24)[None, :, None]
            margin = np.clip((length - self.grid) / np.maximum(length, 1e-9), 0.0, 1.0)[:, None, None]
            along = origin[[0, 2]] + d[:, None, :] * samples * margin  # (N, S, 2)
            cells = np.floor((along.reshape(-1, 2) - self._origin) / self.grid).astype(int)
            seen[cells[:, 0], cells[:, 1]] = True
        cells = np.floor((pts[obstacle][:, [0, 2]] - self._origin) / self.grid).astype(int)
        blocked[cells[:, 0], cells[:, 1]] = True
        # Keep a body's width from obstacles: dilate by one cell.
        dilated = blocked.copy()
        for dx, dz in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            dilated |= np.roll(blocked, (dx, dz), axis=(0, 1))
        self._free = seen & ~dilated

    def _cell(self, xz: np.ndarray) -> tuple[int, int]:
        c = np.floor((np.asarray(xz) - self._origin) / self.grid).astype(int)
        return int(c[0]), int(c[1])

    def _centre(self, cell: tuple[int, int]) -> np.ndarray:
        return self._origin + (np.asarray(cell, dtype=np.float64) + 0.5) * self.grid

    # ------------------------------------------------------------------------------ localising

    def _blobs(self, goal: np.ndarray) -> dict[int, tuple[float, float, float, float, float]]:
        """Kind -> (column centroid, left, right, top, bottom) in pixels of its blob in the goal image."""
        labels = landmark_labels(goal)
        out = {}
        for kind in range(self._n_kinds):
            mask = labels == kind
            if mask.sum() < self.min_pixels:
                continue
            rows, cols = np.nonzero(mask)
            out[kind] = (cols.mean() + 0.5, cols.min(), cols.max() + 1.0, rows.min(), rows.max() + 1.0)
        return out

    def _localise(self, goal: np.ndarray, pose: np.ndarray) -> None:
        here = pose_to_state(pose)
        self._free_grid(pose)
        marks = self.landmarks()
        blobs = self._blobs(goal)
        matched = [k for k in blobs if k in marks]
        free = np.argwhere(self._free)
        if not matched or not len(free):
            # Nothing to localise with: stop where it stands.
            self._target = np.array([here.x, here.z])
            self.estimate = {"landmarks": len(marks), "matched": 0, "target": self._target.copy()}
            return
        # Candidate places: a `search` lattice inside the free cells.
        sub = max(1, int(round(self.grid / self.search)))
        offsets = (np.arange(sub) + 0.5) / sub
        lattice = np.stack(np.meshgrid(offsets, offsets, indexing="ij"), -1)[None]  # (1, sub, sub, 2)
        places = self._origin + (free[:, None, None, :] + lattice).reshape(-1, 2) * self.grid  # (P, 2)
        yaws = np.arange(self.n_headings) * (2 * math.pi / self.n_headings)  # (Y,)
        f, w, h = self.intrinsics.focal, self.intrinsics.width, self.intrinsics.height
        cam_h = float(pose[1, 3])
        cost = np.zeros((len(places), len(yaws)))
        for kind, centre in marks.items():
            radius, height = self._sizes[kind]
            d = centre - places  # (P, 2)
            bearing = np.arctan2(-d[:, 1], d[:, 0])  # yaw convention: 0 faces +x, positive to the left
            alpha = np.angle(np.exp(1j * (bearing[:, None] - yaws[None, :])))  # (P, Y), positive: left of centre
            fwd = np.hypot(d[:, 0], d[:, 1])[:, None] * np.cos(alpha)  # metres along the optical axis
            near = np.maximum(fwd - radius, 0.05)  # to the landmark's near side
            u = w / 2 - f * np.tan(alpha)
            half = f * radius / np.maximum(fwd, 0.05)
            top = h / 2 - f * (height - cam_h) / near
            bottom = h / 2 + f * cam_h / near
            shown = (fwd > 0.3) & (u + half > 0) & (u - half < w)
            if kind not in blobs:
                # A landmark the goal image lacks: costs `missing` where the pose would show it well inside the view.
                cost += np.where(shown & (np.abs(u - w / 2) < w / 2 - 4), self.missing, 0.0)
                continue
            cu, left, right, btop, bbottom = blobs[kind]
            terms = [(np.clip(u, 0, w) - cu) ** 2 * 0.25]  # a clipped blob's centroid shifts: a loose term
            if left > 0:  # edges the image border clips are not compared
                terms.append((u - half - left) ** 2)
            if right < w:
                terms.append((u + half - right) ** 2)
            if btop > 0:
                terms.append((top - btop) ** 2)
            if bbottom < h:
                terms.append((bottom - bbottom) ** 2)
            err = sum(np.minimum(t / self.pixel_sigma**2, self.cap) for t in terms)
            cost += np.where(shown, err, self.cap * len(terms))
        best = np.unravel_index(int(np.argmin(cost)), cost.shape)
        self._target = places[best[0]].copy()
        self.estimate = {
            "landmarks": len(marks),
            "matched": len(matched),
            "target": self._target.copy(),
            "yaw": float(angle_difference(yaws[best[1]], 0.0)),
            "cost": float(cost[best]),
        }
        self._plan(np.array([here.x, here.z]))

    # ------------------------------------------------------------------------------ going

    def _plan(self, xz: np.ndarray) -> None:
        """Breadth-first path over free cells from ``xz`` to the target's cell (the start's cell counts as free)."""
        self._path = []
        if self._free is None or self._target is None:
            return
        start, goal = self._cell(xz), self._cell(self._target)
        shape = self._free.shape
        prev: dict[tuple[int, int], tuple[int, int] | None] = {start: None}
        queue = deque([start])
        while queue:
            cell = queue.popleft()
            if cell == goal:
                break
            for dx, dz in ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)):
                nxt = (cell[0] + dx, cell[1] + dz)
                if nxt in prev or not (0 <= nxt[0] < shape[0] and 0 <= nxt[1] < shape[1]):
                    continue
                if not self._free[nxt] and nxt != goal:
                    continue
                if dx and dz and not (self._free[cell[0] + dx, cell[1]] and self._free[cell[0], cell[1] + dz]):
                    continue  # no cutting corners past an obstacle
                prev[nxt] = cell
                queue.append(nxt)
        if goal not in prev:
            return  # unreachable on the map: head straight for it
        cell = goal
        while cell is not None and cell != start:
            self._path.append(cell)
            cell = prev[cell]
        self._path.reverse()

    def _blocked(self, pose: np.ndarray) -> None:
        """A forward step changed nothing: mark what blocked it occupied and re-plan."""
        if self._free is None:
            return
        here = pose_to_state(pose)
        # What blocked the step lies within a body's width ahead: mark the cells of a short fan
        # ahead (never the robot's own cell), so the re-planned path cannot lead straight back into it.
        own = self._cell(np.array([here.x, here.z]))
        for reach in (self.grid, 2 * self.grid, 3 * self.grid):
            for side in (-0.5, 0.0, 0.5):
                yaw = here.yaw + side
                cell = self._cell(np.array([here.x + math.cos(yaw) * reach, here.z - math.sin(yaw) * reach]))
                if cell != own and 0 <= cell[0] < self._free.shape[0] and 0 <= cell[1] < self._free.shape[1]:
                    self._free[cell] = False
        self._plan(np.array([here.x, here.z]))

    def _go(self, pose: np.ndarray) -> int:
        here = pose_to_state(pose)
        xz = np.array([here.x, here.z])
        while self._path and np.linalg.norm(self._centre(self._path[0]) - xz) <= 0.5 * self.forward_step:
            self._path.pop(0)
        if np.linalg.norm(self._target - xz) <= self.arrive or (
            not self._path and np.linalg.norm(self._target - xz) <= 0.5 * self.forward_step
        ):
            return DiscreteAction.STOP
        aim = self._centre(self._path[0]) if len(self._path) > 1 else self._target
        d = aim - xz
        bearing = math.atan2(-d[1], d[0])  # yaw convention: yaw 0 faces +x, positive turns left (towards -z)
        error = float(angle_difference(bearing, here.yaw))
        if abs(error) > 0.5 * self.turn_step + 1e-6:
            return DiscreteAction.TURN_LEFT if error > 0 else DiscreteAction.TURN_RIGHT
        return DiscreteAction.FORWARD
