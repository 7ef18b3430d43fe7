"""The revisit-consistency evaluator.

Does a place look the same when the camera comes back, and what does each frame cost as the
interaction grows?

For every env id and episode (one MiniWorld layout per episode) the evaluator builds the suite of
:mod:`rtfm_env.eval.trajectories` (out-and-back, loop, turn360, tour) and drives each camera
strategy along exactly the same poses, with the same seeds:

* ``spatial``, ``last_k``, ``first_only``, ``all``: the model camera with that context strategy
  (:data:`rtfm_env.cameras.CONTEXT_STRATEGIES`; ``all`` is capped at the model's max_context,
  or at ``all_cap`` stored frames, run with the same weights and that context limit);
* ``ground_truth``: the scene's renderer, the ceiling.

Per step it records PSNR and SSIM against the ground truth, the wall time of the camera call and
the memory size; per revisit (:func:`~rtfm_env.eval.trajectories.find_revisits`), PSNR and SSIM
between the frame shown at the first visit and the one shown at the revisit, with the steps
between them. Each finished episode is saved atomically as ``episodes/<env>/<episode>.json`` (and
an image strip), so an interrupted run resumes where it stopped; ``results.json`` (a compact
summary: the config, the checkpoint's SHA-256, the machine, the aggregated numbers and curves the
report needs; the layout is described in :mod:`rtfm_env.eval.results`) and the report
(:mod:`rtfm_env.eval.report`) are written at the end.

With ``--world PATH`` (a memory saved by ``ModelCamera.save_world``) there is no scene and no
ground truth: trajectories start at stored poses and stay within ``world_radius`` of the stored
cameras, and only revisit consistency and cost are reported.

    rtfm-env eval revisit --envs YMaze WallGap Sign --episodes 4 --out docs/results/revisit
    rtfm-env eval revisit --world my_world.safetensors --episodes 2 --out eval_world
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import zlib
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import imageio.v2 as imageio
import numpy as np
from scipy.spatial import cKDTree
from tqdm import tqdm

from rtfm_env.data.shards import atomic_write_bytes, sha256_file
from rtfm_env.eval.metrics import PSNR_CAP, per_step, revisit_consistency, sharpness
from rtfm_env.eval.report import all_cap, headline_lines, strip_entries, summarize, write_report
from rtfm_env.eval.results import (
    CONFIG_FILE,
    EPISODE_FORMAT,
    EPISODES_DIR,
    FORMAT_VERSION,
    MODEL_STRATEGIES,
    OUTPUT_NAMES,
    RESULTS_FILE,
    RESULTS_FORMAT,
    RESULTS_VERSION,
    STRATEGIES,
    RevisitConfig,
    config_hash,
    episode_path,
    n_episodes,
    pack_episodes,
    parse_episode,
    read_episode_archive,
    write_json,
)
from rtfm_env.eval.trajectories import SUITE_KINDS, find_revisits, make_suite_trajectory
from rtfm_env.geometry import DiscreteAction, KinematicsConfig, RobotState, apply_discrete, pose_to_state
from rtfm_env.provenance import machine_info

__all__ = [
    "STRATEGIES",
    "MODEL_STRATEGIES",
    "RevisitConfig",
    "ConfigMismatchError",
    "prepare_out_dir",
    "run_episode",
    "evaluate",
    "rebuild_report",
    "add_arguments",
    "run",
]


class ConfigMismatchError(ValueError):
    """``--resume`` of a directory written with other settings or another checkpoint."""


# --------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------


def _resolve_strategies(cfg: RevisitConfig) -> list[str]:
    wanted = cfg.strategies
    if wanted is None:
        return list(MODEL_STRATEGIES) if cfg.world else list(STRATEGIES)
    unknown = [s for s in wanted if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategy {unknown[0]!r}; valid strategies: {list(STRATEGIES)}")
    if not wanted:
        raise ValueError(f"no strategy given; valid strategies: {list(STRATEGIES)}")
    if cfg.world and "ground_truth" in wanted:
        raise ValueError("strategy 'ground_truth' needs a scene: a --world has no ground truth")
    return list(dict.fromkeys(wanted))


def _validate(cfg: RevisitConfig) -> tuple[list[str], list[str]]:
    """Checks every option; returns (env ids or the world's label, strategies)."""
    strategies = _resolve_strategies(cfg)
    unknown = [k for k in cfg.kinds if k not in SUITE_KINDS]
    if unknown or not cfg.kinds:
        bad = unknown[0] if unknown else None
        raise ValueError(f"unknown trajectory kind {bad!r}; valid kinds: {list(SUITE_KINDS)}")
    if cfg.all_cap is not None and (isinstance(cfg.all_cap, bool) or not isinstance(cfg.all_cap, int)
                                    or cfg.all_cap < 1):
        raise ValueError(f"all_cap must be None (the model's max_context) or an integer >= 1, got {cfg.all_cap!r}")
    if cfg.warp_k is not None and (isinstance(cfg.warp_k, bool) or not isinstance(cfg.warp_k, int)
                                   or cfg.warp_k < cfg.k):
        raise ValueError(f"warp_k must be None (the camera's default) or an integer >= k ({cfg.k}), got {cfg.warp_k!r}")
    if cfg.gelu not in (None, "tanh", "none"):
        raise ValueError(f"unknown gelu {cfg.gelu!r}; valid: ['tanh', 'none'] (or None for the default)")
    for name in ("episodes", "tour_every"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    cfg.suite  # noqa: B018 (SuiteConfig validates the lengths)
    for name in ("position_tol", "heading_tol", "world_radius"):
        value = getattr(cfg, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if cfg.world:
        if not Path(cfg.world).is_file():
            raise FileNotFoundError(f"world file {cfg.world} does not exist")
        return [f"world:{Path(cfg.world).name}"], strategies
    from rtfm_env.scenes import resolve_env_id

    if not cfg.envs:
        raise ValueError("no env id given (--envs) and no --world")
    return [resolve_env_id(e) for e in cfg.envs], strategies


def prepare_out_dir(out: str | os.PathLike, resume: bool, overwrite: bool) -> Path:
    """Make ``out`` ready for an evaluation.

    A missing or empty directory is used as is. An existing one is refused unless ``resume``
    (keep its finished episodes) or ``overwrite`` (delete a previous evaluation's files first;
    anything else in it makes ``overwrite`` refuse too, so a wrong path loses nothing).

    Raises:
        FileExistsError: ``out`` exists and is not empty, with neither flag; or it holds files
            that no evaluation writes and ``overwrite`` is given; or it is a file.
        ValueError: both flags.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output path {out} is a file, not a directory")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not (resume or overwrite):
        raise FileExistsError(
            f"output directory {out} exists and is not empty; pass --resume to finish or extend that "
            "evaluation, --overwrite to replace it, or choose another --out"
        )
    if entries and overwrite:
        foreign = [e for e in entries if e not in OUTPUT_NAMES and not e.startswith(".")]
        if foreign:
            raise FileExistsError(
                f"refusing to overwrite {out}: it holds files that no evaluation writes ({', '.join(foreign[:5])})"
            )
        for e in entries:
            p = out / e
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _config_record(cfg: RevisitConfig, checkpoint: dict | None) -> dict:
    return {"format": RESULTS_FORMAT, "version": FORMAT_VERSION, "identity": cfg.identity(), "checkpoint": checkpoint}


def _check_resume(out: Path, record: dict) -> None:
    path = out / CONFIG_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigMismatchError(f"{path} is not readable JSON ({e}); use --overwrite or another --out") from e
    if (old.get("checkpoint") or {}).get("sha256") != (record["checkpoint"] or {}).get("sha256"):
        raise ConfigMismatchError(
            f"--resume with a checkpoint that does not match: {out} was evaluated with "
            f"{(old.get('checkpoint') or {}).get('sha256')} but this one is "
            f"{(record['checkpoint'] or {}).get('sha256')}; "
            "use --overwrite or another --out"
        )
    a, b = old.get("identity", {}), record["identity"]
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed)
        raise ConfigMismatchError(
            f"--resume with other settings than {path} ({diffs}); use --overwrite or another --out"
        )


# --------------------------------------------------------------------------------------
# Cameras and worlds
# --------------------------------------------------------------------------------------


def _checkpoint_info(checkpoint: str | None) -> tuple[Path, dict]:
    from rtfm_env.cameras import DEFAULT_CHECKPOINT
    from rtfm_env.model.checkpoint import CONFIG_FILE as CHECKPOINT_CONFIG
    from rtfm_env.model.checkpoint import WEIGHTS_FILE, CheckpointError

    path = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {path} has no {WEIGHTS_FILE}")
    try:
        step = json.loads((path / CHECKPOINT_CONFIG).read_text()).get("extra", {}).get("step")
    except (OSError, ValueError, AttributeError):
        step = None  # loading the checkpoint reports what is wrong with it
    shown = os.path.relpath(path) if path.resolve().is_relative_to(Path.cwd()) else str(path)
    return path, {"path": shown, "sha256": sha256_file(weights), "step": step}


class _Footprint:
    """Where a camera may go in a saved world: within ``radius`` of a stored camera centre.

    Quacks like a :class:`~rtfm_env.scenes.base.Scene` for the trajectory generators
    (``move``, ``is_free``, ``kinematics``); a world has no walls to collide with, so staying
    where the world has been seen plays their part.
    """

    def __init__(self, poses: np.ndarray, radius: float, kinematics: KinematicsConfig | None = None) -> None:
        self.kinematics = kinematics or KinematicsConfig()
        self.radius = float(radius)
        self._tree = cKDTree(poses[:, [0, 2], 3])
        self.env_id = "world"

    def is_free(self, x: float, z: float) -> bool:
        """True within ``radius`` metres of a stored camera centre (on the floor plane)."""
        return bool(self._tree.query([x, z])[0] <= self.radius)

    def move(self, state: RobotState, action: int) -> tuple[RobotState, bool]:
        """The discrete move, or no move (collided) when it would leave the footprint."""
        new = apply_discrete(state, action, self.kinematics)
        if int(action) == DiscreteAction.FORWARD and not self.is_free(new.x, new.z):
            return state, True
        return new, False


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _env_code(env: str) -> int:
    return zlib.crc32(env.encode())


# --------------------------------------------------------------------------------------
# One episode
# --------------------------------------------------------------------------------------


def _drive(
    camera: Any, poses: np.ndarray, scene: Any, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Frames, per-call wall and CPU times (ms) and memory sizes along ``poses``, one call per pose.

    With a scene, frame 0 is the camera's reset frame; without one (a loaded world) frame 0 is
    generated like the others. The CPU time is this thread's (``time.thread_time``): with one
    torch thread it holds all of the model's work and, unlike wall time, does not grow when
    other jobs share the cores.
    """
    n = len(poses)
    frames, wall, cpu, stored = [], np.zeros(n), np.zeros(n), np.zeros(n, dtype=np.int64)
    for i, pose in enumerate(poses):
        t, c = time.perf_counter(), time.thread_time()
        if i == 0 and scene is not None:
            frame = camera.reset(scene, pose, seed=seed)
        else:
            frame = camera.observe(pose[None])[0]
        cpu[i] = (time.thread_time() - c) * 1e3
        wall[i] = (time.perf_counter() - t) * 1e3
        frames.append(frame)
        memory = getattr(camera, "memory", None)
        stored[i] = len(memory) if memory is not None else 0
    return np.stack(frames), wall, cpu, stored


def _strip(rows: list[np.ndarray]) -> np.ndarray:
    """Frames laid out as a grid: one row per strategy, 2-pixel white gaps."""
    h, w = rows[0][0].shape[:2]
    gap = 2
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = img
    return out


def _rounded(values: np.ndarray, digits: int = 3) -> list:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in np.asarray(values, dtype=np.float64)]


def run_episode(
    cfg: RevisitConfig,
    env: str,
    episode: int,
    strategies: list[str],
    cameras: dict[str, Any],
    scene: Any | None,
    world_poses: np.ndarray | None = None,
    kinds: list[str] | None = None,
) -> tuple[dict, np.ndarray | None]:
    """Drive every strategy along the suite's trajectories of one episode.

    Args:
        cfg: the evaluation's settings.
        env: the env id (or the world's label).
        episode: the episode number; with ``cfg.seed`` it fixes the layout and every seed.
        strategies: the strategies to run, each with a camera in ``cameras``.
        cameras: strategy -> camera (model cameras for a world must have it loaded per
            trajectory: ``world_poses`` given means ``camera.load_world(cfg.world)``).
        scene: the scene (None for a world).
        world_poses: (n, 4, 4) stored poses of the world, to pick start poses from.
        kinds: the trajectory families to run; ``cfg.kinds`` when None.

    Returns:
        The episode record (JSON-ready) and an image strip for the report (first visit,
        revisit and ground truth of the out-and-back anchor, one row per strategy), or None.
    """
    code = _env_code(env)
    layout_seed = cfg.seed + episode
    if scene is not None:
        start = scene.reset(layout_seed)
        motion = scene
    else:
        motion = _Footprint(world_poses, cfg.world_radius)
    record: dict[str, Any] = {
        "format": EPISODE_FORMAT,
        "version": FORMAT_VERSION,
        "env": env,
        "episode": episode,
        "layout_seed": layout_seed,
        "ground_truth": scene is not None,
        "trajectories": {},
    }
    strip = None
    for kind in cfg.kinds if kinds is None else kinds:
        kind_code = SUITE_KINDS.index(kind)
        rng = np.random.default_rng(_seed(cfg.seed, code, episode, kind_code, 0))
        if scene is None:
            start = pose_to_state(world_poses[int(rng.integers(len(world_poses)))])
        elif kind != "out_and_back":
            # Other families start elsewhere in the layout, so an episode covers more of it.
            start = scene.sample_free_state(rng)
        traj = make_suite_trajectory(kind, motion, start, _seed(cfg.seed, code, episode, kind_code, 1), cfg.suite)
        poses = traj.poses()
        first = find_revisits(poses, cfg.position_tol, cfg.heading_tol)
        truth = np.stack([scene.render(p) for p in poses]) if scene is not None else None
        entry: dict[str, Any] = {
            "n": len(poses),
            "seed": traj.seed,
            "states": [[round(float(v), 6) for v in s.as_array()] for s in traj.states],
            "revisits": [[int(i), int(first[i])] for i in np.flatnonzero(first >= 0)],
            "strategies": {},
        }
        if truth is not None:
            entry["sharpness_gt"] = _rounded(sharpness(truth))
        frames_of: dict[str, np.ndarray] = {}
        camera_seed = _seed(cfg.seed, code, episode, kind_code, 2)
        for strategy in strategies:
            camera = cameras[strategy]
            if scene is None:
                camera.load_world(cfg.world)
            frames, wall, cpu, stored = _drive(camera, poses, scene, camera_seed)
            rev = revisit_consistency(frames, first)
            row: dict[str, Any] = {
                "revisit_psnr": _rounded(rev["psnr"]),
                "revisit_ssim": _rounded(rev["ssim"], 4),
                "wall_ms": _rounded(wall),
                "cpu_ms": _rounded(cpu),
                "memory_frames": stored.tolist(),
                # Edge energy of each frame shown: beside PSNR it tells a sharp frame from a grey
                # or blurred one, which can match its own first visit perfectly.
                "sharpness": _rounded(sharpness(frames)),
            }
            if truth is not None:
                p, s = per_step(frames, truth)
                row["psnr_gt"], row["ssim_gt"] = _rounded(p), _rounded(s, 4)
            entry["strategies"][strategy] = row
            frames_of[strategy] = frames
        record["trajectories"][kind] = entry
        if kind == "out_and_back" and first[-1] >= 0:
            j = int(first[-1])
            gt_col = [truth[-1]] if truth is not None else []
            rows = [[frames_of[s][j], frames_of[s][-1], *gt_col] for s in strategies]
            strip = _strip(rows)
            record["strip"] = {"strategies": strategies, "first": j, "revisit": len(poses) - 1}
    return record, strip


# --------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------


def _context_cost(model: Any, resolution: int, repeats: int = 5) -> dict[str, list]:
    """Median wall time (ms) of one generate call against the number of context views.

    Views 1, 2, 4, then doubling up to the model's ``max_context`` (the ``all`` strategy's cap):
    how the cost of attending to more stored frames grows; the report extrapolates it.
    """
    import torch

    from rtfm_env.geometry import Intrinsics, camera_pose

    rng = np.random.default_rng(0)
    intr = Intrinsics(resolution, resolution, 60.0)
    out: dict[str, list] = {"views": [], "ms": [], "cpu_ms": []}
    cap = model.config.max_context
    for k in sorted({v for v in (1, 2, 4, 8, 16, 32, 64, 128) if v < cap} | {cap}):
        frames = rng.integers(0, 256, (1, k, resolution, resolution, 3), dtype=np.uint8)
        poses = np.stack([camera_pose(0.1 * i, 0.0, 0.1 * i) for i in range(k)])[None]
        target = camera_pose(0.05, 0.0, 0.0)[None]
        # A model that reads the context's depth (v2) gets a plane 3 m ahead of every view.
        plane = np.full((1, k, resolution, resolution), 3.0, np.float32)
        depth = {"context_depths": plane} if model.needs_depth else {}
        wall, cpu = [], []
        for _ in range(repeats + 1):
            t, c = time.perf_counter(), time.thread_time()
            model.generate(target, frames, poses, intr, generator=torch.Generator().manual_seed(0), **depth)
            cpu.append((time.thread_time() - c) * 1e3)
            wall.append((time.perf_counter() - t) * 1e3)
        out["views"].append(k)
        # The first call warms caches.
        out["ms"].append(round(float(np.median(wall[1:])), 3))
        out["cpu_ms"].append(round(float(np.median(cpu[1:])), 3))
    return out


def evaluate(
    cfg: RevisitConfig, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run the evaluation ``cfg`` describes and write results.json and the report.

    Args:
        cfg: what to evaluate and where to write (``cfg.out``).
        resume: keep the finished episodes of an earlier run of the same settings in ``cfg.out``.
        overwrite: delete an earlier evaluation in ``cfg.out`` first.
        progress: show a progress bar (one tick per episode).

    Returns:
        The results as saved in ``results.json``, plus ``episodes``: every episode record (those
        are saved under ``episodes/``, not in results.json).

    Raises:
        ValueError: an unknown env id, strategy or trajectory kind (the message lists the valid
            ones), a bad option, a checkpoint for another resolution, or (ConfigMismatchError)
            a resume with other settings or another checkpoint.
        FileExistsError: ``cfg.out`` exists and neither ``resume`` nor ``overwrite`` is given.
        CheckpointError: a checkpoint directory that is missing, corrupt or inconsistent.
    """
    envs, strategies = _validate(cfg)
    model_strategies = [s for s in strategies if s in MODEL_STRATEGIES]
    checkpoint = None
    if model_strategies:
        ckpt_path, checkpoint = _checkpoint_info(cfg.checkpoint)
    record = _config_record(cfg, checkpoint)
    out = Path(cfg.out)
    if resume and out.is_dir():
        _check_resume(out, record)  # before anything is loaded or written
    import torch

    from rtfm_env.cameras import GroundTruthCamera, ModelCamera
    from rtfm_env.model.sampler import FrameModel

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cameras: dict[str, Any] = {}
    model = None
    if model_strategies:
        device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = FrameModel.from_pretrained(ckpt_path, device=device, gelu=cfg.gelu)
        for s in model_strategies:
            # Every strategy shares one network; the resolution check fails here for a mismatch.
            # `all` with its own cap gets the same weights with that context limit. The memory starts
            # from the start's single frame ("image"): the regime the committed numbers measure, in
            # which every later view is generated, so revisits test the model's own consistency.
            own = s == "all" and cfg.all_cap is not None and cfg.all_cap != model.config.max_context
            cameras[s] = ModelCamera(
                FrameModel.from_pretrained(ckpt_path, device=device, gelu=cfg.gelu, max_context=cfg.all_cap)
                if own
                else model,
                k=min(cfg.k, cfg.all_cap) if s == "all" and cfg.all_cap is not None else cfg.k,
                steps=cfg.steps, context_strategy=s, memory_capacity=cfg.memory_capacity,
                seed=cfg.seed, resolution=cfg.resolution, world="image",
                warp_k=cfg.warp_k if s == "spatial" else None,
            )
    if "ground_truth" in strategies:
        cameras["ground_truth"] = GroundTruthCamera()
    world_poses = None
    if cfg.world:
        from rtfm_env.memory import SpatialMemory

        memory = SpatialMemory.load(cfg.world)
        world_poses = memory.poses(memory.ids)
        for s in model_strategies:  # fails early for a world of another size
            cameras[s].load_world(cfg.world)

    out = prepare_out_dir(out, resume, overwrite)
    run_hash = config_hash(record)
    write_json(out / CONFIG_FILE, record)
    cost_path = out / EPISODES_DIR / "context_cost.json"
    if model is not None and not cost_path.is_file():
        cost_model = cameras["all"].model if "all" in cameras else model
        write_json(cost_path, _context_cost(cost_model, cfg.resolution))

    tasks = [(env, e) for env in envs for e in range(cfg.episodes)]
    with_tour = {t for i, t in enumerate(tasks) if i % cfg.tour_every == 0}
    done = {t: _load_episode(episode_path(out, *t), run_hash) for t in tasks}
    bar = tqdm(total=len(tasks), initial=sum(r is not None for r in done.values()), unit="episode",
               desc="eval revisit", disable=not progress)
    try:
        for env in envs:
            todo = [e for e in range(cfg.episodes) if done[(env, e)] is None]
            if not todo:
                continue
            scene = None
            if not cfg.world:
                from rtfm_env.scenes import MiniWorldScene

                scene = MiniWorldScene(env, width=cfg.resolution, height=cfg.resolution)
            try:
                for e in todo:
                    bar.set_postfix_str(f"{env} #{e}")
                    kinds = [k for k in cfg.kinds if k != "tour" or (env, e) in with_tour]
                    rec, strip = run_episode(cfg, env, e, strategies, cameras, scene, world_poses, kinds)
                    rec["config_hash"] = run_hash
                    path = episode_path(out, env, e)
                    if strip is not None:
                        png = path.with_suffix(".png")
                        png.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_bytes(png, imageio.imwrite("<bytes>", strip, format="PNG"))
                        rec["strip"]["file"] = png.relative_to(out).as_posix()
                    write_json(path, rec)  # last: the episode counts as finished only once this exists
                    done[(env, e)] = rec
                    bar.update(1)
            finally:
                if scene is not None:
                    scene.close()
    finally:
        bar.close()

    context_cost = json.loads(cost_path.read_text()) if cost_path.is_file() else None
    # One torch thread on the CPU runs the model inline in this thread, so its CPU time is the cost.
    on_cpu = model is None or model.device.type == "cpu"
    timer = "cpu" if on_cpu and torch.get_num_threads() == 1 else "wall"
    episodes = [done[t] for t in tasks]
    results = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "config": asdict(cfg),
        "strategies": strategies,
        "envs": envs,
        "n_episodes": len(episodes),
        "config_hash": run_hash,
        "checkpoint": checkpoint,
        "camera": None if not model_strategies else {**cameras[model_strategies[0]].options, "context_strategy": None},
        "machine": machine_info(),
        "psnr_cap": PSNR_CAP,
        "ground_truth_available": not cfg.world,
        "context_cost": context_cost,
        "cost_timer": timer,
    }
    _summarize_into(results, episodes)
    write_json(out / RESULTS_FILE, results)
    write_report(results, out)
    return {**results, "episodes": episodes}


def _summarize_into(results: dict, episodes: list[dict]) -> None:
    """Set the parts of ``results`` computed from the episode records: summary, strips, episode count."""
    cfg = RevisitConfig(**results["config"])
    cap = all_cap(results) if "all" in results["strategies"] else None
    results["n_episodes"] = len(episodes)
    results["strips"] = strip_entries(episodes, results["envs"])
    results["summary"] = summarize(episodes, results["strategies"], cfg, results.get("cost_timer", "wall"), cap)


def _load_episode(path: Path, run_hash: str) -> dict | None:
    """A finished episode's record, or None when missing, unreadable or from other settings."""
    if not path.is_file():
        return None
    try:
        return parse_episode(path.read_bytes(), run_hash)
    except OSError:
        return None


def _saved_episodes(out: Path, results: dict) -> list[dict] | None:
    """Every episode record of a finished evaluation, from ``episodes/`` or ``episodes.tar.xz``.

    None when any is missing (a folder committed without its episodes, say): the summary saved in
    results.json then stands, since recomputing it from a subset would change its numbers.
    """
    run_hash = results.get("config_hash")
    if run_hash is None and (out / CONFIG_FILE).is_file():
        run_hash = config_hash(json.loads((out / CONFIG_FILE).read_text()))
    if run_hash is None:
        return None
    archive: dict[str, bytes] | None = None
    episodes = []
    for env in results["envs"]:
        for e in range(results["config"]["episodes"]):
            path = episode_path(out, env, e)
            record = _load_episode(path, run_hash)
            if record is None:
                if archive is None:
                    archive = read_episode_archive(out)  # read once, only when episodes/ falls short
                data = archive.get(path.relative_to(out).as_posix())
                record = parse_episode(data, run_hash) if data is not None else None
            if record is None:
                return None
            episodes.append(record)
    return episodes


def rebuild_report(out: str | os.PathLike, companions: list[str] | None = None, pack: bool = False) -> dict[str, Any]:
    """Rewrite results.json and the report of a finished evaluation. Nothing is re-run.

    The summary is recomputed from the episode records when every one is at hand: in
    ``episodes/``, in ``episodes.tar.xz``, or (results.json version 1) inside results.json itself,
    which is then rewritten in the compact form. Otherwise the summary saved in results.json is
    kept and the report is drawn from it alone (the strips plot is kept as it is when the
    per-episode image strips are gone).

    Args:
        out: the evaluation directory.
        companions: other evaluation directories (e.g. more episodes of one family, or a tour
            timed by CPU time) whose headline rows join this report's headline table; saved in
            results.json, so later rebuilds keep them. None keeps the saved list.
        pack: also write ``episodes.tar.xz`` from ``episodes/`` (the per-episode JSON, compressed),
            so the folder can be kept without ``episodes/`` and its summary still recomputed.

    Returns:
        The results as saved in results.json, with ``episodes`` (every record) when they were read.

    Raises:
        FileNotFoundError: ``out`` holds no results.json, a companion has none, or ``pack`` is
            given and ``out/episodes`` holds no episode.
        ValueError: results.json is not an evaluation's results, or it is compact and no
            summary is saved in it.
    """
    out = Path(out)
    path = out / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run 'rtfm-env eval revisit --out {out}' first")
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(results, dict) or results.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path} is not a revisit evaluation's results (format {RESULTS_FORMAT!r} expected)")
    if companions is not None:
        for c in companions:
            if not (Path(c) / RESULTS_FILE).is_file():
                raise FileNotFoundError(f"companion evaluation {c} has no {RESULTS_FILE}")
        results["companions"] = [os.path.relpath(c, out) for c in companions]
    # Version 1 embedded every record; from version 2 they live under episodes/ only.
    episodes = results.pop("episodes", None) or _saved_episodes(out, results)
    if episodes is not None:
        if "config_hash" not in results and episodes[0].get("config_hash"):
            results["config_hash"] = episodes[0]["config_hash"]
        _summarize_into(results, episodes)
    elif "summary" not in results:
        raise ValueError(f"{path} holds no summary and {out} not every episode record: rerun the evaluation")
    results["version"] = RESULTS_VERSION
    if pack:
        pack_episodes(out)
    write_json(path, results)
    write_report(results, out)
    return results if episodes is None else {**results, "episodes": episodes}


# --------------------------------------------------------------------------------------
# Command line: rtfm-env eval revisit
# --------------------------------------------------------------------------------------

_HELP = {
    "checkpoint": "frame-model checkpoint directory (default: the shipped checkpoint)",
    "envs": "MiniWorld env ids or short names (default: the public held-out ids)",
    "world": "evaluate a saved world (a memory file from save_world) instead of envs; no ground truth",
    "episodes": "episodes (layouts) per env id, or start poses in a world",
    "strategies": f"strategies to compare, from {list(STRATEGIES)} (default: all that apply)",
    "kinds": f"trajectory families, from {list(SUITE_KINDS)}",
    "k": "context views per generated frame",
    "steps": "sampling steps (default: the checkpoint's)",
    "memory_capacity": "frames each model camera keeps (default: every frame)",
    "resolution": "frame size in pixels (square); must match the checkpoint",
    "seed": "base seed of layouts, trajectories and flow noise",
    "position_tol": "metres; revisit tolerance on the camera centre",
    "heading_tol": "degrees; revisit tolerance on the viewing direction",
    "excursion": "out_and_back: steps from the anchor to its revisit",
    "lead_in": "out_and_back: steps before the anchor",
    "loop_steps": "loop: steps",
    "turn_rotations": "turn360: full turns in place",
    "tour_steps": "tour: steps",
    "tour_landmarks": "tour: landmarks on the chain",
    "tour_every": "run the tour in every n-th episode, counted across env ids",
    "world_radius": "metres; in a world, the camera stays this close to stored cameras",
    "device": "torch device (default: cuda when available, else cpu)",
    "threads": "torch CPU threads (0: torch's default; 1 avoids oversubscribing shared cores)",
    "gelu": "the network's GELU form: 'tanh' as trained, 'none' (erf, within bf16 rounding of it and faster); "
    "default: 'none' under bf16",
    "warp_k": "retrieved views the spatial strategy warps into the target (the network attends to k of them; "
    "default: the camera's, cameras.DEFAULT_WARP_K)",
    "all_cap": "most stored frames the 'all' strategy attends to (default: the model's max_context); a larger "
    "cap shows how attending to the whole memory grows in cost (views beyond the trained number are out of "
    "distribution)",
}


def _add_revisit_arguments(p: argparse.ArgumentParser) -> None:
    defaults = RevisitConfig()
    for f in fields(RevisitConfig):
        if f.name == "out":
            continue
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {"default": default, "help": _HELP[f.name]}
        if f.name in ("envs", "strategies", "kinds"):
            kwargs["nargs"] = "+"
        elif isinstance(default, bool):
            continue
        elif f.name == "gelu":
            kwargs["choices"] = ["tanh", "none"]
        elif f.name in ("steps", "memory_capacity", "all_cap", "warp_k") or isinstance(default, int):
            kwargs["type"] = int
        elif isinstance(default, float):
            kwargs["type"] = float
        if default is not None:
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            kwargs["help"] += f" (default: {shown})"
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, **kwargs)
    p.add_argument("--out", required=True, help="output directory (refused if it exists, unless --resume/--overwrite)")
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="keep the finished episodes of the same evaluation in --out"
    )
    group.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``rtfm-env eval`` sub-commands (``revisit``) to ``parser``."""
    sub = parser.add_subparsers(dest="eval_command", metavar="evaluation", required=True)
    p = sub.add_parser(
        "revisit",
        help="revisit consistency and cost per frame of the camera strategies",
        description=(
            "Drive the model camera with each context strategy (spatial, last_k, first_only, all) and the "
            "ground-truth camera along the same trajectories that come back to places (out-and-back, loop, "
            "turn360, a 1000-step landmark tour), and write every episode's numbers under episodes/, a compact "
            "results.json (the config, the checkpoint's SHA-256, the machine, the aggregated numbers) and "
            "report.md/report.html with plots. Each finished episode is saved at once, so --resume continues an "
            "interrupted run. --world evaluates a saved world "
            "(no ground truth: revisit consistency and cost only)."
        ),
    )
    _add_revisit_arguments(p)
    p = sub.add_parser(
        "report",
        help="recompute the summary and rewrite the report of a finished revisit evaluation",
        description="Recompute the summary from the episodes saved in DIR (episodes/ or episodes.tar.xz; a "
        "results.json of version 1 holds them itself and is rewritten compact), or keep the summary saved in "
        "DIR/results.json when they are gone, and rewrite results.json, report.md, report.html and the plots. "
        "Nothing is re-run.",
    )
    p.add_argument("--out", required=True, help="the evaluation directory")
    p.add_argument("--with", dest="companions", nargs="+", default=None, metavar="DIR",
                   help="other evaluation directories whose headline rows join this report's headline table")
    p.add_argument("--pack", action="store_true",
                   help=f"also write DIR/episodes.tar.xz (every per-episode JSON, compressed) from DIR/{EPISODES_DIR}")


def run(args: argparse.Namespace) -> int:
    """Run ``rtfm-env eval <evaluation>``; returns the exit code (2 on bad input)."""
    from rtfm_env.memory import MemoryFormatError
    from rtfm_env.model.checkpoint import CheckpointError

    try:
        if args.eval_command == "report":
            results = rebuild_report(args.out, args.companions, pack=args.pack)
        else:
            cfg = RevisitConfig(**{f.name: getattr(args, f.name) for f in fields(RevisitConfig)})
            results = evaluate(cfg, resume=args.resume, overwrite=args.overwrite, progress=args.progress)
    except (KeyError, ValueError, FileExistsError, FileNotFoundError, CheckpointError, MemoryFormatError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"rtfm-env eval {args.eval_command}: error: {msg}", file=sys.stderr)
        return 2
    print(f"{args.out}: {n_episodes(results)} episodes; report {Path(args.out) / 'report.md'}")
    for line in headline_lines(results, args.out):  # the report's headline table, companions included
        print("  " + line)
    return 0
