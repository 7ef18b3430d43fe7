"""``rtfm-env record``: record MiniWorld episodes of posed frames as shards plus a manifest.

Examples::

    rtfm-env record --envs Maze OneRoom --episodes 64 --steps 128 --res 64 --out data/train
    rtfm-env record --split heldout --envs YMaze --episodes 8 --out data/heldout

Each env's episodes are cut into shards of ``--episodes-per-shard`` episodes. A shard's content
is a deterministic function of (``--seed``, env id, shard index) and the other options: every
episode's layout seed and trajectory seed are derived from the base seed, the env id and the
episode's index, and the trajectory kinds cycle through ``--kinds``. So the recording is
resumable: re-running the same command skips the shards the manifest lists (their sha256 is
checked), removes temp files a crash left behind, and records the rest. Re-running with other
options into the same directory is refused.

Splits: ``--split train`` (the default) accepts only ids in ``rtfm_env.scenes.TRAIN_IDS``;
``--split heldout`` accepts any other MiniWorld id and refuses training ids.

Depth: every frame's ground-truth depth (``Scene.render_depth``, metres along the optical axis,
inf where nothing was hit) is recorded with it unless ``--no-depth`` is given; shards store it
as float16 (see :mod:`rtfm_env.data.shards`). Depth on or off is part of the config, so a
recording made one way is never resumed the other.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from rtfm_env.data.shards import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SHARD_SUFFIX,
    SPLITS,
    Episode,
    EpisodeInfo,
    Manifest,
    ShardEntry,
    read_manifest,
    remove_stale_temp_files,
    sha256_file,
    shard_name,
    write_manifest,
    write_shard,
)
from rtfm_env.data.trajectories import TRAJECTORY_KINDS, rollout
from rtfm_env.geometry import Intrinsics, KinematicsConfig

if TYPE_CHECKING:  # importing rtfm_env.scenes loads MiniWorld and its OpenGL context
    from rtfm_env.scenes.base import Scene

__all__ = [
    "RecordConfig",
    "ShardPlan",
    "RecordSummary",
    "ConfigMismatchError",
    "resolve_envs",
    "episode_seeds",
    "plan_shards",
    "record_episode",
    "record",
    "add_arguments",
    "run",
]


def _opt(help: str, **argparse_kwargs: object) -> dict:  # noqa: A002 (argparse's own name)
    return {"help": help, **argparse_kwargs}


@dataclass
class RecordConfig:
    """Options of a recording; the ``record`` command line is generated from these fields."""

    envs: list[str] | None = field(
        default=None,
        metadata=_opt("env ids (MiniWorld-Maze-v0) or short names (Maze); default: every id of the split",
                      nargs="+", metavar="ID"),
    )
    episodes: int = field(default=8, metadata=_opt("episodes per env", type=int, metavar="N"))
    steps: int = field(default=128, metadata=_opt("frames per episode", type=int, metavar="T"))
    res: int = field(default=64, metadata=_opt("frame width and height, pixels", type=int, metavar="PX"))
    fov: float = field(default=60.0, metadata=_opt("vertical field of view, degrees", type=float, metavar="DEG"))
    out: str | None = field(default=None, metadata=_opt("output directory; default: data/<split>", metavar="DIR"))
    split: str = field(default="train", metadata=_opt("which env ids may be recorded", choices=list(SPLITS)))
    seed: int = field(default=0, metadata=_opt("base seed of every layout and trajectory, >= 0", type=int, metavar="S"))
    episodes_per_shard: int = field(default=8, metadata=_opt("episodes per shard file", type=int, metavar="N"))
    kinds: list[str] = field(
        default_factory=lambda: list(TRAJECTORY_KINDS),
        metadata=_opt("trajectory kinds, cycled through episode by episode", nargs="+",
                      choices=list(TRAJECTORY_KINDS), metavar="KIND"),
    )
    # A switch: the command line has only the flag that turns it off (see add_arguments).
    depth: bool = field(
        default=True,
        metadata=_opt("record RGB only, without per-frame depth", action="store_false", flag="--no-depth"),
    )

    def validate(self) -> None:
        """Raise ValueError on an out-of-range option (env ids are checked by :func:`resolve_envs`)."""
        for name in ("episodes", "episodes_per_shard"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")
        if self.res < 8:
            raise ValueError(f"--res must be >= 8 pixels, got {self.res}")
        if not (math.isfinite(self.fov) and 0.0 < self.fov < 180.0):
            raise ValueError(f"--fov must be in (0, 180) degrees, got {self.fov}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; valid splits: {list(SPLITS)}")
        if not self.kinds:
            raise ValueError(f"--kinds needs at least one kind; valid kinds: {list(TRAJECTORY_KINDS)}")
        for k in self.kinds:
            if k not in TRAJECTORY_KINDS:
                raise ValueError(f"unknown trajectory kind {k!r}; valid kinds: {list(TRAJECTORY_KINDS)}")

    @property
    def intrinsics(self) -> Intrinsics:
        """The camera of every frame."""
        return Intrinsics(int(self.res), int(self.res), float(self.fov))

    @property
    def out_dir(self) -> Path:
        """The output directory (``data/<split>`` unless ``out`` is set)."""
        return Path(self.out) if self.out else Path("data") / self.split

    def manifest_config(self, env_ids: list[str]) -> dict:
        """What the manifest records and a resume compares: every option that shapes the shards."""
        return {
            "envs": list(env_ids),
            "episodes": int(self.episodes),
            "steps": int(self.steps),
            "res": int(self.res),
            "fov": float(self.fov),
            "split": self.split,
            "seed": int(self.seed),
            "episodes_per_shard": int(self.episodes_per_shard),
            "kinds": list(self.kinds),
            # The scenes' step sizes shape every trajectory, so a change must not resume silently.
            "kinematics": asdict(KinematicsConfig()),
            "format_version": FORMAT_VERSION,
            # Shards with and without depth differ, so depth on/off must not resume each other.
            "depth": bool(self.depth),
        }


class ConfigMismatchError(ValueError):
    """A recording directory was made with other options than the ones given now."""


@dataclass(frozen=True)
class ShardPlan:
    """One shard to record: which env and which of its episodes."""

    env_id: str
    shard_index: int
    episodes: range  # episode indices within the env's recording

    @property
    def file(self) -> str:
        """The shard's file name."""
        return shard_name(self.env_id, self.shard_index)


@dataclass
class RecordSummary:
    """What a :func:`record` call did."""

    root: Path
    manifest: Manifest
    written: list[str]  # shard files recorded by this call
    skipped: list[str]  # shard files already finished and verified
    removed_temp: list[str]  # temp files of an interrupted run that were deleted
    frames: int  # frames recorded by this call
    seconds: float  # wall time of this call


# --------------------------------------------------------------------------------------
# Env ids, seeds and the plan
# --------------------------------------------------------------------------------------


def resolve_envs(names: list[str] | None, split: str) -> list[str]:
    """Full env ids for ``names`` (or every id of ``split``), checked against the split.

    Raises:
        ValueError: an unknown id (the message lists the valid ids), a non-training id in the
            train split, or a training id in the heldout split.
    """
    from rtfm_env.scenes import HELDOUT_IDS, TRAIN_IDS, resolve_env_id  # loads MiniWorld: import late

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    if not names:
        return list(TRAIN_IDS if split == "train" else HELDOUT_IDS)
    out: list[str] = []
    for name in names:
        env_id = resolve_env_id(name)
        if split == "train" and env_id not in TRAIN_IDS:
            raise ValueError(
                f"{env_id} is not a training env id; the train split accepts only {list(TRAIN_IDS)}. "
                "Record held-out ids with --split heldout."
            )
        if split == "heldout" and env_id in TRAIN_IDS:
            raise ValueError(
                f"{env_id} is a training env id; recording it as held-out data would leak training scenes "
                f"into evaluation. Held-out ids: {list(HELDOUT_IDS)} (or any MiniWorld id outside {list(TRAIN_IDS)})."
            )
        if env_id not in out:
            out.append(env_id)
    return out


def episode_seeds(base_seed: int, env_id: str, episode: int) -> tuple[int, int]:
    """(layout seed, trajectory seed) of episode ``episode`` of ``env_id``: stable across runs and machines."""
    env_key = int.from_bytes(hashlib.sha256(env_id.encode()).digest()[:4], "little")
    layout, trajectory = np.random.SeedSequence([int(base_seed), env_key, int(episode)]).generate_state(2)
    return int(layout), int(trajectory)


def plan_shards(env_ids: list[str], episodes: int, episodes_per_shard: int) -> list[ShardPlan]:
    """Every shard of a recording, env by env; the last shard of an env may hold fewer episodes."""
    plan = []
    for env_id in env_ids:
        for index, first in enumerate(range(0, episodes, episodes_per_shard)):
            plan.append(ShardPlan(env_id, index, range(first, min(first + episodes_per_shard, episodes))))
    return plan


# --------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------


def record_episode(
    scene: Scene,
    env_id: str,
    episode: int,
    cfg: RecordConfig,
    on_frame: Callable[[], None] | None = None,
) -> Episode:
    """Record one episode: reset the layout, roll out its trajectory, render every pose.

    Args:
        scene: a :class:`~rtfm_env.scenes.base.Scene` of ``env_id`` rendering at ``cfg.intrinsics``.
        env_id: the env id (seeds are derived from it).
        episode: the episode's index within the env's recording.
        cfg: the recording options (base seed, steps, kinds, depth).
        on_frame: called after each frame is rendered (progress).

    Returns:
        The episode, with ``depth`` (T, H, W) float32 metres from ``scene.render_depth`` when
        ``cfg.depth``, else None.

    Raises:
        RuntimeError: the scene has no ground-truth renderer (or no depth renderer when
            ``cfg.depth``), or renders depth of the wrong shape.
    """
    layout_seed, trajectory_seed = episode_seeds(cfg.seed, env_id, episode)
    kind = cfg.kinds[episode % len(cfg.kinds)]
    start = scene.reset(layout_seed)
    traj = rollout(kind, scene, start, cfg.steps, trajectory_seed)
    poses = traj.poses()
    frames = np.empty((len(traj), cfg.res, cfg.res, 3), dtype=np.uint8)
    depth = np.empty((len(traj), cfg.res, cfg.res), dtype=np.float32) if cfg.depth else None
    for i, pose in enumerate(poses):
        frame = scene.render(pose)
        if frame is None:
            raise RuntimeError(f"scene {env_id} has no ground-truth renderer; cannot record it")
        frames[i] = frame
        if depth is not None:
            d = scene.render_depth(pose)
            if d is None:
                raise RuntimeError(f"scene {env_id} has no depth renderer; record it with --no-depth")
            if np.shape(d) != depth.shape[1:]:
                raise RuntimeError(f"scene {env_id} rendered depth of shape {np.shape(d)}, expected {depth.shape[1:]}")
            depth[i] = d
        if on_frame is not None:
            on_frame()
    return Episode(
        info=EpisodeInfo(episode, layout_seed, trajectory_seed, kind, len(traj)),
        frames=frames,
        poses=poses,
        states=traj.state_array(),
        actions=traj.actions,
        collided=traj.collided,
        depth=depth,
    )


def _make_scene(env_id: str, intrinsics: Intrinsics) -> Scene:
    from rtfm_env.scenes import MiniWorldScene  # loads MiniWorld: import late

    return MiniWorldScene(
        env_id, width=intrinsics.width, height=intrinsics.height, fov_y=intrinsics.fov_y, kinematics=KinematicsConfig()
    )


def _check_resume(root: Path, config: dict) -> Manifest | None:
    """The manifest of an earlier run with the same config, None for a fresh directory."""
    if not (root / MANIFEST_NAME).exists():
        stray = sorted(p.name for p in root.glob("*" + SHARD_SUFFIX))
        if stray:
            raise ValueError(
                f"{root} holds shard files ({', '.join(stray[:3])}{', ...' if len(stray) > 3 else ''}) but no "
                f"{MANIFEST_NAME}; refusing to overwrite them. Use an empty --out directory."
            )
        return None
    manifest = read_manifest(root)
    if manifest.config != config:
        keys = sorted(set(manifest.config) | set(config))
        diffs = [f"{k}: recorded {manifest.config.get(k)!r}, now {config.get(k)!r}"
                 for k in keys if manifest.config.get(k) != config.get(k)]
        raise ConfigMismatchError(
            f"config mismatch: {root} was recorded with other options ({'; '.join(diffs)}). "
            "Re-run with the same options to finish it, or record into a new --out directory."
        )
    return manifest


def record(cfg: RecordConfig, progress: bool = True) -> RecordSummary:
    """Record (or finish recording) the dataset ``cfg`` describes into ``cfg.out_dir``.

    Shards the manifest already lists are kept when their file's sha256 matches; the others
    are recorded and added to the manifest one by one, each written atomically, so an
    interrupted call loses at most the shard in progress.

    Raises:
        ValueError: bad options, an unknown env id, an env id outside the split, or shard files
            without a manifest.
        ConfigMismatchError: ``cfg.out_dir`` was recorded with other options.
        ShardFormatError: ``cfg.out_dir`` holds a corrupt or foreign manifest.
    """
    t0 = time.perf_counter()
    cfg.validate()
    env_ids = resolve_envs(cfg.envs, cfg.split)
    config = cfg.manifest_config(env_ids)
    root = cfg.out_dir
    root.mkdir(parents=True, exist_ok=True)
    removed = [p.name for p in remove_stale_temp_files(root)]
    manifest = _check_resume(root, config) or Manifest(split=cfg.split, config=config)

    plan = plan_shards(env_ids, cfg.episodes, cfg.episodes_per_shard)
    listed = {e.file: e for e in manifest.shards}
    done: dict[str, ShardEntry] = {}
    for p in plan:
        entry = listed.get(p.file)
        if entry is not None and (root / p.file).is_file() and sha256_file(root / p.file) == entry.sha256:
            done[p.file] = entry
    manifest.shards = list(done.values())
    manifest.complete = len(done) == len(plan)
    write_manifest(root, manifest)

    todo = [p for p in plan if p.file not in done]
    frames_done = sum(len(p.episodes) for p in plan if p.file in done) * cfg.steps
    frames_total = sum(len(p.episodes) for p in plan) * cfg.steps
    written: list[str] = []
    bar = tqdm(total=frames_total, initial=frames_done, unit="frame", desc="record", disable=not progress)
    scene, scene_env = None, None
    try:
        for p in todo:
            if scene_env != p.env_id:
                if scene is not None:
                    scene.close()
                # One scene per env id, reset per episode: MiniWorld leaks memory per gym.make.
                scene, scene_env = _make_scene(p.env_id, cfg.intrinsics), p.env_id
            bar.set_postfix_str(p.file)
            episodes = [record_episode(scene, p.env_id, e, cfg, on_frame=lambda: bar.update(1)) for e in p.episodes]
            entry = write_shard(
                root / p.file, episodes, env_id=p.env_id, split=cfg.split, shard_index=p.shard_index,
                intrinsics=cfg.intrinsics,
            )
            manifest.shards.append(entry)
            manifest.complete = len(manifest.shards) == len(plan)
            write_manifest(root, manifest)
            written.append(p.file)
    finally:
        bar.close()
        if scene is not None:
            scene.close()
    return RecordSummary(
        root=root,
        manifest=manifest,
        written=written,
        skipped=[p.file for p in plan if p.file in done],
        removed_temp=removed,
        frames=sum(len(p.episodes) for p in todo) * cfg.steps,
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``rtfm-env record`` (one per :class:`RecordConfig` field) to ``parser``."""
    defaults = RecordConfig()
    for f in fields(RecordConfig):
        kwargs = dict(f.metadata)
        default = getattr(defaults, f.name)
        flag = kwargs.pop("flag", None)
        if flag is not None:  # a switch with one flag (--no-depth): its default goes without saying
            parser.add_argument(flag, dest=f.name, default=default, **kwargs)
            continue
        if default is not None:
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            kwargs["help"] = f"{kwargs['help']} (default: {shown})"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=default, **kwargs)
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``rtfm-env record`` with parsed ``args``; returns the exit code (2 on bad input)."""
    cfg = RecordConfig(**{f.name: getattr(args, f.name) for f in fields(RecordConfig)})
    try:
        summary = record(cfg, progress=getattr(args, "progress", True))
    except (KeyError, ValueError) as e:  # ShardFormatError and ConfigMismatchError are ValueErrors
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"rtfm-env record: error: {msg}", file=sys.stderr)
        return 2
    m = summary.manifest
    fps = summary.frames / summary.seconds if summary.seconds > 0 else float("nan")
    print(
        f"{summary.root}: {len(summary.written)} shards recorded ({summary.frames} frames, {fps:.0f} frames/s), "
        f"{len(summary.skipped)} already finished; {len(m.shards)} shards, "
        f"{sum(e.frames for e in m.shards)} frames in all ({'RGB-D' if cfg.depth else 'RGB only'}); split {m.split}; "
        f"manifest hash {m.shard_hash()}" + ("" if m.complete else " (incomplete)")
    )
    return 0

