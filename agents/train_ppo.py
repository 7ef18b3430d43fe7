r"""Train the PPO baseline on an RTFM navigation env and save it as safetensors + JSON.

Examples::

    # the ground-truth camera
    .venv/bin/python -m agents.train_ppo --camera ground_truth --total-timesteps 30000 \\
        --n-envs 8 --seed 0 --out runs/ppo/gt
    # the learned camera (one batched frame-model call per step for the 8 envs)
    .venv/bin/python -m agents.train_ppo --camera model --total-timesteps 30000 \\
        --n-envs 8 --seed 0 --out runs/ppo/model

``--init-policy DIR`` starts from a saved policy's weights instead of from scratch (e.g. the
imitation pre-training of ``agents/train_bc.py``: PPO then fine-tunes it).

``OUT`` receives ``config.json``, ``log.csv`` (one row per rollout), ``checkpoints/step_N/``
(policy + optimizer, every ``--checkpoint-every`` timesteps), ``last.json`` naming the
latest checkpoint, and ``policy/`` (the final policy, what ``agents/evaluate.py`` loads as
``ppo:OUT/policy``). Running the same command again resumes from the last checkpoint (the
config must match, except ``total_timesteps``, which may grow); the weights, optimizer and
timestep count are restored, the env and sampling RNG streams restart (so a resumed run is
not bit-identical to an uninterrupted one).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

from agents.envs import EnvConfig, flag_type
from agents.ppo import PolicyFileError, PPOConfig, build_ppo, load_policy, make_vec_env, save_policy
from rtfm_env.data.shards import atomic_write_bytes
from rtfm_env.model.checkpoint import read_verified_safetensors

LOG_FIELDS = (
    "timesteps", "wall_s", "steps_per_s", "episodes", "return_mean", "success_rate", "spl_mean",
    "policy_gradient_loss", "value_loss", "entropy_loss", "approx_kl",
)  # fmt: skip


@dataclass
class TrainConfig:
    """One PPO training run: the env, the algorithm, and the run's own settings."""

    env: EnvConfig = field(default_factory=EnvConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    total_timesteps: int = 30_000  # env steps summed over all envs
    n_envs: int = 8  # envs stepped together
    seed: int = 0  # seeds the policy and the envs' first layouts (env i gets seed + i)
    out: str = "runs/ppo"  # output directory
    checkpoint_every: int = 4096  # timesteps between checkpoints
    # One torch thread: on a shared CPU, intra-op threads spin-wait for each other and run
    # several times slower than one (measured 1.6 vs 16 steps/s with the model camera).
    torch_threads: int = 1  # 0 keeps torch's default
    device: str = "cpu"  # torch device of the policy
    # A saved policy (e.g. agents/train_bc.py's OUT/policy) whose weights start the run; "" starts
    # from scratch. Its network and task must be this run's.
    init_policy: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, nested."""
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("env", "ppo")},
            "env": self.env.to_dict(),
            "ppo": self.ppo.to_dict(),
        }


# ----------------------------------------------------------------------------------------
# Checkpoints: policy (safetensors + JSON) and optimizer (safetensors + JSON)
# ----------------------------------------------------------------------------------------


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=2) + "\n").encode())


def save_checkpoint(model: PPO, cfg: TrainConfig, out: Path) -> Path:
    """Write ``checkpoints/step_N`` (policy + optimizer state) then point ``last.json`` at it."""
    name = f"step_{model.num_timesteps:09d}"
    final = out / "checkpoints" / name
    save_policy(model.policy, final / "policy", cfg.ppo, cfg.env, {"timesteps": int(model.num_timesteps)})
    # Adam's state as flat tensors; its param_groups (numbers) go to JSON.
    opt = model.policy.optimizer.state_dict()
    tensors = {f"{pid}.{key}": v.contiguous() for pid, s in opt["state"].items() for key, v in s.items()}
    data = safetensors.torch.save(tensors)
    record = {
        "timesteps": int(model.num_timesteps),
        "param_groups": opt["param_groups"],
        "weights": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
    }
    atomic_write_bytes(final / "optimizer.safetensors", data)
    _write_json_atomic(final / "optimizer.json", record)
    _write_json_atomic(out / "last.json", {"checkpoint": f"checkpoints/{name}", "timesteps": int(model.num_timesteps)})
    return final


def restore_checkpoint(model: PPO, out: Path) -> int:
    """Load the policy, optimizer and timestep count named by ``OUT/last.json``; returns the timesteps."""
    try:
        ckpt = out / json.loads((out / "last.json").read_text(encoding="utf-8"))["checkpoint"]
        record = json.loads((ckpt / "optimizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PolicyFileError(f"cannot resume from {out}: last.json or its optimizer.json is unreadable ({e})") from e
    policy, _ = load_policy(ckpt / "policy")
    model.policy.load_state_dict(policy.state_dict(), strict=True)
    flat = read_verified_safetensors(ckpt / "optimizer.safetensors", record["weights"], ckpt / "optimizer.json", True)
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    model.policy.optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    model.num_timesteps = int(record["timesteps"])
    return model.num_timesteps


# ----------------------------------------------------------------------------------------
# Logging: tqdm, per-rollout CSV, periodic checkpoints
# ----------------------------------------------------------------------------------------


class TrainLogger(BaseCallback):
    """Progress bar, one CSV row per rollout (episode stats and PPO losses), checkpoints."""

    def __init__(self, cfg: TrainConfig, out: Path, start: int, start_wall: float) -> None:
        super().__init__()
        self.cfg, self.out, self.start_wall = cfg, out, start_wall
        self.next_checkpoint = start + cfg.checkpoint_every
        self.bar = tqdm(
            total=cfg.total_timesteps, initial=start, unit="step", desc=f"ppo {cfg.env.camera}", mininterval=10.0
        )
        self.returns = np.zeros(cfg.n_envs)
        self.episodes: list[tuple[float, bool, float]] = []  # (return, success, spl) this rollout
        self.rollout_start = (start, time.perf_counter())

    def _on_rollout_start(self) -> None:
        if self.num_timesteps >= self.next_checkpoint:
            save_checkpoint(self.model, self.cfg, self.out)
            self.next_checkpoint = self.num_timesteps + self.cfg.checkpoint_every
        self.rollout_start = (self.num_timesteps, time.perf_counter())

    def _on_step(self) -> bool:
        self.bar.update(self.training_env.num_envs)
        self.returns += self.locals["rewards"]
        for i, done in enumerate(self.locals["dones"]):
            if done:
                info = self.locals["infos"][i]
                self.episodes.append((float(self.returns[i]), bool(info["success"]), float(info["spl"])))
                self.returns[i] = 0.0
        return True

    def _on_rollout_end(self) -> None:
        steps0, t0 = self.rollout_start
        losses = self.model.logger.name_to_value  # the previous update's values
        eps = self.episodes
        row = {
            "timesteps": self.num_timesteps,
            "wall_s": round(time.perf_counter() - self.start_wall, 1),
            "steps_per_s": round((self.num_timesteps - steps0) / max(time.perf_counter() - t0, 1e-9), 2),
            "episodes": len(eps),
            "return_mean": np.mean([e[0] for e in eps]) if eps else "",
            "success_rate": np.mean([e[1] for e in eps]) if eps else "",
            "spl_mean": np.mean([e[2] for e in eps]) if eps else "",
            **{
                k: losses.get(f"train/{k}", "")
                for k in ("policy_gradient_loss", "value_loss", "entropy_loss", "approx_kl")
            },
        }
        self.episodes = []
        path = self.out / "log.csv"
        new = not path.exists()
        with path.open("a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        if row["success_rate"] != "":
            self.bar.set_postfix(success=f"{row['success_rate']:.2f}", ret=f"{row['return_mean']:.2f}")

    def _on_training_end(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------


def main(cfg: TrainConfig) -> Path:
    """Train (or resume) and save ``OUT/policy``; returns that directory."""
    # -- setup --
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    resume = (out / "last.json").is_file()
    if resume:
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        now = cfg.to_dict()
        diff = sorted(k for k in now if k != "total_timesteps" and saved.get(k) != now[k])
        if diff:
            raise ValueError(f"{out} holds a run with another config ({diff} differ); use a new --out to start afresh")
    _write_json_atomic(config_path, cfg.to_dict())

    # -- envs and model --
    env = make_vec_env(cfg.env, cfg.n_envs)
    env.seed(cfg.seed)
    model = build_ppo(env, cfg.ppo, seed=cfg.seed, device=cfg.device)
    start = restore_checkpoint(model, out) if resume else 0
    if resume:
        print(f"resuming {out} from {start} timesteps", file=sys.stderr)
    elif cfg.init_policy:
        init, meta = load_policy(cfg.init_policy)
        # Through EnvConfig, so a policy saved before a field existed reads that field's default.
        trained = EnvConfig.from_dict(meta["env"]).to_dict()
        differ = sorted(k for k, v in cfg.env.to_dict().items() if k != "depth" and trained[k] != v)
        if differ:
            raise ValueError(f"--init-policy {cfg.init_policy} was trained on another task ({differ} differ)")
        try:
            model.policy.load_state_dict(init.state_dict(), strict=True)
        except RuntimeError as e:
            raise PolicyFileError(f"--init-policy {cfg.init_policy} does not fit this run's network: {e}") from e

    # -- loop (SB3's: collect n_steps x n_envs, then n_epochs of minibatch updates) --
    start_wall = time.perf_counter()
    if start < cfg.total_timesteps:
        model.learn(
            total_timesteps=cfg.total_timesteps - start,
            callback=TrainLogger(cfg, out, start, start_wall),
            reset_num_timesteps=not resume,
        )
        save_checkpoint(model, cfg, out)
    wall = time.perf_counter() - start_wall
    env.close()
    extra = {"timesteps": int(model.num_timesteps), "train": cfg.to_dict(), "wall_s_last_session": round(wall, 1)}
    return save_policy(model.policy, out / "policy", cfg.ppo, cfg.env, extra)


def _add_fields(parser: argparse.ArgumentParser, cls: type, prefix: str, skip: tuple[str, ...] = ()) -> None:
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=list(default), dest=prefix + f.name)
        else:
            parser.add_argument(flag, type=flag_type(default), default=default, dest=prefix + f.name)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The :class:`TrainConfig` of a command line (flags generated from the dataclasses)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _add_fields(parser, EnvConfig, "env.")
    _add_fields(parser, PPOConfig, "ppo.")
    _add_fields(parser, TrainConfig, "", skip=("env", "ppo"))
    args = vars(parser.parse_args(argv))
    env = EnvConfig(**{k[4:]: v for k, v in args.items() if k.startswith("env.")})
    ppo = PPOConfig(**{k[4:]: v for k, v in args.items() if k.startswith("ppo.")})
    rest = {k: v for k, v in args.items() if "." not in k}
    return TrainConfig(env=env, ppo=ppo, **rest)


if __name__ == "__main__":
    try:
        print(main(parse_args()))
    except (PolicyFileError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
