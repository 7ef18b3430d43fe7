"""The revisit-consistency trajectory suite: seeded camera paths that come back to places.

Four families (:data:`SUITE_KINDS`), each a collision-respecting walk through a scene (every
move goes through :meth:`Scene.move`):

* ``out_and_back``: a short lead-in, then a random walk out, a turn around, the same path
  retraced back, and a turn to face the anchor's heading again (:func:`round_trip`); the
  excursion's length in steps is a parameter, so "revisit after a 100-step excursion" is one
  trajectory.
* ``loop``: rectangles around the room that end where they began
  (:func:`rtfm_env.data.trajectories.loop`).
* ``turn360``: repeated full turns in place (:func:`rtfm_env.data.trajectories.turn360`).
* ``tour``: a long walk (1,000+ steps) along a chain of landmarks with side excursions,
  going back and forth between the landmarks by retracing and replaying its own moves
  (:func:`landmark_tour`).

Which frames are revisits is decided geometrically, not from the plan, by
:func:`find_revisits`: a frame revisits the first earlier frame whose camera is within
``position_tol`` metres and whose viewing direction is within ``heading_tol`` degrees, once the
camera has left that place in between. The tolerances are parameters (defaults 0.1 m, 5 deg).

Retracing relies on the discrete kinematics: after a 180-degree turn, the outbound actions
replayed in reverse order with left and right swapped bring the robot through the same
positions back to where it started (blocked moves moved nothing, so they are skipped).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from itertools import islice
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

from rtfm_env.data.trajectories import NO_ACTION, Trajectory, TrajectoryStep, loop, random_walk, turn360
from rtfm_env.geometry import DiscreteAction, KinematicsConfig, RobotState

if TYPE_CHECKING:  # importing rtfm_env.scenes loads MiniWorld and its OpenGL context
    from rtfm_env.scenes.base import Scene

__all__ = [
    "POSITION_TOL",
    "HEADING_TOL",
    "SUITE_KINDS",
    "SuiteConfig",
    "find_revisits",
    "round_trip",
    "landmark_tour",
    "make_suite_trajectory",
    "collect",
]

#: metres; a revisit's camera is at most this far from the first visit's.
POSITION_TOL = 0.1
#: degrees; a revisit's viewing direction is at most this far from the first visit's.
HEADING_TOL = 5.0

FORWARD = DiscreteAction.FORWARD
LEFT = DiscreteAction.TURN_LEFT
RIGHT = DiscreteAction.TURN_RIGHT
_MIRROR = {FORWARD: FORWARD, LEFT: RIGHT, RIGHT: LEFT}


# --------------------------------------------------------------------------------------
# Revisits
# --------------------------------------------------------------------------------------


def _check_poses(poses: np.ndarray) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"poses must have shape (n, 4, 4), got {poses.shape}")
    if not np.isfinite(poses).all():
        raise ValueError("poses contain NaN or infinite values")
    return poses


def find_revisits(
    poses: np.ndarray, position_tol: float = POSITION_TOL, heading_tol: float = HEADING_TOL
) -> np.ndarray:
    """For each frame, the index of the earlier frame it revisits, or -1.

    Frame ``i`` revisits frame ``j < i`` when ``j`` is the earliest frame whose camera centre
    is within ``position_tol`` metres of frame ``i``'s and whose viewing direction (the camera's
    -z axis, so pitch counts too) is within ``heading_tol`` degrees of it, and the camera left
    that place (some frame between ``j`` and ``i`` is outside the tolerances of ``j``). A move
    blocked by a wall, which repeats the previous pose, is therefore not a revisit.

    Args:
        poses: (n, 4, 4) camera-to-world poses, in trajectory order.
        position_tol: metres, > 0.
        heading_tol: degrees, in (0, 180].

    Returns:
        (n,) int64: the first visit's index for revisits, -1 elsewhere.
    """
    poses = _check_poses(poses)
    if not (math.isfinite(position_tol) and position_tol > 0):
        raise ValueError(f"position_tol must be a finite number of metres > 0, got {position_tol!r}")
    if not (math.isfinite(heading_tol) and 0 < heading_tol <= 180):
        raise ValueError(f"heading_tol must be in (0, 180] degrees, got {heading_tol!r}")
    n = len(poses)
    first = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return first
    centres = poses[:, :3, 3]
    forward = -poses[:, :3, 2]
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    cos_tol = math.cos(math.radians(heading_tol))

    def same_place(j: int, others: np.ndarray) -> np.ndarray:
        close = np.linalg.norm(centres[others] - centres[j], axis=1) <= position_tol
        # A hair of slack so that retraced poses (equal up to rounding) always count.
        return close & (forward[others] @ forward[j] >= cos_tol - 1e-12)

    pairs = cKDTree(centres).query_pairs(position_tol, output_type="ndarray")  # (m, 2), a < b
    earliest = np.full(n, n, dtype=np.int64)
    if len(pairs):
        a, b = pairs[:, 0], pairs[:, 1]
        keep = np.einsum("ij,ij->i", forward[a], forward[b]) >= cos_tol - 1e-12
        np.minimum.at(earliest, b[keep], a[keep])
    for i in np.flatnonzero(earliest < n):
        j = int(earliest[i])
        if i - j > 1 and not same_place(j, np.arange(j + 1, i)).all():
            first[i] = j
    return first


# --------------------------------------------------------------------------------------
# Retracing helpers
# --------------------------------------------------------------------------------------


class _Mover:
    """Moves one robot through a scene, remembering the frames it made (start = frame 0)."""

    def __init__(self, scene: Scene, start: RobotState, kinematics: KinematicsConfig | None) -> None:
        self.scene = scene
        self.state = start
        self.index = 0
        kin = kinematics or getattr(scene, "kinematics", None) or KinematicsConfig()
        n_dirs = 2.0 * math.pi / float(kin.turn_step)
        if abs(n_dirs - round(n_dirs)) > 1e-6 or round(n_dirs) % 2 != 0:
            raise ValueError(
                f"turn_step {math.degrees(kin.turn_step):.3f} deg must divide 180 deg into whole turns "
                "for trajectories that turn around and retrace their path"
            )
        self.half_turn = int(round(n_dirs)) // 2

    def act(self, action: int, returns_to: int | None = None) -> TrajectoryStep:
        self.state, collided = self.scene.move(self.state, action)
        self.index += 1
        return TrajectoryStep(int(action), self.state, bool(collided), returns_to)

    def walk(self, rng: np.random.Generator, n: int, moves: list[int]) -> Iterator[TrajectoryStep]:
        """``n`` random-walk steps from here; appends the moves that happened to ``moves``."""
        for step in islice(random_walk(self.scene, self.state, rng), n):
            self.state = step.state
            self.index += 1
            if not step.collided:
                moves.append(step.action)
            yield TrajectoryStep(step.action, step.state, step.collided, None)

    def replay(self, moves: list[int]) -> Iterator[TrajectoryStep]:
        """Repeat ``moves`` from here (the same start gives the same poses, bit for bit)."""
        for action in moves:
            yield self.act(action)

    def retrace(self, moves: list[int], returns_to: int | None, turn: int) -> Iterator[TrajectoryStep]:
        """Undo ``moves``: turn around, replay them mirrored in reverse order, turn around again.

        The last turn's pose repeats the pose before ``moves`` and carries ``returns_to``.
        Sets ``self.ok`` to False if a move was blocked (the robot is then somewhere else).
        """
        self.ok = True
        back = [_MIRROR[a] for a in reversed(moves)]
        for i, action in enumerate([turn] * self.half_turn + back + [turn] * self.half_turn):
            last = i == 2 * self.half_turn + len(back) - 1
            step = self.act(action, returns_to if last and self.ok else None)
            self.ok = self.ok and not step.collided
            yield step


# --------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def round_trip(
    scene: Scene,
    start: RobotState,
    seed: int | np.random.Generator,
    *,
    excursion: int = 100,
    lead_in: int = 8,
    kinematics: KinematicsConfig | None = None,
) -> Iterator[TrajectoryStep]:
    """Out and back: lead in, walk out, turn around, retrace, face the anchor heading again.

    After ``lead_in`` random-walk steps the robot is at the anchor (so the anchor's frame is
    one the camera made, not the reset's ground truth). It then takes ``n_out`` random-walk
    steps with ``2 * n_out + 2 * half_turn == excursion`` (``half_turn`` = turns per 180
    degrees), turns around, retraces the path, and turns around again: the trajectory's last
    frame revisits the anchor exactly ``excursion`` steps after it. The generator then ends.

    Args:
        scene: the scene whose ``move`` the robot obeys (``random_walk`` also reads ``is_free``).
        start: the start state (frame 0).
        seed: an int seed or a numpy Generator.
        excursion: steps from the anchor to its revisit; ``excursion - 2 * half_turn`` must be
            even and >= 0.
        lead_in: random-walk steps before the anchor, >= 0.
        kinematics: step sizes; defaults to ``scene.kinematics``.

    Yields:
        ``lead_in + excursion`` steps; the last one has ``returns_to = lead_in`` when every
        retraced move went through. An outbound move that a wall blocked moved nothing and is
        not retraced, so the trajectory is one step shorter per blocked move (rare: the walk
        turns away from walls it sees ahead).
    """
    rng = _rng(seed)
    mover = _Mover(scene, start, kinematics)
    n_out, odd = divmod(excursion - 2 * mover.half_turn, 2)
    if n_out < 0 or odd:
        raise ValueError(
            f"excursion must be {2 * mover.half_turn} + an even number of steps (two half turns of "
            f"{mover.half_turn} turns and as many steps back as out), got {excursion!r}"
        )
    if lead_in < 0:
        raise ValueError(f"lead_in must be >= 0, got {lead_in!r}")
    yield from mover.walk(rng, lead_in, [])
    anchor = mover.index
    moves: list[int] = []
    yield from mover.walk(rng, n_out, moves)
    yield from mover.retrace(moves, anchor, LEFT if rng.random() < 0.5 else RIGHT)


def landmark_tour(
    scene: Scene,
    start: RobotState,
    seed: int | np.random.Generator,
    *,
    landmarks: int = 4,
    min_leg: int = 8,
    max_leg: int = 40,
    p_side: float = 0.4,
    kinematics: KinematicsConfig | None = None,
) -> Iterator[TrajectoryStep]:
    """A long tour along a chain of landmarks, coming back to each of them again and again.

    The start is landmark 0. At landmark ``c`` the robot either takes a side trip (a random
    walk of ``min_leg`` to ``max_leg`` steps, retraced back to ``c``), or goes on to landmark
    ``c + 1`` (replaying the leg that first led there, or walking a new random leg when
    ``c + 1`` does not exist yet and fewer than ``landmarks`` exist), or goes back to landmark
    ``c - 1`` (retracing that leg). Every arrival at a landmark repeats its pose and carries the
    index of its first frame in ``returns_to``; replayed legs repeat every pose along them.
    Infinite: take as many steps as needed.

    Args:
        scene: the scene whose ``move`` the robot obeys.
        start: the start state (frame 0 and landmark 0).
        seed: an int seed or a numpy Generator.
        landmarks: most landmarks on the chain, >= 1.
        min_leg: fewest random-walk steps of a new leg or side trip, >= 1.
        max_leg: most random-walk steps of a new leg or side trip.
        p_side: probability of a side trip at each landmark.
        kinematics: step sizes; defaults to ``scene.kinematics``.
    """
    if landmarks < 1:
        raise ValueError(f"landmarks must be >= 1, got {landmarks!r}")
    if not 1 <= min_leg <= max_leg:
        raise ValueError(f"need 1 <= min_leg <= max_leg, got min_leg={min_leg!r}, max_leg={max_leg!r}")
    if not 0.0 <= p_side <= 1.0:
        raise ValueError(f"p_side must be in [0, 1], got {p_side!r}")
    rng = _rng(seed)
    mover = _Mover(scene, start, kinematics)
    first_frame = [0]  # landmark -> index of its first frame
    legs: list[list[int]] = []  # legs[c]: the moves from landmark c to landmark c + 1
    c = 0
    while True:
        turn = LEFT if rng.random() < 0.5 else RIGHT
        choice = rng.random()
        forward_ok = c + 1 < len(first_frame) or len(first_frame) < landmarks
        if choice < p_side or (c == 0 and not forward_ok):
            side: list[int] = []
            yield from mover.walk(rng, int(rng.integers(min_leg, max_leg + 1)), side)
            yield from mover.retrace(side, first_frame[c], turn)
        elif c > 0 and (choice < p_side + (1 - p_side) / 2 or not forward_ok):
            yield from mover.retrace(legs[c - 1], first_frame[c - 1], turn)
            c -= 1
        elif c + 1 < len(first_frame):
            yield from mover.replay(legs[c])
            c += 1
            mover.ok = True
        else:
            leg: list[int] = []
            yield from mover.walk(rng, int(rng.integers(min_leg, max_leg + 1)), leg)
            legs.append(leg)
            first_frame.append(mover.index)
            c += 1
            mover.ok = True
        if not mover.ok:
            # A retraced move was blocked: the robot is off the chain, so it starts a new one here.
            first_frame, legs, c = [mover.index], [], 0


# --------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteConfig:
    """Lengths and options of the suite's trajectories (steps are moves; frames = steps + 1)."""

    excursion: int = 100  # out_and_back: steps from the anchor to its revisit
    lead_in: int = 8  # out_and_back: steps before the anchor
    loop_steps: int = 150  # loop: steps
    turn_rotations: int = 3  # turn360: full turns in place
    tour_steps: int = 1000  # tour: steps
    tour_landmarks: int = 4  # tour: landmarks on the chain

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "lead_in" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict:
        """JSON-ready dict of every field."""
        return asdict(self)


def _suite_generators(cfg: SuiteConfig) -> dict[str, tuple[Callable[..., Iterator[TrajectoryStep]], int, dict]]:
    """Kind -> (generator, steps to take, generator options); turn360's steps are set per scene."""
    return {
        "out_and_back": (round_trip, cfg.lead_in + cfg.excursion, {"excursion": cfg.excursion, "lead_in": cfg.lead_in}),
        "loop": (loop, cfg.loop_steps, {}),
        "turn360": (turn360, -1, {"max_rotations": cfg.turn_rotations, "max_relocate": 0}),
        "tour": (landmark_tour, cfg.tour_steps, {"landmarks": cfg.tour_landmarks}),
    }


#: The suite's trajectory families, in the order the evaluator runs them.
SUITE_KINDS: tuple[str, ...] = ("out_and_back", "loop", "turn360", "tour")


def collect(kind: str, steps: Iterator[TrajectoryStep], start: RobotState, n_steps: int, seed: int) -> Trajectory:
    """The first ``n_steps`` moves of ``steps`` as a :class:`Trajectory` starting at ``start``."""
    taken = list(islice(steps, n_steps))
    return Trajectory(
        kind=kind,
        seed=int(seed),
        states=[start, *(s.state for s in taken)],
        actions=np.array([NO_ACTION, *(s.action for s in taken)], dtype=np.int64),
        collided=np.array([False, *(s.collided for s in taken)], dtype=bool),
        returns_to=np.array([-1, *(-1 if s.returns_to is None else s.returns_to for s in taken)], dtype=np.int64),
    )


def make_suite_trajectory(
    kind: str, scene: Scene, start: RobotState, seed: int, cfg: SuiteConfig | None = None
) -> Trajectory:
    """One trajectory of the suite family ``kind`` (one of :data:`SUITE_KINDS`).

    Args:
        kind: ``out_and_back``, ``loop``, ``turn360`` or ``tour``.
        scene: the scene, already reset to the layout ``start`` belongs to (or any object with
            ``move``, ``is_free`` and ``kinematics``).
        start: the start state (frame 0).
        seed: the trajectory's seed (same seed, scene and start: same trajectory).
        cfg: lengths and options; :class:`SuiteConfig` defaults when None.

    Raises:
        KeyError: an unknown kind; the message lists the valid ones.
    """
    cfg = cfg or SuiteConfig()
    gens = _suite_generators(cfg)
    if kind not in gens:
        raise KeyError(f"unknown trajectory kind {kind!r}; valid kinds: {list(SUITE_KINDS)}")
    fn, n_steps, kwargs = gens[kind]
    if kind == "turn360":
        kin = getattr(scene, "kinematics", None) or KinematicsConfig()
        n_steps = cfg.turn_rotations * int(round(2.0 * math.pi / kin.turn_step))
    return collect(kind, fn(scene, start, np.random.default_rng(seed), **kwargs), start, n_steps, seed)
