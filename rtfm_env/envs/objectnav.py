"""``RTFM/ObjectNav-v0``: find the object named by the goal and stop beside it, looking at it.

The scene is a MiniWorld layout with a few coloured objects (MiniWorld ``Box`` and ``Ball``
entities) placed in it; the goal names one of them by its kind (a category and colour index).
There is no GPS or compass to the goal: the view is the only way to find it, so a blind
policy cannot do better than a search that happens to stop beside the right object.

Objects belong to the layout, not to the episode: :class:`ObjectScene` places them
deterministically from the layout seed, so the same layout always holds the same objects,
the ground-truth camera renders them (they are MiniWorld entities) and the memory cameras'
``"walk"`` and ``"scan"`` recordings, which are rendered from the scene after its reset, hold
them too. Those recordings are cached per (scene id, :attr:`ObjectScene.variant`, layout seed),
so a layout with objects never shares a recording with the same layout without them. A saved
world file shows the objects only if it was saved from this env's scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces
from miniworld.entity import COLORS, Ball, Box, Entity
from scipy import ndimage
from scipy.sparse import csgraph

from rtfm_env.envs.base import RTFMEnv
from rtfm_env.envs.follower import ShortestPathFollower
from rtfm_env.envs.tasks import Episode, NavigationTask
from rtfm_env.envs.vector import RTFMVectorEnv
from rtfm_env.geometry import DiscreteAction, RobotState, angle_difference, invert_pose
from rtfm_env.scenes.base import Scene
from rtfm_env.scenes.grid import FreeSpace
from rtfm_env.scenes.miniworld import MiniWorldScene, _Obstacles

__all__ = [
    "OBJECT_KINDS",
    "ObjectKind",
    "PlacedObject",
    "ObjectScene",
    "ViewZone",
    "ObjectNavTask",
    "ObjectNavEnv",
    "ObjectNavVectorEnv",
    "ObjectGoalFollower",
    "target_in_view",
]


@dataclass(frozen=True)
class ObjectKind:
    """One kind of goal object: a MiniWorld shape and colour."""

    name: str  # e.g. "red box"
    shape: str  # "box" or "ball" (MiniWorld's Box and Ball entities)
    color: str  # a name of miniworld.entity.COLORS


#: The kinds an ``objectgoal`` index names, in index order. Every kind has its own colour, so the
#: colour alone tells them apart (grey is left out: it is the colour of MiniWorld's walls).
OBJECT_KINDS: tuple[ObjectKind, ...] = (
    ObjectKind("red box", "box", "red"),
    ObjectKind("green ball", "ball", "green"),
    ObjectKind("blue box", "box", "blue"),
    ObjectKind("yellow ball", "ball", "yellow"),
    ObjectKind("purple box", "box", "purple"),
)

OBJECTS_PER_LAYOUT = 4  # the target and three distractors, all of different kinds
# Objects are tall enough to stay in view up close: the camera is 1.5 m up with a 60-degree
# vertical field of view, so within about 1.3 m it sees nothing of the floor below 0.75 m.
BOX_SIZE = (0.6, 1.2, 0.6)  # metres, a box's width, height and depth
BALL_SIZE = 1.0  # metres, a ball's diameter
VIEW_HEIGHTS = (0.3, 0.5, 0.7, 0.9)  # fractions of an object's height tested by target_in_view
MIN_START_DISTANCE = 2.0  # metres, least straight-line distance from the start to an object's centre
MIN_SEPARATION = 2.0  # metres, least distance between two objects' centres
#: (start distance, separation) in metres, tried in turn: a layout whose floor cannot hold the
#: objects at the first spacing (a corridor's narrow layouts) gets the next, so every layout a
#: robot can move in holds its objects; only when the last fails is the scene refused.
PLACEMENT_SPACINGS: tuple[tuple[float, float], ...] = (
    (MIN_START_DISTANCE, MIN_SEPARATION), (1.5, 1.5), (1.0, 1.0),
)
PLACEMENT_SALT = 0x0B1EC7  # mixed into the layout seed, so placements do not echo MiniWorld's draws
VISIBILITY_TOLERANCE = 0.05  # metres of depth slack in the occlusion test


@dataclass(frozen=True)
class PlacedObject:
    """An object of a layout: its kind and where it stands."""

    kind: int  # index in OBJECT_KINDS
    x: float  # metres, centre on the floor
    z: float  # metres
    radius: float  # metres, the footprint's bounding circle (MiniWorld's entity radius)
    height: float  # metres

    @property
    def xz(self) -> np.ndarray:
        """The centre on the floor, (x, z)."""
        return np.array([self.x, self.z])

    @property
    def name(self) -> str:
        """The kind's name, e.g. ``"red box"``."""
        return OBJECT_KINDS[self.kind].name


def _make_entity(kind: ObjectKind) -> Entity:
    if kind.shape == "box":
        entity = Box(kind.color, size=BOX_SIZE)
        entity.color_vec = COLORS[kind.color]  # what Box.randomize sets without domain randomisation
        return entity
    return Ball(kind.color, size=BALL_SIZE)


def _walls_cross(walls: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each floor segment from ``a`` (N, 2) to ``b`` (2,) crosses a wall of ``walls`` (S, 2, 2)."""
    if len(walls) == 0:
        return np.zeros(len(a), dtype=bool)
    p, r = a[:, None, :], (b - a)[:, None, :]  # (N, 1, 2)
    q, s = walls[None, :, 0, :], (walls[:, 1, :] - walls[:, 0, :])[None]  # (1, S, 2)

    def cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]

    denom = cross(r, s)  # (N, S)
    qp = q - p
    with np.errstate(divide="ignore", invalid="ignore"):
        t = cross(qp, s) / denom  # along a -> b
        u = cross(qp, r) / denom  # along the wall
    hit = (denom != 0) & (t >= 0) & (t <= 1) & (u >= 0) & (u <= 1)
    return hit.any(axis=1)


class ViewZone:
    """The free floor from which an object counts as reached, and the grid distance to it.

    View points are the free cells (the robot's centre may stand there) whose centre lies within
    ``radius`` of the object's footprint (its bounding circle) with no wall between the cell and
    the object's centre, as Habitat's ObjectNav view points are navigable points near the
    object. :attr:`field` holds every free cell's grid distance (16-connected, metres) to the
    nearest view point, from one multi-source Dijkstra.

    Args:
        free_space: the scene's free-space grid, objects included.
        walls: (S, 2, 2) wall segments on the floor, (x, z) metres.
        obj: the object.
        radius: metres from the footprint.
    """

    def __init__(self, free_space: FreeSpace, walls: np.ndarray, obj: PlacedObject, radius: float) -> None:
        self.free_space = free_space
        self.walls = walls
        self.object = obj
        self.radius = float(radius)  # metres from the footprint
        centres = free_space.centre(np.arange(free_space.num_nodes))  # (N, 2)
        near = np.flatnonzero(np.hypot(*(centres - obj.xz).T) - obj.radius <= self.radius)
        seen = ~_walls_cross(walls, centres[near], obj.xz)
        self.nodes = near[seen]  # graph nodes of the view points
        if len(self.nodes) == 0:
            raise RuntimeError(f"the {obj.name} at ({obj.x:.2f}, {obj.z:.2f}) has no free floor within {radius} m")
        self.field = csgraph.dijkstra(free_space.graph, directed=False, indices=self.nodes, min_only=True)
        self._connected: tuple[np.ndarray, Any] | None = None  # finite-field nodes and their KD-tree, lazily

    @property
    def points(self) -> np.ndarray:
        """(K, 2) the view points' cell centres (x, z)."""
        return self.free_space.centre(self.nodes)

    def distance(self, xz: np.ndarray) -> float:
        """Grid distance in metres from the floor point ``xz`` (its cell) to the nearest view point.

        The robot moves continuously, so it can stand in a free cell that the grid's graph does
        not connect to the view points (a pocket between an object and a wall whose only links
        are diagonals that cut a blocked corner). Such a cell takes the distance of the nearest
        connected cell plus the straight line to it, so the distance, and the progress reward
        made from it, stays finite. inf only when no free cell reaches a view point.
        """
        xz = np.asarray(xz, dtype=np.float64)
        node = self.free_space.snap(xz)
        if node is None:
            return math.inf
        d = float(self.field[node])
        if math.isfinite(d):
            return d
        if self._connected is None:
            from scipy.spatial import cKDTree

            nodes = np.flatnonzero(np.isfinite(self.field))
            self._connected = (nodes, cKDTree(self.free_space.centre(nodes)) if len(nodes) else None)
        nodes, tree = self._connected
        if tree is None:
            return math.inf
        gap, i = tree.query(self.free_space.centre(node))
        return float(self.field[nodes[i]]) + float(gap)

    def contains(self, xz: np.ndarray) -> bool:
        """Whether the exact floor point ``xz`` is within ``radius`` of the footprint with no wall in between."""
        xz = np.asarray(xz, dtype=np.float64)
        if math.hypot(*(xz - self.object.xz)) - self.object.radius > self.radius:
            return False
        return not bool(_walls_cross(self.walls, xz[None], self.object.xz)[0])


class ObjectScene(MiniWorldScene):
    """A MiniWorld layout with ObjectNav's objects in it (see the module docstring).

    At every :meth:`reset` the layout's own movable entities (e.g. FourRooms' red box) are
    removed, so the only objects are ObjectNav's, and :data:`OBJECTS_PER_LAYOUT` objects of
    distinct kinds are placed, drawn from a generator seeded by the layout seed only. An object
    stands on a free cell at least :data:`MIN_START_DISTANCE` from the start and
    :data:`MIN_SEPARATION` from the others, in open floor: the disk it blocks for the robot
    (robot radius + object radius) plus two grid cells around it is free, so an object never
    closes a doorway and every object can be walked around. A layout too narrow for that (some
    of Hallway's) is placed again with the closer spacings of :data:`PLACEMENT_SPACINGS`, from
    the same seed; a scene that cannot hold the objects even then (RoomObjects, whose robot is
    1.5 m wide) raises RuntimeError at reset. Objects are obstacles: motion, free space,
    geodesic distances and the map include them.

    Takes :class:`~rtfm_env.scenes.MiniWorldScene`'s arguments.

    Attributes:
        objects: the current layout's objects.
        variant: what this scene adds to its MiniWorld id's layouts, part of the key under which
            :func:`rtfm_env.worlds.recording` caches a layout's walks and scans.
    """

    variant = "objectnav-v0"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objects: tuple[PlacedObject, ...] = ()

    @classmethod
    def replacing(cls, made: Scene, fov_y: float, refusal: str) -> ObjectScene:
        """The :class:`ObjectScene` of the MiniWorld scene ``made`` (same id and view size), which is closed.

        Args:
            made: the scene an env built (:meth:`RTFMEnv._make_scene`).
            fov_y: the view's vertical field of view, degrees.
            refusal: the error when ``made`` is a recorded world, which cannot hold objects
                (``{id}`` is replaced by its id).

        Raises:
            ValueError: ``made`` is not a MiniWorld scene (``refusal``).
        """
        env_id = made.env_id
        width, height = made.intrinsics.width, made.intrinsics.height
        is_miniworld = isinstance(made, MiniWorldScene)
        made.close()
        if not is_miniworld:
            raise ValueError(refusal.format(id=env_id))
        return cls(env_id, width=width, height=height, fov_y=fov_y)

    def reset(self, seed: int) -> RobotState:
        """Build the layout for ``seed`` with its objects; returns MiniWorld's start state."""
        start = super().reset(seed)
        env = self.miniworld_env
        env.entities = [e for e in env.entities if e is env.agent or e.is_static]
        self._refresh()
        for start_distance, separation in PLACEMENT_SPACINGS:
            placed = self._place(np.random.default_rng([PLACEMENT_SALT, int(seed)]), start, start_distance,
                                 separation)
            if placed is not None:
                break
        else:
            raise RuntimeError(
                f"{self!r} has no open floor for {OBJECTS_PER_LAYOUT} objects, even {separation} m apart and "
                f"{start_distance} m from the start, that a robot of radius {self.radius:.2f} m can walk around; "
                "ObjectNav (and ImageNav with landmarks) needs a roomier scene (e.g. FourRooms, OneRoom)"
            )
        for obj in placed:
            entity = _make_entity(OBJECT_KINDS[obj.kind])
            entity.pos, entity.dir = np.array([obj.x, 0.0, obj.z]), 0.0
            env.entities.append(entity)
        self.objects = tuple(placed)
        self._refresh()
        return start

    def _refresh(self) -> None:
        """Rebuild the collision test and drop the grid and map after the entities changed."""
        self._obstacles = _Obstacles(self.miniworld_env, self.radius)
        self._free_space = None
        self._map_image = None

    def _place(
        self, rng: np.random.Generator, start: RobotState, start_distance: float, separation: float
    ) -> list[PlacedObject] | None:
        """The layout's objects at this spacing (metres), or None where the floor cannot hold them all."""
        fs = self._grid()
        kinds = rng.choice(len(OBJECT_KINDS), size=OBJECTS_PER_LAYOUT, replace=False)
        sizes = [_make_entity(OBJECT_KINDS[k]) for k in kinds]
        start_node = fs.snap(np.array([start.x, start.z]))
        reachable = np.isfinite(fs.field(start_node)[0]) if start_node is not None else np.zeros(0, dtype=bool)
        # Metres from each free cell to the nearest blocked one.
        clearance = ndimage.distance_transform_edt(fs.free) * fs.cell
        centres = fs.centre(np.arange(fs.num_nodes))  # (N, 2)
        open_floor = clearance[fs.node_row, fs.node_col]  # (N,)
        far_from_start = np.hypot(*(centres - (start.x, start.z)).T) >= start_distance
        placed: list[PlacedObject] = []
        for kind, entity in zip(kinds, sizes, strict=True):
            reach = self.radius + entity.radius  # metres the robot's centre keeps from the object's
            ok = reachable & far_from_start & (open_floor >= reach + 2.0 * fs.cell)
            for other in placed:
                ok &= np.hypot(*(centres - other.xz).T) >= separation
            candidates = np.flatnonzero(ok)
            if len(candidates) == 0:
                return None
            x, z = centres[int(rng.choice(candidates))]
            placed.append(PlacedObject(int(kind), float(x), float(z), float(entity.radius), float(entity.height)))
        return placed

    def walls(self) -> np.ndarray:
        """(S, 2, 2) the layout's wall segments on the floor, (x, z) metres."""
        segs = np.asarray(self._layout_env().wall_segs, dtype=np.float64).reshape(-1, 2, 3)
        return segs[:, :, [0, 2]]

    def view_zone(self, index: int, radius: float) -> ViewZone:
        """The :class:`ViewZone` of ``objects[index]`` within ``radius`` metres of its footprint."""
        return ViewZone(self._grid(), self.walls(), self.objects[index], radius)

    def zone_distances(self, xz: np.ndarray, radius: float) -> np.ndarray:
        """Grid distance in metres from the floor point ``xz`` to each object's view zone (inf if unreachable).

        One Dijkstra from ``xz`` (the graph is undirected), not one per object.
        """
        fs = self._grid()
        node = fs.snap(np.asarray(xz, dtype=np.float64))
        field = fs.field(node)[0] if node is not None else np.full(fs.num_nodes, np.inf)
        walls = self.walls()
        centres = fs.centre(np.arange(fs.num_nodes))
        out = np.full(len(self.objects), np.inf)
        for i, obj in enumerate(self.objects):
            near = np.flatnonzero(np.hypot(*(centres - obj.xz).T) - obj.radius <= radius)
            near = near[~_walls_cross(walls, centres[near], obj.xz)]
            if len(near):
                out[i] = float(field[near].min())
        return out


def target_in_view(scene: Scene, state: RobotState, obj: PlacedObject, depth_map: np.ndarray | None = None) -> bool:
    """Whether ``obj`` is in ``state``'s view: a point of its axis projects inside the image, unhidden.

    Points on the object's vertical axis at :data:`VIEW_HEIGHTS` of its height are projected
    with the scene's intrinsics (the centre alone is below the view up close: the camera is
    high). The object is in view if one of them lies in front of the camera, inside the image,
    and the scene's ground-truth depth at its pixel is not nearer than the object's front (the
    point's depth less the object's radius, less :data:`VISIBILITY_TOLERANCE`); a nearer depth
    means a wall or another object stands in between. A scene without ground-truth depth cannot
    tell, and counts the object as not in view. ``depth_map``: the scene's depth map at ``state``,
    when the caller has rendered it already (several objects tested from one pose); None renders
    it here, only if some point projects inside the image.
    """
    pose = state.pose()
    heights = np.asarray(VIEW_HEIGHTS) * obj.height  # (P,) metres
    points = np.stack([np.full_like(heights, obj.x), heights, np.full_like(heights, obj.z), np.ones_like(heights)])
    x, y, z = (invert_pose(pose) @ points)[:3]  # (P,) each, camera frame, OpenGL axes: looking down -z
    depth = -z  # metres along the optical axis
    k = scene.intrinsics
    with np.errstate(divide="ignore", invalid="ignore"):
        u = 0.5 * k.width + k.focal * x / depth  # pixels, columns grow to the right
        v = 0.5 * k.height - k.focal * y / depth  # pixels, rows grow downwards
    inside = (depth > 0.0) & (u >= 0.0) & (u < k.width) & (v >= 0.0) & (v < k.height)
    if not inside.any():
        return False
    seen = scene.render_depth(pose) if depth_map is None else depth_map
    if seen is None:
        return False
    rows, cols = v[inside].astype(int), u[inside].astype(int)
    return bool((seen[rows, cols] >= depth[inside] - obj.radius - VISIBILITY_TOLERANCE).any())


class ObjectNavTask(NavigationTask):
    """Find the object of the goal kind and stop within ``success_distance`` of it, facing it.

    Habitat's ObjectNav (Batra et al., 2020, "ObjectNav Revisited: On Evaluation of Embodied
    Agents Navigating to Objects"), on an :class:`ObjectScene`. At reset the target is drawn
    among the layout's objects, preferring those whose view zone lies at a geodesic distance in
    [min_goal_distance, max_goal_distance] from the start (the nearest to that range if none).

    A stop succeeds when the robot's centre is within ``success_distance`` of the target's
    footprint with no wall between (:meth:`ViewZone.contains`) and the target is in view
    (:func:`target_in_view`). Any stop ends the episode.

    Metrics, as Habitat's ObjectNav measures them, with the target's view zone in place of a goal
    point: ``distance_to_goal`` (DTG, also ``dtg``): the geodesic distance (on the scene's 0.1 m
    free-space grid) from the robot to the nearest view point (``habitat.tasks.nav.DistanceToGoal``
    with ``distance_to: VIEW_POINTS``); ``success``; SPL = success * l / max(l, p) (Anderson et
    al., 2018), l the start's DTG and p the path length; SoftSPL = clip(1 - DTG / l, 0, 1) * l /
    max(l, p) (``habitat.tasks.nav.SoftSPL``). Rewards are :class:`NavigationTask`'s: the
    decrease of DTG, a slack cost per step and a bonus on success.
    """

    def __init__(self, success_distance: float = 1.0, **kwargs: Any) -> None:
        """Configure the task.

        Args:
            success_distance: metres from the target's footprint within which a stop may succeed.
            **kwargs: :class:`~rtfm_env.envs.tasks.NavigationTask`'s other arguments.
        """
        super().__init__(success_distance=success_distance, **kwargs)
        self.scene: ObjectScene | None = None
        self.target: int | None = None  # index in scene.objects
        self.zone: ViewZone | None = None
        self.stopped_in_view = False  # whether the target was in view at the stop (False before one)

    @property
    def target_object(self) -> PlacedObject:
        """The episode's target."""
        if self.scene is None or self.target is None:
            raise RuntimeError("ObjectNavTask has no target yet: call reset(scene, episode, rng) first")
        return self.scene.objects[self.target]

    def observation_spaces(self) -> dict[str, spaces.Space]:
        """``objectgoal``: the index of the target's kind in :data:`OBJECT_KINDS`."""
        return {"objectgoal": spaces.Discrete(len(OBJECT_KINDS))}

    def observation(self, state: RobotState) -> dict[str, np.ndarray]:
        """The goal kind (the same all episode long)."""
        return {"objectgoal": np.int64(self.target_object.kind)}

    def sample_route(self, scene: Scene, episode: Episode, rng: np.random.Generator) -> list[np.ndarray]:
        """Draw the target; the route is its centre (for maps and messages; distances use its view zone)."""
        if not isinstance(scene, ObjectScene):
            raise TypeError(f"ObjectNavTask needs an ObjectScene (a MiniWorld layout with objects), got {scene!r}")
        distances = scene.zone_distances(np.array([episode.start.x, episode.start.z]), self.success_distance)
        gap = np.maximum(np.maximum(self.min_goal_distance - distances, distances - self.max_goal_distance), 0.0)
        gap[~np.isfinite(distances)] = np.inf
        if not np.isfinite(gap).any():
            raise RuntimeError(
                f"no object of {scene!r} can be reached from the start: no floor within success_distance "
                f"{self.success_distance} m of an object is reachable by its robot of radius {scene.radius:.2f} m; "
                "ObjectNav needs a roomier scene (e.g. FourRooms, OneRoom) or a larger success_distance"
            )
        self.scene = scene
        self.target = int(rng.choice(np.flatnonzero(gap <= gap.min() + 1e-9)))
        self.zone = scene.view_zone(self.target, self.success_distance)
        self.stopped_in_view = False
        return [self.target_object.xz]

    def _geodesic(self, scene: Scene, state: RobotState) -> float:
        """DTG: the grid distance from ``state`` to the target's nearest view point."""
        if self.zone is None:
            raise RuntimeError("ObjectNavTask has no target yet: call reset(scene, episode, rng) first")
        return self.zone.distance(np.array([state.x, state.z]))

    def at_final_goal(self, state: RobotState) -> bool:
        """Within ``success_distance`` of the target's footprint, no wall between, and the target in view."""
        if self.zone is None or not self.zone.contains(np.array([state.x, state.z])):
            return False
        self.stopped_in_view = target_in_view(self.scene, state, self.target_object)
        return self.stopped_in_view

    def metrics(self, scene: Scene, episode: Episode) -> dict[str, Any]:
        """NavigationTask's metrics with DTG to the view zone, plus ``dtg``, ``target`` and ``target_in_view``."""
        out = super().metrics(scene, episode)
        out["dtg"] = out["distance_to_goal"]
        out["target"] = int(self.target_object.kind)  # index in OBJECT_KINDS
        out["target_in_view"] = bool(self.stopped_in_view)  # at a stop within reach (False before one)
        return out

    def map_overlay(self) -> dict[str, Any]:
        """The target and the ring within which a stop may succeed."""
        radius = self.success_distance + (self.target_object.radius if self.target is not None else 0.0)
        return {"goal": self.goal, "goal_radius": radius}


class ObjectGoalFollower:
    """The ObjectNav oracle: walk the geodesic path into the target's view zone, turn to face it, stop.

    It reads privileged state (the scene's free space, the target's position), so, like
    :class:`~rtfm_env.envs.follower.ShortestPathFollower`, it is the upper bound that learned
    agents are compared against. The stand point is the view point nearest (geodesic) to the
    episode's start among those at most ``success_distance - margin`` from the footprint, so
    stopping within ``margin`` of it is still a success; it is picked at the first action of
    each episode.

    Args:
        scene: the env's :class:`ObjectScene`.
        task: the env's :class:`ObjectNavTask`.
        margin: metres; the follower stops within ``margin`` (geodesic) of the stand point.
    """

    def __init__(self, scene: ObjectScene, task: ObjectNavTask, margin: float = 0.2) -> None:
        self.scene, self.task = scene, task
        self.margin = float(margin)  # metres
        self.follower = ShortestPathFollower(scene, stop_distance=self.margin)
        self._episode: tuple[int | None, int | None, float] | None = None
        self.stand_point: np.ndarray | None = None

    def act(self, state: RobotState) -> int:
        """The next action from ``state``."""
        task = self.task
        obj = task.target_object
        key = (self.scene.seed, task.target, task.start_distance)
        if key != self._episode:
            inner = ViewZone(task.zone.free_space, task.zone.walls, obj, task.success_distance - self.margin - 0.05)
            start_node = task.zone.free_space.snap(np.array([state.x, state.z]))
            field = task.zone.free_space.field(start_node)[0]
            self.stand_point = task.zone.free_space.centre(int(inner.nodes[np.argmin(field[inner.nodes])]))
            self._episode = key
        action = self.follower.act(state, self.stand_point)
        if action != DiscreteAction.STOP:
            return action
        bearing = math.atan2(-(obj.z - state.z), obj.x - state.x)  # yaw convention: direction (cos, -sin)
        error = float(angle_difference(bearing, state.yaw))
        if abs(error) > 0.5 * self.scene.kinematics.turn_step:
            return DiscreteAction.TURN_LEFT if error > 0 else DiscreteAction.TURN_RIGHT
        return DiscreteAction.STOP


class ObjectNavEnv(RTFMEnv):
    """Find and stop beside the object of a named kind in a MiniWorld layout, through any camera.

    ## Description

    ObjectNav (Batra et al., 2020; Habitat's ObjectNav challenge) in a MiniWorld layout with
    :data:`OBJECTS_PER_LAYOUT` coloured objects (MiniWorld boxes and balls of distinct colours,
    :data:`OBJECT_KINDS`) placed per layout seed (:class:`ObjectScene`). The robot is told
    which kind to find and sees its first-person view; nothing tells it where the target is, so
    the task needs eyes. The objects are MiniWorld entities: the ground-truth camera renders
    them, and the memory cameras' recordings (``world="walk"``/``"scan"``) are made of the same
    layout with the objects in place.

    ## Action Space

    ``Discrete(4)``: 0 stop, 1 forward 0.25 m, 2 turn left 15 degrees, 3 turn right 15 degrees
    (as ``RTFM/PointNav-v0``).

    ## Observation Space

    ``Dict``:

    - ``rgb``: ``Box(0, 255, (resolution, resolution, 3), uint8)``, the camera's view.
    - ``objectgoal``: ``Discrete(5)``, the target's kind, an index in :data:`OBJECT_KINDS`
      (0 red box, 1 green ball, 2 blue box, 3 yellow ball, 4 purple box; boxes are 0.6 x 1.2 x
      0.6 m, balls 1 m across, so they stay in view up close).
    - ``pose``: ``Box(float32, (4, 4))``, the camera-to-world pose (privileged: agents in
      ``agents/`` drop it).

    ## Rewards

    The decrease of DTG (metres, see Episode End) plus ``-0.01`` per step, and ``+2.5`` for a
    successful stop.

    ## Starting State

    The scene's start state for the layout (MiniWorld's placement). Every object stands at least
    2 m from it. The target is drawn from the env's generator among the layout's objects.

    ## Episode End

    Termination: the agent takes ``stop`` (0). It succeeds if its centre is then within
    ``success_distance`` of the target's footprint (no wall between) and the target is in view
    (a point of its vertical axis projects inside the image and the ground-truth depth shows
    nothing nearer: :func:`target_in_view`).

    Truncation: ``max_steps`` actions without a stop.

    ``info`` reports ``success``, ``spl``, ``soft_spl``, ``distance_to_goal`` and ``dtg`` (the
    geodesic distance to the nearest view point of the target, m), ``start_distance_to_goal``
    (m), ``goal`` (the target's centre, x, z), ``target`` (its kind), ``target_in_view`` (at the
    stop), ``collisions``, ``collided``, ``path_length`` (m), ``steps`` and ``scene_seed``.

    ## Arguments

    ```python
    env = gym.make("RTFM/ObjectNav-v0", scene="MiniWorld-FourRooms-v0", camera="reprojection",
                   world="scan", success_distance=1.0)
    ```

    - ``success_distance``: metres from the target's footprint within which a stop may succeed (1.0).
    - the world and camera arguments of every id, described in
      :class:`rtfm_env.envs.base.RTFMEnv`. The scene must be a MiniWorld id: a recorded world
      (a world file with a free-space map) has no objects to find and is refused.

    ## Version History

    - v0: initial version.
    """

    def __init__(self, success_distance: float = 1.0, **kwargs: Any) -> None:
        """Build the env; see the class docstring's Arguments section."""
        super().__init__(ObjectNavTask(success_distance=success_distance), **kwargs)

    def _make_scene(self, scene: Any, scene_file: Any) -> Scene:
        """:meth:`RTFMEnv._make_scene`'s MiniWorld scene as an :class:`ObjectScene`; recorded worlds are refused."""
        return ObjectScene.replacing(
            super()._make_scene(scene, scene_file),
            self.fov,
            "RTFM/ObjectNav-v0 places MiniWorld objects in its layouts; the recorded world {id!r} has none to find: "
            "use a MiniWorld scene (scene='MiniWorld-FourRooms-v0') with any camera",
        )


class ObjectNavVectorEnv(RTFMVectorEnv):
    """``RTFM/ObjectNav-v0`` batched: N :class:`ObjectNavEnv` (see :class:`~rtfm_env.envs.vector.RTFMVectorEnv`)."""

    env_id = "RTFM/ObjectNav-v0"
