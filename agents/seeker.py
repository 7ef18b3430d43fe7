"""A scripted ObjectNav policy that sees: it looks for the goal's colour in the view and walks to it.

:class:`ColourSeeker` reads only what a robot has, the view (``rgb``) and the goal kind
(``objectgoal``), never the pose or the scene. It is a policy whose success depends on the
camera, so it makes ``RTFM/ObjectNav-v0``'s blind ablation and camera rankings meaningful
without a trained network: shown grey frames it never sees its target and never stops beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.base import Agent
from rtfm_env.envs.objectnav import OBJECT_KINDS
from rtfm_env.geometry import DiscreteAction

__all__ = ["ColourSeeker", "colour_mask"]

#: Per colour, the pixels that count as it: (channel weights, threshold) on the pixel's RGB,
#: chosen so MiniWorld's lit walls, floor and ceiling (greys, browns) stay below the threshold.
_COLOUR_TESTS: dict[str, tuple[tuple[float, float, float], float]] = {
    "red": ((1.0, -1.0, -1.0), 60.0),
    "green": ((-1.0, 1.0, -1.0), 60.0),
    "blue": ((-1.0, -1.0, 1.0), 60.0),
    "yellow": ((0.5, 0.5, -1.0), 60.0),
    "purple": ((0.5, -1.0, 0.5), 45.0),
}


def colour_mask(rgb: np.ndarray, colour: str) -> np.ndarray:
    """(H, W) bool: the pixels of ``rgb`` (H, W, 3) uint8 that show ``colour`` (a name of OBJECT_KINDS' colours)."""
    weights, threshold = _COLOUR_TESTS[colour]
    return np.asarray(rgb, dtype=np.float32) @ np.asarray(weights, dtype=np.float32) > threshold


class ColourSeeker(Agent):
    """Turn to find the goal's colour, walk at it, stop when it is close below the camera.

    Rules, in order: if the target colour is roughly centred and its top edge is at least
    ``stop_row`` down the view (or a step towards it was blocked, by it), stop; if it is
    visible, turn towards its centre of mass (beyond ``centre_tolerance`` of the width) or step
    forward; if not, search: a full turn in place, then up to ``walk_steps`` forward steps
    (turning 90 degrees left whenever a step changed nothing in the view, i.e. a wall blocked
    it), then a full turn and 105 degrees more, and so on.

    Args:
        stop_row: how far down the view (0 top, 1 bottom) the target's top edge must be to stop:
            the camera looks down on the objects, so their tops sink as it nears them (0.76 puts
            a box's and a ball's stop within ObjectNav's 1 m with a 1.5 m high, 60-degree camera).
        centre_tolerance: fraction of the width the target's centre may be off before turning.
        walk_steps: forward steps between two search turns.
        turns_per_circle: turn actions in a full circle (24 for 15-degree turns).
    """

    def __init__(
        self,
        stop_row: float = 0.76,
        centre_tolerance: float = 0.12,
        walk_steps: int = 8,
        turns_per_circle: int = 24,
    ) -> None:
        self.stop_row = float(stop_row)
        self.centre_tolerance = float(centre_tolerance)
        self.walk_steps = int(walk_steps)
        self.turns_per_circle = int(turns_per_circle)
        self.reset()

    def reset(self) -> None:
        """Start a new search."""
        self._turned = 0  # turns of the current search circle
        self._walked = 0  # forward steps since the last search circle
        self._pending = 0  # turns still to make away from a wall
        self._last: tuple[int, np.ndarray] | None = None  # the last action and the view it was taken in

    def act(self, observation: dict[str, Any]) -> int:
        """The action for one observation (``rgb`` and ``objectgoal`` are read)."""
        rgb = np.asarray(observation["rgb"])
        blocked = (
            self._last is not None and self._last[0] == DiscreteAction.FORWARD and np.array_equal(rgb, self._last[1])
        )
        action = self._choose(rgb, OBJECT_KINDS[int(observation["objectgoal"])].color, blocked)
        self._last = (action, rgb.copy())
        return action

    def _choose(self, rgb: np.ndarray, colour: str, blocked: bool) -> int:
        mask = colour_mask(rgb, colour)
        h, w = mask.shape
        if mask.sum() >= max(2, mask.size // 500):
            self._turned, self._walked, self._pending = 0, 0, 0
            offset = np.nonzero(mask)[1].mean() / w - 0.5  # -0.5 (left edge) to 0.5 (right edge)
            top = np.flatnonzero(mask.any(axis=1))[0] / h  # the target's top edge, 0 (top) to 1 (bottom)
            centred = abs(offset) <= 2 * self.centre_tolerance
            if centred and (top >= self.stop_row or blocked):
                return DiscreteAction.STOP
            if offset > self.centre_tolerance:
                return DiscreteAction.TURN_RIGHT
            if offset < -self.centre_tolerance or blocked:
                return DiscreteAction.TURN_LEFT
            return DiscreteAction.FORWARD
        if self._pending:
            self._pending -= 1
            return DiscreteAction.TURN_LEFT
        if blocked:  # a wall ahead: turn away from it (90 degrees in all) and walk on
            self._pending = self.turns_per_circle // 4 - 1
            return DiscreteAction.TURN_LEFT
        if self._turned < self.turns_per_circle:
            self._turned += 1
            return DiscreteAction.TURN_LEFT
        if self._walked < self.walk_steps:
            self._walked += 1
            return DiscreteAction.FORWARD
        # A new leg: look around again, ending 105 degrees left of this leg's heading.
        self._turned, self._walked = -(7 * self.turns_per_circle) // 24 + 1, 0
        return DiscreteAction.TURN_LEFT
