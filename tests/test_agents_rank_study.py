"""Tests for agents/rank_study.py: one evaluation per camera, cached, agreement and the blind check."""

import json

import pytest

from agents import rank_study

ARGS = ["--task", "RTFM/ObjectNav-v0", "--scene", "MiniWorld-OneRoom-v0", "--max-steps", "60",
        "--max-goal-distance", "4", "--episodes", "4", "--batch", "2", "--resamples", "30", "--quiet"]  # fmt: skip


def test_parse_policies_names_and_errors():
    assert rank_study.parse_policies(["random", "o=shortest_path"]) == (["random", "o"], ["random", "shortest_path"])
    with pytest.raises(ValueError, match="twice"):
        rank_study.parse_policies(["a=random", "a=seeker"])
    with pytest.raises(ValueError, match="NAME=SPEC"):
        rank_study.parse_policies(["=random"])


def test_study_end_to_end_with_cache(tmp_path, one_thread, monkeypatch):
    out = tmp_path / "study"
    argv = [*ARGS, "--cameras", "ground_truth", "blind", "--policies", "random", "oracle=shortest_path", "seeker",
            "--privileged", "random", "oracle", "--groups", "ground_truth=seeker,random", "blind=oracle",
            "--out", str(out)]  # fmt: skip
    result = rank_study.main(argv)
    saved = json.loads((out / "rank.json").read_text())
    assert saved["policies"] == ["random", "oracle", "seeker"] and saved["cameras"] == ["ground_truth", "blind"]
    gt = saved["results"]["ground_truth"]["rows"]
    assert [len(r["episode_success"]) for r in gt] == [4, 4, 4] and gt[1]["success"] == 1.0
    assert set(saved["agreement"]) == {"blind"} and set(saved["agreement"]["blind"]) == {"success", "spl"}
    blind = saved["blind_check"]
    assert blind["policies"] == ["seeker"] and blind["blind_success"] == 0.0 and blind["needs_eyes"] is True
    assert (out / "scatter.png").stat().st_size > 1000 and "Blind check (holds)" in (out / "rank.md").read_text()
    assert result["agreement"] == saved["agreement"]
    cells = saved["transfer"]["cells"]
    assert set(cells) == {"ground_truth", "blind"} and set(cells["ground_truth"]) == {"ground_truth"}  # blind: no test
    pooled = (gt[2]["success"] + gt[0]["success"]) / 2
    assert cells["ground_truth"]["ground_truth"]["success"] == pytest.approx(pooled)
    assert saved["transfer"]["ratio"]["ground_truth"] == pytest.approx(1.0)
    assert saved["transfer"]["ratio"]["blind"] == pytest.approx(1.0 / pooled)  # the oracle's 1.0 over the group's
    assert "Transfer (train x test" in (out / "rank.md").read_text()

    # a rerun reuses both cameras' evaluations: nothing is evaluated again
    def boom(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(rank_study, "evaluate_camera", boom)
    again = rank_study.main(argv)
    assert again["results"] == result["results"]
    # a changed setting (fewer steps) is a new evaluation
    with pytest.raises(AssertionError, match="evaluated again"):
        rank_study.main([*argv, "--max-steps", "50"])


def test_study_refuses_bad_requests(tmp_path):
    with pytest.raises(ValueError, match="reference"):
        rank_study.main([*ARGS, "--cameras", "blind", "reprojection", "--policies", "random", "seeker",
                         "--out", str(tmp_path)])  # fmt: skip
    with pytest.raises(ValueError, match="groups"):
        rank_study.main([*ARGS, "--cameras", "ground_truth", "--policies", "random", "seeker", "--groups", "model=x",
                         "--out", str(tmp_path)])  # fmt: skip
    with pytest.raises(ValueError, match="privileged"):
        rank_study.main([*ARGS, "--cameras", "ground_truth", "--policies", "random", "seeker", "--privileged", "x",
                         "--out", str(tmp_path)])  # fmt: skip
