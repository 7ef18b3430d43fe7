"""Tests for the rtfm-env command line and the demo."""

import json
import subprocess
import sys

import imageio.v2 as imageio
import numpy as np
import pytest

from rtfm_env import cli


def test_help_lists_every_subcommand(capsys):
    """`rtfm-env --help` names each subcommand with its one-line help."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name, (_, short, _) in cli.SUBCOMMANDS.items():
        assert name in out and short in out


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_subcommand_help_explains_it(name, capsys):
    """Each subcommand's --help prints its description."""
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert cli.SUBCOMMANDS[name][2].split(".")[0][:40] in out


def test_unknown_subcommand_fails_with_choices(capsys):
    """An unknown subcommand exits non-zero and lists the valid ones."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["fly"])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert "demo" in err and "record" in err


def test_console_script_entry_point_runs():
    """The installed `rtfm-env` console script answers --help in a separate process."""
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from rtfm_env.cli import main; sys.exit(main())", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "record" in proc.stdout


@pytest.mark.parametrize("fmt", ["mp4", "gif"])
def test_demo_writes_video_and_summary(tmp_path, fmt, capsys):
    """By default the demo shows the learned camera in closed loop, scored against the ground truth.

    Its video has three panels (generated | ground truth | map); it drives to the goal.
    """
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "--episodes", "1", "--max-steps", "60", "--format", fmt])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["camera"] == "model" and summary["panels"][:2] == ["generated", "ground truth"]
    ep = summary["episodes"][0]
    assert ep["success"] and ep["spl"] > 0.5 and ep["collisions"] == 0
    for key in ("psnr", "ssim", "sharpness", "contrast"):
        assert np.isfinite(ep[key]) and ep[key] > 0, key
    frames = list(imageio.mimread(out / f"demo.{fmt}", memtest=False))
    # one frame per step plus the start; GIF merges the identical frame after a stop
    assert len(frames) == ep["steps"] + 1 or (fmt == "gif" and len(frames) == ep["steps"])
    h, w = frames[0].shape[:2]
    assert w > 2.5 * h  # three panels side by side
    printed = capsys.readouterr().out
    assert "success=True" in printed and "sharpness" in printed and "SSIM" in printed


def test_demo_ground_truth_camera_shows_view_beside_map(tmp_path):
    """--camera ground_truth keeps the two-panel view | map video."""
    out = tmp_path / "demo"
    assert cli.main(["demo", "--camera", "ground_truth", "--out", str(out), "--episodes", "1", "--max-steps", "30",
                     "--format", "gif"]) == 0
    frames = list(imageio.mimread(out / "demo.gif", memtest=False))
    h, w = frames[0].shape[:2]
    assert 1.5 * h < w < 2.5 * h
