"""Tests of agents/ranking.py (Pearson, Spearman, MMRV, bootstrap) and the agents/rank.py command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from agents import rank as rank_cli
from agents.ranking import agreement, bootstrap, mmrv, pearson, spearman


def _simpler_mmrv(sim, real):
    """SIMPLER's reference loop (simpler_env/utils/metrics.py), for comparison."""
    out = []
    for i in range(len(sim)):
        worst = 0.0
        for j in range(len(sim)):
            if (sim[i] > sim[j]) != (real[i] > real[j]):
                worst = max(worst, abs(real[i] - real[j]))
        out.append(worst)
    return float(np.mean(out))


def test_mmrv_of_identical_rankings_is_zero():
    """Two score lists that order the policies alike have MMRV 0, whatever their values."""
    assert mmrv([0.1, 0.5, 0.9], [0.1, 0.5, 0.9]) == 0.0
    assert mmrv([0.2, 0.3, 0.4], [0.0, 0.5, 1.0]) == 0.0


def test_mmrv_of_known_swaps_is_the_hand_computed_value():
    """Swapping two policies costs their reference gap for each of them, averaged over all policies."""
    # Policies 0 and 1 swap (reference gap 0.3); policy 2 agrees: (0.3 + 0.3 + 0) / 3.
    assert mmrv([0.2, 0.5, 0.9], [0.5, 0.2, 0.9]) == pytest.approx(0.2)
    # A tie under the candidate against an order under the reference is a violation (strict >): (0 + 0.6) / 2.
    assert mmrv([0.5, 0.5], [0.2, 0.8]) == pytest.approx(0.3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        sim, real = rng.random(5).round(1), rng.random(5).round(1)
        assert mmrv(sim, real) == pytest.approx(_simpler_mmrv(sim, real))


def test_correlations_match_scipy_and_are_nan_when_constant():
    """Pearson r and Spearman rho equal scipy.stats' (ties included); a constant side gives NaN without warnings."""
    x, y = [0.1, 0.4, 0.4, 0.9], [0.2, 0.1, 0.5, 0.7]
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0])
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0])
    with np.errstate(all="raise"):
        assert np.isnan(pearson([0.3, 0.3, 0.3], y[:3])) and np.isnan(spearman(y[:3], [1.0, 1.0, 1.0]))


def test_bootstrap_interval_contains_the_estimate_and_is_seeded():
    """Each measure's percentile interval contains its full-data value; the same seed gives the same interval."""
    rng = np.random.default_rng(1)
    p = np.array([0.1, 0.4, 0.6, 0.9])[:, None]
    reference = (rng.random((4, 60)) < p).astype(float)
    candidate = (rng.random((4, 60)) < p * 0.9).astype(float)
    result = agreement(candidate, reference, resamples=300, seed=3)
    for name, est in result.items():
        assert est.low <= est.value <= est.high, (name, est)
        assert est.defined == 300 and est.confidence == 0.95
    assert bootstrap("mmrv", candidate, reference, resamples=300, seed=3) == result["mmrv"]
    assert bootstrap("mmrv", candidate, reference, resamples=300, seed=4) != result["mmrv"]


@pytest.mark.parametrize(
    ("candidate", "reference", "message"),
    [
        (np.zeros((3, 5)), np.zeros((3, 4)), "differ in shape"),
        (np.zeros((1, 5)), np.zeros((1, 5)), "at least 2 policies"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), np.ones((2, 2)), "finite"),
        (np.zeros(3), np.zeros(3), r"\(policies, episodes\)"),
    ],
)
def test_bad_scores_raise_clear_errors(candidate, reference, message):
    """Mismatched shapes, one policy, NaN and 1-D input raise ValueError saying what is wrong."""
    with pytest.raises(ValueError, match=message):
        bootstrap("pearson", candidate, reference)


def test_bad_measure_and_plain_functions_reject_bad_input():
    """An unknown measure lists the valid ones; the plain measures check lengths, policy count and NaN too."""
    with pytest.raises(ValueError, match="pearson"):
        bootstrap("kendall", np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="differ in shape"):
        mmrv([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2 policies"):
        spearman([0.1], [0.2])
    with pytest.raises(ValueError, match="finite"):
        pearson([0.1, float("nan")], [0.2, 0.3])


def test_rank_command_end_to_end(tmp_path, capsys, one_thread):
    """agents.rank on ObjectNav: random and the oracle under reprojection and ground truth, table and JSON."""
    out = tmp_path / "rank.json"
    result = rank_cli.main(["--task", "RTFM/ObjectNav-v0", "--camera", "reprojection", "--world", "image",
                            "--policies", "random", "shortest_path", "--episodes", "4", "--max-goal-distance", "4",
                            "--resamples", "50", "--quiet", "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["config"]["policies"] == ["random", "shortest_path"] and saved["seeds"] == [10000, 10003]
    assert "cpu_count" in saved["machine"] and saved["env"]["success_distance"] == 1.0
    oracle, random = saved["camera"]["rows"][1], saved["camera"]["rows"][0]
    assert oracle["success"] == 1.0 and random["success"] < 1.0 and saved["camera"]["ranks"] == [2, 1]
    assert [r["seed"] for r in oracle["records"]] == [r["seed"] for r in saved["reference"]["rows"][1]["records"]]
    assert set(saved["agreement"]) == {"success", "spl"}
    assert saved["agreement"]["success"]["mmrv"]["value"] == 0.0
    assert result["agreement"] == saved["agreement"]
    assert "| shortest_path | 1.00" in printed and "Spearman" in printed and "MMRV" in printed


def test_rank_command_in_a_recorded_world_ranks_without_reference(tmp_path, capsys):
    """With a recorded world (no ground truth) the command ranks under the camera alone and says why."""
    from test_scenes_recorded import write_grid_world

    world = write_grid_world(tmp_path / "w.rtfm", np.ones((30, 30), dtype=bool))
    result = rank_cli.main(["--task", "RTFM/PointNav-v0", "--camera", "reprojection", "--world", str(world),
                            "--resolution", "16", "--policies", "random", "shortest_path", "--episodes", "2",
                            "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert result["agreement"] is None and result["reference"] is None
    assert "no ground-truth renderer" in result["reference_unavailable"]
    assert "No agreement measured" in printed and "| shortest_path |" in printed


def test_rank_command_refuses_bad_requests():
    """Fewer than 2 policies or an unknown camera fail before any episode runs, naming what is valid."""
    with pytest.raises(ValueError, match="at least 2 policies"):
        rank_cli.main(["--policies", "random", "--episodes", "1"])
    with pytest.raises(ValueError, match="blind"):
        rank_cli.main(["--camera", "fisheye", "--policies", "random", "shortest_path"])


def test_seeker_needs_its_eyes(one_thread):
    """The scripted colour seeker finds targets with the ground-truth camera and none when blind (grey views)."""
    cfg = rank_cli.RankConfig(
        task="RTFM/ObjectNav-v0", camera=rank_cli.BLIND, policies=["seeker", "random"], episodes=5,
        env={"max_steps": 60, "max_goal_distance": 6.0},
    )  # fmt: skip
    env_config, memory = rank_cli.env_setup(cfg)
    seeing = rank_cli.evaluate_camera(cfg, "ground_truth", env_config, memory, progress=False)[0]
    blind = rank_cli.evaluate_camera(cfg, rank_cli.BLIND, env_config, memory, progress=False)[0]
    assert seeing["success"] >= 0.4 and blind["success"] <= 0.3 * seeing["success"]
