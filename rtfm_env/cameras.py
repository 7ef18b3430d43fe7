"""Cameras: what the agent sees from a pose.

A camera is reset onto a scene at a start pose and then asked for frames at batches of
camera-to-world poses. :class:`GroundTruthCamera` renders the scene itself. The memory cameras
read a :class:`~rtfm_env.memory.SpatialMemory` of posed frames whose contents at reset are set by
their ``world`` (a regime of :mod:`rtfm_env.worlds` or a world file):
:class:`ModelCamera` (``camera="model"``) generates frames with the frame model,
:class:`ReprojectionCamera` (``camera="reprojection"``) forward-warps the stored RGB-D frames
with no learning, and :class:`NearestViewCamera` (``camera="nearest"``) copies the best stored
observed frame. All share one interface, so envs and the ROS node never care which they hold.

Cameras with depth (``has_depth``: ground truth and reprojection) also answer
:meth:`Camera.reset_rgbd` and :meth:`Camera.observe_rgbd` with (H, W) float32 depth in metres
along the optical axis, ``inf`` where nothing was hit.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rtfm_env import worlds
from rtfm_env.geometry import Intrinsics, check_pose
from rtfm_env.memory import SpatialMemory
from rtfm_env.model.checkpoint import CONFIG_FILE, CONFIG_MAXIMA
from rtfm_env.model.sampler import FrameModel
from rtfm_env.scenes.base import Scene
from rtfm_env.warp import RESOLUTION_TOLERANCE
from rtfm_env.worlds import DEFAULT_WORLD, turn_in_place

__all__ = [
    "Camera",
    "GroundTruthCamera",
    "MemoryCamera",
    "ModelCamera",
    "ReprojectionCamera",
    "NearestViewCamera",
    "CAMERAS",
    "make_camera",
    "observe_many",
    "reproject_many",
    "CONTEXT_STRATEGIES",
    "AUTOCAST_DTYPES",
    "default_autocast",
    "DEFAULT_CHECKPOINT",
    "DEFAULT_WARP_K",
    "default_warp_k",
    "V1_CHECKPOINT",
    "select_context",
    "turn_in_place",
]

#: Where the shipped frame-model checkpoint lives; ``ModelCamera(checkpoint=None)`` loads it.
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "model" / "checkpoints" / "default"
#: The v1 frame model (pure implicit: posed frames and rays, no warp, no depth), kept as the
#: "before" and ablation row of the closed-loop benchmark; it loads through the same path.
V1_CHECKPOINT = DEFAULT_CHECKPOINT.parent / "v1"

#: How the model camera picks the context frames of each new frame from its memory:
#: ``spatial`` = :meth:`SpatialMemory.retrieve` (context juggling), ``last_k`` = the k most
#: recent frames (a sliding window), ``first_only`` = the k oldest frames (the start's
#: ground truth), ``all`` = every stored frame, evenly thinned to the model's ``max_context``.
CONTEXT_STRATEGIES = ("spatial", "last_k", "first_only", "all")

#: Inference precision choices of the model camera: autocast dtype, or none for float32.
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": None,
}


def default_autocast(device: str | torch.device) -> str:
    """The inference precision a model camera uses on ``device`` when none is given.

    ``"bfloat16"`` on CUDA and on CPUs with native bf16 arithmetic (``avx512_bf16`` or
    ``amx_bf16`` among the Linux CPU flags), where it runs about 4x float32; ``"float32"``
    elsewhere, since emulated bf16 matrix products run up to 100x slower than float32 there
    (measured on an AMD EPYC without bf16 units: 1 GFLOP/s against 95).
    """
    if torch.device(device).type == "cuda":
        return "bfloat16"
    return "bfloat16" if _cpu_has_bf16() else "float32"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


class Camera(ABC):
    """Produces uint8 (H, W, 3) RGB frames (and, where ``has_depth``, depth) for camera-to-world poses."""

    intrinsics: Intrinsics
    #: Whether :meth:`reset_rgbd` and :meth:`observe_rgbd` give depth.
    has_depth: bool = False

    @abstractmethod
    def reset(self, scene: Scene, pose: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Start a new episode in ``scene`` with the camera at ``pose``; returns the first frame.

        ``seed`` seeds whatever is random in the camera (the env derives it from its own seed,
        so ``env.reset(seed=s)`` reproduces the frames); deterministic cameras ignore it.
        """

    @abstractmethod
    def observe(self, poses: np.ndarray) -> np.ndarray:
        """Frames (B, H, W, 3) uint8 seen from camera-to-world poses (B, 4, 4)."""

    def reset_rgbd(self, scene: Scene, pose: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`reset`, with the first frame's depth: ((H, W, 3) uint8, (H, W) float32 metres)."""
        raise self._no_depth()

    def observe_rgbd(self, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`observe`, with depth: ((B, H, W, 3) uint8, (B, H, W) float32 metres, inf = no hit)."""
        raise self._no_depth()

    def _no_depth(self) -> ValueError:
        with_depth = sorted(name for name, cls in CAMERAS.items() if cls.has_depth)
        return ValueError(f"camera {type(self).__name__} gives no depth; cameras with depth: {with_depth}")

    def close(self) -> None:  # noqa: B027 (optional hook: most cameras hold nothing to release)
        """Release resources."""


def _check_poses(poses: np.ndarray) -> np.ndarray:
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim == 2:
        poses = poses[None]
    if poses.ndim != 3 or poses.shape[1:] != (4, 4):
        raise ValueError(f"poses must have shape (B, 4, 4), got {poses.shape}")
    if len(poses) == 0:
        raise ValueError("poses is empty (B = 0); give at least one (4, 4) pose")
    for i, p in enumerate(poses):
        check_pose(p, name=f"poses[{i}]")
    return poses


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class GroundTruthCamera(Camera):
    """The scene's own renderer: the ceiling any learned camera is measured against."""

    has_depth = True

    def __init__(self) -> None:
        self.scene: Scene | None = None

    def reset_rgbd(self, scene: Scene, pose: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`reset` and the scene's ground-truth depth at ``pose``."""
        frame = self.reset(scene, pose, seed)
        return frame, self._depths(_check_poses(pose))[0]

    def observe_rgbd(self, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Render RGB and depth at each pose."""
        frames = self.observe(poses)
        return frames, self._depths(_check_poses(poses))

    def _depths(self, poses: np.ndarray) -> np.ndarray:
        depths = [self.scene.render_depth(p) for p in poses]
        if any(d is None for d in depths):
            raise RuntimeError(f"scene {self.scene.env_id!r} has no ground-truth depth renderer")
        return np.stack(depths).astype(np.float32)

    def reset(self, scene: Scene, pose: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Attach to ``scene`` and return the ground-truth frame at ``pose`` (``seed`` is unused)."""
        self.scene = scene
        self.intrinsics = scene.intrinsics
        return self.observe(pose)[0]

    def observe(self, poses: np.ndarray) -> np.ndarray:
        """Render the scene at each pose; raises if the scene has no renderer."""
        if self.scene is None:
            raise RuntimeError("GroundTruthCamera.observe called before reset(scene, pose)")
        poses = _check_poses(poses)
        frames = [self.scene.render(p) for p in poses]
        if any(f is None for f in frames):
            raise RuntimeError(f"scene {self.scene.env_id!r} has no ground-truth renderer")
        return np.stack(frames)


# --------------------------------------------------------------------------------------
# The model camera
# --------------------------------------------------------------------------------------


def select_context(
    memory: SpatialMemory,
    pose: np.ndarray,
    k: int,
    strategy: str,
    intrinsics: Intrinsics | None = None,
    cap: int = 8,
) -> list[int]:
    """Ids of the stored frames to condition the frame seen from ``pose`` on.

    Args:
        memory: the frames stored so far (at least one).
        pose: (4, 4) camera-to-world pose of the frame to generate.
        k: context frames wanted (``spatial``, ``last_k``, ``first_only``).
        strategy: one of :data:`CONTEXT_STRATEGIES`:
            ``spatial``: ``memory.retrieve(pose, k, intrinsics, fill=True)``, in pick order;
            ``last_k``: the ``k`` most recently added frames still stored, oldest first;
            ``first_only``: the ``k`` oldest frames still stored (the reset's ground truth);
            ``all``: every stored frame, oldest first, or ``cap`` of them evenly spaced over
            the history (the oldest and the newest always among them) when more are stored.
        intrinsics: the query camera's intrinsics (``spatial``); the last add's by default.
        cap: most frames that ``all`` returns (the model's ``max_context``).

    Returns:
        Between 1 and ``k`` ids (``cap`` for ``all``); fewer only when fewer are stored.

    Raises:
        ValueError: an unknown strategy (the message lists the valid ones), ``k`` or ``cap``
            below 1, or an empty memory.
    """
    if strategy not in CONTEXT_STRATEGIES:
        raise ValueError(f"unknown context strategy {strategy!r}; valid strategies: {list(CONTEXT_STRATEGIES)}")
    if not (_is_int(k) and k >= 1) or not (_is_int(cap) and cap >= 1):
        raise ValueError(f"k and cap must be integers >= 1, got k={k!r}, cap={cap!r}")
    if len(memory) == 0:
        raise ValueError("the memory is empty: nothing to condition on (reset the camera first)")
    if strategy == "spatial":
        return memory.retrieve(pose, k, intrinsics, fill=True)
    ids = memory.ids
    if strategy == "last_k":
        return ids[-k:].tolist()
    if strategy == "first_only":
        return ids[:k].tolist()
    if len(ids) <= cap:
        return ids.tolist()
    # Even spacing over the whole history shows the model as much of it as it can attend to.
    return ids[np.unique(np.rint(np.linspace(0, len(ids) - 1, cap)).astype(np.int64))].tolist()


class MemoryCamera(Camera):
    """A camera that sees a world only through a :class:`SpatialMemory` of posed frames.

    What the memory holds at :meth:`reset` is the camera's ``world``: a regime of
    :mod:`rtfm_env.worlds` (``"image"``: the start's ground-truth frame, or ``seed_views`` of
    them turned in place; ``"walk"``: an exploration walk of the layout; ``"scan"``: a dense
    coverage scan; all observed RGB-D frames rendered by the scene) or the path of a world file
    (a saved memory, reloaded at every reset; the scene then gives physics only).

    Subclasses produce frames from the memory (:meth:`_produce`).

    Args:
        world: a regime from :data:`rtfm_env.worlds.WORLD_KINDS` or a world file's path;
            default :data:`rtfm_env.worlds.DEFAULT_WORLD`.
        seed_views: ground-truth frames stored at the start (the start and turns in place).
        memory_capacity: frames the memory keeps at most; None keeps every frame.

    Attributes:
        memory: the :class:`SpatialMemory` (None before the first reset or :meth:`load_world`).
        last_context: for each pose of the last :meth:`observe`, the ids of the frames it used.
    """

    def __init__(
        self,
        world: str | os.PathLike = DEFAULT_WORLD,
        seed_views: int = 1,
        memory_capacity: int | None = None,
    ) -> None:
        self.world = worlds.check_world(world)
        if not (_is_int(seed_views) and 1 <= seed_views <= 360):
            raise ValueError(f"seed_views must be an integer in [1, 360], got {seed_views!r}")
        if memory_capacity is not None and not (_is_int(memory_capacity) and memory_capacity >= seed_views):
            raise ValueError(
                f"memory_capacity must be None or an integer >= seed_views ({seed_views}), got {memory_capacity!r}"
            )
        self.seed_views = int(seed_views)
        self.memory_capacity = None if memory_capacity is None else int(memory_capacity)
        self.memory: SpatialMemory | None = None
        self.last_context: list[list[int]] = []
        self._step = 0  # observe calls since the reset; stored as each generated frame's step

    # -- Camera interface ------------------------------------------------------------------

    def reset(self, scene: Scene, pose: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Fill the memory for a new episode (see the class doc) and return the start's frame.

        Args:
            scene: the scene, reset to the episode's layout; with a regime, its renderer gives
                the observed frames.
            pose: (4, 4) camera-to-world start pose.
            seed: re-seeds whatever is random in the camera (None continues its stream).

        Raises:
            ValueError: a bad pose or seed, a scene whose frames are not the camera's size, or
                a world the scene cannot give (a scan of a layout without free space).
            RuntimeError: a regime on a scene without a ground-truth renderer.
        """
        return self.reset_rgbd(scene, pose, seed)[0] if self.has_depth else self._reset(scene, pose, seed)[0]

    def _reset(self, scene: Scene, pose: np.ndarray, seed: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        pose = check_pose(pose, "start pose")
        if seed is not None and not (_is_int(seed) and 0 <= seed < 2**64):
            raise ValueError(f"seed must be None or an integer in [0, 2**64), got {seed!r}")
        self._reseed(seed)
        if isinstance(self.world, Path):
            self.load_world(self.world)
            self._check_size(self.intrinsics.height, self.intrinsics.width, f"the world in {self.world} holds")
            frames, depths = self._produce(pose[None])
            self._step = 0
            return frames[0], None if depths is None else depths[0]
        intrinsics = scene.intrinsics
        self._check_size(intrinsics.height, intrinsics.width, f"scene {scene.env_id!r} renders")
        self.memory = worlds.build_memory(
            scene, self.world, pose, seed_views=self.seed_views, capacity=self.memory_capacity, depth=True
        )
        self.intrinsics = intrinsics
        self.last_context = []
        self._step = 0
        first = self.memory.ids[:1]
        return self.memory.frames(first)[0].copy(), self.memory.depths(first)[0]

    def observe(self, poses: np.ndarray) -> np.ndarray:
        """Frames (B, H, W, 3) uint8 seen from camera-to-world poses (B, 4, 4)."""
        return self._observe(poses)[0]

    def _observe(self, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.memory is None:
            raise RuntimeError(f"{type(self).__name__}.observe called before reset(scene, pose) or load_world(path)")
        out = self._produce(_check_poses(poses))
        self._step += 1
        return out

    @abstractmethod
    def _produce(self, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Frames (B, H, W, 3) uint8 and depths (B, H, W) or None for checked poses (B, 4, 4)."""

    def reseed(self, seed: int) -> None:
        """Re-seed whatever is random in the camera (deterministic cameras ignore it).

        :meth:`reset` does this itself; after :meth:`load_world` (no reset), call it to make
        what follows reproducible.
        """
        if not (_is_int(seed) and 0 <= seed < 2**64):
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self._reseed(int(seed))

    def _reseed(self, seed: int | None) -> None:  # noqa: B027 (deterministic cameras have nothing to seed)
        """Re-seed the camera's randomness (no-op for deterministic cameras)."""

    def _check_size(self, height: int, width: int, what: str) -> None:  # noqa: B027 (any size by default)
        """Raise ``ValueError`` when frames of this size cannot be produced."""

    # -- Worlds ----------------------------------------------------------------------------

    def save_world(self, path: str | os.PathLike) -> None:
        """Write the memory (the world as this camera knows it) to a safetensors file, atomically."""
        if self.memory is None:
            raise RuntimeError("nothing to save: the camera has no memory before reset() or load_world()")
        self.memory.save(path)

    def load_world(self, path: str | os.PathLike) -> None:
        """Replace the memory with one saved by :meth:`save_world` (or ``SpatialMemory.save``).

        No scene is needed afterwards: :meth:`observe` produces frames from the loaded ones.
        The memory keeps the capacity it was saved with.

        Raises:
            FileNotFoundError: no file at ``path``.
            MemoryFormatError: the file is not a readable spatial memory.
            ValueError: the memory is empty, its frames are not the camera's size, they were
                taken with different intrinsics, or the camera needs depth that the file lacks.
        """
        memory = SpatialMemory.load(path)
        if len(memory) == 0:
            raise ValueError(f"{path} holds an empty memory: nothing to generate from")
        height, width = memory.resolution
        self._check_size(height, width, f"the memory in {path} holds")
        intrinsics = set(memory.intrinsics_of(memory.ids))
        if len(intrinsics) != 1:
            raise ValueError(f"the frames in {path} have different intrinsics {sorted(map(str, intrinsics))}")
        self._check_world_memory(memory, path)
        self.intrinsics = intrinsics.pop()
        self.memory = memory
        self.last_context = []
        self._step = max((s for s in memory.steps(memory.ids) if s is not None), default=0)

    def _check_world_memory(self, memory: SpatialMemory, path: str | os.PathLike) -> None:  # noqa: B027
        """Raise ``ValueError`` when a loaded memory lacks what this camera needs."""


#: The model camera's default ``warp_k``: context views warped into the target (the network
#: attends to ``k`` = 2 of them). Measured in the closed loop (docs/results/closed_loop): against
#: warping the 2 attended views only, +0.5 to +1.0 dB in the scan regime (meeting "reprojection
#: - 0.5 dB" in every window) and +0.4 dB in walk steps 51-200; the image regime is unchanged
#: (its only observed frame is the start).
DEFAULT_WARP_K = 4


def default_warp_k(k: int, max_context: int | None = None) -> int:
    """The views a model camera warps when ``warp_k`` is None.

    :data:`DEFAULT_WARP_K`, or ``k`` if larger, at most ``max_context`` (the model's; None: no cap).
    """
    wanted = max(int(k), DEFAULT_WARP_K)
    return wanted if max_context is None else min(wanted, int(max_context))


class ModelCamera(MemoryCamera):
    """The frame model as a camera: each frame is generated from posed frames in a spatial memory.

    At :meth:`reset` the memory is filled as its ``world`` says (see :class:`MemoryCamera`:
    the default dense scan, an exploration walk, the start's single image as RTFM starts from,
    or a world file). Each :meth:`observe` then, for every
    requested pose, picks context frames from the memory (``context_strategy``, see
    :func:`select_context`), generates all the frames in ONE batched
    :meth:`FrameModel.generate` call, and adds each generated frame to the memory as
    ``"generated"``. The B frames of one call are generated from the same memory, so they do
    not condition on each other.

    Generation is stochastic but seeded: the torch generator behind the flow noise is seeded
    with ``seed`` at construction and re-seeded by ``reset(..., seed=s)``; the env passes a
    seed drawn from its own generator, so ``env.reset(seed=s)`` followed by the same actions
    gives identical frames run to run (on the same device and precision).

    Args:
        checkpoint: a checkpoint directory (``save_checkpoint``'s layout), None for the shipped
            :data:`DEFAULT_CHECKPOINT`, or a loaded :class:`FrameModel` to share (its device and
            precision are then kept, and ``device`` and ``autocast`` must be None).
        k: context frames per generated frame that the network attends to, 1 to the model's
            ``max_context``.
        warp_k: context frames warped into the target for the network's warp input (a model
            with ``warp_input``), k to ``max_context``; the network attends to the first ``k``
            of them, and the others are observed frames only (a generated frame warped as-is
            would carry the camera's own blur forward). The warp's cost barely grows with the
            views, the network's grows with each, so more views in the warp cover more of the
            target (fewer holes to paint, each surface from its sharpest view) at about the
            network cost of ``k``. Only context juggling (``spatial``) uses it; the baseline
            strategies attend to exactly what they pick. None: :data:`DEFAULT_WARP_K` (or ``k`` if larger, capped at
            ``max_context``); ``warp_k=k`` warps only the attended views.
        steps: Euler sampling steps, 1 to 1000; None for the model's ``sample_steps``.
        context_strategy: one of :data:`CONTEXT_STRATEGIES`.
        seed_views: ground-truth frames stored at reset (the start and turns in place).
        memory_capacity: frames the memory keeps at most (it evicts the most redundant,
            generated ones first); None keeps every frame. At least ``seed_views``.
        seed: seed of the flow-noise generator until a reset gives one, in [0, 2**64).
        autocast: inference precision, a key of :data:`AUTOCAST_DTYPES`; None picks
            :func:`default_autocast` for the device (bf16 where the hardware has it, else float32).
        device: where to run the model; None picks CUDA when available, else the CPU.
        resolution: the frame size the camera will be used at, ``int`` (square) or
            ``(height, width)``, at most 1024 x 1024; when given, a checkpoint for another size
            fails here rather than at the first reset.
        gelu: the network's GELU form, ``"tanh"`` (as trained) or ``"none"`` (erf, within bf16
            rounding of it and faster on the CPU); None: the precision's default (see
            :meth:`FrameModel.from_pretrained`).
        compile: run the network through torch.compile (:meth:`FrameModel.compile`): about
            1.2x the frames/s on the CPU, after seconds of compiling per new batch shape.
        world: what the memory holds at reset (see :class:`MemoryCamera`).

    Attributes:
        model: the :class:`FrameModel`.
        memory: the :class:`SpatialMemory` of observed and generated frames (None before the
            first reset or :meth:`load_world`).
        last_context: for each pose of the last :meth:`observe`, the ids of its context frames.

    Raises:
        FileNotFoundError: ``checkpoint=None`` and no checkpoint is shipped yet.
        CheckpointError: a checkpoint directory that is missing, incomplete or corrupt.
        ValueError: a bad option (unknown strategy or precision lists the valid ones) or a
            checkpoint made for another resolution than ``resolution``.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | FrameModel | None = None,
        k: int = 2,
        steps: int | None = None,
        context_strategy: str = "spatial",
        seed_views: int = 1,
        memory_capacity: int | None = None,
        seed: int = 0,
        autocast: str | None = None,
        device: str | torch.device | None = None,
        resolution: int | tuple[int, int] | None = None,
        gelu: str | None = None,
        compile: bool = False,  # noqa: A002 (torch's own name for it)
        world: str | os.PathLike = DEFAULT_WORLD,
        warp_k: int | None = None,
    ) -> None:
        super().__init__(world=world, seed_views=seed_views, memory_capacity=memory_capacity)
        if not isinstance(context_strategy, str) or context_strategy not in CONTEXT_STRATEGIES:
            raise ValueError(
                f"unknown context strategy {context_strategy!r}; valid strategies: {list(CONTEXT_STRATEGIES)}"
            )
        if autocast is not None and (not isinstance(autocast, str) or autocast not in AUTOCAST_DTYPES):
            raise ValueError(f"unknown autocast {autocast!r}; valid: {list(AUTOCAST_DTYPES)}")
        most_steps = CONFIG_MAXIMA["sample_steps"]
        if steps is not None and not (_is_int(steps) and 1 <= steps <= most_steps):
            raise ValueError(f"steps must be None (the model's default) or an integer in [1, {most_steps}], "
                             f"got {steps!r}")
        if not (_is_int(seed) and 0 <= seed < 2**64):
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike, FrameModel)):
            raise ValueError(f"checkpoint must be None, a checkpoint directory or a FrameModel, got {checkpoint!r}")
        if isinstance(device, (bool, np.bool_)):
            raise ValueError(f"device must be None, a device name such as 'cpu' or a torch.device, got {device!r}")
        if resolution is not None:
            size = (resolution, resolution) if _is_int(resolution) else resolution
            if isinstance(size, (Sequence, np.ndarray)) and not isinstance(size, (str, bytes)):
                size = tuple(size)
            if not (isinstance(size, tuple) and len(size) == 2 and all(_is_int(v) and v >= 1 for v in size)):
                raise ValueError(f"resolution must be an int or (height, width) of positive ints, got {resolution!r}")
            most = (CONFIG_MAXIMA["height"], CONFIG_MAXIMA["width"])
            if size[0] > most[0] or size[1] > most[1]:
                raise ValueError(f"resolution must be at most {most[0]}x{most[1]} pixels (height x width), "
                                 f"got {resolution!r}")

        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        if isinstance(checkpoint, FrameModel):
            if device is not None or autocast is not None or gelu is not None:
                raise ValueError(
                    "device, autocast and gelu apply when loading a checkpoint; a FrameModel keeps its own"
                )
            self.model = checkpoint.compile() if compile else checkpoint
            self.checkpoint: Path | None = None
        else:
            if checkpoint is None:
                checkpoint = DEFAULT_CHECKPOINT
                if not checkpoint.is_dir():
                    raise FileNotFoundError(
                        f"no frame-model checkpoint is shipped yet (nothing at {checkpoint}); train one with "
                        "rtfm_env/model/train.py and pass its directory: ModelCamera(checkpoint=DIR), "
                        "gym.make('RTFM/PointNav-v0', camera='model', checkpoint=DIR) or "
                        "'rtfm-env demo --camera model --checkpoint DIR'"
                    )
            device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = AUTOCAST_DTYPES[default_autocast(device) if autocast is None else autocast]
            self.checkpoint = Path(checkpoint)
            self.model = FrameModel.from_pretrained(
                self.checkpoint, device=device, autocast_dtype=dtype, gelu=gelu, compile=compile
            )

        max_context = self.model.config.max_context
        if not (_is_int(k) and 1 <= k <= max_context):
            raise ValueError(f"k must be an integer in [1, {max_context}] (the model's max_context), got {k!r}")
        if warp_k is not None and not (_is_int(warp_k) and k <= warp_k <= max_context):
            raise ValueError(f"warp_k must be None or an integer in [k, {max_context}] = [{k}, {max_context}], "
                             f"got {warp_k!r}")
        self.k = int(k)
        # Views warped into the target: the network attends to the first k, the warp fuses all.
        # A model that reads no warp (v1, the implicit ablation) uses k views only.
        if not self.model.config.warp_input:
            self.warp_k = self.k
        elif warp_k is None:
            self.warp_k = default_warp_k(self.k, max_context)
        else:
            self.warp_k = int(warp_k)
        self.steps = None if steps is None else int(steps)
        self.context_strategy = context_strategy
        self.seed = int(seed)
        # The noise is drawn on the CPU and moved, so a seed gives the same noise on any device.
        self.generator = torch.Generator().manual_seed(self.seed)
        # A checkpoint that predicts depth (v2) makes this a camera with depth: its generated
        # frames are stored with their depth and warp later like observed ones.
        self.has_depth = self.model.predicts_depth
        if resolution is not None:
            self._check_size(int(size[0]), int(size[1]), "the camera is asked for")

    # -- Camera interface ------------------------------------------------------------------

    def _reseed(self, seed: int | None) -> None:
        if seed is not None:
            self.generator.manual_seed(int(seed))

    def _produce(self, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One :meth:`FrameModel.generate` call for all poses (see :func:`observe_many`)."""
        return _generate([self], [poses])[0]

    def reset_rgbd(self, scene: Scene, pose: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`reset`, with the start frame's depth; only for a checkpoint that predicts depth."""
        if not self.has_depth:
            raise self._no_depth()
        frame, depth = self._reset(scene, pose, seed)
        if depth is None:  # a world file's frame without depth: nothing known
            depth = np.full(frame.shape[:2], np.nan, dtype=np.float32)
        return frame, depth

    def observe_rgbd(self, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`observe`, with the predicted depth (B, H, W) float32 metres, inf where nothing is hit."""
        if not self.has_depth:
            raise self._no_depth()
        if self.memory is None:
            raise RuntimeError("ModelCamera.observe_rgbd called before reset(scene, pose) or load_world(path)")
        return _observe_many([self], [poses])[0]

    def _no_depth(self) -> ValueError:
        return ValueError(
            f"this model camera's checkpoint ({self.checkpoint or 'a FrameModel'}) does not predict depth "
            "(predict_depth is off: a v1 model); use a v2 checkpoint, or camera='reprojection' or 'ground_truth'"
        )

    def observe(self, poses: np.ndarray) -> np.ndarray:
        """Generate the frames seen from ``poses`` (B, 4, 4) and store them in the memory.

        One :meth:`FrameModel.generate` call for all B poses; each pose has its own context
        (padded with masked views when the memory holds fewer than ``k`` frames for some).

        Returns:
            (B, H, W, 3) uint8 RGB.
        """
        if self.memory is None:
            raise RuntimeError("ModelCamera.observe called before reset(scene, pose) or load_world(path)")
        return observe_many([self], [poses])[0]

    # -- Introspection ---------------------------------------------------------------------

    @property
    def options(self) -> dict[str, Any]:
        """JSON-ready settings of this camera, to store beside any result it produced."""
        dtype = self.model.autocast_dtype
        return {
            "camera": "model",
            "checkpoint": None if self.checkpoint is None else str(self.checkpoint),
            "k": self.k,
            "warp_k": self.warp_k,
            "steps": self.model.config.sample_steps if self.steps is None else self.steps,
            "context_strategy": self.context_strategy,
            "world": str(self.world),
            "seed_views": self.seed_views,
            "memory_capacity": self.memory_capacity,
            "autocast": str(dtype).removeprefix("torch.") if dtype is not None else "float32",
            "device": str(self.model.device),
            "gelu": self.model.gelu,
            "compile": self.model.compiled,
            "model_config": self.model.config.to_dict(),
        }

    def _check_size(self, height: int, width: int, what: str) -> None:
        cfg = self.model.config
        if (height, width) != (cfg.height, cfg.width):
            source = "the given FrameModel" if self.checkpoint is None else str(self.checkpoint / CONFIG_FILE)
            raise ValueError(
                f"resolution mismatch: {source} is for {cfg.width}x{cfg.height} frames but {what} "
                f"{width}x{height} frames; use a checkpoint trained at {width}x{height} or a resolution of "
                f"{cfg.width}x{cfg.height}"
            )


def _wanted(camera: ModelCamera) -> int:
    """Context views to select: ``warp_k`` for context juggling (``spatial``), ``k`` for the baselines."""
    return camera.warp_k if camera.context_strategy == "spatial" else camera.k


def _warp_context(camera: ModelCamera, ids: list[int]) -> list[int]:
    """The first ``k`` ids (the network's context), then only the observed ones among the rest.

    Views beyond ``k`` enter the warp alone, where a covered pixel is kept as warped: an
    observed view is the world as it was seen, a generated one would copy the camera's own
    softer guess forward (an exploratory closed-loop run, not committed: with generated extras
    the image regime's sharpness in steps 11-50 fell from 0.84 to 0.55).
    """
    if len(ids) <= camera.k or _wanted(camera) == camera.k:
        return ids
    rest = ids[camera.k :]
    observed = [i for i, source in zip(rest, camera.memory.sources(rest), strict=True) if source == "observed"]
    return ids[: camera.k] + observed


def _trust(memory: SpatialMemory, ids: np.ndarray) -> np.ndarray:
    """(B, K) warp priorities of stored frames ``ids``: 0 for observed frames, 1 for generated ones."""
    sources = np.asarray(memory.sources(ids.ravel()))
    return (sources != "observed").astype(np.int64).reshape(ids.shape)


def observe_many(
    cameras: Sequence[ModelCamera], poses: Sequence[np.ndarray], *, depth: bool = False
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """Generate frames for several model cameras that share one :class:`FrameModel`, in ONE call.

    What each camera's own :meth:`ModelCamera.observe` does, for all of them at once: each
    camera picks the context of each of its poses from its own memory with its own ``k`` and
    ``context_strategy``, draws its flow noise from its own generator, and stores its
    generated frames in its own memory. Only the :meth:`FrameModel.generate` call is shared,
    so a batch of envs (a vector env) costs one batched network call per step. With one
    camera this is exactly :meth:`ModelCamera.observe` (which calls it). With several, each
    camera's noise and contexts are the ones its own ``observe`` would use; its frames differ
    from those only by the arithmetic of a larger batch (and of padding views, when cameras
    retrieve different numbers of context frames).

    Args:
        cameras: distinct :class:`ModelCamera` objects, each reset (or given a world), all
            holding the same :class:`FrameModel` object, with the same intrinsics and
            sampling steps.
        poses: for each camera, its (B_i, 4, 4) (or one (4, 4)) camera-to-world poses.
        depth: also return each camera's predicted depths (a model that predicts depth only).

    Returns:
        For each camera, its (B_i, H, W, 3) uint8 frames; with ``depth``, (frames, depths)
        pairs, depths (B_i, H, W) float32 metres as :meth:`ModelCamera.observe_rgbd` gives.

    Raises:
        ValueError: empty or mismatched lists, a camera listed twice, cameras with different
            models, intrinsics or steps, or bad poses.
        TypeError: an entry of ``cameras`` that is not a :class:`ModelCamera`.
        RuntimeError: a camera that has not been reset.
    """
    if depth and cameras and isinstance(cameras[0], ModelCamera) and not cameras[0].has_depth:
        raise cameras[0]._no_depth()
    out = _observe_many(cameras, poses)
    return out if depth else [frames for frames, _ in out]


def _observe_many(
    cameras: Sequence[ModelCamera], poses: Sequence[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """:func:`observe_many`, with each camera's depths (None from a model without depth)."""
    cameras, poses = _check_many(cameras, poses, ModelCamera)
    first = cameras[0]
    model = first.model
    for i, camera in enumerate(cameras[1:], start=1):
        if camera.model is not model:
            raise ValueError(
                f"cameras[{i}] holds another FrameModel than cameras[0]; build them with one shared model: "
                "ModelCamera(checkpoint=frame_model)"
            )
        if camera.intrinsics != first.intrinsics:
            raise ValueError(f"cameras[{i}] has intrinsics {camera.intrinsics}, cameras[0] {first.intrinsics}")
        if camera.steps != first.steps:
            raise ValueError(f"cameras[{i}] samples with steps={camera.steps}, cameras[0] with {first.steps}")
    batches = [_check_poses(p) for p in poses]
    results = _generate(cameras, batches)
    for camera in cameras:
        camera._step += 1
    return results


def _check_many(cameras: Sequence[Camera], poses: Sequence[np.ndarray], kind: type) -> tuple[list, list]:
    """The checks every batched call over several cameras shares; returns both as lists."""
    cameras, poses = list(cameras), list(poses)
    if not cameras:
        raise ValueError(f"cameras is empty: give at least one {kind.__name__}")
    if len(poses) != len(cameras):
        raise ValueError(f"got {len(cameras)} cameras but {len(poses)} pose batches; give one (B_i, 4, 4) per camera")
    for i, camera in enumerate(cameras):
        if not isinstance(camera, kind):
            raise TypeError(f"cameras[{i}] is a {type(camera).__name__}, not a {kind.__name__}")
        if camera.memory is None:
            raise RuntimeError(f"cameras[{i}] is observed before reset(scene, pose) or load_world(path)")
    if len({id(c) for c in cameras}) != len(cameras):
        raise ValueError("a camera is listed twice; pass all of one camera's poses as one (B, 4, 4) batch")
    return cameras, poses


def _generate(cameras: list[ModelCamera], batches: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The shared generate call of :func:`observe_many` for checked cameras and poses.

    Returns:
        For each camera, its frames (B_i, H, W, 3) uint8 and, from a model that predicts depth,
        their depths (B_i, H, W) float32 metres (inf where the model sees nothing within its
        ``max_depth``), else None. Each frame is stored in the camera's memory with its depth.
    """
    first = cameras[0]
    model = first.model
    cap = model.config.max_context
    contexts = [
        [_warp_context(camera, select_context(camera.memory, p, _wanted(camera), camera.context_strategy,
                                              camera.intrinsics, cap)) for p in batch]
        for camera, batch in zip(cameras, batches, strict=True)
    ]  # fmt: skip
    width = max(len(c) for per_camera in contexts for c in per_camera)
    frames, context_poses, context_depths, valid, noise, priority, attend = [], [], [], [], [], [], []
    for camera, batch, per_camera in zip(cameras, batches, contexts, strict=True):
        memory, b = camera.memory, len(batch)
        ids = np.array([c + [c[0]] * (width - len(c)) for c in per_camera], dtype=np.int64)  # (B_i, K)
        valid.append([[j < len(c) for j in range(width)] for c in per_camera])
        attended = camera.k if _wanted(camera) > camera.k else width  # the baselines attend to all they pick
        attend.append([[j < min(len(c), attended) for j in range(width)] for c in per_camera])
        priority.append(_trust(memory, ids))  # (B_i, K): observed 0, generated 1
        frames.append(memory.frames(ids.ravel()).reshape(b, width, *memory.resolution, 3))  # (B_i, K, H, W, 3)
        context_poses.append(memory.poses(ids.ravel()).reshape(b, width, 4, 4))  # (B_i, K, 4, 4)
        if model.needs_depth:  # (B_i, K, H, W) metres, NaN for a stored frame without depth
            context_depths.append(memory.depths(ids.ravel()).reshape(b, width, *memory.resolution))
        # Drawn as the sampler would draw it from this generator, so each stream is the camera's own.
        noise.append(torch.randn((b, 3, *memory.resolution), generator=camera.generator))  # (B_i, 3, H, W)
    valid_all = np.concatenate([np.array(v, dtype=bool).reshape(-1, width) for v in valid])  # (B, K)
    out = model.generate(
        np.concatenate(batches),
        np.concatenate(frames),
        np.concatenate(context_poses),
        first.intrinsics,
        steps=first.steps,
        context_valid=None if valid_all.all() else valid_all,
        noise=torch.cat(noise),
        context_depths=np.concatenate(context_depths) if context_depths else None,
        return_depth=model.predicts_depth,
        context_priority=np.concatenate(priority),
        context_attend=None if all(_wanted(c) == c.k for c in cameras) else
        np.concatenate([np.array(a, dtype=bool).reshape(-1, width) for a in attend]),
    )
    depth = None
    if model.predicts_depth:
        # generate checks the depth (finite, within [min_depth, max_depth]; a NaN raises there,
        # so none reaches a memory); its far limit means nothing was hit, which is inf here.
        out, depth = out
        depth = np.where(depth >= model.config.max_depth, np.inf, depth).astype(np.float32)
    results, start = [], 0
    for camera, batch, per_camera in zip(cameras, batches, contexts, strict=True):
        mine = out[start : start + len(batch)]
        mine_depth = None if depth is None else depth[start : start + len(batch)]
        start += len(batch)
        for i, (frame, pose) in enumerate(zip(mine, batch, strict=True)):
            d = None if mine_depth is None else mine_depth[i]
            camera.memory.add(frame, pose, camera.intrinsics, "generated", step=camera._step + 1, depth=d)
        camera.last_context = per_camera
        results.append((mine, mine_depth))
    return results


#: Metres at which the reprojection camera warps pixels that hit nothing (sky): far enough that
#: moving a few metres does not shift them by a pixel, near enough for float32 arithmetic.
_SKY_DEPTH = 1.0e4


class ReprojectionCamera(MemoryCamera):
    """The no-learning camera: forward-warps the best stored RGB-D frames into the target view.

    For each pose it retrieves up to ``k`` stored frames with depth (context juggling, observed
    frames first, occlusion-aware: :meth:`SpatialMemory.retrieve` with ``fill=True``), warps
    them into the target camera with z-buffered splatting (:func:`rtfm_env.warp.forward_warp`,
    batched in torch over all poses of a call), fuses them with a z-buffer and fills what no
    frame covers by push-pull interpolation (:func:`rtfm_env.warp.fill_holes`, weighted
    toward the farther side of a hole, since disocclusions reveal background). Where no stored
    frame sees anything of the view, the frame is the mean colour of the stored frames.

    It is deterministic and never stores what it renders: its world is exactly what was
    observed, so a place looks the same whenever it is seen again. Depth
    (:meth:`observe_rgbd`) is the fused warped depth, ``inf`` where the warped pixel hit
    nothing (an open sky, warped as a direction) and NaN where no stored frame covers the pixel
    (REP-118's "no valid measurement").

    This is the honest baseline every learned camera must beat, and a fast camera in its own
    right (see ``benchmarks/speed.py``).

    Args:
        k: stored frames warped per target frame.
        world, seed_views, memory_capacity: see :class:`MemoryCamera`; a world file must hold
            depth.
        splat: ``"nearest"`` (z-buffered footprints, sharp) or ``"bilinear"`` (anti-aliased,
            softer, slower); see :mod:`rtfm_env.warp`.
        device: where to warp; None is the CPU.
        depth_tolerance: relative depth within which two views' surfaces count as one when
            fusing; the better-ranked view (earlier in retrieval order) then wins. 0.1 keeps a
            stored view exact at its own pose: a floor at a grazing angle spans several percent
            of depth within one pixel, so a tight tolerance lets other views' nearer samples of
            the same floor win (measured: 2% gives 25 dB at a stored pose, 10% gives it exactly).
        resolution_tolerance: resolution-aware fusion (see :func:`rtfm_env.warp.forward_warp`):
            among the views of the front surface the least magnified wins, so a floor comes
            from the view that saw it from closest; views within this factor of the least
            magnification go by retrieval order. None fuses by retrieval order alone (sharper
            than it in the scan regime: docs/results/closed_loop).
    """

    has_depth = True

    def __init__(
        self,
        k: int = 4,
        world: str | os.PathLike = DEFAULT_WORLD,
        seed_views: int = 1,
        memory_capacity: int | None = None,
        splat: str = "nearest",
        device: str | torch.device | None = None,
        depth_tolerance: float = 0.1,
        resolution_tolerance: float | None = RESOLUTION_TOLERANCE,
    ) -> None:
        super().__init__(world=world, seed_views=seed_views, memory_capacity=memory_capacity)
        if isinstance(depth_tolerance, bool) or not (
            isinstance(depth_tolerance, (int, float)) and 0.0 <= depth_tolerance <= 1.0
        ):
            raise ValueError(f"depth_tolerance must be a number in [0, 1], got {depth_tolerance!r}")
        self.depth_tolerance = float(depth_tolerance)
        if resolution_tolerance is not None and (
            isinstance(resolution_tolerance, bool)
            or not isinstance(resolution_tolerance, (int, float))
            or not (1.0 <= resolution_tolerance < math.inf)
        ):
            raise ValueError(f"resolution_tolerance must be None or a finite number >= 1, got {resolution_tolerance!r}")
        self.resolution_tolerance = None if resolution_tolerance is None else float(resolution_tolerance)
        if not (_is_int(k) and 1 <= k <= 64):
            raise ValueError(f"k must be an integer in [1, 64], got {k!r}")
        if not isinstance(splat, str) or splat not in ("nearest", "bilinear"):
            raise ValueError(f"unknown splat {splat!r}; valid: ['nearest', 'bilinear']")
        if isinstance(device, (bool, np.bool_)):
            raise ValueError(f"device must be None, a device name such as 'cpu' or a torch.device, got {device!r}")
        self.k = int(k)
        self.splat = splat
        self.device = torch.device("cpu" if device is None else device)
        self._fallback: np.ndarray | None = None  # mean colour of the stored frames, in [0, 1]

    def reset_rgbd(self, scene: Scene, pose: np.ndarray, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`reset`, with the start frame's depth (the observed depth in a regime)."""
        self._fallback = None
        frame, depth = self._reset(scene, pose, seed)
        return frame, depth

    def observe_rgbd(self, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames (B, H, W, 3) uint8 and depths (B, H, W) float32 metres (NaN where nothing covers)."""
        return self._observe(poses)

    def load_world(self, path: str | os.PathLike) -> None:
        """See :meth:`MemoryCamera.load_world`; the file must hold frames with depth."""
        super().load_world(path)
        self._fallback = None

    def _check_world_memory(self, memory: SpatialMemory, path: str | os.PathLike) -> None:
        if memory.depth_fraction == 0.0:
            raise ValueError(
                f"the world in {path} has no depth, and the reprojection camera warps frames by their depth; "
                "rebuild it from RGB-D frames (a regime world='walk' or 'scan' saved with save_world, or a recording "
                "with depth), or use camera='model'"
            )

    @property
    def options(self) -> dict[str, Any]:
        """JSON-ready settings of this camera."""
        return {
            "camera": "reprojection",
            "k": self.k,
            "world": str(self.world),
            "seed_views": self.seed_views,
            "memory_capacity": self.memory_capacity,
            "splat": self.splat,
            "depth_tolerance": self.depth_tolerance,
            "resolution_tolerance": self.resolution_tolerance,
            "device": str(self.device),
        }

    def _context(self, pose: np.ndarray) -> list[int]:
        memory = self.memory
        ids = memory.retrieve(pose, self.k, self.intrinsics, fill=True)
        return [i for i, ok in zip(ids, memory.has_depth(ids), strict=True) if ok]

    def _produce(self, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _reproject([self], [poses])[0]

    def _fallback_colour(self) -> np.ndarray:
        """Mean colour in [0, 1] of (up to 256 of) the stored observed frames, computed once per memory."""
        if self._fallback is None:
            memory = self.memory
            observed = memory.ids[np.array(memory.sources(memory.ids)) == "observed"][:256]
            self._fallback = memory.frames(observed if len(observed) else memory.ids[:256]).mean(axis=(0, 1, 2)) / 255.0
        return self._fallback


def reproject_many(
    cameras: Sequence[ReprojectionCamera], poses: Sequence[np.ndarray], *, depth: bool = False
) -> list[np.ndarray] | list[tuple[np.ndarray, np.ndarray]]:
    """Frames of several reprojection cameras in ONE batched warp (what a vector env needs).

    Each camera retrieves its own context from its own memory; the warps, fusions and fills of
    every pose of every camera run as one batch. The frames equal each camera's own
    :meth:`~ReprojectionCamera.observe`.

    Args:
        cameras: distinct reset :class:`ReprojectionCamera` objects with the same intrinsics,
            device, splat and depth tolerance.
        poses: for each camera, its (B_i, 4, 4) (or one (4, 4)) camera-to-world poses.
        depth: also return each camera's depths, as :meth:`~ReprojectionCamera.observe_rgbd`.

    Returns:
        For each camera, its (B_i, H, W, 3) uint8 frames, or (frames, (B_i, H, W) depths).
    """
    cameras, poses = _check_many(cameras, poses, ReprojectionCamera)
    first = cameras[0]
    settings = (first.intrinsics, first.device, first.splat, first.depth_tolerance, first.resolution_tolerance)
    for i, camera in enumerate(cameras[1:], start=1):
        same = (camera.intrinsics, camera.device, camera.splat, camera.depth_tolerance, camera.resolution_tolerance)
        if same != settings:
            raise ValueError(
                f"cameras[{i}] differs from cameras[0] in intrinsics, device, splat, depth or resolution tolerance"
            )
    batches = [_check_poses(p) for p in poses]
    out = _reproject(cameras, batches)
    for camera in cameras:
        camera._step += 1
    return out if depth else [frames for frames, _ in out]


def _reproject(
    cameras: list[ReprojectionCamera], batches: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Warp, fuse and fill for checked cameras and poses; (frames, depths) per camera."""
    from rtfm_env.warp import fill_holes, forward_warp

    first = cameras[0]
    h, w = first.memory.resolution
    contexts = [[camera._context(p) for p in batch] for camera, batch in zip(cameras, batches, strict=True)]
    for camera, per_camera in zip(cameras, contexts, strict=True):
        camera.last_context = per_camera
    flat = [c for per_camera in contexts for c in per_camera]
    width = max(1, max(len(c) for c in flat))
    frames, depths, src, valid, fallback, priority = [], [], [], [], [], []
    for camera, per_camera in zip(cameras, contexts, strict=True):
        memory = camera.memory
        some = next((c[0] for c in per_camera if c), int(memory.ids[0]))
        ids = np.array([c + [c[0] if c else some] * (width - len(c)) for c in per_camera], dtype=np.int64)  # (B_i, K)
        priority.append(_trust(memory, ids))  # (B_i, K): observed 0, generated 1 (a loaded world may hold both)
        n = len(per_camera)
        frames.append(memory.frames(ids.ravel()).reshape(n, width, h, w, 3))  # (B_i, K, H, W, 3)
        depths.append(memory.depths(ids.ravel()).reshape(n, width, h, w))  # (B_i, K, H, W)
        src.append(memory.poses(ids.ravel()).reshape(n, width, 4, 4))  # (B_i, K, 4, 4)
        valid.append(np.array([[j < len(c) for j in range(width)] for c in per_camera], dtype=bool))  # (B_i, K)
        fallback.append(np.repeat(camera._fallback_colour()[None], n, axis=0))  # (B_i, 3)
    depth_in = np.concatenate(depths)
    # Pixels that hit nothing (an open sky) are directions, not points: warp them as points at a
    # far distance so a turn moves them as it should, and report them as inf again.
    depth_in = np.where(np.isinf(depth_in), np.float32(_SKY_DEPTH), depth_in)
    device = first.device
    with torch.no_grad():
        res = forward_warp(
            torch.from_numpy(np.concatenate(frames)).to(device),
            torch.from_numpy(depth_in).to(device),
            torch.from_numpy(np.concatenate(src)).to(device),
            torch.from_numpy(np.ascontiguousarray(np.concatenate(batches))).to(device),
            first.intrinsics,
            valid=torch.from_numpy(np.concatenate(valid)).to(device),
            splat=first.splat,
            depth_tolerance=first.depth_tolerance,
            resolution_tolerance=first.resolution_tolerance,
            priority=torch.from_numpy(np.concatenate(priority)).to(device),
            per_view=False,  # only the fused view is shown
        )
        rgb = fill_holes(res.fused_rgb, res.fused_mask, depth=res.fused_depth)  # (B, H, W, 3)
        # An image that no stored frame covers at all shows its own camera's mean colour.
        empty = ~res.fused_mask.flatten(1).any(dim=1)  # (B,)
        colours = torch.as_tensor(np.concatenate(fallback), dtype=torch.float32, device=rgb.device)  # (B, 3)
        rgb = torch.where(empty[:, None, None, None], colours[:, None, None, :], rgb)
        out = (rgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()
        depth = torch.where(res.fused_mask, res.fused_depth, torch.nan)
        depth = torch.where(depth >= 0.5 * _SKY_DEPTH, torch.inf, depth).cpu().numpy().astype(np.float32)
    results, start = [], 0
    for batch in batches:
        results.append((out[start : start + len(batch)], depth[start : start + len(batch)]))
        start += len(batch)
    return results


class NearestViewCamera(MemoryCamera):
    """A no-learning baseline: shows the stored observed frame that best sees the target view.

    For each pose it retrieves the single best stored frame (context juggling, observed frames
    first) and shows it unchanged. It never stores what it shows. Cheap, sharp and wrong
    wherever the view differs from a stored one: the floor a learned camera must clear.

    Args:
        world, seed_views, memory_capacity: see :class:`MemoryCamera`.
    """

    def __init__(
        self, world: str | os.PathLike = DEFAULT_WORLD, seed_views: int = 1, memory_capacity: int | None = None
    ) -> None:
        super().__init__(world=world, seed_views=seed_views, memory_capacity=memory_capacity)

    @property
    def options(self) -> dict[str, Any]:
        """JSON-ready settings of this camera."""
        return {"camera": "nearest", "world": str(self.world), "seed_views": self.seed_views}

    def _produce(self, poses: np.ndarray) -> tuple[np.ndarray, None]:
        memory = self.memory
        ids = [memory.retrieve(p, 1, self.intrinsics, fill=True)[:1] or memory.ids[:1].tolist() for p in poses]
        self.last_context = ids
        return memory.frames([i[0] for i in ids]), None


#: Camera names accepted by envs and the ROS node.
CAMERAS: dict[str, type[Camera]] = {
    "ground_truth": GroundTruthCamera,
    "model": ModelCamera,
    "reprojection": ReprojectionCamera,
    "nearest": NearestViewCamera,
}


def make_camera(name: str, **kwargs: Any) -> Camera:
    """Instantiate a camera by name; unknown names fail with the valid choices."""
    if name not in CAMERAS:
        raise ValueError(f"unknown camera {name!r}; valid cameras: {sorted(CAMERAS)}")
    return CAMERAS[name](**kwargs)
