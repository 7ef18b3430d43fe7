r"""Closed-loop camera benchmark: THE benchmark that judges cameras (DESIGN.md, "Evaluation protocol").

Every camera is driven along the same seeded 220-step walks on the public held-out ids through
the env's public API (``gym.make("RTFM/Explore-v0", scene=..., camera=..., world=...)``,
``reset(seed=...)``, ``step(action)``), in each regime (``world=``: ``image``, ``walk``, ``scan``),
and every frame it shows is scored against the ground truth rendered at the same pose. In one run:

* ``model``: the frame model camera (the shipped checkpoint, or ``--checkpoint DIR``; more rows
  with ``--model NAME=DIR``);
* ``reprojection``: the no-learning camera that forward-warps the stored RGB-D frames;
* ``nearest``: the best stored observed frame, copied;
* ``flat``: a constant frame of the start frame's mean colour (computed here, no env);
* ``ground_truth``: the scene's renderer, the reference for everything.

The walk of an episode is planned once and replayed for every camera (the poses are asserted
equal): an out leg of ``--out-steps`` moves of a random walk that turns at walls instead of
bumping, a 180-degree turn, the out leg replayed backwards, a second 180-degree turn (now back at
the start pose: the revisit), then a random walk to ``--steps``. Per step window (steps 1-10,
11-50, 51-200) it reports PSNR, SSIM, MS-SSIM, sharpness ratio and contrast ratio against the
ground truth (mean and standard error over episodes), the frame at the revisit against the
frame shown at step 0 and against the ground truth, each camera's seconds per step, per-step
mean curves, and image strips. Output: ``closed_loop.json`` and ``closed_loop.md`` plus PNGs in
``--out``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/closed_loop.py --out docs/results/closed_loop
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/closed_loop.py --envs MiniWorld-YMaze-v0 \
        --regimes scan --episodes 1 --steps 60 --out runs/closed_loop_smoke
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/closed_loop.py --model before=rtfm_env/model/checkpoints/default \
        --model after=runs/s64/last --cameras flat nearest reprojection before after ground_truth
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from benchlib import machine_info, write_atomic
from tqdm import tqdm

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env.cameras import AUTOCAST_DTYPES, DEFAULT_CHECKPOINT
from rtfm_env.data.shards import sha256_file
from rtfm_env.data.trajectories import random_walk
from rtfm_env.eval.metrics import MS_SSIM_WIN, PSNR_CAP, contrast, mean_se, ms_ssim, psnr, sharpness, ssim
from rtfm_env.geometry import DiscreteAction, KinematicsConfig, RobotState
from rtfm_env.model.checkpoint import WEIGHTS_FILE
from rtfm_env.model.sampler import FrameModel
from rtfm_env.worlds import WORLD_KINDS

#: The public held-out ids (DESIGN.md, "Data"): never trained on.
HELDOUT_ENVS = ("MiniWorld-YMaze-v0", "MiniWorld-WallGap-v0", "MiniWorld-Sign-v0")
#: Cameras that are not the frame model, in table order (baselines first, the reference last).
BASELINES = ("flat", "nearest", "reprojection")
REFERENCE = "ground_truth"
#: Step windows, inclusive: step t is the frame shown after the t-th action (step 0 is the reset frame).
WINDOWS = (("1-10", 1, 10), ("11-50", 11, 50), ("51-200", 51, 200))
#: Width of the per-env fine windows (steps 1-20, 21-40, ...): a drift that the wide windows
#: average away (a few blurred steps inside 51-200) shows there.
FINE_WINDOW = 20
#: Per-frame metrics against ground truth (means over a window's steps).
FRAME_METRICS = ("psnr", "ssim", "ms_ssim")
#: Ratio metrics: window sum of the frame's value over the window sum of the ground truth's.
RATIO_METRICS = ("sharpness", "contrast")
METRICS = FRAME_METRICS + RATIO_METRICS
#: Steps shown in the image strips (the revisit step is added).
STRIP_STEPS = (0, 10, 50, 150)
#: Where the hand-written discussion of a run sits in closed_loop.md; a rerun keeps it.
DISCUSSION_BEGIN, DISCUSSION_END = "<!-- discussion -->", "<!-- /discussion -->"
#: Revisit tolerances (DESIGN.md): the pose is the same place within these.
REVISIT_METRES, REVISIT_DEGREES = 0.1, 5.0


@dataclass
class ClosedLoopConfig:
    """What the benchmark runs."""

    envs: list[str] = field(default_factory=lambda: list(HELDOUT_ENVS))  # MiniWorld ids (held-out ones)
    regimes: list[str] = field(default_factory=lambda: list(WORLD_KINDS))  # memory cameras' world= regimes
    cameras: list[str] = field(default_factory=list)  # empty: all (baselines, every model row, ground truth)
    episodes: int = 2  # episodes (layouts) per env id
    steps: int = 220  # actions per episode (>= 200 covers every window)
    out_steps: int = 44  # moves of the out leg; the revisit comes at 2 * out_steps + 2 * (180-degree turn)
    seed: int = 0  # seeds the env resets and the walks
    checkpoint: str | None = None  # the "model" row's checkpoint directory; None: the shipped one
    models: list[str] = field(default_factory=list)  # extra model rows, NAME=DIR
    autocast: str = "float32"  # model inference precision (bf16 is ~6x slower on CPUs without bf16 units)
    env_id: str = "RTFM/Explore-v0"  # the task env: it never terminates, it truncates at max_steps
    resolution: int = 64  # pixels, square frames
    threads: int = 1  # torch threads
    out: str = "runs/closed_loop"  # output folder: closed_loop.json, closed_loop.md, PNGs
    progress: bool = True  # tqdm progress bar


# --------------------------------------------------------------------------------------
# Planning the walk
# --------------------------------------------------------------------------------------


def episode_seeds(seed: int, env_id: str, episode: int) -> tuple[int, int, int]:
    """(env reset seed, out-leg walk seed, continuation walk seed) of one episode.

    Derived from (benchmark seed, env id, episode) and a purpose tag, so the walks never
    coincide with the ``walk`` regime's own walk (which :mod:`rtfm_env.worlds` seeds with the
    layout seed).
    """
    base = [int(seed), zlib.crc32(env_id.encode()), int(episode)]
    return tuple(int(np.random.SeedSequence([*base, tag]).generate_state(1)[0]) for tag in (0, 1, 2))


def plan_walk(
    scene: Any, start: RobotState, steps: int, out_steps: int, walk_seed: int, rest_seed: int
) -> tuple[list[int], int | None, list[RobotState]]:
    """The discrete actions of one episode, the step of the planned revisit, and the planned states.

    Out leg (``out_steps`` moves of :func:`random_walk`, which turns at walls rather than
    bumping), a 180-degree turn, the out leg backwards with left and right swapped, another
    180-degree turn: the robot stands at the start pose again. Then a random walk to ``steps``.
    Planning calls only ``scene.move`` and ``scene.is_free``, which do not change the scene.

    Returns:
        (``steps`` DiscreteAction ids, revisit step or None when ``steps`` ends before it,
        ``steps + 1`` planned states with the start first).

    Raises:
        RuntimeError: a planned move collides (the replay would not return to the start).
    """
    kin = getattr(scene, "kinematics", None) or KinematicsConfig()
    half = math.pi / kin.turn_step
    if abs(half - round(half)) > 1e-6:
        raise ValueError(f"turn_step {math.degrees(kin.turn_step):.3f} deg does not divide 180 deg")
    half = int(round(half))
    walk = random_walk(scene, start, walk_seed)
    out = [next(walk).action for _ in range(out_steps)]
    swap = {
        DiscreteAction.FORWARD: DiscreteAction.FORWARD,
        DiscreteAction.TURN_LEFT: DiscreteAction.TURN_RIGHT,
        DiscreteAction.TURN_RIGHT: DiscreteAction.TURN_LEFT,
    }
    turn = [DiscreteAction.TURN_LEFT] * half
    actions = out + turn + [swap[a] for a in reversed(out)] + turn
    revisit = len(actions)
    states = [start]
    for a in actions:
        state, collided = scene.move(states[-1], a)
        if collided:
            raise RuntimeError(f"planned move {len(states)} ({DiscreteAction.NAMES[a]}) collides in {scene.env_id}")
        states.append(state)
    rest = random_walk(scene, states[-1], rest_seed)
    while len(actions) < steps:
        step = next(rest)
        if step.collided:
            raise RuntimeError(f"the continuation walk collided at step {len(actions) + 1} in {scene.env_id}")
        actions.append(step.action)
        states.append(step.state)
    return [int(a) for a in actions[:steps]], (revisit if revisit <= steps else None), states[: steps + 1]


def pose_gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Position distance (m) and heading difference (degrees, of the view directions) of two poses."""
    da = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    fa, fb = -a[:3, 2], -b[:3, 2]
    cos = float(np.dot(fa, fb) / (np.linalg.norm(fa) * np.linalg.norm(fb)))
    return da, math.degrees(math.acos(min(1.0, max(-1.0, cos))))


# --------------------------------------------------------------------------------------
# Running a camera along a walk
# --------------------------------------------------------------------------------------


@dataclass
class Walk:
    """What one camera showed along one episode."""

    frames: np.ndarray  # (T + 1, H, W, 3) uint8, step 0 is the reset frame
    poses: np.ndarray  # (T + 1, 4, 4) float32 camera-to-world, from the observations
    step_s: np.ndarray  # (T,) wall seconds of each env.step
    reset_s: float  # wall seconds of env.reset (memory building for memory cameras)


def run_walk(env: gym.Env, reset_seed: int, actions: list[int]) -> Walk:
    """Reset ``env`` with ``reset_seed`` and take ``actions`` (DiscreteAction ids), timing each step."""
    task_actions = list(env.unwrapped.task.actions)
    t = time.perf_counter()
    obs, _ = env.reset(seed=reset_seed)
    reset_s = time.perf_counter() - t
    frames, poses, step_s = [obs["rgb"]], [obs["pose"]], []
    for i, a in enumerate(actions):
        t = time.perf_counter()
        obs, _, terminated, truncated, info = env.step(task_actions.index(a))
        step_s.append(time.perf_counter() - t)
        if terminated or (truncated and i < len(actions) - 1):
            raise RuntimeError(f"{env.spec.id} ended the episode at step {i + 1} of {len(actions)}")
        if info["collided"]:
            raise RuntimeError(f"step {i + 1} collided in {env.unwrapped.scene.env_id}: the plan was not replayed")
        frames.append(obs["rgb"])
        poses.append(obs["pose"])
    return Walk(np.stack(frames), np.stack(poses), np.array(step_s), reset_s)


def score_walk(frames: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step metrics of ``frames`` against ``truth`` (both (T + 1, H, W, 3)); ratios kept as parts."""
    return {
        "psnr": np.array([psnr(a, b) for a, b in zip(frames, truth, strict=True)]),
        "ssim": np.array([ssim(a, b) for a, b in zip(frames, truth, strict=True)]),
        "ms_ssim": ms_ssim(frames, truth),
        "sharpness": sharpness(frames),
        "contrast": contrast(frames),
    }


def score_revisit(frames: np.ndarray, truth: np.ndarray, step: int) -> dict[str, float]:
    """The revisit frame against the frame shown at step 0 and against the ground truth at its pose."""
    gt_sharp = sharpness(truth[step])
    return {
        "psnr_vs_first": psnr(frames[step], frames[0]),
        "ssim_vs_first": ssim(frames[step], frames[0]),
        "psnr_vs_gt": psnr(frames[step], truth[step]),
        "ssim_vs_gt": ssim(frames[step], truth[step]),
        "sharpness": sharpness(frames[step]) / gt_sharp if gt_sharp > 0 else float("nan"),
    }


# --------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------


def windows(steps: int) -> list[tuple[str, int, int]]:
    """The step windows that the run reaches, clipped to ``steps``."""
    return [(name, lo, min(hi, steps)) for name, lo, hi in WINDOWS if lo <= steps]


def window_values(per_step: dict[str, np.ndarray], truth: dict[str, np.ndarray], lo: int, hi: int) -> dict:
    """One episode's window numbers: means of the frame metrics, ratios of window sums for the others."""
    out = {m: float(np.mean(per_step[m][lo : hi + 1])) for m in FRAME_METRICS}
    for m in RATIO_METRICS:
        denominator = float(np.sum(truth[m][lo : hi + 1]))
        out[m] = float(np.sum(per_step[m][lo : hi + 1])) / denominator if denominator > 0 else float("nan")
    return out


def fine_windows(steps: int, width: int = FINE_WINDOW) -> list[tuple[str, int, int]]:
    """Consecutive ``width``-step windows from step 1 through ``min(steps, 200)``."""
    last = min(steps, WINDOWS[-1][2])
    return [(f"{lo}-{min(lo + width - 1, last)}", lo, min(lo + width - 1, last)) for lo in range(1, last + 1, width)]


def fine_differences(
    mine: list[dict], base: list[dict], truths: list[dict], envs: list[str], steps: int
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Per env id and fine window: the camera's PSNR minus the baseline's, and its sharpness ratio.

    ΔPSNR is the mean over the env's episodes of the paired per-step difference; the sharpness
    ratio is the window sum over those episodes against the ground truth's.
    """
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for env_id in dict.fromkeys(envs):
        idx = [i for i, e in enumerate(envs) if e == env_id]
        out[env_id] = {}
        for name, lo, hi in fine_windows(steps):
            d = [float(np.mean(mine[i]["psnr"][lo : hi + 1] - base[i]["psnr"][lo : hi + 1])) for i in idx]
            shown = sum(float(np.sum(mine[i]["sharpness"][lo : hi + 1])) for i in idx)
            truth = sum(float(np.sum(truths[i]["sharpness"][lo : hi + 1])) for i in idx)
            out[env_id][name] = {
                "dpsnr": _finite(float(np.mean(d))),
                "sharpness": _finite(shown / truth) if truth > 0 else None,
            }
    return out


def summary(values: list[float]) -> dict[str, float | int | None]:
    """Mean, standard error and n over episodes (NaN as None, for JSON)."""
    m, se, n = mean_se(np.asarray(values, dtype=np.float64))
    return {"mean": _finite(m), "se": _finite(se), "n": n}


def _finite(x: float, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def mean_curve(records: list[dict], truths: list[dict]) -> dict[str, list]:
    """Per-step means over episodes; the ratio curves are ratios of the per-step sums."""
    curves = {m: np.mean([r[m] for r in records], axis=0) for m in FRAME_METRICS}
    for m in RATIO_METRICS:
        num, den = np.sum([r[m] for r in records], axis=0), np.sum([t[m] for t in truths], axis=0)
        curves[m] = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    return {m: [_finite(v, 3) for v in c] for m, c in curves.items()}


# --------------------------------------------------------------------------------------
# Outputs: plots, strips, page
# --------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path, dpi: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    _plt().close(fig)
    os.replace(tmp, path)


def plot_curves(path: Path, result: dict, cameras: list[str]) -> None:
    """PSNR, sharpness ratio and contrast ratio along the walk, per camera, one column per regime."""
    plt = _plt()
    regimes = result["config"]["regimes"]
    rows = (("psnr", "PSNR (dB)"), ("sharpness", "sharpness ratio"), ("contrast", "contrast ratio"))
    fig, axes = plt.subplots(len(rows), len(regimes), figsize=(4.2 * len(regimes), 7.5), squeeze=False, sharex=True)
    revisits = {e["revisit_step"] for e in result["episodes"] if e["revisit_step"] is not None}
    for c, regime in enumerate(regimes):
        for r, (metric, label) in enumerate(rows):
            ax = axes[r][c]
            for cam in cameras:
                if cam == REFERENCE and metric == "psnr":
                    continue  # the cap, off the scale
                curve = np.array(result["curves"][cam][regime][metric], dtype=float)
                ax.plot(np.arange(len(curve)), curve, lw=1.0, label=cam, ls="--" if cam == REFERENCE else "-")
            for _, lo, _ in WINDOWS[1:]:
                if lo <= result["config"]["steps"]:
                    ax.axvline(lo - 0.5, color="grey", lw=0.6, ls=":")
            for step in revisits:
                ax.axvline(step, color="black", lw=0.8, ls="-.")
            if metric == "psnr":
                ax.set_ylim(5.0, 50.0)  # identical frames score the 100 dB cap; clipped here
            else:
                ax.axhline(0.7, color="red", lw=0.6, ls=":")
                ax.set_ylim(0.0, 2.5)  # a copied wrong view can reach 10x a featureless truth; clipped here
            if r == 0:
                ax.set_title(f"world={regime}", fontsize=10)
            if c == 0:
                ax.set_ylabel(label)
            if r == len(rows) - 1:
                ax.set_xlabel("step")
            ax.tick_params(labelsize=8)
    axes[0][0].legend(fontsize=7, loc="best")
    fig.suptitle(
        "mean over episodes (ratios: ratio of sums); dotted: window edges (10|11, 50|51); dash-dot: "
        "revisit step; red: 0.7; axes clipped",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, path, dpi=60)


def plot_strip(path: Path, frames: dict[str, np.ndarray], steps: list[int], title: str) -> None:
    """A grid of frames: one row per step, one column per camera (``frames[camera][step]``)."""
    plt = _plt()
    names = list(frames)
    fig, axes = plt.subplots(
        len(steps), len(names), figsize=(1.05 * len(names), 1.12 * len(steps) + 0.3), squeeze=False
    )
    for r, step in enumerate(steps):
        for c, name in enumerate(names):
            ax = axes[r][c]
            ax.imshow(frames[name][step], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=7)
            if c == 0:
                ax.set_ylabel(f"step {step}", fontsize=7)
    fig.suptitle(title, fontsize=7)
    fig.tight_layout(pad=0.2)
    _save(fig, path, dpi=80)


def _cell(s: dict | None, digits: int = 2) -> str:
    if s is None or s.get("mean") is None:
        return "n/a"
    se = s.get("se")
    return f"{s['mean']:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


def render_page(result: dict, cameras: list[str], discussion: str, command: str) -> str:
    """The Markdown page: discussion, headline tables, differences, revisits, plots and strips."""
    cfg = result["config"]
    wins = [w[0] for w in windows(cfg["steps"])]
    models = [c for c in cameras if c not in BASELINES and c != REFERENCE]
    n_ep = len(result["episodes"])
    lines = [
        "# Closed-loop camera benchmark",
        "",
        DISCUSSION_BEGIN,
        discussion.strip() or "_(No discussion written for this run yet.)_",
        DISCUSSION_END,
        "",
        f"{n_ep} episodes ({cfg['episodes']} per env x {len(cfg['envs'])} held-out envs: "
        f"{', '.join(e.removeprefix('MiniWorld-').removesuffix('-v0') for e in cfg['envs'])}), "
        f"{cfg['steps']} steps each, the same poses for every camera. Cells are mean ± standard error over "
        "episodes. Sharpness and contrast are ratios against ground truth (1.0 is right; below 0.7 is blur "
        "or washed-out). `s/step` is the wall time of one `env.step` (move, task, camera) on this machine, "
        f"at {result['machine'].get('torch_threads')} torch thread(s), load average "
        f"{result['machine'].get('load_average_1min'):.1f} at the start.",
        "",
        "```",
        command,
        "```",
        "",
    ]
    for regime in cfg["regimes"]:
        lines += [f"## world={regime}", ""]
        head = ["camera", "s/step"] + [f"{m} {w}" for m in ("PSNR", "SSIM", "sharp", "contrast") for w in wins]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for cam in cameras:
            agg = result["windows"][cam][regime]
            speed = result["speed"][cam][regime]["step_s"]
            cells = [cam, "—" if speed is None else f"{speed:.4f}"]
            for m, digits in (("psnr", 2), ("ssim", 3), ("sharpness", 2), ("contrast", 2)):
                cells += [_cell(agg[w][m], digits) for w in wins]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if models and "reprojection" in cameras:
        lines += [
            "## Model minus reprojection (paired by episode)",
            "",
            "| camera | world | "
            + " | ".join(f"ΔPSNR {w}" for w in wins)
            + " | "
            + " | ".join(f"Δsharp {w}" for w in wins)
            + " |",
            "|" + "---|" * (2 + 2 * len(wins)),
        ]
        for cam in models:
            for regime in cfg["regimes"]:
                d = result["differences"][cam][regime]
                lines.append(
                    f"| {cam} | {regime} | "
                    + " | ".join(_cell(d[w]["psnr"]) for w in wins)
                    + " | "
                    + " | ".join(_cell(d[w]["sharpness"]) for w in wins)
                    + " |"
                )
        lines.append("")
    fine = result.get("fine", {})
    if fine:
        names = [w[0] for w in fine_windows(cfg["steps"])]
        lines += [
            f"## Per env id, {FINE_WINDOW}-step windows: model minus reprojection PSNR / model sharpness ratio",
            "",
            "Each cell: ΔPSNR (dB, mean over the env's episodes, paired by episode) / the camera's sharpness "
            "ratio in that window. A drift or a blur that the wide windows average away shows here.",
            "",
        ]
        for cam in (c for c in models if c in fine):
            lines += ["| " + " | ".join([f"{cam}: world, env", *names]) + " |", "|" + "---|" * (1 + len(names))]
            for regime in cfg["regimes"]:
                for env_id, cells in fine[cam][regime].items():
                    short = env_id.removeprefix("MiniWorld-").removesuffix("-v0")
                    row = [f"{regime}, {short}"] + [
                        "—" if c["dpsnr"] is None else
                        f"{c['dpsnr']:+.2f} / {'—' if c['sharpness'] is None else format(c['sharpness'], '.2f')}"
                        for c in (cells[n] for n in names)
                    ]
                    lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    lines += [
        f"## MS-SSIM (weight-free perceptual metric, 5 scales, {MS_SSIM_WIN}-pixel window)",
        "",
        "| camera | " + " | ".join(f"{r} {w}" for r in cfg["regimes"] for w in wins) + " |",
        "|" + "---|" * (1 + len(cfg["regimes"]) * len(wins)),
    ]
    for cam in cameras:
        lines.append(
            f"| {cam} | "
            + " | ".join(_cell(result["windows"][cam][r][w]["ms_ssim"], 3) for r in cfg["regimes"] for w in wins)
            + " |"
        )
    lines.append("")
    steps_rv = sorted({e["revisit_step"] for e in result["episodes"] if e["revisit_step"] is not None})
    if steps_rv:
        gaps = [e["revisit_gap"] for e in result["episodes"] if e["revisit_gap"]]
        lines += [
            "## Revisit of the start pose",
            "",
            f"At step {', '.join(map(str, steps_rv))} the robot stands at its start pose again (out leg, "
            "180-degree turn, the leg backwards, 180-degree turn; measured from the env's poses: at most "
            f"{max(g[0] for g in gaps):.4f} m and {max(g[1] for g in gaps):.3f} degrees off). `vs first` scores "
            "the revisit frame against the frame the camera showed at step 0 (for memory cameras the observed "
            "start frame, so it almost equals `vs GT`; for flat, a constant, it is perfect: consistent grey is "
            "not persistence); `vs GT` against the ground truth there; `sharp` is its sharpness ratio.",
            "",
            "| camera | "
            + " | ".join(
                f"{r} {m}" for r in cfg["regimes"] for m in ("PSNR vs first", "PSNR vs GT", "SSIM vs GT", "sharp")
            )
            + " |",
            "|" + "---|" * (1 + 4 * len(cfg["regimes"])),
        ]
        for cam in cameras:
            cells = []
            for r in cfg["regimes"]:
                rv = result["revisits"][cam][r]
                cells += [
                    _cell(rv["psnr_vs_first"]),
                    _cell(rv["psnr_vs_gt"]),
                    _cell(rv["ssim_vs_gt"], 3),
                    _cell(rv["sharpness"]),
                ]
            lines.append(f"| {cam} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Along the walk", "", "![PSNR, sharpness and contrast along the walk](closed_loop_curves.png)", ""]
    lines += ["## Image strips", ""]
    for regime in cfg["regimes"]:
        name = f"closed_loop_strip_{regime}.png"
        if name in result["files"]:
            lines += [f"world={regime} ({result['strip_episode']}):", "", f"![strip {regime}]({name})", ""]
    lines += [
        "## Definitions",
        "",
        "- Step t is the frame shown after the t-th action; step 0 is the reset frame (for memory cameras "
        "the observed start frame, for flat its constant frame). Windows are inclusive: "
        + ", ".join(f"{name} = steps {lo}..{hi}" for name, lo, hi in windows(cfg["steps"]))
        + (f"; steps {WINDOWS[-1][2] + 1}..{cfg['steps']} appear only in the curves." if cfg["steps"] > 200 else "."),
        "- PSNR and SSIM: `rtfm_env.eval.metrics.psnr` (identical frames score the cap, "
        f"{PSNR_CAP:g} dB) and `ssim` (7x7 windows, channels averaged), averaged over the window's steps.",
        f"- MS-SSIM: `rtfm_env.eval.metrics.ms_ssim` (`pytorch-msssim`, 5 scales with the standard weights, "
        f"Gaussian window {MS_SSIM_WIN} px: the package needs a side above (window - 1) x 16, so 3 is the "
        "largest valid at 64x64). No network, no download. LPIPS and DISTS need network weights downloaded at "
        "first use, and piq needs torchvision (which would replace the pinned torch), so neither is used.",
        "- Sharpness of a frame: mean |dx| + mean |dy| of its grey image (BT.601 luma, 0-255), dx/dy the "
        "differences of adjacent pixels. Contrast: the grey image's pixel standard deviation. The ratio of "
        "a window is sum over its steps of the camera's value / the same sum for ground truth (a ratio of "
        "window means, not a mean of per-frame ratios, so a featureless ground-truth frame cannot blow it up). "
        "Curves use the same ratio of sums across episodes at each step.",
        "- The walk: an out leg of "
        f"{cfg['out_steps']} moves of `rtfm_env.data.trajectories.random_walk` (turns at walls instead of bumping), "
        "a 180-degree turn, the leg backwards with left/right swapped, a 180-degree turn (the revisit), then "
        "a random walk. Seeds derive from (seed, env id, episode) and differ from the `walk` regime's own walk. "
        f"Every camera's env is `gym.make({cfg['env_id']!r}, scene=..., camera=..., world=..., "
        "max_steps=steps)` reset with the same seed and given the same actions; the observed poses are "
        "asserted identical.",
        "- flat and ground_truth do not depend on the regime: their rows repeat the same episodes in each.",
        f"- The model runs with autocast {cfg['autocast']}"
        + (
            "; checkpoints: "
            + ", ".join(
                f"{k} = `{v['path']}` (sha256 {v['sha256'][:12]}…, step {v['step']})"
                for k, v in result["checkpoints"].items()
            )
            if result["checkpoints"]
            else ""
        )
        + ".",
        f"- Runtime: {result['seconds'] / 60:.1f} min. Machine: {result['machine'].get('processor')}, "
        f"{result['machine'].get('cpu_count')} cores, torch {result['machine'].get('torch')}.",
        "- Files: `closed_loop.json` (config, machine, every aggregate, per-step mean curves per camera and "
        "regime), this page, `closed_loop_curves.png`, `closed_loop_strip_<regime>.png`. There is no `--resume`: "
        "nothing per episode is written, a default run takes about ten minutes on two cores.",
        "",
    ]
    return "\n".join(lines)


def read_discussion(page: Path) -> str:
    """The hand-written discussion block of an existing page (kept when the page is rewritten)."""
    if not page.is_file():
        return ""
    text = page.read_text()
    i, j = text.find(DISCUSSION_BEGIN), text.find(DISCUSSION_END)
    if i < 0 or j < i:
        return ""
    body = text[i + len(DISCUSSION_BEGIN) : j].strip()
    return "" if body.startswith("_(No discussion") else body


def _dumps(result: dict) -> str:
    """JSON with one line per number list, so curves stay compact."""
    text = json.dumps(result, indent=1, allow_nan=False)
    text = re.sub(r'\{\s*"mean": ([^,]+),\s*"se": ([^,]+),\s*"n": (\d+)\s*\}', r'{"mean": \1, "se": \2, "n": \3}', text)
    return re.sub(
        r"\[\s*((?:-?[\d.eE+-]+|null)(?:,\s*(?:-?[\d.eE+-]+|null))*)\s*\]",
        lambda m: "[" + ",".join(x.strip() for x in m.group(1).split(",")) + "]",
        text,
    )


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def _row_spec(spec: str) -> tuple[str, Path, dict[str, int]]:
    """``NAME=DIR`` with optional ``,k=N`` / ``,warp_k=N`` (the camera's context views: attended / warped)."""
    name, sep, rest = spec.partition("=")
    directory, *options = rest.split(",")
    camera: dict[str, int] = {}
    for option in options:
        key, eq, value = option.partition("=")
        if key not in ("k", "warp_k") or key in camera or not eq or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--model takes NAME=DIR[,k=N][,warp_k=N] (N >= 1), got {spec!r}")
        camera[key] = int(value)
    if not sep or not name or not directory:
        raise ValueError(f"--model takes NAME=DIR[,k=N][,warp_k=N], got {spec!r}")
    return name, Path(directory), camera


def model_rows(cfg: ClosedLoopConfig) -> dict[str, Path]:
    """Checkpoint directory of each model row: ``model`` and every ``--model NAME=DIR[,k=N][,warp_k=N]``."""
    rows = {"model": Path(cfg.checkpoint) if cfg.checkpoint else DEFAULT_CHECKPOINT}
    for spec in cfg.models:
        name, directory, _ = _row_spec(spec)
        if name in rows or name in BASELINES or name == REFERENCE:
            raise ValueError(f"model row name {name!r} is taken; names in use: {[*BASELINES, REFERENCE, *rows]}")
        rows[name] = directory
    return rows


def model_context(cfg: ClosedLoopConfig) -> dict[str, dict[str, int]]:
    """The model rows given ``,k=N`` or ``,warp_k=N``: those camera options (others use the camera's defaults)."""
    return {name: camera for name, _, camera in map(_row_spec, cfg.models) if camera}


def check_config(cfg: ClosedLoopConfig) -> list[str]:
    """Validate the config; returns the cameras to run in table order."""
    rows = model_rows(cfg)
    valid = [*BASELINES, *rows, REFERENCE]
    cameras = cfg.cameras or valid
    unknown = sorted(set(cameras) - set(valid))
    if unknown:
        raise ValueError(f"unknown camera(s) {unknown}; valid cameras: {valid}")
    if REFERENCE not in cameras:
        cameras = [*cameras, REFERENCE]  # the reference of every number
    bad = sorted(set(cfg.regimes) - set(WORLD_KINDS))
    if bad or not cfg.regimes:
        raise ValueError(f"unknown regime(s) {bad}; valid regimes: {list(WORLD_KINDS)}")
    if cfg.autocast not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown autocast {cfg.autocast!r}; valid: {list(AUTOCAST_DTYPES)}")
    if cfg.episodes < 1 or cfg.steps < 1 or cfg.out_steps < 0 or cfg.threads < 1:
        raise ValueError("episodes, steps and threads must be >= 1 and out_steps >= 0")
    return [c for c in valid if c in cameras]


def main(cfg: ClosedLoopConfig) -> dict:
    """Run the benchmark; writes closed_loop.json, closed_loop.md and PNGs to ``cfg.out``; returns the JSON."""
    cameras = check_config(cfg)
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    machine = machine_info()
    rows = {k: v for k, v in model_rows(cfg).items() if k in cameras}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    models = {
        name: FrameModel.from_pretrained(d, device=device, autocast_dtype=AUTOCAST_DTYPES[cfg.autocast])
        for name, d in rows.items()
    }
    checkpoints = {
        name: {
            "path": os.path.relpath(d) if d.resolve().is_relative_to(Path.cwd()) else str(d),
            "sha256": sha256_file(d / WEIGHTS_FILE),
            "step": json.loads((d / "config.json").read_text()).get("extra", {}).get("step"),
            "k": model_context(cfg).get(name, {}).get("k"),
            "warp_k": model_context(cfg).get(name, {}).get("warp_k"),
        }
        for name, d in rows.items()
    }
    memory_cams = [c for c in cameras if c not in ("flat", REFERENCE)]
    wins = windows(cfg.steps)
    # records[camera][regime] = list of per-episode dicts of per-step arrays; truths = ground truth's.
    records: dict[str, dict[str, list]] = {c: {r: [] for r in cfg.regimes} for c in cameras}
    revisits: dict[str, dict[str, list]] = {c: {r: [] for r in cfg.regimes} for c in cameras}
    speeds: dict[str, dict[str, list]] = {c: {r: [] for r in cfg.regimes} for c in cameras}
    resets: dict[str, dict[str, list]] = {c: {r: [] for r in cfg.regimes} for c in cameras}
    truths: list[dict] = []
    episodes: list[dict] = []
    strips: dict[str, dict[str, np.ndarray]] = {r: {} for r in cfg.regimes}
    strip_episode = f"{cfg.envs[0]}, episode 0"
    total = len(cfg.envs) * cfg.episodes * (1 + len(cfg.regimes) * len(memory_cams))
    bar = tqdm(total=total, desc="closed loop", unit="walk", disable=not cfg.progress)

    def make(env_id: str, camera: str, regime: str | None) -> gym.Env:
        kwargs: dict[str, Any] = {
            "scene": env_id,
            "camera": camera,
            "max_steps": cfg.steps,
            "resolution": cfg.resolution,
        }
        if regime is not None:
            kwargs["world"] = regime
        if camera in models:
            kwargs.update(camera="model", checkpoint=models[camera])  # a loaded FrameModel, shared by all envs
            kwargs.update(model_context(cfg).get(camera, {}))
        return gym.make(cfg.env_id, **kwargs)

    for env_id in cfg.envs:
        gt_env = make(env_id, REFERENCE, None)
        envs = {(c, r): make(env_id, c, r) for c in memory_cams for r in cfg.regimes}
        try:
            for ep in range(cfg.episodes):
                reset_seed, walk_seed, rest_seed = episode_seeds(cfg.seed, env_id, ep)
                gt_env.reset(seed=reset_seed)
                base = gt_env.unwrapped
                start = base.state
                actions, revisit, planned = plan_walk(base.scene, start, cfg.steps, cfg.out_steps, walk_seed, rest_seed)
                if base.state != start or base.episode.steps != 0:
                    raise RuntimeError("planning the walk moved the env's robot")
                bar.set_postfix_str(f"{env_id.removeprefix('MiniWorld-')} ep {ep} ground_truth")
                gt = run_walk(gt_env, reset_seed, actions)
                bar.update()
                planned_poses = np.stack([s.pose() for s in planned]).astype(np.float32)
                if not np.allclose(gt.poses, planned_poses, atol=1e-5):
                    raise RuntimeError(f"{env_id} episode {ep}: the env's poses differ from the planned walk")
                gap = None
                if revisit is not None:
                    gap = pose_gap(gt.poses[revisit].astype(np.float64), gt.poses[0].astype(np.float64))
                    if gap[0] > REVISIT_METRES or gap[1] > REVISIT_DEGREES:
                        raise RuntimeError(f"{env_id} episode {ep}: step {revisit} is {gap} (m, deg) from the start")
                truth = {"sharpness": sharpness(gt.frames), "contrast": contrast(gt.frames)}
                truths.append(truth)
                episodes.append(
                    {
                        "env": env_id,
                        "episode": ep,
                        "reset_seed": reset_seed,
                        "walk_seed": walk_seed,
                        "scene_seed": int(base.episode.scene_seed),
                        "revisit_step": revisit,
                        "revisit_gap": None if gap is None else [round(gap[0], 6), round(gap[1], 4)],
                        "actions": "".join("?FLR"[a] for a in actions),
                    }
                )
                flat_colour = np.rint(gt.frames[0].reshape(-1, 3).mean(axis=0)).astype(np.uint8)
                flat = Walk(np.broadcast_to(flat_colour, gt.frames.shape).copy(), gt.poses, np.zeros(0), 0.0)
                shown = {REFERENCE: gt, "flat": flat}
                for regime in cfg.regimes:
                    for cam in memory_cams:
                        bar.set_postfix_str(f"{env_id.removeprefix('MiniWorld-')} ep {ep} {cam} {regime}")
                        shown[cam] = run_walk(envs[(cam, regime)], reset_seed, actions)
                        bar.update()
                        if not np.array_equal(shown[cam].poses, gt.poses):
                            raise RuntimeError(f"{cam} ({regime}) saw other poses than ground truth in {env_id}")
                    for cam in cameras:
                        walk = shown[cam]
                        if cam in (REFERENCE, "flat") and regime != cfg.regimes[0]:
                            records[cam][regime].append(records[cam][cfg.regimes[0]][-1])
                            if revisit is not None:
                                revisits[cam][regime].append(revisits[cam][cfg.regimes[0]][-1])
                        else:
                            records[cam][regime].append(score_walk(walk.frames, gt.frames))
                            if revisit is not None:
                                revisits[cam][regime].append(score_revisit(walk.frames, gt.frames, revisit))
                        if cam != "flat":
                            speeds[cam][regime].append(walk.step_s)
                            resets[cam][regime].append(walk.reset_s)
                    if env_id == cfg.envs[0] and ep == 0:
                        # generated | reprojection | nearest | ground truth, as the results pages show them.
                        order = [c for c in cameras if c in models] + [
                            c for c in ("reprojection", "nearest", REFERENCE) if c in cameras
                        ]
                        strips[regime] = {c: shown[c].frames for c in order}
                        strips[regime]["_revisit"] = revisit
        finally:
            gt_env.close()
            for env in envs.values():
                env.close()
    bar.close()

    result: dict[str, Any] = {
        "benchmark": "closed_loop",
        "config": asdict(cfg),
        "cameras": cameras,
        "checkpoints": checkpoints,
        "machine": machine,
        "windows": {},
        "differences": {},
        "fine": {},
        "revisits": {},
        "speed": {},
        "curves": {},
        "episodes": episodes,
        "strip_episode": strip_episode,
        "files": [],
    }
    for cam in cameras:
        result["windows"][cam], result["revisits"][cam], result["speed"][cam], result["curves"][cam] = {}, {}, {}, {}
        for regime in cfg.regimes:
            recs = records[cam][regime]
            per_window = {}
            for name, lo, hi in wins:
                values = [window_values(r, t, lo, hi) for r, t in zip(recs, truths, strict=True)]
                per_window[name] = {m: summary([v[m] for v in values]) for m in METRICS}
            result["windows"][cam][regime] = per_window
            rv = revisits[cam][regime]
            keys = ("psnr_vs_first", "ssim_vs_first", "psnr_vs_gt", "ssim_vs_gt", "sharpness")
            result["revisits"][cam][regime] = {k: summary([r[k] for r in rv]) for k in keys}
            steps_s = speeds[cam][regime]
            result["speed"][cam][regime] = {
                "step_s": _finite(float(np.mean(np.concatenate(steps_s))), 5) if steps_s else None,
                "reset_s": _finite(float(np.mean(resets[cam][regime])), 3) if steps_s else None,
            }
            result["curves"][cam][regime] = mean_curve(recs, truths)
    for cam in (c for c in cameras if c in models):
        if "reprojection" not in cameras:
            break
        result["differences"][cam] = {}
        for regime in cfg.regimes:
            result["differences"][cam][regime] = {}
            for name, lo, hi in wins:
                mine = [window_values(r, t, lo, hi) for r, t in zip(records[cam][regime], truths, strict=True)]
                base = [
                    window_values(r, t, lo, hi) for r, t in zip(records["reprojection"][regime], truths, strict=True)
                ]
                result["differences"][cam][regime][name] = {
                    m: summary([a[m] - b[m] for a, b in zip(mine, base, strict=True)]) for m in METRICS
                }
        result["fine"][cam] = {
            regime: fine_differences(records[cam][regime], records["reprojection"][regime], truths,
                                     [e["env"] for e in episodes], cfg.steps)
            for regime in cfg.regimes
        }

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_curves(out / "closed_loop_curves.png", result, cameras)
    result["files"].append("closed_loop_curves.png")
    for regime, frames in strips.items():
        if not frames:
            continue
        revisit = frames.pop("_revisit")
        steps = sorted({s for s in (*STRIP_STEPS, revisit) if s is not None and s <= cfg.steps})
        name = f"closed_loop_strip_{regime}.png"
        plot_strip(out / name, frames, steps, f"world={regime}; {strip_episode}; revisit at step {revisit}")
        result["files"].append(name)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["files"] += ["closed_loop.json", "closed_loop.md"]
    write_atomic(out / "closed_loop.json", _dumps(result))
    page = out / "closed_loop.md"
    command = "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(shlex.quote(a) for a in [_script_path(), *sys.argv[1:]])
    write_atomic(page, render_page(result, cameras, read_discussion(page), command))
    return result


def _script_path() -> str:
    path = Path(__file__).resolve()
    return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)


def _parse(argv: list[str] | None = None) -> ClosedLoopConfig:
    d = ClosedLoopConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=d.envs, help="MiniWorld env ids (default: the held-out ones)")
    p.add_argument("--regimes", nargs="+", default=d.regimes, choices=list(WORLD_KINDS))
    p.add_argument(
        "--cameras",
        nargs="+",
        default=d.cameras,
        help=f"cameras to run (default: all): {list(BASELINES)}, model, --model names, {REFERENCE}",
    )
    p.add_argument("--episodes", type=int, default=d.episodes, help="episodes per env id")
    p.add_argument("--steps", type=int, default=d.steps, help="actions per episode")
    p.add_argument("--out-steps", type=int, default=d.out_steps, help="moves of the out leg before the return")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint", default=d.checkpoint, help="the model row's checkpoint (default: shipped)")
    p.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        metavar="NAME=DIR[,k=N]",
        help="an extra model row (repeatable); ,k=N gives it N context views per frame",
    )
    p.add_argument("--autocast", default=d.autocast, choices=list(AUTOCAST_DTYPES))
    p.add_argument("--env-id", default=d.env_id)
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--out", default=d.out)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return ClosedLoopConfig(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    res = main(_parse())
    print(f"wrote {res['config']['out']}/closed_loop.json and closed_loop.md in {res['seconds'] / 60:.1f} min")
    last = windows(res["config"]["steps"])[-1][0]
    for regime in res["config"]["regimes"]:
        for cam in res["cameras"]:
            w = res["windows"][cam][regime][last]
            print(
                f"  {regime:5s} {cam:13s} steps {last}: PSNR {_cell(w['psnr'])}  SSIM {_cell(w['ssim'], 3)}  "
                f"sharp {_cell(w['sharpness'])}  contrast {_cell(w['contrast'])}"
            )
