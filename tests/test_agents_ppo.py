"""Tests for the PPO baseline: tiny training, safetensors save/load, resume, batched model camera."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("stable_baselines3")

from agents.envs import EnvConfig  # noqa: E402
from agents.ppo import (  # noqa: E402
    BatchedCameraVecEnv,
    PolicyFileError,
    PPOAgent,
    PPOConfig,
    build_ppo,
    load_policy,
    make_vec_env,
    save_policy,
)
from agents.train_ppo import TrainConfig, main, parse_args  # noqa: E402
from rtfm_env.model.checkpoint import CheckpointError  # noqa: E402

ENV = EnvConfig(max_steps=16)
TINY = PPOConfig(n_steps=32, batch_size=32, n_epochs=2, cnn_output_dim=16, net_arch=(16,))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PPO model trained for 128 steps, its initial parameters, a saved copy and observations."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks on shared cores: one thread is several times faster
    env = make_vec_env(ENV, 2)
    env.seed(0)
    model = build_ppo(env, TINY, seed=0)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(total_timesteps=128)
    obs = [env.reset()]
    for _ in range(5):
        obs.append(env.step(np.array([1, 2]))[0])
    batch = {k: np.concatenate([o[k] for o in obs]) for k in obs[0]}
    directory = save_policy(model.policy, tmp_path_factory.mktemp("ppo") / "policy", TINY, ENV, {"timesteps": 128})
    env.close()
    torch.set_num_threads(threads)
    return model, before, directory, batch


def test_stop_starts_unlikely(one_thread):
    """The stop action's initial logit is offset by stop_bias, so early episodes explore."""
    env = make_vec_env(ENV, 1)
    try:
        env.seed(0)
        obs = env.reset()
        probs = {}
        for bias in (0.0, -3.0):
            model = build_ppo(env, PPOConfig(n_steps=8, batch_size=8, stop_bias=bias, cnn_output_dim=16), seed=0)
            obs_tensor, _ = model.policy.obs_to_tensor(obs)
            probs[bias] = model.policy.get_distribution(obs_tensor).distribution.probs[0].detach().numpy()
    finally:
        env.close()
    assert np.allclose(probs[0.0], 0.25, atol=0.05)
    assert probs[-3.0][0] < 0.03 and probs[-3.0][1:].min() > 0.3


def test_training_changes_parameters(trained):
    """A tiny PPO budget updates the policy's weights."""
    model, before, _, _ = trained
    after = model.policy.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert model.num_timesteps >= 128
    assert any("features_extractor" in k for k in changed) and any("action_net" in k for k in changed)


def test_saved_policy_reloads_and_acts_identically(trained):
    """The reloaded policy has the same weights and takes the same deterministic actions."""
    model, _, directory, batch = trained
    policy, meta = load_policy(directory)
    for key, value in model.policy.state_dict().items():
        assert torch.equal(value, policy.state_dict()[key]), key
    expected, _ = model.policy.predict(batch, deterministic=True)
    actual, _ = policy.predict(batch, deterministic=True)
    np.testing.assert_array_equal(actual, expected)
    assert meta["timesteps"] == 128 and EnvConfig.from_dict(meta["env"]) == ENV
    assert sorted(p.name for p in directory.iterdir()) == ["policy.json", "policy.safetensors"]


def test_ppo_agent_matches_policy_on_env_observations(trained, one_thread):
    """PPOAgent reads the raw env observation (HWC rgb, pose) and acts as the policy does."""
    model, _, directory, batch = trained
    agent = PPOAgent(directory)
    for i in range(len(batch["rgb"])):
        raw = {"rgb": batch["rgb"][i].transpose(1, 2, 0), "pointgoal": batch["pointgoal"][i], "pose": np.eye(4)}
        expected, _ = model.policy.predict({k: v[i] for k, v in batch.items()}, deterministic=True)
        assert agent.act(raw) == int(expected)


def test_blind_agent_ignores_the_view(trained, one_thread):
    """A blind PPOAgent acts on a grey view whatever the camera shows; a seeing one sees the grey view as it is."""
    _, _, directory, batch = trained
    blind, seeing = PPOAgent(directory, blind=True), PPOAgent(directory)
    grey = np.full((64, 64, 3), PPOAgent.BLIND_VALUE, dtype=np.uint8)
    noise = np.random.default_rng(0)
    for goal in batch["pointgoal"]:
        frames = [noise.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
        actions = {blind.act({"rgb": f, "pointgoal": goal}) for f in frames}
        assert actions == {seeing.act({"rgb": grey, "pointgoal": goal})}


def _corrupt_weights(directory):
    path = directory / "policy.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_weights(directory):
    path = directory / "policy.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _wrong_format(directory):
    meta = json.loads((directory / "policy.json").read_text())
    meta["format"] = "sb3-zip"
    (directory / "policy.json").write_text(json.dumps(meta))


def _not_json(directory):
    (directory / "policy.json").write_text("{not json")


def _other_network(directory):
    # A consistent file (size and hash recomputed) whose tensors fit another network.
    policy, meta = load_policy(directory)
    bigger = PPOConfig.from_dict({**meta["ppo"], "net_arch": [8]})
    save_policy(policy, directory, bigger, EnvConfig.from_dict(meta["env"]))


@pytest.mark.parametrize(
    ("damage", "error", "match"),
    [
        (_corrupt_weights, CheckpointError, "SHA-256"),
        (_truncate_weights, CheckpointError, "truncated"),
        (_wrong_format, PolicyFileError, "not a saved PPO policy"),
        (_not_json, PolicyFileError, "not valid JSON"),
        (_other_network, PolicyFileError, "does not fit"),
    ],
)
def test_bad_policy_files_fail_clearly(trained, tmp_path, damage, error, match):
    """Corrupt, truncated, foreign or mismatched policy files raise errors naming the problem."""
    _, _, directory, _ = trained
    copy = tmp_path / "policy"
    copy.mkdir()
    for p in directory.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    damage(copy)
    with pytest.raises(error, match=match):
        load_policy(copy)


def test_missing_policy_is_file_not_found(tmp_path):
    """Loading from a directory without a policy says what is missing."""
    with pytest.raises(FileNotFoundError, match="policy.json"):
        load_policy(tmp_path)


def test_save_replaces_existing_policy_without_leftovers(trained, tmp_path):
    """Saving over a policy swaps in the new one and leaves no temporary directories."""
    model, _, _, _ = trained
    target = tmp_path / "p"
    save_policy(model.policy, target, TINY, ENV, {"timesteps": 1})
    save_policy(model.policy, target, TINY, ENV, {"timesteps": 2})
    assert load_policy(target)[1]["timesteps"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["p"]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [("learning_rate", -1.0, "learning_rate"), ("n_steps", 0, "n_steps"), ("net_arch", (), "net_arch")],
)
def test_ppo_config_rejects_bad_values(field, value, match):
    """Bad hyperparameters raise ValueError naming the field."""
    with pytest.raises(ValueError, match=match):
        PPOConfig(**{field: value})


def test_ppo_config_rejects_unknown_keys():
    """An unknown key in a saved config lists the valid keys."""
    with pytest.raises(KeyError, match="valid"):
        PPOConfig.from_dict({"lr": 1.0})


def test_train_script_saves_resumes_and_refuses_other_configs(tmp_path, one_thread):
    """train_ppo writes policy, log and checkpoints, resumes from the last one, refuses a changed config."""
    out = tmp_path / "run"
    argv = ["--max-steps", "16", "--n-steps", "32", "--batch-size", "32", "--n-epochs", "1", "--cnn-output-dim", "16",
            "--net-arch", "16", "--n-envs", "2", "--checkpoint-every", "64", "--torch-threads", "0",
            "--out", str(out)]  # fmt: skip
    main(parse_args([*argv, "--total-timesteps", "128"]))
    assert json.loads((out / "last.json").read_text())["timesteps"] == 128
    first_rows = (out / "log.csv").read_text().splitlines()
    assert len(first_rows) == 1 + 2  # header + two rollouts of 64
    policy = main(parse_args([*argv, "--total-timesteps", "192"]))
    assert load_policy(policy)[1]["timesteps"] == 192
    rows = (out / "log.csv").read_text().splitlines()
    assert len(rows) == len(first_rows) + 1 and rows[-1].startswith("192,")
    with pytest.raises(ValueError, match="another config"):
        main(parse_args([*argv, "--total-timesteps", "256", "--learning-rate", "0.1"]))
    (out / "last.json").write_text("{broken")
    with pytest.raises(PolicyFileError, match="cannot resume"):
        main(parse_args([*argv, "--total-timesteps", "256"]))


def test_parse_args_builds_nested_config():
    """Command-line flags land in the env, PPO and run sections of TrainConfig."""
    cfg = parse_args(["--camera", "model", "--n-steps", "7", "--net-arch", "8", "8", "--n-envs", "3"])
    assert isinstance(cfg, TrainConfig)
    assert cfg.env.camera == "model" and cfg.ppo.n_steps == 7 and cfg.ppo.net_arch == (8, 8) and cfg.n_envs == 3


def test_batched_vec_env_with_model_camera(one_thread):
    """With the model camera, one batched generate serves every env; frames are stored per env."""
    env = make_vec_env(EnvConfig(camera="model", max_steps=3), 2)
    try:
        assert isinstance(env, BatchedCameraVecEnv) and env.batched
        assert env.cores[0].camera.model is env.cores[1].camera.model  # one shared frame model
        env.seed(0)
        obs = env.reset()
        sizes = [len(core.camera.memory) for core in env.cores]
        obs, rewards, dones, infos = env.step(np.array([1, 2]))  # both poses change: both generate
        assert obs["rgb"].shape == (2, 3, 64, 64) and obs["rgb"].dtype == np.uint8
        assert [len(core.camera.memory) for core in env.cores] == [s + 1 for s in sizes]
        for _ in range(2):
            obs, rewards, dones, infos = env.step(np.array([2, 3]))
        assert dones.all() and all(info["TimeLimit.truncated"] for info in infos)
        assert infos[0]["terminal_observation"]["rgb"].shape == (3, 64, 64)
    finally:
        env.close()


def test_make_vec_env_rejects_bad_n_envs():
    """n_envs must be a positive integer."""
    with pytest.raises(ValueError, match="n_envs"):
        make_vec_env(ENV, 0)
