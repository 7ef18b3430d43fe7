"""Trajectory generators that revisit places, for recording training data and for evaluation.

Every generator drives a robot through a :class:`~rtfm_env.scenes.base.Scene` with discrete
actions (see :class:`~rtfm_env.geometry.DiscreteAction`), one collision-aware
:meth:`Scene.move` per step, and yields a :class:`TrajectoryStep` after each move. They are
infinite: take as many steps as you need (``itertools.islice``) or call :func:`rollout`, which
returns a :class:`Trajectory` of a fixed number of frames.

Kinds (:data:`TRAJECTORY_KINDS`):

* ``random_walk``: keeps going forward with a probability (momentum), otherwise turns in runs
  of several steps in one direction; a wall ahead starts a longer turn run.
* ``loop``: rectangles that return to their first pose (same position and heading), sized to
  fit the free space around the robot.
* ``turn360``: full turns in place, one or more in a row, so every heading is seen again; the
  robot then moves a few steps to a new spot.
* ``out_and_back``: go forward N steps, turn around 180 degrees, come back, turn 180 degrees
  again to face the start heading.

A step whose pose is planned to repeat an earlier one carries that frame's index in
``returns_to`` (frame 0 is the start state), set only when every move of the plan succeeded,
so callers can find revisit pairs without searching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np

from rtfm_env.geometry import DiscreteAction, KinematicsConfig, RobotState, heading_vector

if TYPE_CHECKING:  # importing rtfm_env.scenes loads MiniWorld and its OpenGL context
    from rtfm_env.scenes.base import Scene

__all__ = [
    "TRAJECTORY_KINDS",
    "TrajectoryStep",
    "Trajectory",
    "random_walk",
    "loop",
    "turn360",
    "out_and_back",
    "make_trajectory",
    "rollout",
]

FORWARD = DiscreteAction.FORWARD
LEFT = DiscreteAction.TURN_LEFT
RIGHT = DiscreteAction.TURN_RIGHT

#: Marks "no action led here" (the start frame) in :attr:`Trajectory.actions`.
NO_ACTION = -1


@dataclass(frozen=True)
class TrajectoryStep:
    """One move of a trajectory: the action taken and where it led."""

    action: int  # DiscreteAction id
    state: RobotState  # the state after the move
    collided: bool  # True when the scene blocked the move
    returns_to: int | None = None  # index of the earlier frame this pose repeats (0 = start)


@dataclass
class Trajectory:
    """A finished rollout: ``n`` frames' states and the actions that led to them.

    Index 0 is the start state, reached by no action (``actions[0] == NO_ACTION``).
    """

    kind: str
    seed: int
    states: list[RobotState]
    actions: np.ndarray  # (n,) int64, actions[i] led from states[i-1] to states[i]
    collided: np.ndarray  # (n,) bool
    returns_to: np.ndarray  # (n,) int64, index of the frame this one revisits, -1 if none

    def __len__(self) -> int:
        return len(self.states)

    def poses(self) -> np.ndarray:
        """Camera-to-world poses (n, 4, 4) float64."""
        return np.stack([s.pose() for s in self.states])

    def state_array(self) -> np.ndarray:
        """States as (n, 5) float64 rows of (x, z, yaw, cam_height, pitch)."""
        return np.stack([s.as_array() for s in self.states])


# --------------------------------------------------------------------------------------
# The walker: one robot, its scene and the moves it made so far
# --------------------------------------------------------------------------------------


class _Walker:
    """Moves a robot through a scene and numbers the frames it produces."""

    def __init__(self, scene: Scene, start: RobotState, kinematics: KinematicsConfig | None) -> None:
        self.scene = scene
        self.state = start
        self.index = 0  # index of the current frame; the start state is frame 0
        kin = kinematics or getattr(scene, "kinematics", None) or KinematicsConfig()
        self.forward_step = float(kin.forward_step)
        n_dirs = 2.0 * math.pi / float(kin.turn_step)
        # Loops need quarter turns and out-and-back half turns made of whole turn actions.
        if abs(n_dirs - round(n_dirs)) > 1e-6 or round(n_dirs) % 4 != 0:
            raise ValueError(
                f"turn_step {math.degrees(kin.turn_step):.3f} deg must divide 90 deg into whole turns "
                "for trajectories that return to a pose"
            )
        self.n_dirs = int(round(n_dirs))

    def act(self, action: int, returns_to: int | None = None) -> TrajectoryStep:
        self.state, collided = self.scene.move(self.state, action)
        self.index += 1
        return TrajectoryStep(int(action), self.state, bool(collided), returns_to)

    def turns(self, n: int, action: int, returns_to: int | None = None) -> Iterator[TrajectoryStep]:
        """``n`` turns in one direction; the last one carries ``returns_to``."""
        for i in range(n):
            yield self.act(action, returns_to if i == n - 1 else None)

    def forwards(self, n: int) -> Generator[TrajectoryStep, None, int]:
        """Up to ``n`` forward moves, stopping after the first blocked one; returns the moves made."""
        done = 0
        for _ in range(n):
            step = self.act(FORWARD)
            yield step
            if step.collided:
                break
            done += 1
        return done

    def free_run(self, yaw: float, max_steps: int) -> int:
        """How many forward steps from here along ``yaw`` land on free space, up to ``max_steps``."""
        return self.free_run_from(self.state.x, self.state.z, yaw, max_steps)

    def free_run_from(self, x: float, z: float, yaw: float, max_steps: int) -> int:
        step = heading_vector(yaw) * self.forward_step
        for i in range(1, max_steps + 1):
            if not self.scene.is_free(x + i * step[0], z + i * step[2]):
                return i - 1
        return max_steps

    def yaw_after(self, n_left: int) -> float:
        """Yaw after ``n_left`` left turns (negative for right turns)."""
        return self.state.yaw + n_left * 2.0 * math.pi / self.n_dirs

    def face(self, n_left: int) -> Iterator[TrajectoryStep]:
        """Turn the shorter way to the heading ``n_left`` left turns away."""
        n_left %= self.n_dirs
        if n_left <= self.n_dirs // 2:
            yield from self.turns(n_left, LEFT)
        else:
            yield from self.turns(self.n_dirs - n_left, RIGHT)

    def pick_heading(self, rng: np.random.Generator, want: int) -> tuple[int, int]:
        """A heading with room: returns (left turns to it, free steps along it, capped at ``want``).

        Headings are drawn with probability proportional to their free run, so the robot
        rarely faces a wall but still explores every open direction.
        """
        runs = np.array([self.free_run(self.yaw_after(j), want) for j in range(self.n_dirs)], dtype=np.float64)
        if runs.max() <= 0:
            return int(rng.integers(self.n_dirs)), 0
        j = int(rng.choice(self.n_dirs, p=runs / runs.sum()))
        return j, int(runs[j])


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# --------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------


def random_walk(
    scene: Scene,
    start: RobotState,
    seed: int | np.random.Generator,
    *,
    p_forward: float = 0.85,
    max_turn_run: int = 4,
    kinematics: KinematicsConfig | None = None,
) -> Iterator[TrajectoryStep]:
    """A random walk with momentum: forward with probability ``p_forward``, else a run of turns.

    Args:
        scene: the scene whose ``move`` and ``is_free`` the robot obeys.
        start: the start state (frame 0).
        seed: an int seed or a numpy Generator.
        p_forward: probability of keeping going forward at each step.
        max_turn_run: longest run of same-direction turns when not going forward.
        kinematics: step sizes; defaults to ``scene.kinematics`` or :class:`KinematicsConfig`.

    Yields:
        One :class:`TrajectoryStep` per move, forever. A wall ahead (the next position not free)
        triggers a turn run of 45 to 180 degrees instead of a blocked move.
    """
    if not 0.0 <= p_forward <= 1.0:
        raise ValueError(f"p_forward must be in [0, 1], got {p_forward}")
    if max_turn_run < 1:
        raise ValueError(f"max_turn_run must be >= 1, got {max_turn_run}")
    rng = _rng(seed)
    w = _Walker(scene, start, kinematics)
    while True:
        if rng.random() < p_forward:
            if w.free_run(w.state.yaw, 1) == 1:
                yield w.act(FORWARD)
                continue
            n = int(rng.integers(w.n_dirs // 8, w.n_dirs // 2 + 1))
        else:
            n = int(rng.integers(1, max_turn_run + 1))
        yield from w.turns(n, LEFT if rng.random() < 0.5 else RIGHT)


def out_and_back(
    scene: Scene,
    start: RobotState,
    seed: int | np.random.Generator,
    *,
    min_out: int = 3,
    max_out: int = 16,
    max_relocate: int = 8,
    kinematics: KinematicsConfig | None = None,
) -> Iterator[TrajectoryStep]:
    """Go out, turn around, come back and face the start heading again; repeat elsewhere.

    Each cycle picks a heading with room, turns to it (the cycle's first pose), goes forward
    between ``min_out`` and ``max_out`` steps (fewer where a wall is closer), turns 180 degrees,
    comes back as many steps, and turns 180 degrees again: the last turn's pose repeats the
    first pose and carries its index in ``returns_to``. Between cycles the robot walks up to
    ``max_relocate`` steps to a new spot.

    Args:
        scene: the scene whose ``move`` and ``is_free`` the robot obeys.
        start: the start state (frame 0).
        seed: an int seed or a numpy Generator.
        min_out: fewest outward steps when there is room for them.
        max_out: most outward steps.
        max_relocate: most forward steps between cycles (0 keeps every cycle at one spot).
        kinematics: step sizes; defaults to ``scene.kinematics`` or :class:`KinematicsConfig`.
    """
    if not 1 <= min_out <= max_out:
        raise ValueError(f"need 1 <= min_out <= max_out, got min_out={min_out}, max_out={max_out}")
    if max_relocate < 0:
        raise ValueError(f"max_relocate must be >= 0, got {max_relocate}")
    rng = _rng(seed)
    w = _Walker(scene, start, kinematics)
    half = w.n_dirs // 2
    while True:
        j, room = w.pick_heading(rng, max_out)
        yield from w.face(j)
        first = w.index
        n_out = min(int(rng.integers(min_out, max_out + 1)), room)
        went = yield from w.forwards(n_out)
        turn = LEFT if rng.random() < 0.5 else RIGHT
        yield from w.turns(half, turn)
        came = yield from w.forwards(went)
        yield from w.turns(half, turn if rng.random() < 0.5 else (RIGHT if turn == LEFT else LEFT),
                           returns_to=first if came == went else None)
        if max_relocate:
            j, room = w.pick_heading(rng, max_relocate)
            yield from w.face(j)
            yield from w.forwards(int(rng.integers(0, room + 1)))


def loop(
    scene: Scene,
    start: RobotState,
    seed: int | np.random.Generator,
    *,
    min_side: int = 2,
    max_side: int = 12,
    max_relocate: int = 8,
    attempts: int = 32,
    kinematics: KinematicsConfig | None = None,
) -> Iterator[TrajectoryStep]:
    """Rectangular loops that end where they began, facing the same way; repeat elsewhere.

    Each cycle tries up to ``attempts`` random rectangles (heading, turning direction, side
    lengths in forward steps between ``min_side`` and ``max_side``) and keeps the first whose
    every waypoint is free; with none, it turns a full circle in place instead (a loop of zero
    size). The last quarter turn's pose repeats the cycle's first pose and carries its index in
    ``returns_to`` when every forward move succeeded.

    Args:
        scene: the scene whose ``move`` and ``is_free`` the robot obeys.
        start: the start state (frame 0).
        seed: an int seed or a numpy Generator.
        min_side: shortest side, forward steps.
        max_side: longest side, forward steps.
        max_relocate: most forward steps between cycles.
        attempts: rectangles tried per cycle before falling back to a turn in place.
        kinematics: step sizes; defaults to ``scene.kinematics`` or :class:`KinematicsConfig`.
    """
    if not 1 <= min_side <= max_side:
        raise ValueError(f"need 1 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}")
    if attempts < 1 or max_relocate < 0:
        raise ValueError(f"need attempts >= 1 and max_relocate >= 0, got {attempts}, {max_relocate}")
    rng = _rng(seed)
    w = _Walker(scene, start, kinematics)
    quarter = w.n_dirs // 4
    while True:
        plan = None
        for _ in range(attempts):
            j = int(rng.integers(w.n_dirs))
            turn = LEFT if rng.random() < 0.5 else RIGHT
            sides = (int(rng.integers(min_side, max_side + 1)), int(rng.integers(min_side, max_side + 1)))
            if _rectangle_free(w, j, turn, sides):
                plan = (j, turn, sides)
                break
        if plan is None:
            first = w.index
            yield from w.turns(w.n_dirs, LEFT, returns_to=first)
        else:
            j, turn, (a, b) = plan
            yield from w.face(j)
            first = w.index
            done = []
            for side in (a, b, a, b):
                done.append((yield from w.forwards(side)))
                closed = done == [a, b, a, b]
                yield from w.turns(quarter, turn, returns_to=first if closed else None)
        if max_relocate:
            j, room = w.pick_heading(rng, max_relocate)
            yield from w.face(j)
            yield from w.forwards(int(rng.integers(0, room + 1)))


def _rectangle_free(w: _Walker, j: int, turn: int, sides: tuple[int, int]) -> bool:
    """Whether every forward waypoint of a rectangle starting ``j`` left turns away is free."""
    x, z = w.state.x, w.state.z
    quarter_yaw = (1 if turn == LEFT else -1) * math.pi / 2.0
    yaw = w.yaw_after(j)
    for side in (*sides, *sides):
        if w.free_run_from(x, z, yaw, side) < side:
            return False
        step = heading_vector(yaw) * w.forward_step * side
        x, z, yaw = x + step[0], z + step[2], yaw + quarter_yaw
    return True


def turn360(
    scene: Scene,
    start: RobotState,
    seed: int | np.random.Generator,
    *,
    max_rotations: int = 2,
    max_relocate: int = 8,
    kinematics: KinematicsConfig | None = None,
) -> Iterator[TrajectoryStep]:
    """Full turns in place (1 to ``max_rotations`` in a row, one direction), then move on.

    Every turn after the first full rotation repeats the pose one rotation earlier and carries
    that frame's index in ``returns_to``.

    Args:
        scene: the scene whose ``move`` and ``is_free`` the robot obeys.
        start: the start state (frame 0).
        seed: an int seed or a numpy Generator.
        max_rotations: most full rotations per spot.
        max_relocate: most forward steps between spots.
        kinematics: step sizes; defaults to ``scene.kinematics`` or :class:`KinematicsConfig`.
    """
    if max_rotations < 1 or max_relocate < 0:
        raise ValueError(f"need max_rotations >= 1 and max_relocate >= 0, got {max_rotations}, {max_relocate}")
    rng = _rng(seed)
    w = _Walker(scene, start, kinematics)
    while True:
        first = w.index
        turn = LEFT if rng.random() < 0.5 else RIGHT
        for _ in range(int(rng.integers(1, max_rotations + 1)) * w.n_dirs):
            back = w.index + 1 - w.n_dirs
            yield w.act(turn, returns_to=back if back >= first else None)
        if max_relocate:
            j, room = w.pick_heading(rng, max_relocate)
            yield from w.face(j)
            yield from w.forwards(int(rng.integers(1, room + 1)) if room else 0)


#: Trajectory kinds by name, in the order the recorder cycles through them.
TRAJECTORY_KINDS: dict[str, Callable[..., Iterator[TrajectoryStep]]] = {
    "random_walk": random_walk,
    "loop": loop,
    "turn360": turn360,
    "out_and_back": out_and_back,
}


def make_trajectory(
    kind: str, scene: Scene, start: RobotState, seed: int | np.random.Generator, **kwargs: object
) -> Iterator[TrajectoryStep]:
    """The generator of ``kind`` (one of :data:`TRAJECTORY_KINDS`) started at ``start``."""
    if kind not in TRAJECTORY_KINDS:
        raise KeyError(f"unknown trajectory kind {kind!r}; valid kinds: {sorted(TRAJECTORY_KINDS)}")
    return TRAJECTORY_KINDS[kind](scene, start, seed, **kwargs)


def rollout(kind: str, scene: Scene, start: RobotState, n_frames: int, seed: int, **kwargs: object) -> Trajectory:
    """Run a trajectory of ``kind`` for ``n_frames`` frames (the start state and n_frames - 1 moves).

    Args:
        kind: one of :data:`TRAJECTORY_KINDS`.
        scene: the scene, already reset to the layout ``start`` belongs to.
        start: the start state (frame 0).
        n_frames: number of frames, >= 1.
        seed: the trajectory's seed (same seed, scene and start: same trajectory).
        **kwargs: options of the generator of ``kind``.
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    steps = list(islice(make_trajectory(kind, scene, start, seed, **kwargs), n_frames - 1))
    return Trajectory(
        kind=kind,
        seed=int(seed),
        states=[start, *(s.state for s in steps)],
        actions=np.array([NO_ACTION, *(s.action for s in steps)], dtype=np.int64),
        collided=np.array([False, *(s.collided for s in steps)], dtype=bool),
        returns_to=np.array([-1, *(-1 if s.returns_to is None else s.returns_to for s in steps)], dtype=np.int64),
    )
