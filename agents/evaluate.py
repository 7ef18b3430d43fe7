r"""Evaluate agents on an RTFM navigation env: success, SPL, SoftSPL, steps, collisions, frames/s.

Every (agent, camera) pair runs the same episodes (``reset(seed=SEED + i)`` for episode i),
so rows are paired comparisons. Results go to ``OUT.json`` (config, machine, per-episode
records, summaries) and ``OUT.md`` (the table), both written atomically.

Agents: ``random`` (seeded uniform actions), ``shortest_path`` (the oracle, privileged; on
``RTFM/ObjectNav-v0`` it walks into the target's view zone and turns to face it),
``ppo:DIR`` (a policy saved by ``agents/train_ppo.py``; it reads only rgb + its goal entry) and
``ppo-blind:DIR`` (the same policy shown a uniform grey view: an ablation of its vision) and,
on ``RTFM/ObjectNav-v0``, ``seeker`` (:class:`agents.seeker.ColourSeeker`, a scripted policy
that finds the goal's colour in the view: no learning, but it needs the camera) and, on
``RTFM/ImageNav-v0`` with landmarks and depth, ``landmarks`` (:class:`agents.localiser.LandmarkLocaliser`,
which maps the landmarks it sees and localises the goal image among them).

Example (the sim-to-sim table of ``agents/RESULTS.md``)::

    .venv/bin/python -m agents.evaluate --agents random shortest_path \\
        ppo:agents/policies/ppo_ground_truth ppo:agents/policies/ppo_model \\
        --cameras ground_truth model --episodes 20 --seed 10000 --out agents/results/sim2sim
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.base import Agent, RandomAgent, ShortestPathAgent
from agents.envs import EnvConfig, make_env
from rtfm_env.data.shards import atomic_write_bytes
from rtfm_env.envs.objectnav import ObjectGoalFollower, ObjectNavTask
from rtfm_env.provenance import machine_info

__all__ = [
    "AGENT_KINDS",
    "ObjectNavOracle",
    "make_agent",
    "run_episode",
    "evaluate",
    "summarize",
    "markdown_table",
    "main",
]

#: Agent specs accepted by :func:`make_agent` (``ppo`` takes a directory: ``ppo:DIR``).
AGENT_KINDS = ("random", "shortest_path", "seeker", "landmarks[:KEY=VALUE,...]", "ppo:DIR", "ppo-blind:DIR")

#: Settings a ``landmarks:`` spec may give :class:`agents.localiser.LandmarkLocaliser`, with their types.
LANDMARK_SETTINGS: dict[str, type] = {"noise": float, "scan_turns": int, "seed": int}


def landmark_settings(text: str) -> dict[str, Any]:
    """The settings of a ``landmarks:KEY=VALUE,...`` spec's tail (empty text: none)."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in LANDMARK_SETTINGS:
            raise ValueError(f"a landmarks setting is KEY=VALUE with KEY in {sorted(LANDMARK_SETTINGS)}, got {item!r}")
        try:
            out[key] = LANDMARK_SETTINGS[key](value)
        except ValueError:
            kind = LANDMARK_SETTINGS[key].__name__
            raise ValueError(f"landmarks setting {key} needs a {kind}, got {value!r}") from None
    return out

#: Per-episode numbers averaged into a row, in table order.
METRICS = ("success", "spl", "soft_spl", "steps", "collisions")


class ObjectNavOracle(Agent):
    """The ``shortest_path`` oracle of ``RTFM/ObjectNav-v0``: :class:`~rtfm_env.envs.objectnav.ObjectGoalFollower`.

    Privileged (it reads the scene and the target), as :class:`~agents.base.ShortestPathAgent`.
    """

    def __init__(self, env: gym.Env) -> None:
        core = env.unwrapped
        if not isinstance(getattr(core, "task", None), ObjectNavTask):
            raise TypeError(f"ObjectNavOracle needs an RTFM/ObjectNav-v0 env, got {type(core).__name__}")
        self.env = core
        self.follower = ObjectGoalFollower(core.scene, core.task)

    def act(self, observation: dict[str, Any]) -> int:
        """The follower's action from the env's current state (the observation is not read)."""
        return int(self.follower.act(self.env.state))


def make_agent(spec: str, env: gym.Env, seed: int = 0, env_config: EnvConfig | None = None) -> Agent:
    """The agent named by ``spec`` for ``env``.

    Args:
        spec: ``"random"``, ``"shortest_path"``, ``"seeker"`` (ObjectNav only), ``"landmarks"``
            (ImageNav with landmarks and depth; ``"landmarks:noise=0.2,scan_turns=12"`` grades
            it: :data:`LANDMARK_SETTINGS`), ``"ppo:DIR"`` or ``"ppo-blind:DIR"``.
        env: the env the agent will act in (the oracle reads its privileged state).
        seed: seeds the random agent.
        env_config: the env's config; a PPO policy trained on another task (anything but the
            camera differs) is refused.

    Raises:
        ValueError: an unknown spec (the message lists the valid ones) or a PPO policy trained
            on another task or observation size.
    """
    if spec == "random":
        return RandomAgent(env.action_space, seed=seed)
    if spec == "shortest_path":
        if isinstance(getattr(env.unwrapped, "task", None), ObjectNavTask):
            return ObjectNavOracle(env)
        return ShortestPathAgent(env)
    if spec == "seeker":
        if not isinstance(getattr(env.unwrapped, "task", None), ObjectNavTask):
            raise ValueError("the seeker agent looks for RTFM/ObjectNav-v0's goal colour; this env is another task")
        from agents.seeker import ColourSeeker

        return ColourSeeker()
    kind, _, path = spec.partition(":")
    if kind == "landmarks":
        from agents.localiser import LandmarkLocaliser
        from rtfm_env.envs.imagenav import ImageNavEnv

        core = env.unwrapped
        if not (isinstance(core, ImageNavEnv) and core.landmarks):
            raise ValueError("the landmarks agent localises RTFM/ImageNav-v0's goal image by its landmarks: "
                             "make the env with landmarks=True")  # fmt: skip
        if "depth" not in env.observation_space.spaces:
            raise ValueError("the landmarks agent maps the room from its depth: make the env with depth=True")
        return LandmarkLocaliser.for_env(env, **landmark_settings(path))
    if kind in ("ppo", "ppo-blind") and path:
        from agents.ppo import PPOAgent  # SB3 is the `rl` extra: imported only when asked for

        agent = PPOAgent(path, blind=kind == "ppo-blind")
        agent.check_env(env)
        if env_config is not None:
            trained = agent.env_config.to_dict()
            # The camera is what rankings vary; depth is an extra observation a PPO policy never reads.
            same = ("camera", "depth")
            differ = sorted(k for k, v in env_config.to_dict().items() if k not in same and trained[k] != v)
            if differ:
                raise ValueError(
                    f"{spec} was trained on another task: {', '.join(f'{k}={trained[k]!r}' for k in differ)} "
                    f"(evaluating with {', '.join(f'{k}={getattr(env_config, k)!r}' for k in differ)})"
                )
        return agent
    raise ValueError(f"unknown agent {spec!r}; valid: {list(AGENT_KINDS)}")


def run_episode(env: gym.Env, agent: Agent, seed: int) -> dict[str, Any]:
    """One episode from ``reset(seed=seed)``; returns its final metrics and its wall time."""
    t0 = time.perf_counter()
    obs, info = env.reset(seed=seed)
    agent.reset()
    done = False
    while not done:
        obs, _, terminated, truncated, info = env.step(agent.act(obs))
        done = terminated or truncated
    return _record(seed, info, time.perf_counter() - t0)


def _frames_at(cores: list[Any], pending: list[tuple[int, np.ndarray]]) -> dict[int, Any]:
    """The frames (or (frame, depth) pairs) of the envs in ``pending`` at their new poses.

    One batched generate when every camera is a model camera, one batched warp when every
    camera is a reprojection camera, else one render per env.
    """
    from rtfm_env.cameras import ModelCamera, ReprojectionCamera, observe_many, reproject_many

    if not pending:
        return {}
    depth = bool(cores[0].depth)
    cams = [cores[i].camera for i, _ in pending]
    poses = [pose[None] for _, pose in pending]
    if all(isinstance(c, ModelCamera) for c in cams):
        out = observe_many(cams, poses, depth=depth)
    elif all(isinstance(c, ReprojectionCamera) for c in cams):
        out = reproject_many(cams, poses, depth=depth)
    else:
        out = [c.observe_rgbd(p) if depth else c.observe(p) for c, p in zip(cams, poses, strict=True)]
    if depth:
        return {i: (f[0], d[0]) for (i, _), (f, d) in zip(pending, out, strict=True)}
    return {i: f[0] for (i, _), f in zip(pending, out, strict=True)}


def _record(seed: int, info: dict[str, Any], wall: float) -> dict[str, Any]:
    return {
        "seed": seed,
        "success": bool(info["success"]),
        "spl": float(info["spl"]),
        "soft_spl": float(info["soft_spl"]),
        "steps": int(info["steps"]),
        "collisions": int(info["collisions"]),
        "distance_to_goal": float(info["distance_to_goal"]),
        "start_distance_to_goal": float(info["start_distance_to_goal"]),
        "wall_s": wall,
    }


def run_episodes(
    envs: list[gym.Env], agents: list[Agent], seeds: list[int], progress: Callable[[int], None] | None = None
) -> list[dict[str, Any]]:
    """Episodes ``reset(seed=s)`` for every s in ``seeds``, run on ``len(envs)`` envs stepped together.

    Each env runs one episode at a time with its own agent (``agents[j]`` acts in ``envs[j]``);
    a finished env starts the next seed in the queue. Every step generates the frames of all
    running envs in one camera call (one batched frame-model generate or one batched warp:
    :func:`_frames_at`), which is what makes ranking many policies under the model camera
    affordable. An episode's record is what :func:`run_episode` gives for its seed; its
    ``wall_s`` is its share (by steps) of the batch's wall time. With one env this is
    :func:`run_episode` over the seeds in turn.

    Args:
        envs: envs of one config (the RTFM env under ``gym.make``'s wrappers), sharing one frame
            model when the camera is the model.
        agents: one per env (agents keep per-episode state; the oracle reads its env).
        seeds: the episodes, in order.
        progress: called with the number of finished episodes after each one.

    Returns:
        One record per seed, in the order of ``seeds``.
    """
    if not envs or len(envs) != len(agents):
        raise ValueError(f"give one agent per env, got {len(envs)} envs and {len(agents)} agents")
    cores = [env.unwrapped for env in envs]
    if not all(hasattr(c, "begin_step") and hasattr(c, "end_step") for c in cores):
        raise TypeError("run_episodes needs RTFM envs (begin_step / end_step)")
    queue = list(enumerate(seeds))
    records: list[dict[str, Any] | None] = [None] * len(seeds)
    running: dict[int, tuple[int, int, dict[str, Any]]] = {}  # env -> (episode index, seed, observation)
    steps_done: dict[int, int] = {}
    t0 = time.perf_counter()

    def start(j: int) -> None:
        if queue:
            index, seed = queue.pop(0)
            obs, _ = envs[j].reset(seed=seed)
            agents[j].reset()
            running[j] = (index, seed, obs)

    for j in range(len(envs)):
        start(j)
    finished = 0
    total_steps = 0
    while running:
        pending = []
        for j, (_, _, obs) in running.items():
            pose = cores[j].begin_step(agents[j].act(obs))
            if pose is not None:
                pending.append((j, pose))
        frames = _frames_at(cores, pending)
        for j in list(running):
            index, seed, _ = running[j]
            got = frames.get(j)
            if isinstance(got, tuple):
                obs, _, terminated, truncated, info = cores[j].end_step(*got)
            else:
                obs, _, terminated, truncated, info = cores[j].end_step(got)
            total_steps += 1
            if terminated or truncated:
                records[index] = _record(seed, info, 0.0)
                steps_done[index] = int(info["steps"])
                del running[j]
                finished += 1
                if progress is not None:
                    progress(finished)
                start(j)
            else:
                running[j] = (index, seed, obs)
    wall = time.perf_counter() - t0
    for index, record in enumerate(records):
        record["wall_s"] = wall * steps_done[index] / max(total_steps, 1)
    return records


def summarize(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Means and standard errors of :data:`METRICS`, and frames/s (steps / wall time, resets included)."""
    if not episodes:
        raise ValueError("no episodes to summarize")
    out: dict[str, Any] = {"episodes": len(episodes)}
    for key in METRICS:
        values = np.array([e[key] for e in episodes], dtype=np.float64)
        out[key] = float(values.mean())
        out[f"{key}_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    out["frames_per_s"] = sum(e["steps"] for e in episodes) / max(sum(e["wall_s"] for e in episodes), 1e-9)
    return out


def evaluate(
    agents: list[str], cameras: list[str], env_config: EnvConfig, episodes: int, seed: int, progress: bool = True
) -> list[dict[str, Any]]:
    """Run every agent under every camera on episodes ``seed .. seed + episodes - 1``.

    Returns:
        One row per (agent, camera): the spec, the camera, :func:`summarize`'s numbers and
        the per-episode records.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
    if not agents or not cameras:
        raise ValueError("give at least one agent and one camera")
    rows = []
    for camera in cameras:
        config = dataclasses.replace(env_config, camera=camera)
        env = make_env(config)()  # one env per camera, reused: each MiniWorld env costs memory
        try:
            for spec in agents:
                agent = make_agent(spec, env, seed=seed, env_config=config)
                records = []
                for i in range(episodes):
                    records.append(run_episode(env, agent, seed + i))
                    if progress:
                        print(f"\r{spec} / {camera}: {i + 1}/{episodes}", end="", file=sys.stderr, flush=True)
                if progress:
                    print(file=sys.stderr)
                rows.append({"agent": spec, "camera": camera, **summarize(records), "records": records})
        finally:
            env.close()
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (mean ± standard error over episodes)."""
    lines = [
        "| agent | camera | episodes | success | SPL | SoftSPL | steps | collisions | frames/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = [f"{r[k]:.2f} ± {r[k + '_se']:.2f}" for k in ("success", "spl", "soft_spl")]
        cells += [f"{r['steps']:.1f}", f"{r['collisions']:.1f}", f"{r['frames_per_s']:.0f}"]
        lines.append(f"| {r['agent']} | {r['camera']} | {r['episodes']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line, evaluate, write ``OUT.json`` and ``OUT.md``; returns the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", nargs="+", required=True, help=f"agent specs: {', '.join(AGENT_KINDS)}")
    parser.add_argument("--cameras", nargs="+", default=["ground_truth"], help="camera names")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per (agent, camera)")
    parser.add_argument("--seed", type=int, default=10_000, help="episode i resets with seed + i")
    parser.add_argument("--out", required=True, help="output path without suffix: writes OUT.json and OUT.md")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads (0: torch's default)")
    for f in dataclasses.fields(EnvConfig):
        if f.name != "camera":
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    env_config = EnvConfig(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(EnvConfig) if f.name != "camera"}
    )
    t0 = time.perf_counter()
    rows = evaluate(args.agents, args.cameras, env_config, args.episodes, args.seed)
    result = {
        "config": {
            "agents": args.agents,
            "cameras": args.cameras,
            "episodes": args.episodes,
            "seeds": [args.seed, args.seed + args.episodes - 1],
            "env": env_config.to_dict(),
            "torch_threads": args.torch_threads,
        },
        "machine": machine_info(),
        "wall_s": time.perf_counter() - t0,
        "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out.with_suffix(".json"), (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(out.with_suffix(".md"), markdown_table(rows).encode())
    print(markdown_table(rows))
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
