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
    assert saved["transfer"]["ratio_interval"]["ground_truth"] == [1.0, 1.0]  # a group against itself

    # a rerun reuses both cameras' evaluations: nothing is evaluated again
    def boom(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(rank_study, "evaluate_camera", boom)
    again = rank_study.main(argv)
    assert again["results"] == result["results"]
    # a changed setting (fewer steps) is a new evaluation
    with pytest.raises(AssertionError, match="evaluated again"):
        rank_study.main([*argv, "--max-steps", "50"])
    assert saved["agreement_vision"] is None  # one vision policy: nothing to rank

    # the same policies under other names, in another order, fewer of them: nothing is evaluated again
    monkeypatch.setattr(rank_study, "evaluate_camera", boom)
    subset = rank_study.main([*ARGS, "--cameras", "ground_truth", "--policies", "s=seeker", "r=random",
                              "--out", str(out)])  # fmt: skip
    gt_rows = subset["results"]["ground_truth"]["rows"]
    assert [r["name"] for r in gt_rows] == ["s", "r"]
    assert gt_rows[0]["episode_success"] == result["results"]["ground_truth"]["rows"][2]["episode_success"]


def test_study_reads_a_first_format_camera_cache(tmp_path, one_thread, monkeypatch):
    """A camera file holding one entry for a whole policy list is reused through the study's rank.json."""
    out = tmp_path / "study"
    argv = [*ARGS, "--cameras", "ground_truth", "--policies", "random", "oracle=shortest_path", "--out", str(out)]
    first = rank_study.main(argv)
    cfg = json.loads((out / "rank.json").read_text())["config"]
    old = {"key": first["results"]["ground_truth"]["key"], "camera": "ground_truth", "wall_s": 1.0,
           "rows": first["results"]["ground_truth"]["rows"], "ranks": [2, 1]}  # fmt: skip
    (out / "cameras" / "ground_truth.json").write_text(json.dumps(old))

    def boom(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(rank_study, "evaluate_camera", boom)
    again = rank_study.main(argv)
    assert again["results"]["ground_truth"]["rows"] == first["results"]["ground_truth"]["rows"]
    # a key that the study's config does not reproduce is not trusted
    (out / "cameras" / "ground_truth.json").write_text(json.dumps({**old, "key": "0" * 16}))
    with pytest.raises(AssertionError, match="evaluated again"):
        rank_study.main(argv)
    assert cfg["policies"] == ["random", "shortest_path"]
    # a policy added to it: only that one is evaluated
    (out / "cameras" / "ground_truth.json").write_text(json.dumps(old))
    from agents.rank import evaluate_camera

    asked = []

    def spy(cfg, camera, *a, **k):
        asked.append((camera, list(cfg.policies)))
        return evaluate_camera(cfg, camera, *a, **k)

    monkeypatch.setattr(rank_study, "evaluate_camera", spy)
    grown = rank_study.main([*argv[: argv.index("--out")], "seeker", "--out", str(out)])
    assert asked == [("ground_truth", ["seeker"])]
    rows = grown["results"]["ground_truth"]["rows"]
    assert [r["name"] for r in rows] == ["random", "oracle", "seeker"]
    assert rows[:2] == first["results"]["ground_truth"]["rows"]
    assert json.loads((out / "cameras" / "ground_truth.json").read_text())["format"] == rank_study.CACHE_FORMAT
    (out / "cameras" / "ground_truth.json").write_text("{not json")
    with pytest.raises(ValueError, match="not readable JSON"):
        rank_study.main(argv)


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


def test_agreement_over_vision_policies_leaves_out_the_privileged(tmp_path, monkeypatch):
    """The oracle and random score alike under every camera; the vision-only agreement ranks the rest."""
    from agents.evaluate import summarize

    # Per camera and policy: successes over 10 episodes. The camera "reprojection" reverses the
    # order of the three vision policies, while the privileged ends (0 and 10) stay put.
    wins = {"ground_truth": {"random": 0, "shortest_path": 10, "a": 2, "b": 4, "c": 6},
            "reprojection": {"random": 0, "shortest_path": 10, "a": 6, "b": 4, "c": 2}}  # fmt: skip
    specs = {"a": "ppo:a", "b": "ppo:b", "c": "ppo:c"}
    by_spec = {specs.get(k, k): k for k in wins["ground_truth"]}

    def fake(cfg, camera, *a, **k):
        rows = []
        for spec in cfg.policies:
            n = wins[camera][by_spec[spec]]
            records = [{"seed": i, "success": i < n, "spl": 0.9 * (i < n), "soft_spl": 0.5, "steps": 10,
                        "collisions": 0, "distance_to_goal": 1.0, "start_distance_to_goal": 3.0, "wall_s": 0.1}
                       for i in range(10)]  # fmt: skip
            rows.append({"policy": spec, "camera": camera, **summarize(records), "records": records})
        return rows

    monkeypatch.setattr(rank_study, "evaluate_camera", fake)
    result = rank_study.main([*ARGS, "--episodes", "10", "--cameras", "ground_truth", "reprojection",
                              "--policies", "random", "oracle=shortest_path", "a=ppo:a", "b=ppo:b", "c=ppo:c",
                              "--privileged", "random", "oracle", "--out", str(tmp_path / "s")])  # fmt: skip
    overall = result["agreement"]["reprojection"]["success"]
    vision = result["agreement_vision"]["reprojection"]["success"]
    assert overall["pearson"]["value"] > 0.7  # the privileged ends carry it
    assert vision["pearson"]["value"] == pytest.approx(-1.0) and vision["spearman"]["value"] == pytest.approx(-1.0)
    assert "reprojection (vision policies only)" in (tmp_path / "s" / "rank.md").read_text()


def test_transfer_ratio_has_a_bootstrap_interval():
    """The ratio's interval comes from resampling episodes, the same ones for every policy."""
    def row(wins, n=200):
        return {"episode_success": "".join("1" if i < wins else "0" for i in range(n)), "episode_spl": [0.0] * n}

    results = {"ground_truth": {"rows": [row(40), row(60), row(45)]}}
    tr = rank_study.transfer(results, ["a", "b", "c"], {"ground_truth": ["a", "b"], "model": ["c"]}, "ground_truth",
                             resamples=500, confidence=0.9, seed=3)  # fmt: skip
    assert tr["ratio"]["model"] == pytest.approx(45 / 50)
    low, high = tr["ratio_interval"]["model"]
    assert low < 0.9 < high and high - low < 0.3
    again = rank_study.transfer(results, ["a", "b", "c"], {"ground_truth": ["a", "b"], "model": ["c"]},
                                "ground_truth", resamples=500, confidence=0.9, seed=3)  # fmt: skip
    assert again["ratio_interval"] == tr["ratio_interval"]  # seeded
    # no reference-trained group: no ratio, no interval
    none = rank_study.transfer(results, ["a", "b", "c"], {"model": ["c"]}, "ground_truth")
    assert all(map(lambda x: x != x, none["ratio_interval"]["model"]))


def test_transfer_interval_over_seeds_widens_when_seeds_disagree():
    """Resampling each group's policies (its seeds) puts the seed spread in the interval; pairs are by position."""
    def row(wins, n=400):
        return {"episode_success": "".join("1" if i % 100 < wins else "0" for i in range(n)), "episode_spl": [0.0] * n}

    names = ["g0", "g1", "g2", "m0", "m1", "m2", "c0", "c1", "c2"]
    # the same pooled success (0.30) in both simulated groups: m's seeds agree, c's do not
    results = {"ground_truth": {"rows": [row(30), row(30), row(30), row(30), row(30), row(30),
                                         row(5), row(30), row(55)]}}  # fmt: skip
    groups = {"ground_truth": ["g0", "g1", "g2"], "model": ["m0", "m1", "m2"], "other": ["c0", "c1", "c2"]}
    tr = rank_study.transfer(results, names, groups, "ground_truth", resamples=400, seed=1)
    assert tr["ratio"]["model"] == pytest.approx(1.0) and tr["ratio"]["other"] == pytest.approx(1.0)
    width = {g: tr["ratio_interval_seeds"][g][1] - tr["ratio_interval_seeds"][g][0] for g in ("model", "other")}
    assert width["other"] > 2 * width["model"]  # the disagreeing seeds widen it
    episodes_only = tr["ratio_interval"]["other"]
    assert tr["ratio_interval_seeds"]["other"][1] - tr["ratio_interval_seeds"]["other"][0] > \
        episodes_only[1] - episodes_only[0]  # fmt: skip
    assert tr["ratio_interval_seeds"]["ground_truth"] == [1.0, 1.0]
    assert tr["ratio_per_policy"]["other"] == pytest.approx([5 / 30, 1.0, 55 / 30])
    # one policy in a group: no seed interval; unequal sizes: no pairing
    one = rank_study.transfer(results, names, {"ground_truth": ["g0", "g1"], "model": ["m0"]}, "ground_truth")
    assert all(map(lambda x: x != x, one["ratio_interval_seeds"]["model"])) and one["ratio_per_policy"]["model"] is None
    assert one["ratio_per_policy"]["ground_truth"] == [1.0, 1.0]
