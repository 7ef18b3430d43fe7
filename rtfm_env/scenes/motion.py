"""Collision-checked robot motion shared by every scene.

:func:`checked_move` applies a discrete action id or a continuous ``(v, omega, dt)`` command
with the kinematics of :mod:`rtfm_env.geometry`, and checks the translation against a scene's
free-space predicate at points at most ``substep`` metres apart along its path, so no command can
tunnel through a wall. A scene supplies only the predicate (MiniWorld's exact collision test, or
a recorded world's occupancy grid); the semantics of a move are the same everywhere.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np

from rtfm_env.geometry import DiscreteAction, KinematicsConfig, RobotState, apply_discrete, apply_velocity
from rtfm_env.scenes.base import Action

__all__ = ["checked_move", "check_discrete", "MAX_SUBSTEP"]

MAX_SUBSTEP = 0.05  # metres between collision checks along one move (robot radius is 0.4 m)


def check_discrete(action: object) -> int:
    """``action`` as a discrete action id; ValueError for a non-integer or unknown id (listing the valid ones)."""
    names = dict(enumerate(DiscreteAction.NAMES))
    if isinstance(action, bool) or not (
        isinstance(action, int | np.integer)
        or (isinstance(action, np.ndarray) and action.ndim == 0 and np.issubdtype(action.dtype, np.integer))
    ):
        raise ValueError(f"a discrete action must be an integer id, got {action!r}; valid: {names}")
    a = int(action)
    if a not in names:
        raise ValueError(f"unknown discrete action {a}; valid: {names}")
    return a


def checked_move(
    state: RobotState,
    action: Action,
    kinematics: KinematicsConfig,
    free: Callable[[np.ndarray], np.ndarray],
    substep: float = MAX_SUBSTEP,
) -> tuple[RobotState, bool]:
    """Apply a discrete action id or a ``(v [m/s], omega [rad/s], dt [s])`` command with collisions.

    The translation is checked every ``substep`` metres along its path (an arc for a velocity
    command, past one full turn only the first turn, whose points it revisits). If any point is
    blocked the robot keeps its position (turns and pitch changes still apply) and ``collided``
    is True.

    Args:
        state: where the robot is.
        action: a discrete action id or a ``(v, omega, dt)`` command.
        kinematics: the step sizes of the discrete actions.
        free: whether the robot's centre may stand at each of points (N, 2) (x, z); (N,) bool.
        substep: metres between checked points.

    Returns:
        (new state, collided).

    Raises:
        TypeError: ``state`` is not a :class:`RobotState`.
        ValueError: an unknown discrete id, a non-integer id, or a NaN/inf/negative-dt command.
    """
    if not isinstance(state, RobotState):
        raise TypeError(f"state must be a RobotState, got {type(state).__name__}")
    if isinstance(action, Sequence | np.ndarray) and np.ndim(action) == 1:
        if len(action) != 3:
            raise ValueError(f"a continuous action is (v, omega, dt), got {len(action)} values: {action!r}")
        v, omega, dt = (float(a) for a in action)
        target = apply_velocity(state, v, omega, dt)
        # Past one full turn an arc only revisits points already checked.
        horizon = dt if abs(omega) < 1e-9 else min(dt, 2.0 * math.pi / abs(omega))
        if not math.isfinite(abs(v) * horizon):
            raise ValueError(f"velocity command travels an infinite distance: v={v}, dt={dt}")
        n = max(1, math.ceil(abs(v) * horizon / substep))
        substates = (apply_velocity(state, v, omega, horizon * k / n) for k in range(1, n + 1))
        points = itertools.chain(((s.x, s.z) for s in substates), [(target.x, target.z)])
    else:
        target = apply_discrete(state, check_discrete(action), kinematics)
        target = target.replace(x=float(target.x), z=float(target.z))
        n = max(1, math.ceil(math.hypot(target.x - state.x, target.z - state.z) / substep))
        dx, dz = target.x - state.x, target.z - state.z
        points = iter([(state.x + dx * k / n, state.z + dz * k / n) for k in range(1, n + 1)])
    if (target.x, target.z) == (state.x, state.z):
        return target, False
    # In chunks, so a long command stops soon after its first blocked point.
    while chunk := list(itertools.islice(points, 64)):
        if not free(np.array(chunk)).all():
            return target.replace(x=state.x, z=state.z), True
    return target, False
