"""``rtfm-env demo``: drive the learned camera around the default world and write a video.

A shortest-path follower drives PointNav episodes on the embedded default world
(MiniWorld FourRooms, seed 0) in closed loop: what the camera shows is generated from its
memory as the robot moves. By default the camera is the frame model in the default world
regime, and every video frame has three panels: the generated view | the ground truth at the
same pose | the top-down map with the positions and view directions of the frames in the
camera's memory (red: observed ground truth, purple: generated). The summary scores each
episode's frames against the ground truth as the closed-loop benchmark does: PSNR, SSIM, and
sharpness and contrast as ratios to the ground truth's (1.0 is right; below 0.7 is blur or a
washed-out frame, which PSNR alone does not show). The video and a ``summary.json`` go to
``--out``, and the summary is printed::

    rtfm-env demo                                    # the shipped model, world=scan
    rtfm-env demo --camera reprojection --world walk # the no-learning baseline
    rtfm-env demo --camera ground_truth              # the renderer: view | map
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
from tqdm import tqdm

import rtfm_env  # noqa: F401  (registers the RTFM/* ids)
from rtfm_env import viz
from rtfm_env.cameras import CAMERAS, CONTEXT_STRATEGIES, MemoryCamera
from rtfm_env.envs.base import RTFMEnv
from rtfm_env.envs.follower import ShortestPathFollower
from rtfm_env.eval.metrics import contrast, psnr, sharpness, ssim

DEFAULT_SCENE = "MiniWorld-FourRooms-v0"
DEFAULT_SEED = 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rtfm-env demo``."""
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default: demo_out)")
    parser.add_argument("--scene", default=DEFAULT_SCENE, help=f"MiniWorld env id (default: {DEFAULT_SCENE})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the first episode (default: 0)")
    parser.add_argument("--episodes", type=int, default=3, help="episodes to drive (default: 3)")
    parser.add_argument("--max-steps", type=int, default=150, help="step limit per episode (default: 150)")
    parser.add_argument(
        "--camera", choices=sorted(CAMERAS), default="model", help="which camera sees (default: model)"
    )
    parser.add_argument("--resolution", type=int, default=64, help="camera frame size in pixels (default: 64)")
    parser.add_argument("--fps", type=int, default=10, help="video frames per second (default: 10)")
    parser.add_argument(
        "--format", choices=("mp4", "gif"), default="mp4", help="video container (default: mp4; gif needs no ffmpeg)"
    )
    model = parser.add_argument_group("memory cameras (model; world, seed views, capacity: reprojection, nearest too)")
    model.add_argument(
        "--checkpoint", type=Path, metavar="DIR", help="frame-model checkpoint directory (default: the shipped one)"
    )
    model.add_argument("--k", type=int, metavar="N", help="context frames per generated frame (default: 2)")
    model.add_argument(
        "--context-strategy", choices=CONTEXT_STRATEGIES, help="how context frames are picked (default: spatial)"
    )
    model.add_argument("--sampling-steps", type=int, metavar="N", help="Euler steps per frame (default: the model's)")
    model.add_argument("--seed-views", type=int, metavar="N", help="ground-truth frames stored at reset (default: 1)")
    model.add_argument("--memory-capacity", type=int, metavar="N", help="frames the memory keeps (default: all)")
    model.add_argument(
        "--world",
        metavar="WORLD",
        help="memory cameras (model, reprojection, nearest): image, walk, scan or a world file (default: scan)",
    )


def run(args: argparse.Namespace) -> int:
    """Drive the episodes, write the video and summary, print what happened."""
    if args.episodes < 1 or args.max_steps < 1:
        raise ValueError(f"--episodes and --max-steps must be >= 1, got {args.episodes} and {args.max_steps}")
    options = {
        "checkpoint": args.checkpoint,
        "k": args.k,
        "context_strategy": args.context_strategy,
        "sampling_steps": args.sampling_steps,
        "seed_views": args.seed_views,
        "memory_capacity": args.memory_capacity,
        "world": args.world,
    }
    # None options are the camera's defaults; the env refuses them with another camera.
    env = gym.make(
        "RTFM/PointNav-v0",
        scene=args.scene,
        camera=args.camera,
        resolution=args.resolution,
        max_steps=args.max_steps,
        render_mode="rgb_array",
        **{name: value for name, value in options.items() if value is not None},
    )
    base = env.unwrapped
    model = isinstance(base.camera, MemoryCamera)  # generated | ground truth | map panels
    follower = ShortestPathFollower(base.scene, stop_distance=base.task.success_distance * 0.9)
    frames: list[np.ndarray] = []
    episodes = []
    t0 = time.perf_counter()
    steps_total = 0
    with tqdm(desc="demo", unit="step") as bar:
        for ep in range(args.episodes):
            obs, info = env.reset(seed=args.seed + ep)
            canvas = viz.MapCanvas(base.scene.top_down_map(), height=base.render_height) if model else None
            frames.append(_model_panels(base, obs["rgb"], canvas)[0] if model else env.render())
            shown, truths = [], []
            done = False
            while not done:
                action = follower.act(base.state, base.task.goal)
                obs, reward, terminated, truncated, info = env.step(action)
                if model:
                    frame, truth = _model_panels(base, obs["rgb"], canvas)
                    frames.append(frame)
                    shown.append(obs["rgb"])
                    truths.append(truth)
                else:
                    frames.append(env.render())
                done = terminated or truncated
                steps_total += 1
                bar.update(1)
            record = {
                "seed": args.seed + ep,
                "steps": int(info["steps"]) if "steps" in info else len(base.episode.states) - 1,
                "success": bool(info["success"]),
                "spl": float(info["spl"]),
                "collisions": int(info["collisions"]),
                "distance_to_goal": float(info["distance_to_goal"]),
            }
            if model and shown:
                record.update(_closed_loop_scores(np.stack(shown), np.stack(truths)))
                record["memory_frames"] = len(base.camera.memory)
            episodes.append(record)
    sim_seconds = time.perf_counter() - t0
    camera_options = base.camera.options if model else None
    env.close()

    args.out.mkdir(parents=True, exist_ok=True)
    video = args.out / f"demo.{args.format}"
    _write_video(video, frames, args.fps)
    summary = {
        "scene": args.scene,
        "camera": args.camera,
        "resolution": args.resolution,
        "episodes": episodes,
        "steps": steps_total,
        "seconds": round(sim_seconds, 3),
        "steps_per_second": round(steps_total / sim_seconds, 1),
        "video": str(video),
    }
    if model:
        summary["panels"] = ["generated", "ground truth", "map with stored frames"]
        summary["camera_options"] = camera_options
    _write_json(args.out / "summary.json", summary)
    print(f"rtfm-env demo: {args.camera} camera in {args.scene}, {args.resolution}x{args.resolution} frames")
    for e in episodes:
        quality = (f"; vs ground truth: PSNR {e['psnr']:.1f} dB, SSIM {e['ssim']:.3f}, sharpness {e['sharpness']:.2f}, "
                   f"contrast {e['contrast']:.2f}" if "psnr" in e else "")
        print(
            f"  episode seed {e['seed']}: {e['steps']} steps, success={e['success']}, SPL={e['spl']:.2f}, "
            f"collisions={e['collisions']}, final distance {e['distance_to_goal']:.2f} m{quality}"
        )
    if model:
        print("  video panels: generated | ground truth | map (red: observed frames, purple: generated); "
              "sharpness and contrast are ratios to the ground truth's (1.0 is right, below 0.7 is blur)")
    print(f"  {steps_total} steps in {sim_seconds:.1f} s ({summary['steps_per_second']} steps/s incl. rendering)")
    print(f"  video: {video} ({len(frames)} frames)   summary: {args.out / 'summary.json'}")
    return 0


def _closed_loop_scores(shown: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """An episode's frames against the ground truth, as benchmarks/closed_loop.py scores them.

    PSNR (dB) and SSIM are means over the frames; sharpness and contrast are the frames' sums
    over the ground truth's (ratios: 1.0 is right).
    """
    ratio = {
        name: float(np.sum(fn(shown)) / max(float(np.sum(fn(truth))), 1e-9))
        for name, fn in (("sharpness", sharpness), ("contrast", contrast))
    }
    return {
        "psnr": round(float(np.mean([psnr(a, b) for a, b in zip(shown, truth, strict=True)])), 3),
        "ssim": round(float(np.mean([ssim(a, b) for a, b in zip(shown, truth, strict=True)])), 4),
        "sharpness": round(ratio["sharpness"], 3),
        "contrast": round(ratio["contrast"], 3),
    }


def _model_panels(env: RTFMEnv, view: np.ndarray, canvas: viz.MapCanvas) -> tuple[np.ndarray, np.ndarray]:
    """The generated view | the ground truth at its pose | the map with the memory's frames, and that truth."""
    truth = env.scene.render(env.state.pose())
    memory = env.camera.memory
    ids = memory.ids
    layer = canvas.draw(
        env.episode.states,
        goal=env.task.goal,
        goal_radius=env.task.goal_radius,
        frame_poses=memory.poses(ids),
        frame_sources=memory.sources(ids),
    )
    return viz.compose(view, truth, layer, height=env.render_height), truth


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if path.suffix == ".mp4":
        # even sizes for yuv420p; macro_block_size=1 keeps the composite's exact size
        with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1, quality=8) as w:
            for f in frames:
                w.append_data(f[: f.shape[0] // 2 * 2, : f.shape[1] // 2 * 2])
    else:
        imageio.mimsave(tmp, frames, duration=1000.0 / fps, loop=0)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)
