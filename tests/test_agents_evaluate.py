"""Tests for agents/evaluate.py: metrics of the baselines, written JSON and Markdown, bad input."""

import json

import pytest

from agents.envs import EnvConfig, make_env
from agents.evaluate import evaluate, main, make_agent, markdown_table, summarize

ENV = EnvConfig(max_steps=48)


@pytest.fixture(scope="module")
def rows():
    """Oracle and random agents on the ground-truth camera, 4 shared episodes."""
    return evaluate(["shortest_path", "random"], ["ground_truth"], ENV, episodes=4, seed=100, progress=False)


def test_oracle_succeeds_with_high_spl(rows):
    """The shortest-path oracle reaches every goal with near-optimal SPL on the ground-truth camera."""
    oracle = rows[0]
    assert oracle["agent"] == "shortest_path" and oracle["camera"] == "ground_truth"
    assert oracle["success"] == 1.0 and oracle["spl"] > 0.8
    assert all(r["success"] and r["steps"] < ENV.max_steps for r in oracle["records"])


def test_random_is_much_worse_than_oracle(rows):
    """The random agent scores far below the oracle on the same episodes."""
    oracle, random = rows
    assert [r["seed"] for r in oracle["records"]] == [r["seed"] for r in random["records"]] == [100, 101, 102, 103]
    assert random["spl"] < oracle["spl"] - 0.5 and random["success"] <= 0.5


def test_summary_has_means_errors_and_fps(rows):
    """Rows hold means, standard errors and a positive frames/s computed from the records."""
    oracle = rows[0]
    steps = [r["steps"] for r in oracle["records"]]
    assert oracle["steps"] == pytest.approx(sum(steps) / len(steps))
    assert oracle["frames_per_s"] == pytest.approx(sum(steps) / sum(r["wall_s"] for r in oracle["records"]))
    assert oracle["success_se"] == 0.0 and oracle["episodes"] == 4


def test_main_writes_json_and_markdown(tmp_path, one_thread):
    """The CLI writes OUT.json (config, machine, rows) and OUT.md (one table row per agent and camera)."""
    out = tmp_path / "res" / "eval"
    result = main(["--agents", "shortest_path", "random", "--episodes", "2", "--max-steps", "32",
                   "--torch-threads", "0", "--out", str(out)])  # fmt: skip
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["config"]["seeds"] == [10000, 10001] and saved["config"]["env"]["max_steps"] == 32
    assert "cpu_count" in saved["machine"] and len(saved["rows"]) == 2
    assert saved["rows"][0]["success"] == result["rows"][0]["success"]
    table = out.with_suffix(".md").read_text().splitlines()
    assert table[0].startswith("| agent | camera |") and len(table) == 4
    assert table[2].startswith("| shortest_path | ground_truth | 2 |")
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json", "eval.md"]  # no temp files left


def test_unknown_agent_lists_valid_ones():
    """An unknown agent spec names the valid ones."""
    env = EnvConfig()
    with pytest.raises(ValueError, match="shortest_path"):
        evaluate(["greedy"], ["ground_truth"], env, episodes=1, seed=0, progress=False)


def test_ppo_agent_from_missing_directory(tmp_path):
    """ppo:DIR without a saved policy fails before any episode runs."""
    with pytest.raises(FileNotFoundError, match="policy.json"):
        make_agent(f"ppo:{tmp_path}", env=None)


@pytest.mark.parametrize(("episodes", "cameras"), [(0, ["ground_truth"]), (2, [])])
def test_bad_counts_are_rejected(episodes, cameras):
    """Zero episodes or no camera is a ValueError."""
    with pytest.raises(ValueError):
        evaluate(["random"], cameras, EnvConfig(), episodes=episodes, seed=0, progress=False)


def test_summarize_and_table_on_handmade_records():
    """The summary averages the records and the table prints mean ± standard error."""
    records = [
        {"success": True, "spl": 0.8, "soft_spl": 0.9, "steps": 10, "collisions": 0, "wall_s": 1.0},
        {"success": False, "spl": 0.0, "soft_spl": 0.5, "steps": 30, "collisions": 2, "wall_s": 1.0},
    ]
    row = {"agent": "a", "camera": "c", **summarize(records)}
    assert row["success"] == 0.5 and row["spl"] == pytest.approx(0.4) and row["frames_per_s"] == 20.0
    assert "| a | c | 2 | 0.50 ± 0.50 | 0.40 ± 0.40 | 0.70 ± 0.20 | 20.0 | 1.0 | 20 |" in markdown_table([row])
    with pytest.raises(ValueError, match="no episodes"):
        summarize([])


def test_ppo_policy_from_another_task_is_refused(tmp_path, one_thread):
    """A PPO policy trained with other task settings is refused, naming the differing field."""
    pytest.importorskip("stable_baselines3")
    from agents.ppo import PPOConfig, build_ppo, make_vec_env, save_policy

    trained_on = EnvConfig(max_steps=16)
    venv = make_vec_env(trained_on, 1)
    try:
        config = PPOConfig(n_steps=8, batch_size=8, cnn_output_dim=8, net_arch=(8,))
        save_policy(build_ppo(venv, config, seed=0).policy, tmp_path / "p", config, trained_on)
    finally:
        venv.close()
    env = make_env(ENV)()
    try:
        with pytest.raises(ValueError, match="max_steps=16"):
            make_agent(f"ppo:{tmp_path / 'p'}", env, env_config=ENV)
        agent = make_agent(f"ppo-blind:{tmp_path / 'p'}", env, env_config=trained_on)
        assert agent.blind
    finally:
        env.close()


@pytest.mark.parametrize("camera", ["ground_truth", "reprojection"])
def test_batched_episodes_equal_one_at_a_time(camera, one_thread):
    """run_episodes on 3 envs stepped together gives each seed the record run_episode gives it.

    The oracle and the seeker are deterministic, so every record (but its wall time) must match;
    5 seeds on 3 envs makes finished envs take the queue's next seeds mid-run.
    """
    from agents.evaluate import run_episode, run_episodes

    config = EnvConfig(env_id="RTFM/ObjectNav-v0", camera=camera, max_steps=40, success_distance=1.0,
                       max_goal_distance=4.0)  # fmt: skip
    seeds = [300, 301, 302, 303, 304]
    envs = [make_env(config)() for _ in range(3)]
    try:
        for spec in ("shortest_path", "seeker"):
            agents = [make_agent(spec, env, env_config=config) for env in envs]
            seen = []
            batched = run_episodes(envs, agents, seeds, progress=seen.append)
            assert seen == [1, 2, 3, 4, 5]
            single = [run_episode(envs[0], agents[0], s) for s in seeds]
            strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in batched]
            assert strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in single]
            assert all(r["wall_s"] > 0 for r in batched)
    finally:
        for env in envs:
            env.close()


def test_batched_episodes_reject_mismatched_agents():
    from agents.evaluate import run_episodes

    env = make_env(ENV)()
    try:
        with pytest.raises(ValueError, match="one agent per env"):
            run_episodes([env], [], [1])
    finally:
        env.close()
