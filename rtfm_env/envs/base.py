"""The shared world logic of every rtfm-sim Gymnasium env: a scene, a camera and a task.

:class:`RTFMEnv` owns the loop that every task shares: reset the scene's layout from the env's
seeded generator, put the camera on the start pose, move the robot through the scene with
collision checks, ask the camera for the frame at the new pose (through the batched
``Camera.observe``, so a learned camera drops in), keep the :class:`~rtfm_env.envs.tasks.Episode`
record, truncate at ``max_steps`` and render the view beside the top-down map. The task
decides goals, rewards, termination and metrics.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rtfm_env import viz, worlds
from rtfm_env.cameras import CAMERAS, Camera, make_camera
from rtfm_env.envs.tasks import WORLD_BOUND, Episode, Task
from rtfm_env.geometry import DiscreteAction, RobotState
from rtfm_env.scenes import MiniWorldScene
from rtfm_env.scenes.base import Scene
from rtfm_env.scenes.recorded import NoFreeSpaceError, RecordedScene, looks_like_file

__all__ = ["RTFMEnv", "MAX_RESOLUTION", "RENDER_MODES", "DEPTH_RANGE", "DEFAULT_SCENE"]

#: The scene of ``scene=None`` unless ``world`` is a world file with a free-space map.
DEFAULT_SCENE = "MiniWorld-FourRooms-v0"

#: Metres: the depth observation's maximum; farther surfaces, and rays that hit nothing, read this.
DEPTH_RANGE = 100.0

#: Largest ``resolution`` (pixels per side of the square view) an env accepts: beyond it every
#: frame, map and observation buffer would take gigabytes.
MAX_RESOLUTION = 1024


class _RenderModes(list):
    """The env's render modes: a list whose ``in`` refuses a render mode that is not a string.

    ``gymnasium.make`` tests ``render_mode in metadata["render_modes"]`` and, for a mode not
    there, calls ``render_mode.endswith``: an int would end in an AttributeError. Answering
    here with the ValueError that names the valid modes is the clear error instead.
    """

    def __contains__(self, mode: object) -> bool:
        if mode is not None and not isinstance(mode, str):
            raise ValueError(f"unknown render_mode {mode!r}; valid: {[None, *self]}")
        return super().__contains__(mode)


#: The render modes of every rtfm-sim env (besides None).
RENDER_MODES = _RenderModes(["rgb_array"])


def _is_int(value: object) -> bool:
    """A Python or numpy integer, not a bool (True is an int in Python)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: object) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _scene_file(scene: str | os.PathLike | None) -> Path | None:
    """The world file a ``scene`` argument names, or None for a MiniWorld id (or None)."""
    if scene is None:
        return None
    if isinstance(scene, os.PathLike) or looks_like_file(str(scene)):
        return Path(scene).expanduser()
    return None


def _parameters(cls: type) -> set[str]:
    """The keyword arguments a camera class's constructor takes."""
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


class RTFMEnv(gym.Env[dict[str, np.ndarray], np.int64]):
    """A robot in a scene, seen through a camera, doing a task (see the subclasses' docs).

    Subclasses pick the task and document the env in Gymnasium's sections; this class holds
    what all of them share. Observations are a Dict of ``rgb`` (H, W, 3) uint8 from the camera,
    ``pose`` (4, 4) float32 camera-to-world, and the task's entries.

    Every env id takes these ``gym.make`` arguments besides its task's own:

    - ``scene``: a MiniWorld env id, or the path of a world file with a free-space map (built by
      ``rtfm-env world build``: a :class:`~rtfm_env.scenes.recorded.RecordedScene`). None (the
      default) is ``MiniWorld-FourRooms-v0`` (four 6 m rooms joined by doorways, so geodesic and
      straight-line distances differ, and frames are cheap), unless ``world`` is a world file
      with a free-space map: then the scene is that recorded world.
    - ``camera``: a name from :data:`rtfm_env.cameras.CAMERAS`: ``"ground_truth"`` (the
      scene's renderer), ``"model"`` (:class:`rtfm_env.cameras.ModelCamera`: the frame model
      generates each frame from a spatial memory), ``"reprojection"``
      (:class:`rtfm_env.cameras.ReprojectionCamera`: the stored RGB-D frames forward-warped, no
      learning) or ``"nearest"`` (the best stored observed frame, unchanged). Model frames are
      stochastic but seeded from the env's generator, so ``reset(seed=s)`` and the same actions
      reproduce them.
    - ``world`` (memory cameras: model, reprojection, nearest): what their memory holds at reset,
      a regime of :mod:`rtfm_env.worlds` or a world file's path. ``"scan"`` (the default: a
      dense coverage scan of the layout, the most faithful camera), ``"walk"`` (one exploration
      walk, as a robot's recording), ``"image"`` (the start's single frame, as RTFM from one
      image; with ``seed_views`` > 1, turns in place) or a path.

      Recorded worlds: with ``world=FILE`` (or ``scene=FILE``) naming a world file that carries
      a free-space map, and no MiniWorld ``scene``, the robot moves in the recording itself:
      collisions, geodesic distances, starts and goals come from the file's grid (starts and
      goals in the cells the recording crossed), and the camera's memory at every reset is the
      file. Such a world has no ground-truth renderer, so it needs a memory camera
      (``camera="reprojection"`` or ``"model"``); its frames fix the view's size
      (``resolution`` must equal it) and field of view (``fov`` is not used). A world file
      without a free-space map (a memory saved with ``save_world``) has no physics of its own:
      a MiniWorld ``scene`` (default FourRooms) gives the walls, as for a memory saved from that
      scene; build a map with ``rtfm-env world build`` to move in the recording instead.
    - ``depth``: True adds a ``depth`` observation, (H, W) float32 metres along the optical axis,
      clipped at :data:`DEPTH_RANGE` (100 m, which is also what a ray that hit nothing reads) and 0
      where the camera knows nothing (a reprojection pixel no stored frame covers). Only for
      cameras with depth (ground truth, reprojection).
    - ``resolution``: pixels of the square view, 8 to :data:`MAX_RESOLUTION` (1024); ``fov``:
      vertical field of view, degrees, in (0, 180). Neither takes a bool.
    - ``max_steps``: actions before truncation (500, as Habitat).
    - ``scene_seed``: ``None`` for a new layout every reset, an int to keep one layout.
    - ``render_mode``: ``None`` or ``"rgb_array"`` (the view beside the top-down map with the
      trajectory, the robot and what the task draws).
    - Model camera only (errors with another camera; None keeps the camera's default):
      ``checkpoint`` (directory; None for the shipped one), ``k`` (context frames per
      generated frame), ``warp_k`` (context frames warped into the target, the network
      attending to the first ``k``), ``context_strategy`` (one of
      :data:`rtfm_env.cameras.CONTEXT_STRATEGIES`: ``"spatial"`` is context juggling,
      ``"last_k"``, ``"first_only"`` and ``"all"`` the baselines), ``sampling_steps`` (Euler
      steps per frame), ``seed_views`` (ground-truth frames stored at reset: the start view and
      turns in place; every memory camera), ``memory_capacity`` (frames kept at most; every
      memory camera), ``compile_model`` (True runs
      the network through torch.compile: about 1.2x the frames/s on the CPU after seconds of
      compiling per batch shape; needs a C++ compiler).

    An argument no id knows raises ``TypeError`` listing the valid ones; a bad value of a known
    one raises ``ValueError`` naming what is valid (its bound, or the valid choices). A bool is
    never taken for a number: not as an action, a ``fov``, a ``resolution`` or a seed.
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 10}

    def __new__(cls, *args: Any, **kwargs: Any) -> RTFMEnv:
        """Refuse unknown keyword arguments before any work, naming the valid ones.

        Python's own error for an unexpected keyword lists nothing; ``gym.make`` users need the
        choices, which are the keywords of the ``__init__`` chain (a subclass passes its
        ``**kwargs`` on to the world and camera arguments here).
        """
        valid = cls.argument_names()
        unknown = sorted(set(kwargs) - valid)
        if unknown:
            raise TypeError(f"{cls.__name__} got unknown argument(s) {unknown}; valid arguments: {sorted(valid)}")
        return super().__new__(cls)

    @classmethod
    def argument_names(cls) -> set[str]:
        """The keyword arguments the env accepts: its own and those it passes on to RTFMEnv."""
        names: set[str] = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            names |= {p.name for p in params if p.kind in keywords}
            if not any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params):
                break
        return names - {"self", "task"}

    def __init__(
        self,
        task: Task,
        scene: str | os.PathLike | None = None,
        camera: str = "ground_truth",
        resolution: int = 64,
        fov: float = 60.0,
        max_steps: int = 500,
        scene_seed: int | None = None,
        render_mode: str | None = None,
        checkpoint: str | os.PathLike | None = None,
        k: int | None = None,
        warp_k: int | None = None,
        context_strategy: str | None = None,
        sampling_steps: int | None = None,
        seed_views: int | None = None,
        memory_capacity: int | None = None,
        compile_model: bool | None = None,
        world: str | os.PathLike | None = None,
        depth: bool = False,
    ) -> None:
        """Build the env; the arguments are listed in the class docstring.

        The model camera's options (``checkpoint`` to ``compile_model``) are None unless
        given; None leaves :class:`~rtfm_env.cameras.ModelCamera`'s default. Giving any of
        them with another camera is an error rather than silently ignored.
        """
        if not isinstance(task, Task):
            raise TypeError(f"task must be a rtfm_env.envs.tasks.Task, got {type(task).__name__}")
        modes = list(self.metadata["render_modes"])
        if render_mode is not None and (not isinstance(render_mode, str) or render_mode not in modes):
            raise ValueError(f"unknown render_mode {render_mode!r}; valid: {[None, *modes]}")
        if scene is not None and (isinstance(scene, bool) or not isinstance(scene, (str, os.PathLike))):
            raise TypeError(
                f"scene must be a MiniWorld id such as 'MiniWorld-FourRooms-v0' or a world file's path, got {scene!r}"
            )
        if not isinstance(camera, str):
            raise TypeError(f"camera must be a camera name such as 'ground_truth', got {camera!r}")
        if camera not in CAMERAS:
            raise ValueError(f"unknown camera {camera!r}; valid cameras: {sorted(CAMERAS)}")
        scene_file = _scene_file(scene)
        if scene_file is not None and not scene_file.is_file():
            raise ValueError(f"scene {str(scene)!r} names no world file (no file at {scene_file})")
        if scene_file is not None and world is None and camera != "ground_truth":
            world = scene_file  # a recorded scene's camera shows its own file
        recording = scene_file if scene_file is not None else worlds.world_path(world)
        if camera == "ground_truth" and recording is not None:
            raise ValueError(
                f"world {recording} is a recording: it has no ground-truth renderer; use camera='reprojection' "
                "or 'model'"
            )
        camera_options = {
            "checkpoint": checkpoint,
            "k": k,
            "warp_k": warp_k,
            "context_strategy": context_strategy,
            "sampling_steps": sampling_steps,
            "seed_views": seed_views,
            "memory_capacity": memory_capacity,
            "compile_model": compile_model,
            "world": world,
        }
        given = {name: value for name, value in camera_options.items() if value is not None}
        renamed = {"sampling_steps": "steps", "compile_model": "compile"}
        accepted = _parameters(CAMERAS[camera])
        refused = sorted(name for name in given if renamed.get(name, name) not in accepted)
        if refused:
            takers = {
                name: sorted(c for c, cls in CAMERAS.items() if renamed.get(name, name) in _parameters(cls))
                for name in refused
            }
            raise ValueError(
                f"{refused} do not apply to camera={camera!r}; cameras that take them: {takers}; drop them or "
                "pick one of those cameras"
            )
        if not isinstance(depth, bool):
            raise ValueError(f"depth must be True or False, got {depth!r}")
        # The model camera has depth when its checkpoint predicts it (v2): checked once it is built.
        if depth and not CAMERAS[camera].has_depth and camera != "model":
            with_depth = sorted(name for name, cls in CAMERAS.items() if cls.has_depth)
            raise ValueError(
                f"depth=True needs a camera with depth; camera={camera!r} has none; cameras with depth: "
                f"{with_depth}, and 'model' with a checkpoint that predicts depth"
            )
        if not (_is_int(resolution) and 8 <= resolution <= MAX_RESOLUTION):
            raise ValueError(f"resolution must be an integer in [8, {MAX_RESOLUTION}] pixels, got {resolution!r}")
        if not (_is_number(fov) and 0.0 < float(fov) < 180.0):
            raise ValueError(f"fov must be a vertical field of view in (0, 180) degrees, got {fov!r}")
        if not (_is_int(max_steps) and max_steps >= 1):
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        if scene_seed is not None and not (_is_int(scene_seed) and scene_seed >= 0):
            raise ValueError(f"scene_seed must be None (a new layout every reset) or an int >= 0, got {scene_seed!r}")

        self.task = task
        self.render_mode = render_mode
        self.resolution = int(resolution)  # pixels, square frames
        self.fov = float(fov)  # degrees, vertical field of view
        self.max_steps = int(max_steps)  # actions per episode before truncation
        self.scene_seed = None if scene_seed is None else int(scene_seed)
        self.render_height = max(256, self.resolution)  # pixels, height of render()'s composite
        self.depth = depth  # whether observations carry a depth map

        # The camera is built first: a bad camera option then fails before a scene is acquired.
        camera_kwargs: dict[str, Any] = {renamed.get(name, name): value for name, value in given.items()}
        if camera == "model":
            camera_kwargs["resolution"] = self.resolution
        self.camera: Camera = make_camera(camera, **camera_kwargs)
        if depth and not self.camera.has_depth:
            self.camera.close()
            raise ValueError(f"depth=True needs a camera with depth; {self.camera._no_depth()}")
        self.scene: Scene = self._make_scene(scene, scene_file)

        self.action_space = task.action_space
        # Rotation entries lie in [-1, 1] and translations within the world; the bottom row
        # (0, 0, 0, 1) falls inside these bounds too.
        pose_high = np.ones((4, 4), dtype=np.float32)
        pose_high[:, 3] = WORLD_BOUND
        self.observation_space = spaces.Dict(
            {
                "rgb": spaces.Box(0, 255, shape=(self.resolution, self.resolution, 3), dtype=np.uint8),
                "pose": spaces.Box(-pose_high, pose_high, dtype=np.float32),
                **(
                    {"depth": spaces.Box(0.0, DEPTH_RANGE, shape=(self.resolution, self.resolution), dtype=np.float32)}
                    if depth
                    else {}
                ),
                **task.observation_spaces(),
            }
        )

        self._episode: Episode | None = None
        self._frame: np.ndarray | None = None
        self._depth: np.ndarray | None = None  # (H, W) float32 of the current frame, with depth=True
        self._done = False
        self._reward, self._terminated, self._truncated = 0.0, False, False  # of the last step
        self._canvas: viz.MapCanvas | None = None  # the current layout's map, built on demand
        self._closed = False

    # ----------------------------------------------------------------------------------
    # Gymnasium API
    # ----------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode: a layout, the scene's start state, a task goal, the first frame.

        The layout seed is ``scene_seed`` when set, else drawn from the env's generator, so
        ``reset(seed=s)`` reproduces the world, start, goal and observations exactly. The
        camera is re-seeded from the same generator, so a learned camera's frames (stochastic
        but seeded) are reproduced too.
        """
        if options:
            raise ValueError(f"reset() takes no options; got {sorted(options)}")
        if seed is not None and not (_is_int(seed) and seed >= 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {seed!r} ({type(seed).__name__})")
        super().reset(seed=None if seed is None else int(seed))
        layout_seed = self.scene_seed if self.scene_seed is not None else int(self.np_random.integers(2**31 - 1))
        start = self.scene.reset(layout_seed)
        self._episode = Episode(states=[start], scene_seed=layout_seed)
        self.task.reset(self.scene, self._episode, self.np_random)
        # Drawn after the task's goal, so the layout and goal of reset(seed=s) do not depend on
        # the camera; a learned camera's generator is seeded from it (deterministic ones ignore it).
        camera_seed = int(self.np_random.integers(2**63 - 1))
        if self.depth:
            frame, depth = self.camera.reset_rgbd(self.scene, start.pose(), seed=camera_seed)
            self._depth = self._check_depth(depth)
        else:
            frame = self.camera.reset(self.scene, start.pose(), seed=camera_seed)
        self._frame = self._check_frame(frame)
        self.task.on_frame(self._frame)
        self._done = False
        self._canvas = None
        return self._observation(), self._info()

    def step(self, action: int | np.integer) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Apply one action: move (collision-aware), observe, score, check the episode's end."""
        pose = self.begin_step(action)
        if pose is None:
            return self.end_step(None)
        if self.depth:
            frames, depths = self.camera.observe_rgbd(pose[None])
            return self.end_step(frames[0], depths[0])
        return self.end_step(self.camera.observe(pose[None])[0])

    def begin_step(self, action: int | np.integer) -> np.ndarray | None:
        """First half of :meth:`step`: check and apply ``action``, score it, end the episode if due.

        A vector env calls this on each of its envs, generates the frames of all the returned
        poses in one batched camera call, then hands each env its frame with :meth:`end_step`.

        Returns:
            The (4, 4) camera pose whose frame the camera must produce, or None when the pose
            did not change (a stop or a blocked move: the same pose gives the same frame).
        """
        if self._episode is None:
            raise RuntimeError("step() called before reset(); call env.reset() to start an episode")
        if self._done:
            raise RuntimeError(
                "step() called after the episode ended (terminated or truncated); call env.reset() first"
            )
        # Discrete.contains takes True for 1; a bool is not an action (the vector env agrees).
        if isinstance(action, (bool, np.bool_)) or not self.action_space.contains(action):
            valid = ", ".join(f"{i} ({name})" for i, name in enumerate(self.task.action_names))
            raise ValueError(
                f"action {action!r} ({type(action).__name__}) is not in the action space {self.action_space}; "
                f"valid actions: {valid}"
            )
        episode = self._episode
        previous = episode.state
        move = self.task.actions[int(action)]
        state, collided = previous, False
        if move != DiscreteAction.STOP:
            state, collided = self.scene.move(previous, move)
        episode.record(state, collided)
        self._reward, self._terminated = self.task.step(self.scene, episode, int(action))
        self._truncated = not self._terminated and episode.steps >= self.max_steps
        self._done = self._terminated or self._truncated
        return state.pose() if state != previous else None

    def end_step(
        self, frame: np.ndarray | None, depth: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        """Second half of :meth:`step`: take the camera's frame (None keeps the last one).

        Args:
            frame: (H, W, 3) uint8, or None when the pose did not change.
            depth: the frame's (H, W) depth, required with ``depth=True`` when a frame is given.

        Returns:
            What :meth:`step` returns: (observation, reward, terminated, truncated, info).
        """
        if frame is not None and self.depth:
            if depth is None:
                raise ValueError("this env observes depth (depth=True): end_step needs the frame's depth too")
            self._depth = self._check_depth(depth)
        if frame is not None:
            self._frame = self._check_frame(frame)
            self.task.on_frame(self._frame)
        return self._observation(), self._reward, self._terminated, self._truncated, self._info()

    def render(self) -> np.ndarray | None:
        """The camera view, the task's panels, then the top-down map (trajectory, robot, task overlay).

        Returns:
            uint8 (H', W', 3), ``render_height`` pixels high, or None without a render mode.
        """
        if self.render_mode is None:
            gym.logger.warn(
                "render() called with render_mode=None; create the env with render_mode='rgb_array' to get frames"
            )
            return None
        if self._episode is None or self._frame is None:
            raise RuntimeError("render() called before reset(); call env.reset() first")
        if self._canvas is None:
            self._canvas = viz.MapCanvas(self.scene.top_down_map(), height=self.render_height)
        layer = self._canvas.draw(self._episode.states, **self.task.map_overlay())
        return viz.compose(self._frame, *self.task.render_panels(), layer, height=self.render_height)

    def close(self) -> None:
        """Release the camera and give the scene's renderer back; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.camera.close()
        self.scene.close()

    # ----------------------------------------------------------------------------------
    # Helpers
    # ----------------------------------------------------------------------------------

    def _make_scene(self, scene: str | os.PathLike | None, scene_file: Path | None) -> Scene:
        """The scene the class docstring describes: MiniWorld, or a recorded world from a world file.

        Raises:
            ValueError: a world file whose map is malformed, whose frames are not the view's size,
                or a regime world (which renders the scene) on a recorded world.
        """
        camera_file = worlds.world_path(getattr(self.camera, "world", None))
        if scene_file is not None:
            recorded = RecordedScene(scene_file)  # NoFreeSpaceError says how to build a map
        elif scene is None and camera_file is not None:
            try:
                recorded = RecordedScene(camera_file)
            except NoFreeSpaceError:
                recorded = None  # a saved memory: FourRooms gives the walls, as before world files had maps
        else:
            recorded = None
        if recorded is None:
            env_id = DEFAULT_SCENE if scene is None else str(scene)
            return MiniWorldScene(env_id, width=self.resolution, height=self.resolution, fov_y=self.fov)
        if camera_file is None:
            raise ValueError(
                f"world {self.camera.world!r} is a regime that renders the scene, and scene {recorded.path} is a "
                "recording without a renderer: drop world= (the camera then shows the scene's file) or give a file"
            )
        size = (recorded.intrinsics.width, recorded.intrinsics.height)
        if size != (self.resolution, self.resolution):
            raise ValueError(
                f"world {recorded.path} holds {size[0]}x{size[1]} frames, and the env's views are "
                f"resolution x resolution = {self.resolution}x{self.resolution}: pass resolution={size[0]} "
                "(a recorded world's frames fix the view's size)"
                if size[0] == size[1]
                else f"world {recorded.path} holds {size[0]}x{size[1]} frames, not square: the env's views are "
                "square; rebuild the world at a square resolution"
            )
        return recorded

    @property
    def episode(self) -> Episode:
        """The record of the current episode (states, path length, collisions, steps)."""
        if self._episode is None:
            raise RuntimeError("no episode yet: call env.reset() first")
        return self._episode

    @property
    def state(self) -> RobotState:
        """The robot's current state."""
        return self.episode.state

    def _observation(self) -> dict[str, np.ndarray]:
        state = self.episode.state
        pose = state.pose()
        if np.any(np.abs(pose[:3, 3]) > WORLD_BOUND):
            raise RuntimeError(
                f"the robot is at {pose[:3, 3].tolist()} in scene {self.scene.env_id!r} (seed {self.scene.seed}), "
                f"outside the +-{WORLD_BOUND} m that the observation space allows"
            )
        return {
            "rgb": self._frame.copy(),
            "pose": pose.astype(np.float32),
            **({"depth": self._depth.copy()} if self.depth else {}),
            **self.task.observation(state),
        }

    def _info(self) -> dict[str, Any]:
        episode = self.episode
        return {
            "steps": episode.steps,
            "collided": episode.collided,  # whether the last move was blocked
            "collisions": episode.collisions,
            "path_length": float(episode.path_length),  # metres
            "scene_seed": episode.scene_seed,
            **self.task.metrics(self.scene, episode),
        }

    def _check_depth(self, depth: np.ndarray) -> np.ndarray:
        expected = (self.resolution, self.resolution)
        depth = np.asarray(depth, dtype=np.float32)
        if depth.shape != expected:
            raise RuntimeError(
                f"camera {type(self.camera).__name__} returned depth of shape {depth.shape}; expected {expected}"
            )
        # NaN (nothing known there) becomes 0 and anything past the range (inf: nothing hit) reads
        # the range, as a depth sensor's maximum, so the observation stays inside its finite Box.
        return np.where(np.isnan(depth), np.float32(0.0), np.minimum(depth, np.float32(DEPTH_RANGE)))

    def _check_frame(self, frame: np.ndarray) -> np.ndarray:
        expected = (self.resolution, self.resolution, 3)
        if frame.shape != expected or frame.dtype != np.uint8:
            raise RuntimeError(
                f"camera {type(self.camera).__name__} returned a frame of shape {frame.shape} and dtype "
                f"{frame.dtype}; expected {expected} uint8"
            )
        return frame
