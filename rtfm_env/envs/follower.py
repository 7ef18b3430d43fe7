"""A shortest-path follower: the discrete action that moves a robot along the geodesic path.

It reads the scene's free space and geodesic distances (privileged information), so it is the
oracle upper bound for navigation tasks and the driver of the demo, like Habitat's
``ShortestPathFollower``.
"""

from __future__ import annotations

import math

import numpy as np

from rtfm_env.geometry import DiscreteAction, RobotState
from rtfm_env.scenes.base import Scene

__all__ = ["ShortestPathFollower"]


class ShortestPathFollower:
    """Chooses stop / forward / turn left / turn right to follow the geodesic path to a goal.

    Among every heading reachable by turning, it picks the one whose (collision-checked)
    forward step most shortens the geodesic distance, preferring fewer turns; then it turns
    towards that heading, or steps forward once it faces it. Aiming at path waypoints instead
    cuts doorway corners and can stall against them; this rule cannot, because every step it
    takes is one the scene accepts and that makes progress.

    Args:
        scene: the world (its ``move`` and ``geodesic_distance`` are used).
        stop_distance: metres; the follower stops once the geodesic distance is below this.
    """

    def __init__(self, scene: Scene, stop_distance: float = 0.2) -> None:
        self.scene = scene
        self.stop_distance = float(stop_distance)  # metres

    def act(self, state: RobotState, goal: np.ndarray) -> int:
        """The next discrete action from ``state`` towards the floor point ``goal`` (x, z)."""
        goal = np.asarray(goal, dtype=np.float64)

        def distance(s: RobotState) -> float:
            return self.scene.geodesic_distance(np.array([s.x, s.z]), goal)

        if distance(state) < self.stop_distance:
            return DiscreteAction.STOP
        turn = self.scene.kinematics.turn_step
        n_headings = max(1, round(2 * math.pi / turn))
        best_turns, best_distance = 0, math.inf
        # every heading reachable by turning, fewest turns first (left wins ties)
        for k in sorted(range(-(n_headings // 2) + 1, n_headings // 2 + 1), key=lambda k: (abs(k), -k)):
            moved, collided = self.scene.move(state.replace(yaw=state.yaw + k * turn), DiscreteAction.FORWARD)
            if not collided and distance(moved) < best_distance - 1e-9:
                best_turns, best_distance = k, distance(moved)
        if best_turns == 0:
            return DiscreteAction.FORWARD
        return DiscreteAction.TURN_LEFT if best_turns > 0 else DiscreteAction.TURN_RIGHT
