"""Benchmark SpatialMemory: add and retrieve latency against the number of stored poses.

One memory grows to each size in ``--sizes`` in turn. Poses are spread uniformly over a square
floor of ``--area`` metres a side at camera height 1.5 m with random headings; frames are tiny
(``--frame-size`` pixels square) so that a million fit in memory. Every add is timed; at each
size the add latencies since the previous size are summarised, then ``--queries`` retrievals
of ``--k`` frames from random poses are timed one by one, as is the index lookup alone
(``SpatialMemory.nearest``). A second memory with ``--capacity`` measures adds that evict.

Run (a few minutes on 2 cores):

    .venv/bin/python benchmarks/memory.py --out docs/results/memory.json

It writes the JSON (config, machine, results) and a Markdown table next to it (same name,
``.md``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import psutil
from benchlib import machine_info, write_atomic
from tqdm import tqdm

from rtfm_env.geometry import Intrinsics, camera_pose
from rtfm_env.memory import MemoryConfig, SpatialMemory


@dataclass
class BenchConfig:
    """What the benchmark measures."""

    sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)  # stored poses at which to measure
    queries: int = 1000  # retrievals timed at each size
    k: int = 4  # frames per retrieval
    frame_size: int = 4  # pixels; frames are frame_size x frame_size x 3
    depth: int = 1  # 1: every frame carries a depth map (retrieval then runs its occlusion test); 0: RGB only
    area: float = 30.0  # metres; poses lie on a square floor of this side
    capacity: int = 10_000  # frames kept by the memory of the eviction run
    capacity_adds: int = 30_000  # adds made to that memory (all after the first `capacity` evict)
    seed: int = 0
    out: str = "runs/memory.json"  # JSON path; the Markdown table goes next to it


def random_poses(rng: np.random.Generator, n: int, area: float) -> np.ndarray:
    """(n, 4, 4) camera-to-world poses at height 1.5 m, uniform on the floor, random yaw, no pitch.

    Vectorised form of :func:`rtfm_env.geometry.camera_pose` (a rotation about y by yaw - pi/2).
    """
    x, z = rng.uniform(0.0, area, n), rng.uniform(0.0, area, n)
    yaw = rng.uniform(-math.pi, math.pi, n)
    c, s = np.cos(yaw - math.pi / 2), np.sin(yaw - math.pi / 2)
    poses = np.zeros((n, 4, 4))
    poses[:, 0, 0], poses[:, 0, 2], poses[:, 1, 1] = c, s, 1.0
    poses[:, 2, 0], poses[:, 2, 2], poses[:, 3, 3] = -s, c, 1.0
    poses[:, 0, 3], poses[:, 1, 3], poses[:, 2, 3] = x, 1.5, z
    for i in range(min(n, 3)):  # the fast path must agree with the project's definition
        assert np.allclose(poses[i], camera_pose(x[i], z[i], yaw[i])), "random_poses disagrees with camera_pose"
    return poses


def percentiles_us(latencies_ns: np.ndarray) -> dict:
    """p50/p90/p99/mean/max of latencies in nanoseconds, reported in microseconds."""
    us = np.asarray(latencies_ns, dtype=np.float64) / 1e3
    return {
        "p50_us": float(np.percentile(us, 50)),
        "p90_us": float(np.percentile(us, 90)),
        "p99_us": float(np.percentile(us, 99)),
        "mean_us": float(us.mean()),
        "max_us": float(us.max()),
        "count": int(len(us)),
    }


def time_queries(mem: SpatialMemory, queries: np.ndarray, k: int, m: int) -> tuple[dict, dict, float]:
    """Latencies of retrieve(k) and of nearest(m) at each query pose, and the mean ids returned."""
    for q in queries[:10]:  # warm caches (sample points, code paths)
        mem.retrieve(q, k)
    retrieve_ns, nearest_ns, returned = [], [], []
    for q in queries:
        t0 = time.perf_counter_ns()
        ids = mem.retrieve(q, k)
        t1 = time.perf_counter_ns()
        mem.nearest(q, m)
        t2 = time.perf_counter_ns()
        retrieve_ns.append(t1 - t0)
        nearest_ns.append(t2 - t1)
        returned.append(len(ids))
    return percentiles_us(np.array(retrieve_ns)), percentiles_us(np.array(nearest_ns)), float(np.mean(returned))


def _depths(cfg: BenchConfig, rng: np.random.Generator) -> np.ndarray | None:
    """64 depth maps (metres, 0.3-8 m) reused in turn, or None for an RGB-only run."""
    if not cfg.depth:
        return None
    return rng.uniform(0.3, 8.0, (64, cfg.frame_size, cfg.frame_size)).astype(np.float32)


def growth_run(cfg: BenchConfig, rng: np.random.Generator) -> list[dict]:
    """Grow one memory through every size; time adds, retrievals and index lookups."""
    sizes = sorted(cfg.sizes)
    intrinsics = Intrinsics(cfg.frame_size, cfg.frame_size)
    frames = rng.integers(0, 256, (64, cfg.frame_size, cfg.frame_size, 3), dtype=np.uint8)
    depths = _depths(cfg, rng)
    poses = random_poses(rng, sizes[-1], cfg.area)
    mem = SpatialMemory()
    add_ns = np.empty(sizes[-1], dtype=np.int64)
    results, done = [], 0
    with tqdm(total=sizes[-1], desc="add", unit="pose", mininterval=1.0) as bar:
        for size in sizes:
            start = done
            for i in range(start, size):
                t0 = time.perf_counter_ns()
                depth = None if depths is None else depths[i % len(depths)]
                mem.add(frames[i % len(frames)], poses[i], intrinsics, "observed", step=i, depth=depth)
                add_ns[i] = time.perf_counter_ns() - t0
            bar.update(size - start)
            done = size
            queries = random_poses(rng, cfg.queries, cfg.area)
            retrieve, nearest, returned = time_queries(mem, queries, cfg.k, mem.config.candidates)
            results.append(
                {
                    "stored": len(mem),
                    "add_window": [start, size],
                    "add": percentiles_us(add_ns[start:size]),
                    "retrieve": retrieve,
                    "nearest": nearest,
                    "mean_ids_returned": returned,
                    "rss_mb": psutil.Process().memory_info().rss / 2**20,
                }
            )
            tqdm.write(
                f"{size:>9,d} stored: add p50 {results[-1]['add']['p50_us']:.1f} us, "
                f"retrieve p50 {retrieve['p50_us']:.0f} us (index {nearest['p50_us']:.0f} us)"
            )
    with tempfile.TemporaryDirectory() as tmp:  # save/load time at the largest size, as a bonus
        path = Path(tmp) / "memory.safetensors"
        t0 = time.perf_counter()
        mem.save(path)
        t1 = time.perf_counter()
        loaded = SpatialMemory.load(path)
        t2 = time.perf_counter()
        q = random_poses(rng, 20, cfg.area)
        assert all(loaded.retrieve(p, cfg.k) == mem.retrieve(p, cfg.k) for p in q), "reload changed retrieval"
        results[-1]["save_s"], results[-1]["load_s"] = t1 - t0, t2 - t1
        results[-1]["file_mb"] = path.stat().st_size / 2**20
    return results


def capacity_run(cfg: BenchConfig, rng: np.random.Generator) -> dict:
    """Time adds into a full memory with a capacity (each one evicts a frame)."""
    intrinsics = Intrinsics(cfg.frame_size, cfg.frame_size)
    frame = np.zeros((cfg.frame_size, cfg.frame_size, 3), dtype=np.uint8)
    depths = _depths(cfg, rng)
    poses = random_poses(rng, cfg.capacity_adds, cfg.area)
    mem = SpatialMemory(capacity=cfg.capacity)
    add_ns = np.empty(cfg.capacity_adds, dtype=np.int64)
    for i in tqdm(range(cfg.capacity_adds), desc="add with eviction", unit="pose", mininterval=1.0):
        source = "generated" if i % 2 else "observed"
        t0 = time.perf_counter_ns()
        depth = None if depths is None or source == "generated" else depths[i % len(depths)]
        mem.add(frame, poses[i], intrinsics, source, step=i, depth=depth)
        add_ns[i] = time.perf_counter_ns() - t0
    evicting = add_ns[cfg.capacity :]
    retrieve, nearest, returned = time_queries(
        mem, random_poses(rng, cfg.queries, cfg.area), cfg.k, mem.config.candidates
    )
    return {
        "capacity": cfg.capacity,
        "adds": cfg.capacity_adds,
        "stored": len(mem),
        "add_not_full": percentiles_us(add_ns[: cfg.capacity]),
        "add_evicting": percentiles_us(evicting),
        "retrieve": retrieve,
        "nearest": nearest,
        "mean_ids_returned": returned,
    }


def markdown(report: dict) -> str:
    """The results as a Markdown page."""
    cfg = report["config"]
    busy = ""
    if max(report["machine"]["load_average_1min"], report["load_average_1min_at_end"]) > 0.5:
        busy = ": other jobs shared the CPUs, so read the latencies as upper bounds"
    lines = [
        "# SpatialMemory latency",
        "",
        f"Produced by `{report['command']}` in {report['total_seconds']:.0f} s on "
        f"{report['machine']['platform']} ({report['machine']['cpu_count']} CPUs, Python "
        f"{report['machine']['python']}, numpy {report['machine']['numpy']}, scipy {report['machine']['scipy']}). "
        f"The 1-minute load average was {report['machine']['load_average_1min']:.1f} at the start and "
        f"{report['load_average_1min_at_end']:.1f} at the end{busy}.",
        "",
        f"Poses uniform on a {cfg['area']:g} m x {cfg['area']:g} m floor with random headings, "
        f"{cfg['frame_size']}x{cfg['frame_size']} frames"
        + (" with depth maps (so retrieval runs its occlusion test)" if cfg.get("depth") else ", RGB only")
        + f", {cfg['queries']} retrievals of k = {cfg['k']} "
        f"per size from random poses; retrieval scores the {report['memory_config']['candidates']} "
        "nearest poses of the 6-D index. Adds are summarised over the adds since the previous size; "
        "their p99 and max include the k-d tree merges that the logarithmic index makes now and then. "
        "Retrieve and index-lookup times include validating the query pose.",
        "",
        "| stored | add p50 (µs) | add p90 | add p99 | add mean | add max | retrieve p50 (µs) | retrieve p90 "
        "| retrieve p99 | index lookup p50 (µs) | ids returned (mean) | RSS (MiB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        a, q, n = r["add"], r["retrieve"], r["nearest"]
        lines.append(
            f"| {r['stored']:,} | {a['p50_us']:.1f} | {a['p90_us']:.1f} | {a['p99_us']:.1f} | {a['mean_us']:.1f} "
            f"| {a['max_us'] / 1e3:.1f} ms | {q['p50_us']:.0f} | {q['p90_us']:.0f} | {q['p99_us']:.0f} "
            f"| {n['p50_us']:.0f} | {r['mean_ids_returned']:.2f} | {r['rss_mb']:.0f} |"
        )
    big = report["results"][-1]
    target = "met" if big["retrieve"]["p50_us"] <= 1000 else "missed"
    lines += [
        "",
        f"Target retrieve p50 <= 1 ms at {big['stored']:,} stored: **{target}** ({big['retrieve']['p50_us']:.0f} µs).",
        "",
        f"Saving {big['stored']:,} frames took {big['save_s']:.2f} s ({big['file_mb']:.0f} MiB), loading "
        f"{big['load_s']:.2f} s; the reloaded memory retrieved the same ids.",
        "",
        "## With a capacity (eviction)",
        "",
    ]
    c = report["capacity"]
    lines += [
        f"A memory with capacity {c['capacity']:,} took {c['adds']:,} adds (alternately observed and generated); "
        f"every add after the first {c['capacity']:,} evicted the most redundant frame.",
        "",
        "| adds | p50 (µs) | p90 | p99 | mean |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, a in (("before full", c["add_not_full"]), ("evicting", c["add_evicting"])):
        lines.append(f"| {name} | {a['p50_us']:.1f} | {a['p90_us']:.1f} | {a['p99_us']:.1f} | {a['mean_us']:.1f} |")
    lines += [
        "",
        f"Retrieve at capacity: p50 {c['retrieve']['p50_us']:.0f} µs, p99 {c['retrieve']['p99_us']:.0f} µs.",
        "",
    ]
    return "\n".join(lines)


def main(cfg: BenchConfig) -> dict:
    """Run both measurements and write the JSON and Markdown results."""
    if not cfg.sizes or min(cfg.sizes) < 1:
        raise ValueError(f"sizes must be positive integers, got {cfg.sizes}")
    if cfg.capacity_adds <= cfg.capacity:
        raise ValueError(f"capacity_adds ({cfg.capacity_adds}) must exceed capacity ({cfg.capacity}) to time evictions")
    rng = np.random.default_rng(cfg.seed)
    machine = machine_info()
    t0 = time.perf_counter()
    results = growth_run(cfg, rng)
    capacity = capacity_run(cfg, rng)
    report = {
        "benchmark": "memory",
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/memory.py", *sys.argv[1:]]),
        "config": asdict(cfg),
        "memory_config": MemoryConfig().to_dict(),
        "machine": machine,
        "results": results,
        "capacity": capacity,
        "total_seconds": time.perf_counter() - t0,
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(report, indent=2) + "\n")
    write_atomic(out.with_suffix(".md"), markdown(report))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return report


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    """Command line generated from :class:`BenchConfig`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = BenchConfig()
    for f in fields(BenchConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=list(default))
        else:
            parser.add_argument(flag, type=type(default), default=default)
    ns = parser.parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in fields(BenchConfig)}
    values["sizes"] = tuple(values["sizes"])
    return BenchConfig(**values)


if __name__ == "__main__":
    main(parse_args())
