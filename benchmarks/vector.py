"""Throughput of the native batched vector env against Gymnasium's SyncVectorEnv and AsyncVectorEnv.

For each camera (ground truth, model) and each N in ``--sizes``, three vector envs of the same
id, kwargs, seed and actions are timed one after the other in the same run:

* ``native``: ``gymnasium.make_vec(id, num_envs=N)``, the id's ``vector_entry_point``
  (:class:`rtfm_env.envs.vector.RTFMVectorEnv`: one batched ``FrameModel.generate`` per step,
  one model shared by the N envs);
* ``sync``: ``make_vec(..., vectorization_mode="sync")``, N single envs stepped in a loop, each
  with its own camera (and its own copy of the model);
* ``async``: ``make_vec(..., vectorization_mode="async")``, one worker process per env
  (started with ``--async-context``, spawn by default: forking a process that holds OpenGL
  contexts and torch threads is unsafe).

Frames/s counts the observations returned (N per step) over ``max(min_steps, frames / N)``
timed steps after ``warmup_steps``, with uniformly random forward/turn actions (no stop, so
episodes rarely reset). Async is capped at ``--async-max-envs`` envs: every worker imports torch
and MiniWorld (and, with the model camera, loads the model), a few hundred MiB each, and on a
2-core machine more workers only add contention; the cap and its reason are in the JSON.
Every process runs torch on ``--threads`` threads (1 by default: on a shared 2-core machine,
two spinning OpenMP threads per process collapse throughput tenfold as soon as other jobs run).

Run (about 10 minutes on 2 shared cores):

    .venv/bin/python benchmarks/vector.py --out docs/results/vector.json

It writes the JSON (config, machine, results) and a Markdown table next to it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import gymnasium as gym
import numpy as np
import psutil
import torch
from benchlib import machine_info, write_atomic
from tqdm import tqdm

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)

MODES = ("native", "sync", "async")
CAMERAS = ("ground_truth", "model")
ASYNC_CAP_REASON = (
    "each AsyncVectorEnv worker is a process that imports torch and MiniWorld (and loads the frame model with "
    "the model camera), a few hundred MiB each; more workers than this exhaust a shared machine's memory and, "
    "on 2 cores, only add contention"
)


@dataclass
class VectorBenchConfig:
    """What the benchmark measures."""

    env_id: str = "RTFM/PointNav-v0"  # registered RTFM id
    scene: str = "MiniWorld-YMaze-v0"  # a held-out world
    sizes: tuple[int, ...] = (1, 4, 16, 64)  # N, envs per vector env
    cameras: tuple[str, ...] = CAMERAS  # cameras measured
    modes: tuple[str, ...] = MODES  # vector envs measured
    frames: int = 256  # observations timed per measurement (steps = max(min_steps, frames / N))
    min_steps: int = 8  # timed steps at least
    warmup_steps: int = 2  # untimed steps first (caches, allocator, first generate)
    async_max_envs: int = 16  # largest N measured with AsyncVectorEnv (see ASYNC_CAP_REASON)
    async_context: str = "spawn"  # multiprocessing start method of the async workers
    checkpoint: str = ""  # model-camera checkpoint directory; empty: the shipped default
    resolution: int = 64  # pixels, square frames
    max_steps: int = 500  # actions per episode before truncation
    threads: int = 1  # torch threads per process (async workers too); 0 keeps torch's default
    seed: int = 0
    out: str = "runs/vector.json"  # JSON path; the Markdown table goes next to it


def _rss_mb() -> float:
    """Resident memory of this process and its children (the async workers), MiB."""
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def measure(cfg: VectorBenchConfig, camera: str, mode: str, n: int) -> dict:
    """Build one vector env, step it, and time the steps; returns frames/s and what it cost."""
    kwargs = {"scene": cfg.scene, "camera": camera, "resolution": cfg.resolution, "max_steps": cfg.max_steps}
    if camera == "model" and cfg.checkpoint:
        kwargs["checkpoint"] = cfg.checkpoint
    steps = max(cfg.min_steps, math.ceil(cfg.frames / n))
    actions = np.random.default_rng(cfg.seed).integers(1, 4, size=(cfg.warmup_steps + steps, n))  # forward/turns

    t0 = time.perf_counter()
    if mode == "native":
        envs = gym.make_vec(cfg.env_id, num_envs=n, **kwargs)
    elif mode == "sync":
        envs = gym.make_vec(cfg.env_id, num_envs=n, vectorization_mode="sync", **kwargs)
    else:
        envs = gym.make_vec(
            cfg.env_id, num_envs=n, vectorization_mode="async", vector_kwargs={"context": cfg.async_context}, **kwargs
        )
    try:
        envs.reset(seed=cfg.seed)
        build = time.perf_counter() - t0
        resets = 0
        for a in actions[: cfg.warmup_steps]:
            envs.step(a)
        t = time.perf_counter()
        for a in actions[cfg.warmup_steps :]:
            _, _, terminated, truncated, _ = envs.step(a)
            resets += int((terminated | truncated).sum())
        seconds = time.perf_counter() - t
        rss = _rss_mb()
        extra = {}
        if mode == "native" and camera == "model":
            extra["camera_options"] = envs.envs[0].camera.options  # checkpoint, k, steps, precision, device
    finally:
        envs.close()
    return {
        **extra,
        "camera": camera,
        "mode": mode,
        "num_envs": n,
        "vector_env": type(envs).__name__,
        "steps": steps,
        "frames": n * steps,
        "seconds": seconds,
        "frames_per_s": n * steps / seconds,
        "episode_ends": resets,
        "build_and_reset_s": build,
        "rss_mb": rss,
    }


def _relative(path: str | None) -> str:
    if path is None:
        return "a FrameModel object"
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def markdown(report: dict) -> str:
    """The results as a Markdown page: one table per camera, N down, vector env across."""
    cfg = report["config"]
    rows = {(r["camera"], r["mode"], r["num_envs"]): r for r in report["results"]}
    lines = [
        "# Vector env throughput",
        "",
        f"`{cfg['env_id']}` in `{cfg['scene']}` at {cfg['resolution']}x{cfg['resolution']}: observations per "
        "second (N per step) of the native batched vector env (`gymnasium.make_vec(id, num_envs=N)`) against "
        "`SyncVectorEnv` and `AsyncVectorEnv` of the single env, measured in the same run with the same seed and "
        f"actions (random forward/turns; {cfg['frames']} observations or {cfg['min_steps']} steps at least per "
        f"cell after {cfg['warmup_steps']} warm-up steps).",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    m = report["machine"]
    lines += [
        f"Machine: {m['processor']}, {m['cpu_count']} CPUs, torch {m.get('torch')} with {m.get('torch_threads')} "
        f"thread(s) per process, load average {m['load_average_1min']:.1f} at the start and "
        f"{report['load_average_1min_at_end']:.1f} at the end (other jobs shared the machine).",
        "",
    ]
    mc = report["model_camera"]
    if mc:
        lines += [
            f"Model camera: checkpoint `{_relative(mc['checkpoint'])}` (dim {mc['model_config']['dim']}, depth "
            f"{mc['model_config']['depth']}), k = {mc['k']}, {mc['steps']} sampling step(s), "
            f"{mc['autocast']} on {mc['device']}, context `{mc['context_strategy']}`.",
            "",
        ]
    for camera in cfg["cameras"]:
        lines += [
            f"## {camera.replace('_', ' ')} camera",
            "",
            "| N | native (frames/s) | sync | async | native / sync | native / async | RSS native / sync / async "
            "(MiB) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n in cfg["sizes"]:
            cells = [rows.get((camera, mode, n)) for mode in MODES]
            fps = [f"{c['frames_per_s']:.1f}" if c else "—" for c in cells]
            ratio = [
                f"{cells[0]['frames_per_s'] / c['frames_per_s']:.2f}x" if cells[0] and c else "—" for c in cells[1:]
            ]
            rss = " / ".join(f"{c['rss_mb']:.0f}" if c else "—" for c in cells)
            lines.append(f"| {n} | {' | '.join(fps)} | {' | '.join(ratio)} | {rss} |")
        lines.append("")
    lines += [
        "How to read it: ground-truth frames are rendered one view per call by MiniWorld (OpenGL on llvmpipe) in "
        "the native and the sync env alike, so there the native env can at best match sync; async renders in "
        "parallel worker processes (which, on a contended machine, also draw a larger share of the CPU). With the "
        "model camera the native env makes ONE `FrameModel.generate` call of N frames per step, sync and async N "
        "calls of one frame. RSS is that of the benchmark process and its workers at the end of each cell; the "
        "in-process MiniWorld env pool keeps the envs of earlier cells, so in-process RSS only grows down a table.",
        "",
    ]
    if report["skipped"]:
        lines += ["Not measured:", ""]
        lines += [f"- {s['camera']}, {s['mode']}, N = {s['num_envs']}: {s['reason']}" for s in report["skipped"]]
        lines.append("")
    return "\n".join(lines)


def main(cfg: VectorBenchConfig) -> dict:
    """Run every measurement and write the JSON and Markdown results; returns the report."""
    unknown = sorted(set(cfg.modes) - set(MODES)) + sorted(set(cfg.cameras) - set(CAMERAS))
    if unknown:
        raise ValueError(f"unknown modes/cameras {unknown}; valid modes: {list(MODES)}, cameras: {list(CAMERAS)}")
    if not cfg.sizes or min(cfg.sizes) < 1:
        raise ValueError(f"sizes must be positive integers, got {cfg.sizes}")
    threads, omp = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
        # Spawned async workers read it when they import torch, so every process runs alike.
        os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp


def _run(cfg: VectorBenchConfig) -> dict:
    machine = machine_info()
    t0 = time.perf_counter()
    plan, skipped = [], []
    for camera in cfg.cameras:
        for n in cfg.sizes:
            for mode in cfg.modes:
                if mode == "async" and n > cfg.async_max_envs:
                    skipped.append(
                        {
                            "camera": camera,
                            "mode": mode,
                            "num_envs": n,
                            "reason": f"async capped at N <= {cfg.async_max_envs}: {ASYNC_CAP_REASON}",
                        }
                    )
                else:
                    plan.append((camera, mode, n))
    results = []
    for camera, mode, n in tqdm(plan, desc="vector envs", unit="run"):
        r = measure(cfg, camera, mode, n)
        tqdm.write(f"{camera:>12} {mode:>6} N={n:<3} {r['frames_per_s']:8.1f} frames/s  ({r['rss_mb']:.0f} MiB)")
        results.append(r)

    options = [r.pop("camera_options") for r in results if "camera_options" in r]
    model_camera = options[0] if options else None
    report = {
        "benchmark": "vector",
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/vector.py", *sys.argv[1:]]),
        "config": asdict(cfg),
        "machine": machine,
        "model_camera": model_camera,
        "results": results,
        "skipped": skipped,
        "total_seconds": time.perf_counter() - t0,
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    out = Path(cfg.out)
    write_atomic(out, json.dumps(report, indent=2) + "\n")
    write_atomic(out.with_suffix(".md"), markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


def parse_args(argv: list[str] | None = None) -> VectorBenchConfig:
    """Command line generated from :class:`VectorBenchConfig`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = VectorBenchConfig()
    for f in fields(VectorBenchConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, type=type(default[0]), nargs="+", default=list(default))
        else:
            parser.add_argument(flag, type=type(default), default=default)
    ns = parser.parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in fields(VectorBenchConfig)}
    return VectorBenchConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


if __name__ == "__main__":
    main(parse_args())
