"""Cost of a memory camera's reset in each world regime (image, walk, scan), cached and not.

A reset fills the camera's spatial memory with the regime's observed RGB-D frames
(:mod:`rtfm_env.worlds`). Walks and scans are rendered once per (scene, layout seed) and cached,
so the first reset of a layout pays for rendering and later ones only build the memory. For
each of ``--layouts`` layout seeds this times, through a :class:`ReprojectionCamera`, the first
reset (uncached: the cache is cleared before it) and ``--repeats`` more (cached), and reports
medians per regime with the frames stored.

Target (issue: worlds and regimes): <= 2 s per reset at 64x64 on FourRooms, median, cached or not.

    .venv/bin/python benchmarks/world_reset.py --out docs/results/world_reset.json

It writes the JSON (config, machine, results) and a Markdown table next to it (``.md``).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from benchlib import machine_info, parse_config, write_atomic
from tqdm import tqdm

from rtfm_env import worlds
from rtfm_env.cameras import ReprojectionCamera
from rtfm_env.scenes import MiniWorldScene


@dataclass
class WorldResetConfig:
    """What the benchmark measures."""

    scene: str = "MiniWorld-FourRooms-v0"  # scene id
    resolution: int = 64  # pixels, square frames
    layouts: int = 5  # layout seeds 0..layouts-1, each reset uncached once
    repeats: int = 3  # cached resets per layout
    regimes: str = "image,walk,scan"  # comma-separated, from rtfm_env.worlds.WORLD_KINDS
    out: str = "runs/world_reset.json"  # JSON path; the Markdown table goes next to it


def main(cfg: WorldResetConfig) -> dict:
    """Time the resets and write the JSON and Markdown; returns the result dict."""
    regimes = [r.strip() for r in cfg.regimes.split(",") if r.strip()]
    unknown = [r for r in regimes if r not in worlds.WORLD_KINDS]
    if unknown or not regimes:
        raise ValueError(f"unknown regime {unknown[:1] or None}; valid regimes: {list(worlds.WORLD_KINDS)}")
    if cfg.layouts < 1 or cfg.repeats < 1:
        raise ValueError(f"layouts and repeats must be >= 1, got {cfg.layouts} and {cfg.repeats}")
    scene = MiniWorldScene(cfg.scene, width=cfg.resolution, height=cfg.resolution)
    load_start = os.getloadavg()[0]
    results = {}
    try:
        for regime in regimes:
            camera = ReprojectionCamera(world=regime)
            uncached, cached, frames = [], [], []
            for seed in tqdm(range(cfg.layouts), desc=f"reset {regime}", unit="layout"):
                start = scene.reset(seed).pose()
                worlds.clear_cache()
                t = time.perf_counter()
                camera.reset(scene, start)
                uncached.append(time.perf_counter() - t)
                for _ in range(cfg.repeats):
                    t = time.perf_counter()
                    camera.reset(scene, start)
                    cached.append(time.perf_counter() - t)
                frames.append(len(camera.memory))
            results[regime] = {
                "uncached_s": {"median": float(np.median(uncached)), "max": float(np.max(uncached)), "runs": uncached},
                "cached_s": {"median": float(np.median(cached)), "max": float(np.max(cached)), "runs": cached},
                "frames_stored": {"median": float(np.median(frames)), "min": int(min(frames)), "max": int(max(frames))},
                "target_met": bool(np.median(uncached) <= 2.0 and np.median(cached) <= 2.0),
            }
    finally:
        scene.close()
    report = {
        "benchmark": "world_reset",
        "config": asdict(cfg),
        "scan_config": asdict(worlds.ScanConfig()),
        "walk_frames": worlds.WALK_FRAMES,
        "machine": machine_info(),
        "load_average_1min_at_start": load_start,
        "load_average_1min_at_end": os.getloadavg()[0],
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
        "target_s": 2.0,
        "results": results,
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(report, indent=2))
    write_atomic(out.with_suffix(".md"), markdown(report))
    return report


def markdown(report: dict) -> str:
    """The results as a Markdown page."""
    cfg = report["config"]
    lines = [
        "# World reset cost per regime",
        "",
        f"Produced by `{report['command']}` on {report['machine'].get('platform', '?')} "
        f"({report['machine'].get('cpu_count', '?')} CPUs); 1-minute load average "
        f"{report['load_average_1min_at_start']:.1f} at the start, "
        f"{report['load_average_1min_at_end']:.1f} at the end.",
        "",
        f"{cfg['scene']} at {cfg['resolution']}x{cfg['resolution']}, {cfg['layouts']} layouts: the first reset of each "
        f"layout renders the regime's RGB-D frames (cache cleared first), then {cfg['repeats']} resets reuse the "
        f"cached recording and only build the memory. Scan: {report['scan_config']}; walk: "
        f"{report['walk_frames']} frames.",
        "",
        "| regime | frames stored (median) | uncached reset, median (s) | max | cached reset, median (s) | max | "
        "target <= 2 s |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for regime, r in report["results"].items():
        lines.append(
            f"| {regime} | {r['frames_stored']['median']:.0f} | {r['uncached_s']['median']:.3f} | "
            f"{r['uncached_s']['max']:.3f} | {r['cached_s']['median']:.3f} | {r['cached_s']['max']:.3f} | "
            f"{'met' if r['target_met'] else 'missed'} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> WorldResetConfig:
    """Command line generated from :class:`WorldResetConfig`."""
    return parse_config(WorldResetConfig, __doc__, argv)


if __name__ == "__main__":
    r = main(parse_args())
    for regime, v in r["results"].items():
        print(
            f"{regime:>5}: {v['frames_stored']['median']:.0f} frames, "
            f"reset {v['uncached_s']['median']:.2f} s uncached, "
            f"{v['cached_s']['median']:.2f} s cached (median; target <= 2 s)"
        )
