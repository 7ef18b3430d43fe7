"""The ``rtfm-env`` command line: one entry point, one subcommand per job.

Examples::

    rtfm-env demo --out demo_out                      # drive a camera around the default world
    rtfm-env record --envs Maze OneRoom --episodes 8 --res 64 --out data/train

Each subcommand's module owns its options (``add_arguments(parser)``) and its work
(``run(args) -> exit code``); this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: subcommand -> (module, one-line help, longer description)
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "rtfm_env.demo",
        "drive the camera around the default world and write a video",
        "Run a short PointNav episode on the embedded default world with a shortest-path "
        "driver, write a video with the camera view beside the top-down map, and print what "
        "happened (steps, success, SPL, frames/s).",
    ),
    "record": (
        "rtfm_env.data.recorder",
        "record MiniWorld episodes of posed frames as training shards",
        "Record episodes of posed frames (frames, camera-to-world poses, intrinsics, env id, "
        "seed) from MiniWorld scenes along trajectories that revisit places, as atomic shards "
        "plus a manifest. Resumable: re-running the same command finishes what is missing. "
        "Refuses env ids outside the training list unless --split heldout is given.",
    ),
    "train": (
        "rtfm_env.model.train",
        "train the frame model on recorded shards",
        "Train the frame model on recordings of the train split: bf16 autocast, EMA weights, "
        "warm-up then cosine or constant learning rate, gradient clipping, a CSV log, and atomic "
        "checkpoints under --out (last -> checkpoints/step-N). Re-running the same command resumes "
        "from the last checkpoint. Several processes: torchrun --nproc_per_node N -m rtfm_env.cli train ...",
    ),
    "record-bag": (
        "rtfm_env.ros.record_bag",
        "record the ROS 2 camera node's topics to a rosbag2 bag",
        "Run the camera node in-process (the ros extra) with camera-node parameters given as -p NAME:=VALUE, "
        "and write every message it publishes (image_raw, camera_info, odom, pose, and depth/image_raw, "
        "depth/camera_info, /clock or /tf where published) to a new rosbag2 bag in MCAP or sqlite3 for "
        "--duration seconds or --frames frames. The bag "
        "appears at --out only once finished. The node listens to cmd_vel meanwhile or, with --drive walk, "
        "drives itself along the walk regime's exploration walk.",
    ),
    "world": (
        "rtfm_env.world_build",
        "build a world file from a bag, nerfstudio or MiniWorld",
        "Worlds built from recordings. 'rtfm-env world build --from bag DIR | --from nerfstudio DIR | "
        "--from scene ID --out WORLD' writes, atomically, a world file: the recording's posed RGB-D frames "
        "(resized to --res), its free-space map (from depth, or a corridor around the camera path) and where it "
        "came from. Drive it with world=WORLD in gym.make or rtfm-camera. Format: docs/WORLDS.md.",
    ),
    "eval": (
        "rtfm_env.eval.revisit",
        "evaluate cameras: revisit consistency and cost per frame",
        "Evaluations of the cameras. 'rtfm-env eval revisit' drives every context strategy of the model "
        "camera (and the ground-truth camera) along trajectories that come back to places, and reports "
        "PSNR/SSIM against ground truth, revisit consistency against time since the first visit, and wall "
        "time per frame against trajectory length: results.json plus report.md/report.html with plots. "
        "Resumable per episode.",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand's options."""
    parser = argparse.ArgumentParser(
        prog="rtfm-env",
        description="rtfm-sim: a camera simulator for robotics whose camera is a learned frame model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'rtfm-env <command> --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for name, (module, short, long) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=short, description=long)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns its exit code."""
    args = build_parser().parse_args(argv)
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
