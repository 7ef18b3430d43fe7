"""``RTFM/Revisit-v0``: go out and come back to the start pose, seen through an rtfm-sim camera."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from gymnasium import spaces

from rtfm_env.envs.base import RTFMEnv
from rtfm_env.envs.tasks import Episode, NavigationTask
from rtfm_env.eval.metrics import psnr, ssim
from rtfm_env.geometry import RobotState, angle_difference
from rtfm_env.scenes.base import Scene

__all__ = ["RevisitTask", "RevisitEnv"]

OUT, RETURN = 0, 1  # values of the ``phase`` observation


class RevisitTask(NavigationTask):
    """Reach an away waypoint, then return to the start pose (position and heading) and stop.

    The route is [away waypoint, start]: the waypoint is a free point at a geodesic distance
    in [min_away_distance, max_away_distance] from the start, passed by coming within
    ``waypoint_distance`` of it. A stop succeeds in the return phase within
    ``success_distance`` of the start and ``heading_tolerance`` of its heading. Rewards and
    metrics are :class:`~rtfm_env.envs.tasks.NavigationTask`'s over the out-and-back route.

    Revisit consistency: the frame seen at the start (at reset) is kept; whenever, in the
    return phase, a new frame arrives at a pose within the success tolerances of the start,
    its PSNR and SSIM against that first frame become ``revisit_psnr`` / ``revisit_ssim``.
    """

    def __init__(
        self,
        heading_tolerance: float = 10.0,
        min_away_distance: float = 2.0,
        max_away_distance: float = 6.0,
        **kwargs: Any,
    ) -> None:
        """Configure the task.

        Args:
            heading_tolerance: degrees; a successful return faces the start heading within this.
            min_away_distance: metres, the least geodesic start-to-waypoint distance sampled.
            max_away_distance: metres, the largest geodesic start-to-waypoint distance sampled.
            **kwargs: :class:`~rtfm_env.envs.tasks.NavigationTask`'s other arguments.
        """
        if isinstance(heading_tolerance, bool) or not isinstance(heading_tolerance, (int, float, np.number)):
            raise ValueError(f"heading_tolerance must be a number of degrees, got {heading_tolerance!r}")
        if not 0.0 < float(heading_tolerance) <= 180.0:
            raise ValueError(f"heading_tolerance must be in (0, 180] degrees, got {heading_tolerance}")
        super().__init__(min_goal_distance=min_away_distance, max_goal_distance=max_away_distance, **kwargs)
        self.heading_tolerance = math.radians(float(heading_tolerance))  # radians
        self._episode: Episode | None = None
        self.start_frame: np.ndarray | None = None
        self.revisit: dict[str, float] | None = None  # PSNR and SSIM of the latest revisit

    @property
    def episode(self) -> Episode:
        """The env's record of the current episode (kept from reset to follow the robot in on_frame)."""
        if self._episode is None:
            raise RuntimeError("RevisitTask has no episode yet: call reset(scene, episode, rng) first")
        return self._episode

    @property
    def start(self) -> RobotState:
        """The start state, the pose to return to."""
        return self.episode.start

    def sample_route(self, scene: Scene, episode: Episode, rng: np.random.Generator) -> list[np.ndarray]:
        """An away waypoint, then the start."""
        start = np.array([episode.start.x, episode.start.z])
        return [self.sample_goal(scene, start, rng), start]

    def at_final_goal(self, state: RobotState) -> bool:
        """Near the start and facing its heading."""
        return super().at_final_goal(state) and abs(self.start_heading(state)) <= self.heading_tolerance

    def start_heading(self, state: RobotState) -> float:
        """The start's heading relative to ``state``'s, radians in [-pi, pi) (positive: turn left)."""
        return float(angle_difference(self.start.yaw, state.yaw))

    def observation_spaces(self) -> dict[str, spaces.Space]:
        """``pointgoal`` to the current goal, ``phase`` (0 out, 1 return), ``start_heading`` (rad)."""
        return {
            "pointgoal": self.pointgoal_space(),
            "phase": spaces.Discrete(2),
            "start_heading": spaces.Box(-math.pi, math.pi, shape=(1,), dtype=np.float32),
        }

    def observation(self, state: RobotState) -> dict[str, np.ndarray]:
        """Where to go now, which phase it is, and how to turn to face the start heading."""
        return {
            "pointgoal": self.pointgoal(state),
            "phase": np.int64(self.leg),
            "start_heading": np.array([self.start_heading(state)], dtype=np.float32),
        }

    def reset(self, scene: Scene, episode: Episode, rng: np.random.Generator) -> None:
        """Sample the waypoint; forget the previous episode's start frame and revisit."""
        self._episode = episode
        super().reset(scene, episode, rng)
        self.start_frame = None
        self.revisit = None

    def on_frame(self, frame: np.ndarray) -> None:
        """Keep the start's frame; score every frame of a return to the start pose against it."""
        if self.start_frame is None:
            self.start_frame = frame.copy()
        elif self.leg == RETURN and self.at_final_goal(self.episode.state):
            self.revisit = {
                "revisit_psnr": psnr(frame, self.start_frame),
                "revisit_ssim": ssim(frame, self.start_frame),
            }

    def metrics(self, scene: Scene, episode: Episode) -> dict[str, Any]:
        """NavigationTask's metrics, the phase, the waypoint, the heading error and the latest revisit's scores."""
        return {
            **super().metrics(scene, episode),
            "phase": int(self.leg),
            "waypoint": self.route[0].copy(),  # (x, z) metres
            "start_heading_error": abs(self.start_heading(episode.state)),  # radians
            **(self.revisit or {}),
        }

    def map_overlay(self) -> dict[str, Any]:
        """The current goal and the start pose to return to."""
        start = self.start
        return {**super().map_overlay(), "target": np.array([start.x, start.z, start.yaw])}


class RevisitEnv(RTFMEnv):
    """Go out to a waypoint and back to the start pose in a MiniWorld layout, through a ground-truth or learned camera.

    ## Description

    An out-and-back task that exercises what a learned camera must get right: when the robot
    returns to where it started, the world should look as it did. The robot is guided to an
    away waypoint, then back to its start position and heading, where it must stop. With
    ``camera="model"`` the frames on the way are generated, and ``info`` scores the frame seen
    on returning against the frame seen at the start (revisit consistency).

    ## Action Space

    ``Discrete(4)``: 0 stop, 1 forward 0.25 m, 2 turn left 15 degrees, 3 turn right 15 degrees
    (as ``RTFM/PointNav-v0``).

    ## Observation Space

    ``Dict``:

    - ``rgb``: ``Box(0, 255, (resolution, resolution, 3), uint8)``, the camera's view.
    - ``pointgoal``: ``Box(float32, (2,))``, (distance m, heading rad) to the current goal, as
      PointNav's: the away waypoint in the out phase, the start position in the return phase.
    - ``phase``: ``Discrete(2)``, 0 while going out, 1 once the waypoint is passed.
    - ``start_heading``: ``Box(-pi, pi, (1,), float32)``, the start's heading relative to the
      robot's (radians; positive: turn left to face it).
    - ``pose``: ``Box(float32, (4, 4))``, the camera-to-world pose (world y up, metres).

    ## Rewards

    Each step earns the decrease of the geodesic distance still to go along the route
    (to the waypoint plus waypoint-to-start while out, to the start on the way back) plus
    ``-0.01``; passing the waypoint earns ``+1.0``; a successful stop earns ``+2.5``.

    ## Starting State

    The scene's start state for the layout. The waypoint is a free point at a geodesic
    distance in [``min_away_distance``, ``max_away_distance``] = [2, 6] m from the start
    (clipped to what the layout allows), drawn from the env's generator.

    ## Episode End

    Termination: the agent takes ``stop`` (0), in either phase. It succeeds in the return
    phase within ``success_distance`` (geodesic) of the start and ``heading_tolerance`` of the
    start heading. Turns are 15-degree steps from the start heading, so the default 10 degrees
    asks for the start heading itself.

    Truncation: ``max_steps`` actions without a stop.

    ``info`` reports PointNav's ``success``, ``spl``, ``soft_spl`` (over the out-and-back
    route, whose geodesic length through the waypoint's centre is ``start_distance_to_goal``;
    as Habitat's shortest-path length ignores the success radius, a path that turns back
    ``waypoint_distance`` short of the waypoint can be shorter, so SPL reaches 1 there too), ``distance_to_goal``
    (geodesic, m, to the current goal), ``goal`` (the current goal, x, z), and ``phase``,
    ``waypoint`` (x, z), ``start_heading_error`` (rad), ``collisions``, ``collided``,
    ``path_length``, ``steps``, ``scene_seed``. ``revisit_psnr`` (dB) and ``revisit_ssim``
    appear once a frame has been seen in the return phase at a pose within the success
    tolerances of the start, and score the latest such frame against the start's frame;
    before that they are absent (never NaN).

    ## Arguments

    ```python
    env = gym.make("RTFM/Revisit-v0", camera="model", k=2, context_strategy="spatial",
                   min_away_distance=2.0, max_away_distance=6.0, heading_tolerance=10.0)
    ```

    - ``success_distance``: metres from the start within which a stop can succeed (0.2).
    - ``heading_tolerance``: degrees from the start heading within which a stop can succeed (10).
    - ``min_away_distance``, ``max_away_distance``: metres, the waypoint's geodesic distance range.
    - ``waypoint_distance``: metres within which the waypoint counts as passed (0.5).
    - the world and camera arguments of every id, described in
      :class:`rtfm_env.envs.base.RTFMEnv`.

    ``render_mode="rgb_array"`` draws the view beside the map with the trajectory, the current
    goal and its ring, and the start pose to return to (an outlined triangle).

    ## Version History

    - v0: initial version.
    """

    def __init__(
        self,
        success_distance: float = 0.2,
        heading_tolerance: float = 10.0,
        min_away_distance: float = 2.0,
        max_away_distance: float = 6.0,
        waypoint_distance: float = 0.5,
        **kwargs: Any,
    ) -> None:
        """Build the env; see the class docstring's Arguments section."""
        task = RevisitTask(
            heading_tolerance=heading_tolerance,
            min_away_distance=min_away_distance,
            max_away_distance=max_away_distance,
            success_distance=success_distance,
            waypoint_distance=waypoint_distance,
        )
        super().__init__(task, **kwargs)
