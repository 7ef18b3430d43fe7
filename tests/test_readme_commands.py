"""The README's commands do what it says (issue 15, item 9), run as written with tiny budgets.

Each test runs a README command line as the README spells it, from a scratch working
directory, with only budget options appended (steps, sizes, episodes), so a change that makes
a line false fails here:

- ``rtfm-env train`` and then the ``torchrun`` line below it (DDP on 2 processes);
- re-running a finished ``train`` says the run is finished and exits 0 (no ``loss nan``);
- a world file named with or without ``./`` is a file for ``demo --world``, ``eval revisit
  --world`` and ``gym.make(..., world=...)``;
- ``rtfm-env eval report --with`` prints the rows of the headline table ``report.md`` shows;
- the benchmarks write under ``runs/`` unless given ``--out``.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import rtfm_env  # noqa: F401 (registers the RTFM/* envs)
from rtfm_env import cli
from rtfm_env.cameras import ReprojectionCamera
from rtfm_env.data import recorder as rec
from rtfm_env.eval.report import HEADLINE_HEADER
from rtfm_env.scenes import MiniWorldScene

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
#: Budget options appended to the README's train lines: the T model on 16x16 frames, 2 steps.
TINY_TRAIN = ("--size T --model-overrides patch=4 --batch-size 8 --steps 2 --warmup-steps 1 --log-every 1 "
              "--ckpt-every 1 --eval-every 1 --eval-samples 2 --threads 1 --no-progress")


def _readme_commands() -> list[str]:
    """The README's command lines, continuation lines (ending in a backslash) joined, comments dropped."""
    commands, pending = [], ""
    for line in README.splitlines():
        line = line.split("  #")[0].rstrip()
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        commands.append((pending + line.strip()).strip())
        pending = ""
    return commands


def _readme_line(pattern: str) -> str:
    """The one README command matching ``pattern`` (a regex)."""
    found = [c for c in _readme_commands() if re.search(pattern, c)]
    assert len(found) == 1, f"README commands matching {pattern!r}: {found}"
    return found[0]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(command: str, cwd: Path, timeout: float = 80.0) -> subprocess.CompletedProcess:
    """Run a README command line (``.venv/bin/x`` and bare ``x`` both mean this venv's ``x``)."""
    argv = shlex.split(command)
    name = argv[0].rsplit("/", 1)[-1]
    argv[0] = str(BIN / name)
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------
# Training: the single-process line, the torchrun line after it, and a re-run of a finished run
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch working directory with tiny ``data/train`` and ``data/heldout`` recordings."""
    root = tmp_path_factory.mktemp("readme")
    rec.record(rec.RecordConfig(envs=["OneRoom"], episodes=2, steps=12, res=16, out=str(root / "data/train")),
               progress=False)
    rec.record(rec.RecordConfig(envs=["YMaze"], split="heldout", episodes=1, steps=8, res=16,
                                out=str(root / "data/heldout")), progress=False)
    return root


def test_train_then_torchrun_line_as_written(workdir):
    """The README's train line, then its torchrun line (2 processes, DDP), then the first line again."""
    single = _readme_line(r"^\.venv/bin/rtfm-env train ")
    ddp = _readme_line(r"^torchrun ")
    assert (BIN / "torchrun").exists(), "the venv has no torchrun"

    first = _run(f"{single} {TINY_TRAIN}", workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "step 2 of 2" in first.stdout and "nan" not in first.stdout

    second = _run(f"{ddp} {TINY_TRAIN}", workdir, timeout=85.0)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "2 process(es)" in second.stdout and "step 2 of 2" in second.stdout
    out = Path(shlex.split(ddp)[shlex.split(ddp).index("--out") + 1])
    assert (workdir / out / "last" / "model.safetensors").is_file()

    # Re-running the finished single-process run: says so, exits 0, prints no loss.
    again = _run(f"{single} {TINY_TRAIN}", workdir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is finished (step 2 of 2)" in again.stdout
    assert "nan" not in again.stdout.lower() and "loss" not in again.stdout


# --------------------------------------------------------------------------------------
# World paths: with or without ./
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    """A directory holding ``world.rtfm``: a walk of FourRooms with depth (what save_world writes)."""
    root = tmp_path_factory.mktemp("world")
    scene = MiniWorldScene("MiniWorld-FourRooms-v0")
    try:
        scene.reset(0)
        cam = ReprojectionCamera(world="walk")
        cam.reset(scene, scene.start_state.pose())
        cam.save_world(root / "world.rtfm")
    finally:
        scene.close()
    return root


@pytest.mark.parametrize("name", ["world.rtfm", "./world.rtfm"])
def test_demo_and_env_take_a_world_file_with_or_without_dot_slash(world_dir, monkeypatch, name, capsys):
    """``rtfm-env demo --world world.rtfm`` and ``world="world.rtfm"`` load the file, as ``./world.rtfm`` does."""
    monkeypatch.chdir(world_dir)
    env = gym.make("RTFM/PointNav-v0", camera="reprojection", world=name, depth=True)
    try:
        obs, _ = env.reset(seed=0)
        assert len(env.unwrapped.camera.memory) > 1 and obs["depth"].shape == (64, 64)
    finally:
        env.close()
    out = "demo_dot" if name.startswith("./") else "demo_bare"
    assert cli.main(["demo", "--camera", "reprojection", "--world", name, "--episodes", "1", "--max-steps", "2",
                     "--format", "gif", "--out", out]) == 0
    assert (world_dir / out).is_dir()
    with pytest.raises(ValueError, match=r"neither a regime .* nor an existing file"):
        gym.make("RTFM/PointNav-v0", camera="reprojection", world=name.replace("world", "wrold"))


def test_eval_revisit_takes_a_bare_world_file_name(world_dir, monkeypatch, capsys, one_thread):
    """``rtfm-env eval revisit --world world.rtfm`` (no ``./``) evaluates the file, as the README's line does."""
    monkeypatch.chdir(world_dir)
    out = "eval_world"
    code = cli.main(["eval", "revisit", "--world", "world.rtfm", "--episodes", "1", "--strategies", "spatial",
                     "--kinds", "turn360", "--turn-rotations", "1", "--threads", "1", "--no-progress",
                     "--out", out])
    assert code == 0, capsys.readouterr().err
    assert "world:world.rtfm" in (world_dir / out / "results.json").read_text()


# --------------------------------------------------------------------------------------
# eval report prints what report.md shows
# --------------------------------------------------------------------------------------


def _md_headline_rows(md: str) -> list[list[str]]:
    """The rows of report.md's first table (the headline table), cell by cell."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| headline |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_eval_report_prints_the_merged_headline_table(tmp_path):
    """The README's ``eval report --out A --with B C`` prints every row of A/report.md's headline table.

    Run as written on a copy of the committed evaluations: the base run's rows and the
    companions' rows, with the numbers report.md shows (not only the base run's).
    """
    command = _readme_line(r"eval report --out docs/results/revisit_v2 --with ")
    for src in sorted((ROOT / "docs/results").glob("revisit*")):
        shutil.copytree(src, tmp_path / "docs/results" / src.name)
    done = _run(command, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    args = shlex.split(command)
    out = Path(args[args.index("--out") + 1])
    companions = [a for a in args[args.index("--with") + 1 :] if not a.startswith("-")]
    rows = _md_headline_rows((tmp_path / out / "report.md").read_text())
    assert len(HEADLINE_HEADER) == 6 and len({row[5] for row in rows}) == 1 + len(companions), rows
    printed = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]
    assert len(printed) == len(rows), done.stdout
    for line, (name, measured, target, verdict, n, run) in zip(printed, rows, strict=True):
        assert line.startswith(f"{name}: {measured} (target {target}: {verdict.strip('*')}; n = {n}; "), line
        assert run == "this run" or run.startswith(f"[{line.rsplit('; ', 1)[1].rstrip(')')}]"), (line, run)


# --------------------------------------------------------------------------------------
# Benchmarks write to runs/ unless given --out
# --------------------------------------------------------------------------------------


def _default_out(path: Path) -> str | None:
    """The default of a benchmark's ``out`` config field (the ``--out`` default), read from its source."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == "out"
                and isinstance(node.value, ast.Constant)):
            return node.value.value
    return None


BENCHMARKS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if p.name != "benchlib.py")


@pytest.mark.parametrize("script", BENCHMARKS)
def test_benchmarks_default_to_runs(script):
    """No benchmark overwrites the committed docs/results unless told to with --out."""
    default = _default_out(ROOT / "benchmarks" / script)
    assert default is not None, f"{script} has no 'out' default"
    assert default.startswith("runs/"), f"{script} writes to {default} by default"


def test_readme_regenerates_committed_results_with_explicit_out():
    """Every README/docs command that runs a benchmark and names docs/results passes it as --out."""
    texts = [README, *(p.read_text(encoding="utf-8") for p in (ROOT / "docs/results").glob("*.md"))]
    for text in texts:
        for line in text.splitlines():
            if "benchmarks/" in line and ".py" in line and line.strip().startswith((".venv", "OMP", "python")):
                if "docs/results" in line:
                    assert re.search(r"--out docs/results/", line), line
