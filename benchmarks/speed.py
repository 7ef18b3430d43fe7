"""Speed of the model camera: frames/s, achieved FLOP/s, and cost against memory size.

Measured in one run, on whatever machine runs it (CPU by default, CUDA with --device cuda):

* single stream: ``ModelCamera.observe`` of one pose at a time along a trajectory;
* batched: ``observe`` of B poses at once (one ``FrameModel.generate`` call);
* both for each inference variant of the same checkpoint: ``eager_tanh`` (the network exactly
  as trained: tanh GELU, eager), ``eager`` (the camera's default: erf GELU, which agrees with
  tanh within bf16 rounding) and ``compiled`` (``compile=True``: torch.compile'd network). The
  variants are timed in turn, ``repeats`` times, and the median of each is reported, so a
  change in the machine's load hits them alike;
* achieved FLOP/s of the transformer during ``generate`` (FLOPs counted by
  ``torch.utils.flop_counter``) against a bf16 matrix product timed in the same run;
* step time with 1e2 and 1e5 frames in the spatial memory (context juggling must keep it flat);
* the no-learning reprojection camera (``ReprojectionCamera``: retrieval, forward warp, fill),
  single stream and batched, in the same repeats.

Cameras are timed in the default regime (``world="scan"``: a dense RGB-D scan of the layout in
memory, so retrieval runs its occlusion test), except the memory-size comparison, which starts
from the single start image and pads the memory to each size.

Targets on the 2-core CPU machines: >= 40 frames/s single stream, >= 100 frames/s batched
(B = 16), and <= 1.1x step time from 1e2 to 1e5 stored frames; the reprojection camera
>= 300 frames/s single stream.

    .venv/bin/python benchmarks/speed.py --checkpoint runs/s64/last --out docs/results/speed.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from benchlib import machine_info, write_atomic
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from rtfm_env.cameras import ModelCamera, ReprojectionCamera
from rtfm_env.model.network import depth_features, posed_rays
from rtfm_env.model.sampler import sample, target_warp
from rtfm_env.scenes import MiniWorldScene


@dataclass
class SpeedConfig:
    """What the benchmark measures."""

    checkpoint: str | None = None  # checkpoint directory; None: the shipped default
    scene: str = "MiniWorld-YMaze-v0"  # a held-out world
    resolution: int = 64  # pixels, square frames
    k: int = 2  # context views per frame
    steps: int | None = None  # sampling steps; None: the model's default
    frames: int = 64  # frames timed per measurement
    variants: str = "eager_tanh,eager,compiled"  # comma-separated, from VARIANTS
    repeats: int = 9  # timings of each variant, interleaved; the median (and the best) is reported
    batch: int = 16  # B for the batched measurement
    big_memory: int = 100_000  # frames stored for the memory-size comparison
    small_memory: int = 100  # frames stored for its baseline
    device: str = "cpu"  # cpu or cuda
    threads: int = 0  # torch threads; 0 keeps torch's default
    world: str = "scan"  # what the cameras' memory holds at reset (the default regime)
    reprojection_k: int = 4  # stored frames warped per reprojection frame (0 skips the reprojection camera)
    out: str = "runs/speed.json"  # JSON output


#: Inference variants of one checkpoint: ModelCamera options.
VARIANTS: dict[str, dict] = {
    "eager_tanh": {"gelu": "tanh"},
    "eager": {},
    "compiled": {"compile": True},
}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _matmul_flops(device: str, dtype: torch.dtype = torch.bfloat16, n: int = 1024, reps: int = 20) -> float:
    """Achieved FLOP/s of an n x n matrix product in ``dtype``: the machine's practical ceiling."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t)


def _poses_around(scene: MiniWorldScene, n: int, seed: int) -> np.ndarray:
    """``n`` free camera poses near the start (the trajectory the camera is driven along)."""
    rng = np.random.default_rng(seed)
    start = scene.start_state
    poses = []
    while len(poses) < n:
        s = scene.sample_free_state(rng)
        if math.hypot(s.x - start.x, s.z - start.z) < 4.0:
            poses.append(s.pose())
    return np.stack(poses)


def _fill_memory(camera: ModelCamera, scene: MiniWorldScene, n: int, seed: int) -> None:
    """Pad the camera's memory to ``n`` frames with posed frames spread over the layout."""
    rng = np.random.default_rng(seed)
    frame = camera.memory.frames([camera.memory.ids[0]])[0]
    intr = scene.intrinsics
    for _ in tqdm(range(n - len(camera.memory)), desc=f"fill memory to {n}", unit="frame", leave=False):
        s = scene.sample_free_state(rng)
        camera.memory.add(frame, s.pose(), intr, source="generated")


def _time_observe(camera: ModelCamera, poses: np.ndarray, batch: int, device: str) -> float:
    """Seconds per frame of ``observe`` over ``poses`` in batches of ``batch``."""
    camera.observe(poses[:batch])  # warm-up
    _sync(device)
    t = time.perf_counter()
    for i in range(0, len(poses), batch):
        camera.observe(poses[i : i + batch])
    _sync(device)
    return (time.perf_counter() - t) / len(poses)


def _generate_flops(cam: ModelCamera, poses: np.ndarray, cfg: SpeedConfig) -> float:
    """FLOPs per frame of generation: the context encoding plus every denoising step.

    Runs the same network calls as ``FrameModel.generate`` on a copy of the network with
    autograd on (the FLOP counter's module tracker needs it; the count is of the forward only),
    with the context the camera would retrieve.
    """
    net, mcfg = copy.deepcopy(cam.model.network).requires_grad_(True), cam.model.config
    b, k = len(poses), cfg.k
    ids = [int(cam.memory.ids[0])] * k
    ctx = torch.as_tensor(cam.memory.frames(ids)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (K, 3, H, W)
    ctx = ctx[None].expand(b, -1, -1, -1, -1).contiguous().to(cfg.device)  # (B, K, 3, H, W)
    ctx_poses = np.repeat(cam.memory.poses(ids)[None], b, axis=0)  # (B, K, 4, 4)
    target_rays, context_rays = posed_rays(poses, ctx_poses, cam.intrinsics)
    steps = cfg.steps or mcfg.sample_steps
    v2 = {}  # a v2 network's extra inputs: the fused warp and the context's depth
    if cam.model.needs_depth:
        depths = torch.as_tensor(cam.memory.depths(ids))[None].expand(b, -1, -1, -1).contiguous().to(cfg.device)
        if mcfg.warp_input:
            v2["warp"] = target_warp(ctx, depths, ctx_poses, poses, cam.intrinsics, mcfg)
        if mcfg.depth_input:
            v2["context_depth"] = depth_features(depths, mcfg)
        if mcfg.context_noise > 0:
            v2["noise_level"] = torch.zeros(b, k, device=cfg.device)
    # Under the model's own autocast: its linear weights are stored in bf16 for inference.
    with torch.enable_grad(), cam.model._autocast(), FlopCounterMode(display=False) as counter:
        cache = net.encode_context(ctx, context_rays.to(cfg.device), **v2)
        sample(net, ctx[:, 0], target_rays.to(cfg.device), cache, steps)
    return counter.get_total_flops() / b


def main(cfg: SpeedConfig) -> dict:
    """Run every measurement and write the JSON; returns the result dict."""
    variants = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"unknown speed variant {unknown[:1] or None}; valid variants: {list(VARIANTS)}")
    if cfg.repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {cfg.repeats}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    scene = MiniWorldScene(cfg.scene, width=cfg.resolution, height=cfg.resolution)
    start = scene.reset(0)

    def fresh_camera(options: dict | None = None) -> ModelCamera:
        options = {"world": cfg.world, **(options or {})}
        cam = ModelCamera(cfg.checkpoint, k=cfg.k, steps=cfg.steps, device=cfg.device, resolution=cfg.resolution,
                          **options)
        cam.reset(scene, start.pose(), seed=0)
        return cam

    poses = _poses_around(scene, cfg.frames, seed=1)
    batch_poses = np.concatenate([poses] * max(1, cfg.batch * 4 // len(poses)))
    cameras, compile_s = {}, {}
    for name in variants:
        t = time.perf_counter()
        cameras[name] = fresh_camera(VARIANTS[name])
        # Warm-up at every shape timed (1 and B poses, 1 and k views): a compiled network
        # compiles each new shape once.
        for i in range(cfg.k):
            cameras[name].observe(poses[i : i + 1])
        cameras[name].observe(poses[: cfg.batch])
        compile_s[name] = time.perf_counter() - t
    reproj = None
    if cfg.reprojection_k:
        reproj = ReprojectionCamera(k=cfg.reprojection_k, world=cfg.world, device=cfg.device)
        reproj.reset(scene, start.pose())
        reproj.observe(poses[: cfg.batch])  # warm-up
    runs: dict[str, dict[str, list]] = {name: {"single": [], "batched": []} for name in variants}
    reproj_runs: dict[str, list] = {"single": [], "batched": []}
    for _ in tqdm(range(cfg.repeats), desc="speed repeats", unit="repeat", leave=False):
        for name, cam in cameras.items():
            cam.reset(scene, start.pose(), seed=0)
            runs[name]["single"].append(_time_observe(cam, poses, 1, cfg.device))
            cam.reset(scene, start.pose(), seed=0)
            runs[name]["batched"].append(_time_observe(cam, batch_poses, cfg.batch, cfg.device))
        if reproj is not None:  # deterministic and stores nothing: no reset needed between runs
            reproj_runs["single"].append(_time_observe(reproj, poses, 1, cfg.device))
            reproj_runs["batched"].append(_time_observe(reproj, batch_poses, cfg.batch, cfg.device))

    cam = cameras[variants[0]]
    flops_per_frame = _generate_flops(cam, poses[: cfg.batch], cfg)
    # The reference is a matrix product in the precision the camera runs (bf16 where the hardware
    # has it, else float32): an emulated bf16 product says nothing about the machine's ceiling.
    matmul_dtype = cam.model.autocast_dtype or torch.float32
    matmul = _matmul_flops(cfg.device, matmul_dtype)
    per_variant = {}
    for name in variants:
        single = float(np.median(runs[name]["single"]))
        batched = float(np.median(runs[name]["batched"]))
        per_variant[name] = {
            "camera_options": {k: v for k, v in cameras[name].options.items() if k != "model_config"},
            "setup_and_warm_up_s": compile_s[name],
            "single_stream": {"seconds_per_frame": single, "frames_per_s": 1.0 / single,
                              "best_frames_per_s": 1.0 / min(runs[name]["single"]),
                              "runs_frames_per_s": [1.0 / x for x in runs[name]["single"]]},
            "batched": {"batch": cfg.batch, "seconds_per_frame": batched, "frames_per_s": 1.0 / batched,
                        "best_frames_per_s": 1.0 / min(runs[name]["batched"]),
                        "runs_frames_per_s": [1.0 / x for x in runs[name]["batched"]]},
            "achieved_flops_per_s_batched": flops_per_frame / batched,
            "fraction_of_matmul": flops_per_frame / batched / matmul,
        }
    cameras.clear()

    # cost against memory size: same query poses, 1e2 vs 1e5 stored frames, timed in turn
    filled = {}
    for n in (cfg.small_memory, cfg.big_memory):
        filled[n] = fresh_camera({"world": "image"})
        _fill_memory(filled[n], scene, n, seed=2)
    memory_runs: dict[int, list] = {n: [] for n in filled}
    for _ in range(cfg.repeats):
        for n, c in filled.items():
            memory_runs[n].append(_time_observe(c, poses, 1, cfg.device))
    timings = {n: float(np.median(v)) for n, v in memory_runs.items()}
    cam = filled[cfg.small_memory]
    scene.close()

    default = per_variant["eager"] if "eager" in per_variant else per_variant[variants[0]]
    best = max(variants, key=lambda v: per_variant[v]["batched"]["frames_per_s"])
    targets = {
        "single_stream_frames_per_s": 40,
        "batched_frames_per_s": 100,
        "memory_ratio_max": 1.1,
        "reprojection_single_stream_frames_per_s": 300,
    }
    reprojection = None
    if reproj is not None:
        single, batched = (float(np.median(reproj_runs[m])) for m in ("single", "batched"))
        reprojection = {
            "camera_options": reproj.options,
            "memory_frames": len(reproj.memory),
            "single_stream": {"seconds_per_frame": single, "frames_per_s": 1.0 / single,
                              "best_frames_per_s": 1.0 / min(reproj_runs["single"]),
                              "runs_frames_per_s": [1.0 / x for x in reproj_runs["single"]]},
            "batched": {"batch": cfg.batch, "seconds_per_frame": batched, "frames_per_s": 1.0 / batched,
                        "best_frames_per_s": 1.0 / min(reproj_runs["batched"]),
                        "runs_frames_per_s": [1.0 / x for x in reproj_runs["batched"]]},
            "target_met": 1.0 / single >= targets["reprojection_single_stream_frames_per_s"],
        }
    result = {
        "benchmark": "speed",
        "config": asdict(cfg),
        "model_config": asdict(cam.model.config),
        "machine": machine_info(),
        "variants": per_variant,
        "reprojection": reprojection,
        # The camera's default inference (eager, or the first variant timed), for the headline.
        "single_stream": default["single_stream"],
        "batched": default["batched"],
        "fastest_batched_variant": best,
        "flops": {
            "per_frame": flops_per_frame,
            "achieved_per_s_batched": flops_per_frame / default["batched"]["seconds_per_frame"],
            "matmul_per_s": matmul,
            "matmul_dtype": str(matmul_dtype).removeprefix("torch."),
            "fraction_of_matmul": default["fraction_of_matmul"],
        },
        "memory_size": {
            "seconds_per_frame": {str(n): t for n, t in timings.items()},
            "runs_seconds_per_frame": {str(n): v for n, v in memory_runs.items()},
            "ratio_big_over_small": timings[cfg.big_memory] / timings[cfg.small_memory],
        },
        "targets": targets,
        "targets_met": {
            name: {
                "single_stream": v["single_stream"]["frames_per_s"] >= targets["single_stream_frames_per_s"],
                "batched": v["batched"]["frames_per_s"] >= targets["batched_frames_per_s"],
            }
            for name, v in per_variant.items()
        },
    }
    out = Path(cfg.out)
    write_atomic(out, json.dumps(result, indent=2))
    return result


def _parse() -> SpeedConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SpeedConfig()
    for name in SpeedConfig.__dataclass_fields__:
        d = getattr(defaults, name)
        kind = int if name in ("steps",) else (str if d is None else type(d))
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=d)
    return SpeedConfig(**vars(p.parse_args()))


if __name__ == "__main__":
    r = main(_parse())
    fl, ms = r["flops"], r["memory_size"]
    for name, v in r["variants"].items():
        ss, bb = v["single_stream"], v["batched"]
        print(f"{name:>10}: single stream {ss['frames_per_s']:.1f} frames/s (best {ss['best_frames_per_s']:.1f}; "
              f"target >= 40), batched (B={bb['batch']}) {bb['frames_per_s']:.1f} frames/s (best "
              f"{bb['best_frames_per_s']:.1f}; target >= 100), set-up and warm-up {v['setup_and_warm_up_s']:.0f} s")
    print(
        f"transformer: {fl['per_frame'] / 1e9:.2f} GFLOP/frame, {fl['achieved_per_s_batched'] / 1e9:.0f} GFLOP/s "
        f"= {100 * fl['fraction_of_matmul']:.0f}% of a {fl['matmul_dtype']} matmul "
        f"({fl['matmul_per_s'] / 1e9:.0f} GFLOP/s)"
    )
    print(f"step time 1e5 vs 1e2 frames in memory: {ms['ratio_big_over_small']:.2f}x (target <= 1.1)")
    rp = r["reprojection"]
    if rp is not None:
        ss, bb = rp["single_stream"], rp["batched"]
        print(f"reprojection: single stream {ss['frames_per_s']:.1f} frames/s (best {ss['best_frames_per_s']:.1f}; "
              f"target >= 300), batched (B={bb['batch']}) {bb['frames_per_s']:.1f} frames/s, "
              f"{rp['memory_frames']} frames in memory")
