"""Tests for agents/train_bc.py (DAgger imitation of the oracle) and train_ppo's --init-policy."""

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from agents.envs import EnvConfig, make_env  # noqa: E402
from agents.evaluate import run_episode  # noqa: E402
from agents.ppo import PolicyFileError, PPOAgent, load_policy  # noqa: E402
from agents.train_bc import BCConfig, class_weights, discounted_returns, main, parse_args  # noqa: E402
from agents.train_ppo import main as ppo_main  # noqa: E402
from agents.train_ppo import parse_args as ppo_args  # noqa: E402

TASK = ["--env-id", "RTFM/ObjectNav-v0", "--max-steps", "24", "--success-distance", "1.0", "--max-goal-distance", "3.0"]
NET = ["--cnn-output-dim", "16", "--net-arch", "16"]


def test_discounted_returns_by_hand():
    assert np.allclose(discounted_returns([1.0, 0.0, 2.0], 0.5), [1.5, 1.0, 2.0])
    assert discounted_returns([], 0.9).shape == (0,)


def test_class_weights_balance_rare_stops():
    actions = np.array([0] + [1] * 9)  # one stop in ten labels
    assert np.allclose(class_weights(actions, 4, 0.0), [1, 1, 0, 0])
    w = class_weights(actions, 4, 0.5)
    assert w[2] == w[3] == 0.0 and w[0] == pytest.approx(3.0 * w[1])  # (0.1 / 0.9) ** -0.5 = 3
    assert np.mean(w[actions]) == pytest.approx(1.0)
    full = class_weights(actions, 4, 1.0)
    assert full[0] * 1 == pytest.approx(full[1] * 9)  # each class weighs the same in total


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("rounds", 0, "rounds"), ("noise", 1.5, "noise"), ("beta", -0.1, "beta"), ("bc_learning_rate", 0.0, "bc_learn")],
)
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        BCConfig(**{field: value})


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two DAgger rounds of 6 episodes on ObjectNav, then a third by resuming."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bc") / "run"
    argv = [*TASK, *NET, "--expert", "seeker", "--episodes-per-round", "6", "--epochs", "2", "--torch-threads", "0",
            "--out", str(out)]  # fmt: skip
    first = main(parse_args([*argv, "--rounds", "2"]), progress=False)
    after_two = {k: v.clone() for k, v in load_policy(first)[0].state_dict().items()}
    rows_two = (out / "log.csv").read_text().splitlines()
    final = main(parse_args([*argv, "--rounds", "3"]), progress=False)
    torch.set_num_threads(threads)
    return out, argv, after_two, rows_two, final


def test_rounds_write_data_checkpoints_and_log(run):
    out, _, _, rows_two, final = run
    assert len(rows_two) == 1 + 2
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[-1].startswith("2,")  # resumed: round 2 only was added
    for r in range(3):
        assert (out / "checkpoints" / f"round_{r}" / "policy" / "policy.json").is_file()
        with np.load(out / "data" / f"round_{r}.npz", allow_pickle=False) as f:
            assert f["rgb"].shape[1:] == (3, 64, 64) and f["rgb"].dtype == np.uint8
            assert len(f["action"]) == len(f["rgb"]) == len(f["return"]) == len(f["goal"]) > 0
            assert set(np.unique(f["action"])) <= {0, 1, 2, 3}
    samples = [int(line.split(",")[1]) for line in rows[1:]]
    assert samples == sorted(samples) and samples[0] < samples[-1]  # the aggregate grows
    _, meta = load_policy(final)
    assert meta["round"] == 2 and meta["samples"] == samples[-1]


def test_resumed_round_changes_the_weights_and_policy_acts(run, one_thread):
    out, _, after_two, _, final = run
    policy, _ = load_policy(final)
    changed = [k for k, v in policy.state_dict().items() if not torch.equal(v, after_two[k])]
    assert changed, "round 2 did not train"
    env = make_env(EnvConfig(env_id="RTFM/ObjectNav-v0", max_steps=24, success_distance=1.0, max_goal_distance=3.0))()
    try:
        record = run_episode(env, PPOAgent(final), seed=5)
        again = run_episode(env, PPOAgent(final), seed=5)
    finally:
        env.close()
    assert {k: v for k, v in record.items() if k != "wall_s"} == {k: v for k, v in again.items() if k != "wall_s"}


def test_resume_refuses_another_config_and_a_broken_record(run):
    out, argv, *_ = run
    with pytest.raises(ValueError, match="another config"):
        main(parse_args([*argv, "--rounds", "4", "--noise", "0.5"]), progress=False)
    saved = (out / "last.json").read_text()
    (out / "last.json").write_text("{broken")
    try:
        with pytest.raises(PolicyFileError, match="cannot resume"):
            main(parse_args([*argv, "--rounds", "4"]), progress=False)
    finally:
        (out / "last.json").write_text(saved)


def test_ppo_starts_from_an_imitation_policy(run, tmp_path, one_thread):
    """train_ppo --init-policy loads the weights (PPO then changes them); another task is refused."""
    _, _, _, _, final = run
    init = load_policy(final)[0].state_dict()
    argv = [*TASK, *NET, "--n-steps", "16", "--batch-size", "16", "--n-epochs", "1", "--n-envs", "2",
            "--torch-threads", "0", "--init-policy", str(final)]  # fmt: skip
    start = ppo_main(ppo_args([*argv, "--total-timesteps", "0", "--out", str(tmp_path / "zero")]))
    assert all(torch.equal(v, init[k]) for k, v in load_policy(start)[0].state_dict().items())
    tuned = ppo_main(ppo_args([*argv, "--total-timesteps", "32", "--out", str(tmp_path / "tuned")]))
    assert any(not torch.equal(v, init[k]) for k, v in load_policy(tuned)[0].state_dict().items())
    with pytest.raises(ValueError, match="another task"):
        ppo_main(ppo_args([*argv, "--max-steps", "30", "--total-timesteps", "32", "--out", str(tmp_path / "other")]))
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["init_policy"] == str(final)


def test_a_policy_saved_before_the_landmarks_and_depth_fields_still_loads(run, tmp_path, one_thread):
    """A policy file whose env config lacks fields added since (landmarks, depth) reads their defaults."""
    import shutil

    _, _, _, _, final = run
    old = tmp_path / "old"
    shutil.copytree(final, old)
    meta = json.loads((old / "policy.json").read_text())
    for key in ("landmarks", "depth"):
        meta["env"].pop(key)
    (old / "policy.json").write_text(json.dumps(meta))
    argv = [*TASK, *NET, "--n-steps", "16", "--batch-size", "16", "--n-epochs", "1", "--n-envs", "2",
            "--torch-threads", "0", "--init-policy", str(old), "--total-timesteps", "0"]  # fmt: skip
    start = ppo_main(ppo_args([*argv, "--out", str(tmp_path / "zero")]))
    init = load_policy(final)[0].state_dict()
    assert all(torch.equal(v, init[k]) for k, v in load_policy(start)[0].state_dict().items())
    agent = PPOAgent(old)
    assert agent.env_config.landmarks is False and agent.env_config.depth is False
    # Evaluated with a depth observation it never reads: the same task, not refused.
    from agents.evaluate import make_agent

    config = dataclasses.replace(agent.env_config, depth=True)
    env = make_env(config)()
    try:
        assert make_agent(f"ppo:{old}", env, env_config=config).env_config == agent.env_config
        with pytest.raises(ValueError, match="another task"):
            make_agent(f"ppo:{old}", env, env_config=dataclasses.replace(config, max_steps=7))
    finally:
        env.close()
