"""Pictures of episodes: the camera view beside a top-down map with the trajectory, goal and robot.

Used by ``RTFMEnv.render()`` and the demo. The pieces compose:

- :class:`MapCanvas` scales a scene's :class:`~rtfm_env.scenes.base.TopDownMap` once for
  display and draws a trajectory, a goal and the robot on copies of it;
- :func:`compose` puts panels of any heights side by side at one height;
- :func:`episode_frames` builds one composite per step of an episode from a scene and its
  states (and the views, or the scene's ground truth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage import draw, transform

from rtfm_env.geometry import RobotState
from rtfm_env.scenes.base import Scene, TopDownMap

__all__ = ["MapCanvas", "compose", "resize", "episode_frames", "COLORS"]

#: RGB colours of what is drawn on maps.
COLORS = {
    "trajectory": (31, 119, 180),
    "start": (120, 120, 120),
    "robot": (255, 127, 14),
    "goal": (44, 160, 44),
    "outline": (0, 0, 0),
    "background": (255, 255, 255),
    "observed": (214, 39, 40),  # stored frames from the scene's renderer (ground truth)
    "generated": (148, 103, 189),  # stored frames the frame model generated
    "seen": (188, 189, 34),  # floor an exploring robot has seen
}


def _check_image(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"{name} must be an (H, W, 3) uint8 RGB image, got shape {image.shape} and dtype {image.dtype}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    return image


def resize(image: np.ndarray, height: int) -> np.ndarray:
    """Scale an RGB uint8 image to ``height`` pixels, keeping its aspect ratio.

    Enlarging keeps pixels square and sharp (nearest neighbour, so a 64-pixel view stays
    readable); shrinking filters first (bilinear with anti-aliasing).
    """
    image = _check_image(image, "image")
    if int(height) < 1:
        raise ValueError(f"height must be >= 1 pixel, got {height}")
    h, w = image.shape[:2]
    if h == height:
        return image.copy()
    width = max(1, round(w * height / h))
    if height % h == 0 and width % w == 0 and height // h == width // w:
        factor = height // h
        return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    enlarge = height > h
    out = transform.resize(
        image,
        (height, width),
        order=0 if enlarge else 1,
        anti_aliasing=not enlarge,
        preserve_range=True,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def compose(*panels: np.ndarray, height: int | None = None, gap: int = 4) -> np.ndarray:
    """Panels side by side, each scaled to one height, separated by ``gap`` background pixels.

    Args:
        panels: RGB uint8 images (H_i, W_i, 3), e.g. the camera view and the map.
        height: output height in pixels; the tallest panel's height when None.
        gap: pixels of background between panels.

    Returns:
        (height, sum of scaled widths + gaps, 3) uint8.
    """
    if not panels:
        raise ValueError("compose needs at least one panel")
    panels = tuple(_check_image(p, f"panels[{i}]") for i, p in enumerate(panels))
    if gap < 0:
        raise ValueError(f"gap must be >= 0 pixels, got {gap}")
    height = max(p.shape[0] for p in panels) if height is None else int(height)
    scaled = [resize(p, height) for p in panels]
    spacer = np.empty((height, gap, 3), dtype=np.uint8)
    spacer[:] = COLORS["background"]
    parts: list[np.ndarray] = []
    for i, p in enumerate(scaled):
        if i:
            parts.append(spacer)
        parts.append(p)
    return np.concatenate(parts, axis=1)


class MapCanvas:
    """A top-down map scaled for display once, drawn on many times.

    Attributes:
        image: the scaled, faded map, (height, width, 3) uint8, rows growing with world +z and
            columns with +x (as :class:`~rtfm_env.scenes.base.TopDownMap`).
        pixels_per_metre: display scale.
    """

    def __init__(self, top_down: TopDownMap, height: int = 256, fade: float = 0.4) -> None:
        """Scale ``top_down.image`` to ``height`` pixels and fade it so that markers stand out.

        Args:
            top_down: the scene's floor plan; its image covers the free grid's extent.
            height: pixels of the drawn map.
            fade: fraction in [0, 1] by which the map is blended towards white.
        """
        if not 0.0 <= fade <= 1.0:
            raise ValueError(f"fade must be in [0, 1], got {fade}")
        rows, cols = top_down.free.shape
        self.grid_shape = (rows, cols)  # the free-space grid that overlays such as ``seen`` share
        self.origin = np.array([top_down.origin_x, top_down.origin_z], dtype=np.float64)  # metres
        self.extent = np.array([cols * top_down.cell, rows * top_down.cell], dtype=np.float64)  # metres (x, z)
        if not np.all(self.extent > 0):
            raise ValueError(f"top-down map has an empty extent: {rows}x{cols} cells of {top_down.cell} m")
        scaled = resize(top_down.image, height).astype(np.float64)
        self.image = np.rint(scaled + fade * (255.0 - scaled)).astype(np.uint8)
        h, w = self.image.shape[:2]
        self.pixels_per_metre = float(min(h / self.extent[1], w / self.extent[0]))
        self._scale = np.array([w / self.extent[0], h / self.extent[1]])  # pixels per metre along (x, z)

    def to_pixels(self, xz: np.ndarray) -> np.ndarray:
        """Image (row, col) coordinates, as floats, of world floor points (..., 2) given as (x, z)."""
        xz = np.asarray(xz, dtype=np.float64)
        if xz.shape[-1] != 2:
            raise ValueError(f"floor points must have shape (..., 2) as (x, z), got {xz.shape}")
        col_row = (xz - self.origin) * self._scale
        return col_row[..., ::-1]

    def draw(
        self,
        states: Sequence[RobotState],
        goal: np.ndarray | None = None,
        goal_radius: float = 0.0,
        frame_poses: np.ndarray | None = None,
        frame_sources: Sequence[str] | None = None,
        seen: np.ndarray | None = None,
        target: np.ndarray | None = None,
    ) -> np.ndarray:
        """A copy of the map with the trajectory through ``states``, the goal and the robot.

        Args:
            states: the robot's states so far, the start first; the last one is drawn as the robot.
            goal: the goal's floor point (x, z) in metres, or None.
            goal_radius: metres; a ring of this radius is drawn around the goal when > 0.
            frame_poses: (N, 4, 4) camera-to-world poses of stored frames (a model camera's
                memory), drawn over the trajectory as dots with a tick along the view direction.
            frame_sources: the N frames' sources, ``"observed"`` or ``"generated"``, which
                pick the dots' colours (:data:`COLORS`).
            seen: (rows, cols) bool over the map's free-space grid (:attr:`grid_shape`): cells
                tinted as seen floor, under everything else.
            target: a pose to reach, (x, z, yaw) in metres and radians, drawn as an outlined
                triangle in the goal's colour pointing along the heading to take.

        Returns:
            (H, W, 3) uint8.
        """
        image = self.image.copy()
        shape = image.shape[:2]
        if seen is not None:
            self._tint(image, seen, COLORS["seen"])
        if goal is not None:
            centre = self.to_pixels(np.asarray(goal, dtype=np.float64))
            size = max(3.0, 0.2 * self.pixels_per_metre)
            _fill(image, draw.disk(tuple(centre), size + 1.0, shape=shape), COLORS["outline"])
            _fill(image, draw.disk(tuple(centre), size, shape=shape), COLORS["goal"])
            if goal_radius > 0:
                radius = max(1, round(goal_radius * self.pixels_per_metre))
                ring = draw.circle_perimeter(round(centre[0]), round(centre[1]), radius, shape=shape)
                _fill(image, ring, COLORS["goal"])
        if target is not None:
            target = np.asarray(target, dtype=np.float64)
            if target.shape != (3,) or not np.all(np.isfinite(target)):
                raise ValueError(f"target must be a finite (x, z, yaw), got {target!r}")
            self._draw_triangle(image, self.to_pixels(target[:2]), float(target[2]), None, COLORS["goal"])
        points = self.to_pixels(np.array([[s.x, s.z] for s in states]).reshape(-1, 2))
        if len(points):
            disk = draw.disk(tuple(points[0]), max(2.0, 0.12 * self.pixels_per_metre), shape=shape)
            _fill(image, disk, COLORS["start"])
            self._draw_path(image, points)
        if frame_poses is not None or frame_sources is not None:
            self._draw_frames(image, frame_poses, frame_sources)
        if len(points):
            self._draw_robot(image, points[-1], states[-1].yaw)
        return image

    def _draw_frames(self, image: np.ndarray, poses: np.ndarray | None, sources: Sequence[str] | None) -> None:
        poses = np.asarray(poses, dtype=np.float64) if poses is not None else None
        if poses is None or sources is None or poses.ndim != 3 or poses.shape[1:] != (4, 4):
            shape = None if poses is None else poses.shape
            raise ValueError(f"frame_poses must be (N, 4, 4) and given with frame_sources; got shape {shape}")
        if len(sources) != len(poses):
            raise ValueError(f"got {len(sources)} frame_sources for {len(poses)} frame_poses")
        unknown = sorted(set(sources) - {"observed", "generated"})
        if unknown:
            raise ValueError(f"unknown frame sources {unknown}; valid: ['generated', 'observed']")
        shape = image.shape[:2]
        centres = self.to_pixels(poses[:, [0, 2], 3])  # (N, 2) row, col
        # The view direction is the camera's -z axis; on the map (row, col) = (z, x).
        view = -poses[:, [2, 0], 2]  # (N, 2)
        norm = np.linalg.norm(view, axis=1, keepdims=True)
        view = np.divide(view, norm, out=np.zeros_like(view), where=norm > 1e-9)
        radius = max(2.0, 0.08 * self.pixels_per_metre)
        tick = max(6.0, 0.3 * self.pixels_per_metre)
        # Observed frames last, so the ground truth the world grew from stays visible.
        order = sorted(range(len(sources)), key=lambda i: sources[i] == "observed")
        for i in order:
            colour = COLORS[sources[i]]
            c, end = centres[i], centres[i] + tick * view[i]
            _fill(image, draw.line(round(c[0]), round(c[1]), round(end[0]), round(end[1])), colour, shape)
            _fill(image, draw.disk(tuple(c), radius, shape=shape), colour)

    def _draw_path(self, image: np.ndarray, points: np.ndarray) -> None:
        # Anti-aliased lines, three pixels wide so the path stays visible on textured floors.
        colour = np.array(COLORS["trajectory"], dtype=np.float64)
        for a, b in zip(points[:-1], points[1:], strict=True):
            if np.allclose(a, b):
                continue
            for dr, dc in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
                rr, cc, val = draw.line_aa(round(a[0]) + dr, round(a[1]) + dc, round(b[0]) + dr, round(b[1]) + dc)
                inside = (rr >= 0) & (rr < image.shape[0]) & (cc >= 0) & (cc < image.shape[1])
                rr, cc, val = rr[inside], cc[inside], val[inside, None]
                image[rr, cc] = np.rint(image[rr, cc] * (1 - val) + colour * val).astype(np.uint8)

    def _tint(self, image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> None:
        mask = np.asarray(mask)
        if mask.shape != self.grid_shape or mask.dtype != np.bool_:
            raise ValueError(
                f"seen must be a bool mask of the map's grid shape {self.grid_shape}, got {mask.dtype} {mask.shape}"
            )
        # Nearest grid cell of every map pixel: the map image spans exactly the grid's extent.
        h, w = image.shape[:2]
        rows = np.minimum((np.arange(h) * mask.shape[0]) // h, mask.shape[0] - 1)
        cols = np.minimum((np.arange(w) * mask.shape[1]) // w, mask.shape[1] - 1)
        pixels = mask[rows[:, None], cols[None, :]]
        image[pixels] = np.rint(0.5 * image[pixels] + 0.5 * np.array(colour, dtype=np.float64)).astype(np.uint8)

    def _draw_robot(self, image: np.ndarray, centre: np.ndarray, yaw: float) -> None:
        self._draw_triangle(image, centre, yaw, COLORS["robot"], COLORS["outline"])

    def _draw_triangle(
        self,
        image: np.ndarray,
        centre: np.ndarray,
        yaw: float,
        fill: tuple[int, int, int] | None,
        outline: tuple[int, int, int],
    ) -> None:
        # A triangle pointing along the heading; the base faces (cos yaw, -sin yaw) in (x, z),
        # which is (row, col) = (-sin yaw, cos yaw) on the map.
        size = max(5.0, 0.45 * self.pixels_per_metre)
        forward = np.array([-math.sin(yaw), math.cos(yaw)])
        side = np.array([forward[1], -forward[0]])
        back = centre - forward * 0.6 * size
        tri = np.stack([centre + forward * size, back + side * 0.6 * size, back - side * 0.6 * size])
        shape = image.shape[:2]
        if fill is not None:
            _fill(image, draw.polygon(tri[:, 0], tri[:, 1], shape=shape), fill)
        _fill(image, draw.polygon_perimeter(tri[:, 0], tri[:, 1], shape=shape), outline)


def _fill(
    image: np.ndarray,
    coords: tuple[np.ndarray, np.ndarray],
    color: tuple[int, int, int],
    shape: tuple[int, int] | None = None,
) -> None:
    rr, cc = coords
    if shape is not None:  # for drawing functions that take no shape to clip to
        inside = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        rr, cc = rr[inside], cc[inside]
    image[rr, cc] = color


def episode_frames(
    scene: Scene,
    states: Sequence[RobotState],
    views: Sequence[np.ndarray] | np.ndarray | None = None,
    goal: np.ndarray | None = None,
    goal_radius: float = 0.0,
    height: int = 256,
) -> list[np.ndarray]:
    """One composite per state: the view at that state beside the map of the path so far.

    Args:
        scene: the scene the episode ran in, already reset to its layout.
        states: the robot's states, the start first.
        views: the camera's frame at each state; None renders the scene's ground truth.
        goal: the goal's floor point (x, z) in metres, or None.
        goal_radius: metres around the goal drawn as a ring.
        height: pixels of every composite.

    Returns:
        ``len(states)`` uint8 images of equal shape.
    """
    if views is not None and len(views) != len(states):
        raise ValueError(f"got {len(views)} views for {len(states)} states; give one view per state")
    canvas = MapCanvas(scene.top_down_map(), height=height)
    frames = []
    for t, state in enumerate(states):
        view = scene.render(state.pose()) if views is None else views[t]
        if view is None:
            raise ValueError(f"scene {scene.env_id!r} has no ground-truth renderer; pass the views")
        frames.append(compose(view, canvas.draw(states[: t + 1], goal=goal, goal_radius=goal_radius), height=height))
    return frames
