"""``RTFM/PointNav-v0``: point-goal navigation seen through an rtfm-sim camera."""

from __future__ import annotations

from typing import Any

from rtfm_env.envs.base import RTFMEnv
from rtfm_env.envs.tasks import PointNavTask

__all__ = ["PointNavEnv"]


class PointNavEnv(RTFMEnv):
    """Navigate to a goal point in a MiniWorld layout, seeing through a ground-truth or learned camera.

    ## Description

    Habitat's PointNav task (Anderson et al., 2018, "On Evaluation of Embodied Navigation
    Agents") in a MiniWorld scene. The robot is given, at every step, the distance and
    direction to a goal point (GPS+compass) and a first-person RGB view. The view comes from a
    *camera*: ``"ground_truth"`` renders the scene itself; a learned camera generates each frame
    from posed frames it has seen before, so the same policy can be run on both. Walls and
    entities block motion; the goal is a free point reachable from the start.

    ## Action Space

    ``Discrete(4)``, Habitat's convention (the ids of :class:`rtfm_env.geometry.DiscreteAction`):

    | Num | Action     | Effect                                      |
    |-----|------------|---------------------------------------------|
    | 0   | stop       | end the episode; success if near the goal   |
    | 1   | forward    | move 0.25 m along the heading (if not blocked) |
    | 2   | turn_left  | turn 15 degrees counter-clockwise            |
    | 3   | turn_right | turn 15 degrees clockwise                    |

    ## Observation Space

    ``Dict``:

    - ``rgb``: ``Box(0, 255, (resolution, resolution, 3), uint8)``, the camera's view.
    - ``pointgoal``: ``Box(float32, (2,))``, (distance in metres, heading in radians) to the
      goal in the agent's frame, as Habitat's GPS+compass PointGoal sensor. Heading is in
      [-pi, pi); 0 is straight ahead, positive means the goal is to the left. The distance is
      Euclidean (the geodesic one is in ``info``).
    - ``pose``: ``Box(float32, (4, 4))``, the camera-to-world pose (world y up, metres; camera
      looks down its -z axis), as everywhere in rtfm-sim.

    ## Rewards

    As Habitat's PointNav: each step earns the decrease of the geodesic distance to the goal
    (metres) plus ``-0.01`` (slack), and a stop within ``success_distance`` of the goal earns
    ``+2.5`` more.

    ## Starting State

    The scene's own start state for the layout (MiniWorld's agent placement: a random free
    position and heading). The layout is drawn from the env's generator at every reset unless
    ``scene_seed`` fixes it. The goal is a free point at a geodesic distance in [1, 10] m from
    the start, clipped to what the layout allows.

    ## Episode End

    Termination: the agent takes ``stop`` (0). The episode succeeds if the geodesic distance
    to the goal is then below ``success_distance``.

    Truncation: ``max_steps`` actions have been taken without a stop.

    ``info`` reports ``success``, ``spl``, ``soft_spl``, ``distance_to_goal`` (geodesic, m),
    ``start_distance_to_goal`` (geodesic, m), ``goal`` (x, z), ``collisions`` (count),
    ``collided`` (the last move was blocked), ``path_length`` (m), ``steps`` and ``scene_seed``.

    ## Arguments

    ```python
    import gymnasium as gym
    import rtfm_env

    env = gym.make("RTFM/PointNav-v0", scene="MiniWorld-FourRooms-v0", camera="ground_truth",
                   resolution=64, success_distance=0.2, max_steps=500, render_mode=None)
    env = gym.make("RTFM/PointNav-v0", camera="model", k=2, context_strategy="spatial")
    ```

    - ``success_distance``: metres from the goal within which a stop succeeds (0.2).
    - the world and camera arguments of every id (``scene``, ``camera``, ``resolution``,
      ``fov``, ``max_steps``, ``scene_seed``, ``render_mode`` and the model camera's
      ``checkpoint``, ``k``, ``context_strategy``, ``sampling_steps``, ``seed_views``,
      ``memory_capacity``, ``compile_model``), described in :class:`rtfm_env.envs.base.RTFMEnv`.

    ``render_mode="rgb_array"`` draws the view beside the map with the trajectory, the goal
    (with a ring of ``success_distance``) and the robot.

    ## Version History

    - v0: initial version; the model camera and its options.
    """

    def __init__(self, success_distance: float = 0.2, **kwargs: Any) -> None:
        """Build the env; see the class docstring's Arguments section."""
        super().__init__(PointNavTask(success_distance=success_distance), **kwargs)
