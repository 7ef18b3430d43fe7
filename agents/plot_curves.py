r"""Learning curves of imitation / PPO runs for ``agents/RESULTS.md`` (matplotlib, one PNG).

Each run's training log (``log.csv``): the success of the episodes it collected, by DAgger round
(``agents/train_bc.py``) or by timestep (``agents/train_ppo.py``), one panel per x axis. Last, with ``--rank``:
the same runs' checkpoints as the ranking study measured them (``agents/rank_study.py``'s
``rank.json``: 100 fixed episodes per checkpoint, ground truth), matched by policy name
``<run>_r<round>`` (DAgger rounds) and, in a panel of their own, ``<run>_<N>k`` (PPO checkpoints
at N thousand timesteps).

Example::

    .venv/bin/python -m agents.plot_curves --runs seek_gt_s0=runs/bc14/seek_gt_s0 seek_gt_s1=runs/bc14/seek_gt_s1 \
        --rank agents/results/objectnav_rank/rank.json --out agents/results/objectnav_rank/curves.png
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any


def read_log(path: Path) -> tuple[str, list[float], list[float]]:
    """(x label, x values, success values) of a train_bc or train_ppo ``log.csv``."""
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} has no rows")
    if "round" in rows[0]:
        return "DAgger round", [float(r["round"]) for r in rows], [float(r["executed_success"]) for r in rows]
    if "timesteps" in rows[0]:
        pts = [(float(r["timesteps"]), float(r["success_rate"])) for r in rows if r.get("success_rate")]
        return "timesteps", [p[0] for p in pts], [p[1] for p in pts]
    raise ValueError(f"{path} is neither a train_bc nor a train_ppo log (no 'round' or 'timesteps' column)")


def evaluated(
    rank: dict[str, Any], run: str, reference: str, suffix: str = r"_r(\d+)"
) -> tuple[list[int], list[float], list[float]]:
    r"""(rounds, success, standard error) of ``<run>_r<round>`` policies under ``reference`` in a rank.json.

    ``suffix`` is the pattern after the run's name whose group is the x value: ``_(\d+)k`` reads
    PPO checkpoints named by thousands of timesteps.
    """
    pattern = re.compile(re.escape(run) + suffix + "$")
    rows = rank["results"][reference]["rows"]
    pts = sorted((int(m.group(1)), r["success"], r["success_se"]) for r in rows if (m := pattern.match(r["name"])))
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def plot(runs: dict[str, Path], rank_path: Path | None, out: Path) -> None:
    """Write the PNG to ``out`` (temp file, then rename)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rank = json.loads(rank_path.read_text(encoding="utf-8")) if rank_path is not None else None
    logs = {name: read_log(directory / "log.csv") for name, directory in runs.items()}
    kinds = sorted({label for label, _, _ in logs.values()})  # one panel per x axis: rounds, timesteps
    # the ranking study's checkpoints: DAgger rounds, and PPO timesteps when any run has them
    checkpoint_panels = []
    if rank is not None:
        ref = rank["config"]["reference"]
        checkpoint_panels.append((r"_r(\d+)", "DAgger round of the checkpoint", 1))
        if any(evaluated(rank, name, ref, r"_(\d+)k")[0] for name in runs):
            checkpoint_panels.append((r"_(\d+)k", "PPO timesteps of the checkpoint", 1000))
    panels = len(kinds) + len(checkpoint_panels)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=False):
        for name, (label, x, y) in logs.items():
            if label == kind:
                ax.plot(x, y, marker="o", ms=3, label=name)
        ax.set_xlabel(kind, fontsize=8)
        ax.set_ylabel("success of the collected episodes", fontsize=8)
        ax.set_title("training log", fontsize=9)
        ax.legend(fontsize=6)
    for ax, (suffix, xlabel, scale) in zip(axes[0][len(kinds) :], checkpoint_panels, strict=True):
        for name in runs:
            steps, success, se = evaluated(rank, name, ref, suffix)
            if steps:
                ax.errorbar([x * scale for x in steps], success, yerr=se, marker="o", ms=3, capsize=2, label=name)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(f"success, {ref} ({rank['config']['episodes']} episodes)", fontsize=8)
        ax.set_title("checkpoints in the ranking study", fontsize=9)
        ax.legend(fontsize=6)
    for ax in axes[0]:
        ax.set_ylim(-0.03, 1.03)
        ax.tick_params(labelsize=7)
    save_figure(fig, out)


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Write a matplotlib figure as a PNG (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> Path:
    """Parse and plot; returns the PNG's path."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="NAME=DIR of train_bc / train_ppo runs")
    p.add_argument("--rank", default=None, help="a rank_study rank.json with <NAME>_r<round> policies")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    runs = {}
    for item in args.runs:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise ValueError(f"a run is NAME=DIR, got {item!r}")
        runs[name] = Path(directory)
    out = Path(args.out)
    plot(runs, Path(args.rank) if args.rank else None, out)
    return out


if __name__ == "__main__":
    try:
        print(main())
    except (ValueError, KeyError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
