"""``RTFM/ImageNav-v0``: navigate to the place an image was taken, seen through an rtfm-sim camera."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

from rtfm_env.envs.base import RTFMEnv
from rtfm_env.envs.tasks import Episode, NavigationTask, free_ray_lengths
from rtfm_env.geometry import RobotState
from rtfm_env.scenes.base import Scene

__all__ = ["ImageNavTask", "ImageNavEnv", "landmarks_in_view"]


def landmarks_in_view(scene: Scene, state: RobotState, headings: np.ndarray) -> np.ndarray:
    """(H,) how many of ``scene``'s landmark objects are in view from ``state`` turned to each of ``headings``.

    Landmarks are the objects of an :class:`~rtfm_env.envs.objectnav.ObjectScene` (ImageNav with
    ``landmarks=True``), tested with :func:`~rtfm_env.envs.objectnav.target_in_view` (inside the
    image and not hidden). A scene without objects has none in view anywhere.
    """
    from rtfm_env.envs.objectnav import target_in_view

    objects = tuple(getattr(scene, "objects", ()))
    counts = np.zeros(len(headings), dtype=np.int64)
    if not objects:
        return counts
    for i, yaw in enumerate(headings):
        turned = state.replace(yaw=float(yaw))
        depth = scene.render_depth(turned.pose())  # one render per heading, shared by every object
        if depth is None:  # no ground-truth depth: nothing can be told to be in view
            continue
        counts[i] = sum(target_in_view(scene, turned, obj, depth) for obj in objects)
    return counts


class ImageNavTask(NavigationTask):
    """Reach the place shown by a goal image (Zhu et al., 2017; Habitat's ImageNav).

    The goal point is sampled as PointNav's; the goal image is the scene's ground truth at the
    goal point, at the robot's camera height and pitch, facing the most open direction: of the
    headings a turn step apart, the one whose field of view has the longest mean free-space
    ray on the scene's floor grid. So the image shows the room around the goal, not a wall
    close up (goals often lie near walls). In a scene with landmark objects (``landmarks=True``)
    the heading is first chosen to show as many of them as possible (:func:`landmarks_in_view`),
    then the most open of those. Rewards, success and metrics are PointNav's.

    A scene without a ground-truth renderer (a recorded world) cannot take the goal image
    itself. With ``goal_from_camera`` set (as :class:`ImageNavEnv` sets it) the image is then
    left to the env, which takes it with its camera at :attr:`goal_state` once the camera is
    reset (:attr:`goal_pending` until then); otherwise the reset raises.
    """

    view_rays = 9  # rays across the horizontal field of view that score a heading
    view_range = 10.0  # metres, the longest ray that counts

    def __init__(self, resolution: int, **kwargs: Any) -> None:
        """Configure the task.

        Args:
            resolution: pixels of the square goal image (the env's view size).
            **kwargs: :class:`~rtfm_env.envs.tasks.NavigationTask`'s arguments.
        """
        super().__init__(**kwargs)
        if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or resolution < 1:
            raise ValueError(f"resolution must be a positive integer number of pixels, got {resolution!r}")
        self.resolution = int(resolution)  # pixels
        self.goal_image: np.ndarray | None = None
        self.goal_state: RobotState | None = None
        self.goal_from_camera = False  # whether a scene without a renderer leaves the goal image to the env
        self.goal_pending = False  # whether the env still has to supply this episode's goal image

    def observation_spaces(self) -> dict[str, spaces.Space]:
        """``imagegoal``: the goal image, (resolution, resolution, 3) uint8."""
        return {"imagegoal": spaces.Box(0, 255, shape=(self.resolution, self.resolution, 3), dtype=np.uint8)}

    def reset(self, scene: Scene, episode: Episode, rng: np.random.Generator) -> None:
        """Sample the goal as PointNav does, then render the goal image there."""
        super().reset(scene, episode, rng)
        turn = scene.kinematics.turn_step  # radians
        headings = np.arange(max(1, round(2.0 * math.pi / turn))) * turn  # (H,)
        half_fov = 0.5 * math.radians(scene.intrinsics.fov_x)
        angles = headings[:, None] + np.linspace(-half_fov, half_fov, self.view_rays)[None, :]  # (H, R)
        lengths = free_ray_lengths(scene.top_down_map(), self.goal, angles, self.view_range)
        openness = lengths.reshape(angles.shape).mean(axis=1)  # (H,) metres
        at_goal = episode.start.replace(x=float(self.goal[0]), z=float(self.goal[1]))
        seen = landmarks_in_view(scene, at_goal, headings)  # (H,), zeros in a scene without landmarks
        # Most landmarks in view first, then the most open view (lexicographic; openness < view_range).
        yaw = float(headings[int(np.argmax(seen * (self.view_range + 1.0) + openness))])
        self.goal_state = at_goal.replace(yaw=yaw)
        image = scene.render(self.goal_state.pose())
        self.goal_image, self.goal_pending = None, False
        if image is None:
            if self.goal_from_camera:
                self.goal_pending = True  # the env's camera shows it, once reset (ImageNavEnv.reset)
                return
            raise RuntimeError(f"scene {scene.env_id!r} has no ground-truth renderer to take the goal image with")
        expected = (self.resolution, self.resolution, 3)
        if image.shape != expected or image.dtype != np.uint8:
            raise RuntimeError(f"scene rendered a {image.dtype} {image.shape} goal image; expected {expected} uint8")
        self.goal_image = image

    def set_goal_image(self, image: np.ndarray) -> None:
        """Supply the pending goal image of this episode ((resolution, resolution, 3) uint8)."""
        expected = (self.resolution, self.resolution, 3)
        image = np.asarray(image)
        if image.shape != expected or image.dtype != np.uint8:
            raise RuntimeError(f"the camera gave a {image.dtype} {image.shape} goal image; expected {expected} uint8")
        self.goal_image, self.goal_pending = image.copy(), False

    def observation(self, state: RobotState) -> dict[str, np.ndarray]:
        """The goal image (a fresh copy); zeros while the env has yet to supply it (``goal_pending``)."""
        if self.goal_pending:
            return {"imagegoal": np.zeros((self.resolution, self.resolution, 3), dtype=np.uint8)}
        if self.goal_image is None:
            raise RuntimeError("ImageNavTask has no goal image yet: call reset(scene, episode, rng) first")
        return {"imagegoal": self.goal_image.copy()}

    def map_overlay(self) -> dict[str, Any]:
        """The goal, its success ring and the goal image's pose."""
        target = (
            None if self.goal_state is None else np.array([self.goal_state.x, self.goal_state.z, self.goal_state.yaw])
        )
        return {**super().map_overlay(), "target": target}

    def render_panels(self) -> tuple[np.ndarray, ...]:
        """The goal image, between the view and the map."""
        return () if self.goal_image is None else (self.goal_image,)


class ImageNavEnv(RTFMEnv):
    """Navigate to where a goal image was taken in a MiniWorld layout, through a ground-truth or learned camera.

    ## Description

    ImageNav (Zhu et al., 2017, "Target-driven Visual Navigation in Indoor Scenes using Deep
    Reinforcement Learning"; Habitat's ImageNav) in a MiniWorld scene. The robot sees its
    first-person view and, all episode long, an image taken at the goal; it must find that
    place and stop there. The goal image is the scene's ground truth at the goal pose, with
    either camera: with ``camera="model"`` the robot's own views are generated, the target it is
    shown is real. In a recorded world (a world file with a free-space map, which has no ground
    truth) the goal image is the env's own camera's view at the goal pose, taken right after the
    camera's reset: reprojected from the recording with ``camera="reprojection"``, generated
    with ``camera="model"`` (and then kept in its memory, so the place looks like the goal image
    when the robot gets there). The goal pose is the goal point at the robot's camera height, facing
    the most open direction (of the 24 headings a 15-degree turn apart, the one whose field of
    view reaches farthest across free floor), so the image shows the room, not a wall.

    ## Action Space

    ``Discrete(4)``: 0 stop, 1 forward 0.25 m, 2 turn left 15 degrees, 3 turn right 15 degrees
    (as ``RTFM/PointNav-v0``).

    ## Observation Space

    ``Dict``:

    - ``rgb``: ``Box(0, 255, (resolution, resolution, 3), uint8)``, the camera's view.
    - ``imagegoal``: ``Box(0, 255, (resolution, resolution, 3), uint8)``, the goal image.
    - ``pose``: ``Box(float32, (4, 4))``, the camera-to-world pose (world y up, metres).

    ## Rewards

    As PointNav: the decrease of the geodesic distance to the goal (metres) plus ``-0.01``
    per step, and ``+2.5`` for a stop within ``success_distance`` of the goal.

    ## Starting State

    The scene's start state for the layout; the goal is a free point at a geodesic distance
    in [1, 10] m from it (clipped to what the layout allows), drawn from the env's generator.

    ## Episode End

    Termination: the agent takes ``stop`` (0); it succeeds if the geodesic distance to the
    goal is then below ``success_distance``. The goal image's heading is not required.

    Truncation: ``max_steps`` actions without a stop.

    ``info`` reports ``success``, ``spl``, ``soft_spl``, ``distance_to_goal`` (geodesic, m),
    ``start_distance_to_goal`` (m), ``goal`` (x, z), ``collisions``, ``collided``,
    ``path_length`` (m), ``steps`` and ``scene_seed``.

    ## Arguments

    ```python
    env = gym.make("RTFM/ImageNav-v0", scene="MiniWorld-FourRooms-v0", camera="model",
                   k=2, context_strategy="spatial", resolution=64, success_distance=0.2)
    ```

    - ``success_distance``: metres from the goal within which a stop succeeds (0.2).
    - ``landmarks``: False (default) shows the bare MiniWorld layout. True places
      ``RTFM/ObjectNav-v0``'s coloured objects in it (four of distinct kinds per layout, drawn
      from the layout seed: :class:`~rtfm_env.envs.objectnav.ObjectScene`) and turns the goal
      image towards as many of them as it can see. A bare room (OneRoom) looks alike from
      everywhere at 64x64, so without landmarks a goal image barely tells where it was taken;
      with them a policy that sees can localise it, and a blind one cannot. MiniWorld scenes
      only; objects are obstacles.
    - the world and camera arguments of every id, described in
      :class:`rtfm_env.envs.base.RTFMEnv`.

    ``render_mode="rgb_array"`` draws the view, the goal image, then the map with the
    trajectory, the goal's ring and the goal image's pose (an outlined triangle).

    ## Version History

    - v0: initial version; ``landmarks`` added later (default False: the original task).
    """

    def __init__(
        self, success_distance: float = 0.2, resolution: int = 64, landmarks: bool = False, **kwargs: Any
    ) -> None:
        """Build the env; see the class docstring's Arguments section."""
        if not isinstance(landmarks, (bool, np.bool_)):
            raise ValueError(f"landmarks must be True or False, got {landmarks!r}")
        self.landmarks = bool(landmarks)  # read by _make_scene, during RTFMEnv.__init__
        task = ImageNavTask(resolution, success_distance=success_distance)
        super().__init__(task, resolution=resolution, **kwargs)
        task.goal_from_camera = True  # a recorded world's goal image comes from the camera (reset)

    def _make_scene(self, scene: Any, scene_file: Any) -> Scene:
        """:meth:`RTFMEnv._make_scene`'s scene; with ``landmarks``, the MiniWorld layout with ObjectNav's objects."""
        made = super()._make_scene(scene, scene_file)
        if not self.landmarks:
            return made
        from rtfm_env.envs.objectnav import ObjectScene

        return ObjectScene.replacing(
            made,
            self.fov,
            "landmarks=True places MiniWorld objects in the layout; the recorded world {id!r} cannot hold them: "
            "drop landmarks or use a MiniWorld scene (scene='MiniWorld-OneRoom-v0')",
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """:meth:`RTFMEnv.reset`; in a scene without a renderer, the camera then takes the goal image."""
        observation, info = super().reset(seed=seed, options=options)
        if self.task.goal_pending:
            self.task.set_goal_image(self.camera.observe(self.task.goal_state.pose()[None])[0])
            observation["imagegoal"] = self.task.goal_image.copy()
        return observation, info
