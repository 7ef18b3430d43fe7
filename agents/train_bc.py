r"""Imitation pre-training of the PPO policy from the privileged oracle (DAgger), saved as a PPO policy.

PPO from scratch on ``RTFM/ObjectNav-v0`` learns to walk towards the goal (the progress reward)
but, in the 1e5 steps a CPU affords, not when to stop: in an 80,896-step run with the
ground-truth camera (OneRoom, 100-step episodes), training episodes succeeded in at most 6% of
a rollout, and in none after step 28,672; the policy walked until truncation.
Embodied-AI practice (Habitat-Web; Ramrakhya et al., 2022) starts such policies by imitation
and fine-tunes with RL. This command does the imitation part with DAgger (Ross et al., 2011),
from an expert: the privileged oracle by default, or any agent spec (``--expert seeker``: the
scripted colour seeker, which reads only the view and the goal, so its labels are learnable from
what the policy sees; the oracle's geodesic turns before the target is in view are not):

* round 0 runs the oracle (``shortest_path``: :class:`~rtfm_env.envs.objectnav.ObjectGoalFollower`
  on ObjectNav, :class:`~rtfm_env.envs.follower.ShortestPathFollower` elsewhere), taking a random
  move (never a stop) instead with probability ``noise``, so the data holds recoveries;
* round r >= 1 runs the policy trained so far, taking the oracle's action instead with
  probability ``beta ** r``;
* every visited observation is labelled with the oracle's action and kept (the aggregate), and
  after each round the policy is trained on all of it for ``epochs`` passes: cross-entropy on
  the actions, plus the value head regressed on the episodes' discounted returns (so that a
  PPO fine-tune from it starts with a critic).

The network is exactly the PPO policy's (:func:`agents.ppo.build_ppo`, the same
:class:`~agents.ppo.PPOConfig`), saved with :func:`agents.ppo.save_policy`, so ``ppo:OUT/policy``
evaluates it, ``agents/rank.py`` ranks it and ``agents/train_ppo.py --init-policy OUT/policy``
fine-tunes it. The policy reads only the camera view and the goal entry; the oracle's
privileged state is used for labels only.

``OUT`` receives ``config.json``, ``log.csv`` (one row per round: samples, loss, accuracy, the
executed policy's success), ``data/round_N.npz`` (the round's observations, labels and
returns; NumPy arrays, no pickles), ``checkpoints/round_N/`` (the policy after round N) and
``policy/`` (the last). Running the same command again resumes after the last finished round.

Example::

    .venv/bin/python -m agents.train_bc --env-id RTFM/ObjectNav-v0 --scene MiniWorld-OneRoom-v0 \\
        --max-steps 100 --success-distance 1.0 --max-goal-distance 6.0 --rounds 6 --seed 0 --out runs/bc/objnav_s0
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agents.envs import EnvConfig, goal_key, make_env, policy_observation
from agents.evaluate import make_agent
from agents.ppo import PolicyFileError, PPOConfig, build_ppo, load_policy, make_vec_env, save_policy
from rtfm_env.data.shards import atomic_write_bytes

LOG_FIELDS = ("round", "samples", "episodes", "executed_success", "executed_spl", "loss", "accuracy", "wall_s")


@dataclass
class BCConfig:
    """One imitation run: the env, the policy network, DAgger's schedule and the optimiser."""

    env: EnvConfig = field(default_factory=EnvConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)  # the network (cnn_output_dim, net_arch) and gamma
    expert: str = "shortest_path"  # the teacher: an agent spec of agents.evaluate (the oracle, or "seeker")
    rounds: int = 6  # DAgger rounds (round 0: the expert's own episodes)
    episodes_per_round: int = 80  # episodes collected per round
    noise: float = 0.2  # round 0: probability of a random action instead of the oracle's
    beta: float = 0.5  # round r >= 1: probability beta ** r of the oracle's action instead of the policy's
    epochs: int = 3  # passes over the aggregate after each round
    bc_batch_size: int = 128  # samples per minibatch (PPO's batch_size is its own)
    bc_learning_rate: float = 5e-4  # Adam (PPO's learning_rate is its own)
    value_coef: float = 0.5  # weight of the value head's regression on returns
    # Class balance of the action loss: each label weighs frequency ** -balance (normalised to a
    # mean weight of 1). The stop is one label per episode; with plain cross-entropy (0) the
    # policy's most likely action is almost never a stop and a deterministic policy walks until
    # truncation (measured: 2.5% success against 99% for its teacher).
    balance: float = 0.5
    seed: int = 0  # seeds the network, the episodes and the sampling
    out: str = "runs/bc"
    torch_threads: int = 1  # 0 keeps torch's default

    def __post_init__(self) -> None:
        for name in ("rounds", "episodes_per_round", "epochs", "bc_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.balance, (int, float)) and 0.0 <= self.balance <= 1.0):
            raise ValueError(f"balance must be in [0, 1], got {self.balance!r}")
        for name in ("noise", "beta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        if not (isinstance(self.bc_learning_rate, (int, float)) and 0.0 < self.bc_learning_rate < 1.0):
            raise ValueError(f"bc_learning_rate must be in (0, 1), got {self.bc_learning_rate!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, nested."""
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("env", "ppo")},
            "env": self.env.to_dict(),
            "ppo": self.ppo.to_dict(),
        }


def discounted_returns(rewards: list[float], gamma: float) -> np.ndarray:
    """Monte-Carlo returns G_t = r_t + gamma G_{t+1} of one episode (0 after its end)."""
    out = np.zeros(len(rewards), dtype=np.float32)
    g = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        g = float(rewards[t]) + gamma * g
        out[t] = g
    return out


def collect(
    cfg: BCConfig, policy: Any, round_index: int, rng: np.random.Generator, env: Any, oracle: Any
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """One DAgger round's episodes: observations, oracle labels, returns, and the executed policy's scores."""
    key = goal_key(env.observation_space.spaces)
    p_oracle = 1.0 if round_index == 0 else cfg.beta**round_index
    rgb, goal, action, ret = [], [], [], []
    successes, spls = [], []
    stop = env.unwrapped.task.action_names.index("stop") if "stop" in env.unwrapped.task.action_names else -1
    moves = np.array([a for a in range(int(env.action_space.n)) if a != stop])  # noise never stops an episode
    for e in range(cfg.episodes_per_round):
        obs, _ = env.reset(seed=int(cfg.seed * 1_000_003 + round_index * 10_007 + e))
        oracle.reset()
        rewards, done = [], False
        while not done:
            view = policy_observation(obs)
            label = oracle.act(obs)
            if round_index == 0:
                act = int(rng.choice(moves)) if rng.random() < cfg.noise else label
            elif rng.random() < p_oracle:
                act = label
            else:
                act, _ = policy.predict(view, deterministic=False)
                act = int(act)
            rgb.append(view["rgb"])
            goal.append(view[key])
            action.append(label)
            obs, reward, terminated, truncated, info = env.step(act)
            rewards.append(float(reward))
            done = terminated or truncated
        ret.append(discounted_returns(rewards, cfg.ppo.gamma))
        successes.append(float(info["success"]))
        spls.append(float(info["spl"]))
    data = {
        "rgb": np.stack(rgb).astype(np.uint8),
        "goal": np.stack(goal),
        "action": np.asarray(action, dtype=np.int64),
        "return": np.concatenate(ret).astype(np.float32),
    }
    return data, {"success": float(np.mean(successes)), "spl": float(np.mean(spls))}


def class_weights(actions: np.ndarray, n_actions: int, balance: float) -> np.ndarray:
    """Per-action loss weights: frequency ** -balance, scaled so the mean weight over ``actions`` is 1."""
    freq = np.bincount(actions, minlength=n_actions) / max(len(actions), 1)
    weight = np.where(freq > 0, np.maximum(freq, 1e-12) ** -balance, 0.0)
    return (weight / max((weight * freq).sum(), 1e-12)).astype(np.float32)


def fit(
    cfg: BCConfig, policy: Any, data: dict[str, np.ndarray], rng: np.random.Generator, key: str
) -> dict[str, float]:
    """``epochs`` passes of cross-entropy (actions) + value regression (returns) over ``data``."""
    params = list(policy.parameters())
    optimiser = torch.optim.Adam(params, lr=cfg.bc_learning_rate)
    n = len(data["action"])
    weight = torch.as_tensor(class_weights(data["action"], int(policy.action_space.n), cfg.balance))
    policy.set_training_mode(True)
    losses, correct, seen = [], 0, 0
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for start in range(0, n, cfg.bc_batch_size):
            idx = order[start : start + cfg.bc_batch_size]
            obs, _ = policy.obs_to_tensor({"rgb": data["rgb"][idx], key: data["goal"][idx]})
            actions = torch.as_tensor(data["action"][idx])
            values, log_prob, _ = policy.evaluate_actions(obs, actions)
            target = torch.as_tensor(data["return"][idx])
            loss = -(weight[actions] * log_prob).mean()
            loss = loss + cfg.value_coef * torch.nn.functional.mse_loss(values.flatten(), target)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimiser.step()
            losses.append(float(loss.detach()))
            with torch.no_grad():
                dist = policy.get_distribution(obs)
                correct += int((dist.distribution.probs.argmax(dim=1) == actions).sum())
                seen += len(idx)
    policy.set_training_mode(False)
    return {"loss": float(np.mean(losses[-max(1, len(losses) // cfg.epochs) :])), "accuracy": correct / max(seen, 1)}


def _load_data(out: Path, rounds: int) -> dict[str, np.ndarray] | None:
    parts = []
    for r in range(rounds):
        with np.load(out / "data" / f"round_{r}.npz", allow_pickle=False) as f:
            parts.append({k: f[k] for k in f.files})
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _save_npz(path: Path, data: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **data)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def main(cfg: BCConfig, progress: bool = True) -> Path:
    """Run (or resume) the rounds; returns ``OUT/policy``."""
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    last_path = out / "last.json"
    done_rounds = 0
    if last_path.is_file():
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        now = cfg.to_dict()
        diff = sorted(k for k in now if k != "rounds" and saved.get(k) != now[k])
        if diff:
            raise ValueError(f"{out} holds a run with another config ({diff} differ); use a new --out to start afresh")
        try:
            done_rounds = int(json.loads(last_path.read_text(encoding="utf-8"))["rounds"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PolicyFileError(f"cannot resume from {out}: last.json is unreadable ({e})") from e
    atomic_write_bytes(config_path, (json.dumps(cfg.to_dict(), indent=2) + "\n").encode())

    torch.manual_seed(cfg.seed)
    spaces_env = make_vec_env(cfg.env, 1)
    model = build_ppo(spaces_env, cfg.ppo, seed=cfg.seed)
    spaces_env.close()
    policy = model.policy
    if done_rounds:
        saved_policy, _ = load_policy(out / "checkpoints" / f"round_{done_rounds - 1}" / "policy")
        policy.load_state_dict(saved_policy.state_dict(), strict=True)
        print(f"resuming {out} after round {done_rounds - 1}", file=sys.stderr)
    data = _load_data(out, done_rounds)
    env = make_env(cfg.env)()
    oracle = make_agent(cfg.expert, env, env_config=cfg.env)
    key = goal_key(env.observation_space.spaces)
    t0 = time.perf_counter()
    try:
        for r in tqdm(range(done_rounds, cfg.rounds), desc="dagger", unit="round", disable=not progress):
            rng = np.random.default_rng([cfg.seed, r])
            new, executed = collect(cfg, policy, r, rng, env, oracle)
            _save_npz(out / "data" / f"round_{r}.npz", new)
            data = new if data is None else {k: np.concatenate([data[k], new[k]]) for k in data}
            scores = fit(cfg, policy, data, rng, key)
            extra = {"round": r, "samples": len(data["action"]), "bc": cfg.to_dict()}
            save_policy(policy, out / "checkpoints" / f"round_{r}" / "policy", cfg.ppo, cfg.env, extra)
            atomic_write_bytes(last_path, (json.dumps({"rounds": r + 1}) + "\n").encode())
            row = {
                "round": r,
                "samples": len(data["action"]),
                "episodes": cfg.episodes_per_round,
                "executed_success": round(executed["success"], 4),
                "executed_spl": round(executed["spl"], 4),
                "loss": round(scores["loss"], 4),
                "accuracy": round(scores["accuracy"], 4),
                "wall_s": round(time.perf_counter() - t0, 1),
            }
            log = out / "log.csv"
            new_file = not log.exists()
            with log.open("a", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
                if new_file:
                    writer.writeheader()
                writer.writerow(row)
    finally:
        env.close()
    final = out / "checkpoints" / f"round_{cfg.rounds - 1}" / "policy"
    policy, meta = load_policy(final)
    extra = {k: v for k, v in meta.items() if k in ("round", "samples", "bc")}
    return save_policy(policy, out / "policy", cfg.ppo, cfg.env, extra)


def parse_args(argv: list[str] | None = None) -> BCConfig:
    """The :class:`BCConfig` of a command line (flags generated from the dataclasses)."""
    from agents.train_ppo import _add_fields

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _add_fields(parser, EnvConfig, "env.")
    _add_fields(parser, PPOConfig, "ppo.")
    _add_fields(parser, BCConfig, "", skip=("env", "ppo"))
    args = vars(parser.parse_args(argv))
    env = EnvConfig(**{k[4:]: v for k, v in args.items() if k.startswith("env.")})
    ppo = PPOConfig(**{k[4:]: v for k, v in args.items() if k.startswith("ppo.")})
    rest = {k: v for k, v in args.items() if "." not in k}
    return BCConfig(env=env, ppo=ppo, **rest)


if __name__ == "__main__":
    try:
        print(main(parse_args()))
    except (PolicyFileError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
