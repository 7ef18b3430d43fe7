"""Tests for agents/plot_curves.py: reading both log formats, matching checkpoints in a rank.json, the PNG."""

import json

import pytest

from agents import plot_curves


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_logs_ranks_and_png(tmp_path):
    header = "round,samples,episodes,executed_success,executed_spl,loss,accuracy,wall_s\n"
    bc = _write(tmp_path / "bc" / "log.csv", header + "0,10,2,1.0,0.9,1.0,0.5,1\n1,20,2,0.5,0.4,0.9,0.6,2\n").parent
    ppo = _write(tmp_path / "ppo" / "log.csv", "timesteps,success_rate\n1024,\n2048,0.25\n").parent
    assert plot_curves.read_log(bc / "log.csv") == ("DAgger round", [0.0, 1.0], [1.0, 0.5])
    assert plot_curves.read_log(ppo / "log.csv") == ("timesteps", [2048.0], [0.25])
    rows = [{"name": n, "success": s, "success_se": 0.1} for n, s in (("bc_r1", 0.4), ("bc_r0", 0.2), ("x", 1.0))]
    rank = {"config": {"reference": "ground_truth", "episodes": 10}, "results": {"ground_truth": {"rows": rows}}}
    assert plot_curves.evaluated(rank, "bc", "ground_truth") == ([0, 1], [0.2, 0.4], [0.1, 0.1])
    rows += [{"name": n, "success": s, "success_se": 0.1} for n, s in (("ppo_33k", 0.3), ("ppo_16k", 0.1))]
    assert plot_curves.evaluated(rank, "ppo", "ground_truth", r"_(\d+)k") == ([16, 33], [0.1, 0.3], [0.1, 0.1])
    assert plot_curves.evaluated(rank, "ppo", "ground_truth") == ([], [], [])  # not DAgger rounds
    rank_path = _write(tmp_path / "rank.json", json.dumps(rank))
    argv = ["--runs", f"bc={bc}", f"ppo={ppo}", "--rank", str(rank_path), "--out", str(tmp_path / "c.png")]
    out = plot_curves.main(argv)
    assert out.stat().st_size > 1000 and not list(tmp_path.glob("*.tmp.png"))
    _write(tmp_path / "bad" / "log.csv", "a,b\n1,2\n")
    with pytest.raises(ValueError, match="neither"):
        plot_curves.read_log(tmp_path / "bad" / "log.csv")
    with pytest.raises(ValueError, match="NAME=DIR"):
        plot_curves.main(["--runs", "nodir", "--out", str(tmp_path / "d.png")])
