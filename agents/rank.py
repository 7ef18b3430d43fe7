r"""Rank policies under a camera and measure how well that ranking agrees with the ground truth's.

Every policy runs the same seeded episodes (``reset(seed=SEED + i)`` for episode i) under the
camera judged and under the reference camera (ground truth by default). The command prints a
table of each policy's success and SPL under both, its rank under each, and the agreement of
the two rankings: Pearson r, Spearman rho and SIMPLER's MMRV (defined in
:mod:`agents.ranking`) of the per-policy success rates and SPLs, each with a percentile
bootstrap interval over episodes. ``--json OUT`` writes everything, with the config and the
machine, to OUT.

Policies are the agent specs of :mod:`agents.evaluate`: ``random``, ``shortest_path`` (the
privileged oracle), ``seeker`` (ObjectNav: a scripted policy that looks for the goal's colour),
``ppo:DIR`` and ``ppo-blind:DIR``. Cameras are the env cameras
(``ground_truth``, ``model``, ``reprojection``, ``nearest``) and ``blind``: the ground-truth
env with every policy shown a uniform grey view (an ablation: a camera that shows nothing).

When the reference cannot be built (a recorded world, ``--world FILE`` with a free-space map,
has no ground-truth renderer) the table ranks the policies under the chosen camera alone and
says why.

Examples::

    # rank your policies on ObjectNav with the reprojection camera against ground truth
    .venv/bin/python -m agents.rank --task RTFM/ObjectNav-v0 --camera reprojection \
        --policies random seeker shortest_path ppo:runs/ppo/objectnav/policy --episodes 100 --json runs/rank.json
    # in a recorded world (no ground truth there: the ranking under the camera alone)
    .venv/bin/python -m agents.rank --task RTFM/PointNav-v0 --camera reprojection --world world.rtfm \
        --policies random shortest_path --episodes 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.base import Agent
from agents.envs import EnvConfig, flag_type, make_env
from agents.evaluate import AGENT_KINDS, make_agent, run_episodes, summarize
from agents.ranking import MEASURES, agreement
from rtfm_env import worlds
from rtfm_env.cameras import CAMERAS
from rtfm_env.data.shards import atomic_write_bytes
from rtfm_env.provenance import machine_info

__all__ = ["BLIND", "TASK_DEFAULTS", "RankConfig", "BlindView", "evaluate_camera", "rank", "ranking_table", "main"]

#: The pseudo-camera that shows policies nothing: ground truth underneath, grey views on top.
BLIND = "blind"

#: Task settings that differ from :class:`~agents.envs.EnvConfig`'s (PointNav's) defaults.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    # ObjectNav needs room for its objects and longer searches; 1 m is Habitat's success radius.
    "RTFM/ObjectNav-v0": {
        "scene": "MiniWorld-FourRooms-v0",
        "max_steps": 150,
        "success_distance": 1.0,
        "min_goal_distance": 1.0,
        "max_goal_distance": 6.0,
    },
    # ImageNav with landmarks: a bare room looks alike everywhere at 64x64, so its goal images
    # barely say where they were taken; depth, for the mapping policies (agents.localiser).
    "RTFM/ImageNav-v0": {
        "scene": "MiniWorld-OneRoom-v0",
        "max_steps": 150,
        "success_distance": 1.0,
        "min_goal_distance": 1.0,
        "max_goal_distance": 6.0,
        "landmarks": True,
        "depth": True,
    },
}

#: Per-episode scores whose per-policy means are ranked.
RANKED = ("success", "spl")


@dataclass
class RankConfig:
    """What a ranking run evaluates (saved in its JSON)."""

    task: str = "RTFM/ObjectNav-v0"  # a registered RTFM/* env id
    camera: str = "reprojection"  # the camera judged: a name of rtfm_env.cameras.CAMERAS or "blind"
    policies: list[str] = field(default_factory=list)  # agent specs (agents.evaluate.AGENT_KINDS)
    reference: str | None = "ground_truth"  # the camera to agree with; None ranks under `camera` alone
    world: str | None = None  # memory cameras: a regime ("scan", "walk", "image") or a world file
    episodes: int = 100  # seeded episodes per policy and camera
    seed: int = 10_000  # episode i resets with seed + i
    resamples: int = 1000  # bootstrap resamples of the episodes
    confidence: float = 0.95  # coverage of the bootstrap intervals
    checkpoint: str | None = None  # model camera: frame-model checkpoint directory (None: the shipped one)
    env: dict[str, Any] = field(default_factory=dict)  # EnvConfig fields that differ from the task's defaults
    batch: int = 16  # envs stepped together (one batched camera call per step); 1: one episode at a time

    def check(self) -> None:
        """Raise ValueError naming the valid choices for a bad field."""
        cameras = sorted([*CAMERAS, BLIND])
        for name in ("camera", "reference"):
            value = getattr(self, name)
            if (value is not None or name == "camera") and value not in cameras:
                raise ValueError(f"unknown {name} {value!r}; valid: {cameras}")
        if len(self.policies) < 2:
            raise ValueError(f"ranking needs at least 2 policies, got {self.policies}")
        if len(set(self.policies)) != len(self.policies):
            raise ValueError(f"policies are listed twice: {self.policies}")
        if isinstance(self.episodes, bool) or not isinstance(self.episodes, int) or self.episodes < 1:
            raise ValueError(f"episodes must be a positive integer, got {self.episodes!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or not 1 <= self.batch <= 64:
            raise ValueError(f"batch must be an integer in [1, 64], got {self.batch!r}")
        if self.checkpoint is not None and "model" not in (self.camera, self.reference):
            raise ValueError("--checkpoint applies to the model camera only; neither camera is 'model'")


class BlindView(Agent):
    """An agent shown a uniform grey view instead of the camera's (the ``blind`` camera)."""

    #: The grey of every blind frame (as :class:`agents.ppo.PPOAgent`'s blind ablation).
    VALUE = 128

    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def reset(self) -> None:
        """Reset the agent underneath."""
        self.agent.reset()

    def act(self, observation: dict[str, Any]) -> int:
        """The agent's action for the observation with its ``rgb`` made grey (and its ``depth``, if any, no return)."""
        blind = {**observation, "rgb": np.full_like(observation["rgb"], self.VALUE)}
        if "depth" in observation:
            blind["depth"] = np.zeros_like(observation["depth"])  # a depth sensor's "no return"
        return self.agent.act(blind)


def env_setup(cfg: RankConfig) -> tuple[EnvConfig, dict[str, Any]]:
    """The task's :class:`EnvConfig` (camera left to the caller) and the memory cameras' extra kwargs.

    A ``world`` file with a free-space map becomes the scene (the robot moves in the recording),
    unless ``env`` names a scene; a file without one (a saved memory) or a regime only fills
    the memory cameras' memory.
    """
    values = {**TASK_DEFAULTS.get(cfg.task, {}), **cfg.env, "env_id": cfg.task}
    memory: dict[str, Any] = {}
    path = worlds.world_path(cfg.world)
    if cfg.world is not None:
        memory["world"] = str(cfg.world)
    if path is not None and "scene" not in cfg.env:
        from rtfm_env.scenes import NoFreeSpaceError, RecordedScene

        if not path.is_file():
            raise ValueError(f"world {str(path)!r} is neither a regime {list(worlds.WORLD_KINDS)} nor a file")
        try:
            RecordedScene(path).close()
            values["scene"] = str(path)  # a recording with a map: its own physics, no ground truth
        except NoFreeSpaceError:
            pass  # a saved memory: the MiniWorld scene gives the walls
    return EnvConfig(**values), memory


def evaluate_camera(
    cfg: RankConfig, camera: str, env_config: EnvConfig, memory: dict[str, Any], progress: bool = True
) -> list[dict[str, Any]]:
    """Every policy on the run's episodes under ``camera``; one row per policy (summary + records).

    Raises:
        ValueError: the env cannot be built with this camera (e.g. ground truth in a recorded
            world), or a policy spec is unknown or was trained on another task.
    """
    blind = camera == BLIND
    config = dataclasses.replace(env_config, camera="ground_truth" if blind else camera)
    kwargs: dict[str, Any] = {}
    if config.camera in ("model", "reprojection", "nearest"):
        kwargs.update(memory)
    if config.camera == "model":  # one frame model, loaded once, shared by the batch's envs
        from rtfm_env.cameras import ModelCamera
        from rtfm_env.model.sampler import FrameModel

        if cfg.checkpoint is not None:
            kwargs["checkpoint"] = FrameModel.from_pretrained(cfg.checkpoint)
        else:
            kwargs["checkpoint"] = ModelCamera(resolution=config.resolution).model
    n_envs = min(cfg.batch, cfg.episodes)
    envs: list[gym.Env] = []
    rows = []
    seeds = [cfg.seed + i for i in range(cfg.episodes)]
    try:
        for _ in range(n_envs):
            envs.append(make_env(config, **kwargs)())
        for spec in cfg.policies:
            # env j's agent is seeded seed + j (the random policy), so one env gives run_episode's stream
            agents = [make_agent(spec, env, seed=cfg.seed + j, env_config=config) for j, env in enumerate(envs)]
            if blind:
                agents = [BlindView(a) for a in agents]

            def report(done: int, spec: str = spec) -> None:
                if progress:
                    print(f"\r{spec} / {camera}: {done}/{cfg.episodes}", end="", file=sys.stderr, flush=True)

            records = run_episodes(envs, agents, seeds, report)
            if progress:
                print(file=sys.stderr)
            rows.append({"policy": spec, "camera": camera, **summarize(records), "records": records})
    finally:
        for env in envs:
            env.close()
    return rows


def _scores(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    """(P, N) per-episode ``key`` of each policy's row."""
    return np.array([[float(r[key]) for r in row["records"]] for row in rows], dtype=np.float64)


def _ranks(rows: list[dict[str, Any]]) -> list[int]:
    """1-based rank of each row by success, then SPL (ties share the better rank)."""
    keys = [(round(r["success"], 12), round(r["spl"], 12)) for r in rows]
    return [1 + sum(other > mine for other in keys) for mine in keys]


def rank(cfg: RankConfig, progress: bool = True) -> dict[str, Any]:
    """Evaluate, rank and measure agreement; returns the JSON-ready result (see the module docstring)."""
    cfg.check()
    env_config, memory = env_setup(cfg)
    t0 = time.perf_counter()
    rows = evaluate_camera(cfg, cfg.camera, env_config, memory, progress)
    reference_rows, unavailable = None, None
    if cfg.reference is None:
        unavailable = "no reference camera was asked for (--reference none)"
    else:
        try:
            reference_rows = evaluate_camera(cfg, cfg.reference, env_config, memory, progress)
        except ValueError as e:
            if "recording" not in str(e) and "renderer" not in str(e):
                raise
            unavailable = f"the reference camera {cfg.reference!r} cannot run here: {e}"
    result: dict[str, Any] = {
        "config": asdict(cfg),
        "env": env_config.to_dict(),
        "seeds": [cfg.seed, cfg.seed + cfg.episodes - 1],
        "machine": machine_info(),
        "camera": {"name": cfg.camera, "ranks": _ranks(rows), "rows": rows},
        "reference": None,
        "reference_unavailable": unavailable,
        "agreement": None,
    }
    if reference_rows is not None:
        result["reference"] = {"name": cfg.reference, "ranks": _ranks(reference_rows), "rows": reference_rows}
        result["agreement"] = {
            key: {
                name: estimate.to_dict()
                for name, estimate in agreement(
                    _scores(rows, key), _scores(reference_rows, key), cfg.resamples, cfg.confidence, cfg.seed
                ).items()
            }
            for key in RANKED
        }
    result["wall_s"] = time.perf_counter() - t0
    return result


def _scores_cell(row: dict[str, Any]) -> str:
    """A row's success and SPL cells, mean ± standard error."""
    return f"{row['success']:.2f} ± {row['success_se']:.2f} | {row['spl']:.2f} ± {row['spl_se']:.2f}"


def _cell(estimate: dict[str, Any]) -> str:
    def fmt(x: float) -> str:
        return "n/a" if x is None or not math.isfinite(x) else f"{x:.2f}"

    return f"{fmt(estimate['value'])} [{fmt(estimate['low'])}, {fmt(estimate['high'])}]"


def ranking_table(result: dict[str, Any]) -> str:
    """The ranking and agreement tables of :func:`rank`'s result, as Markdown."""
    cfg = result["config"]
    cam, ref = result["camera"], result["reference"]
    first, last = result["seeds"]
    world = f", world {cfg['world']}" if cfg["world"] else ""
    lines = [
        f"{cfg['task']}: {cfg['episodes']} episodes (seeds {first}-{last}), scene {result['env']['scene']}{world}",
        "",
    ]
    head = f"| policy | success ({cam['name']}) | SPL ({cam['name']}) | rank ({cam['name']}) |"
    rule = "|---|---:|---:|---:|"
    if ref is not None:
        head += f" success ({ref['name']}) | SPL ({ref['name']}) | rank ({ref['name']}) |"
        rule += "---:|---:|---:|"
    lines += [head, rule]
    order = sorted(range(len(cam["rows"])), key=lambda i: (cam["ranks"][i], i))
    for i in order:
        line = f"| {cam['rows'][i]['policy']} | {_scores_cell(cam['rows'][i])} | {cam['ranks'][i]} |"
        if ref is not None:
            line += f" {_scores_cell(ref['rows'][i])} | {ref['ranks'][i]} |"
        lines.append(line)
    lines.append("")
    if result["agreement"] is None:
        lines.append(f"No agreement measured: {result['reference_unavailable']}. The ranking above is under "
                     f"{cam['name']} alone.")  # fmt: skip
        return "\n".join(lines) + "\n"
    confidence = round(100 * cfg["confidence"])
    names = {"pearson": "Pearson r", "spearman": "Spearman ρ", "mmrv": "MMRV (lower is better)"}
    lines.append(
        f"| {cam['name']} vs {ref['name']} | " + " | ".join(f"{names[m]} [{confidence}% CI]" for m in MEASURES) + " |"
    )
    lines.append("|---|" + "---:|" * len(MEASURES))
    for key in RANKED:
        label = {"success": "success", "spl": "SPL"}[key]
        lines.append(f"| {label} | " + " | ".join(_cell(result["agreement"][key][m]) for m in MEASURES) + " |")
    lines.append("")
    lines.append(f"Intervals: percentile bootstrap over episodes, {cfg['resamples']} resamples (seed {cfg['seed']}); "
                 "n/a where every policy scores the same (a correlation is then undefined).")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the command line, rank, print the tables, write ``--json``; returns the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default=RankConfig.task, help="RTFM env id (default %(default)s)")
    parser.add_argument("--camera", default=RankConfig.camera, help=f"camera judged: {sorted([*CAMERAS, BLIND])}")
    parser.add_argument("--policies", nargs="+", required=True, help=f"2+ agent specs: {', '.join(AGENT_KINDS)}")
    parser.add_argument("--reference", default="ground_truth", help="reference camera, or 'none' (default %(default)s)")
    parser.add_argument("--world", default=None, help="memory cameras: 'scan', 'walk', 'image' or a world file")
    parser.add_argument("--episodes", type=int, default=RankConfig.episodes, help="episodes per policy and camera")
    parser.add_argument("--seed", type=int, default=RankConfig.seed, help="episode i resets with seed + i")
    parser.add_argument("--resamples", type=int, default=RankConfig.resamples, help="bootstrap resamples")
    parser.add_argument("--confidence", type=float, default=RankConfig.confidence, help="bootstrap interval coverage")
    parser.add_argument("--checkpoint", default=None, help="model camera: frame-model checkpoint directory")
    parser.add_argument("--batch", type=int, default=RankConfig.batch,
                        help="envs stepped together, one batched camera call per step (default %(default)s)")
    parser.add_argument("--json", default=None, help="write the full result (config, machine, records) here")
    parser.add_argument("--torch-threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    for f in dataclasses.fields(EnvConfig):
        if f.name not in ("camera", "env_id"):
            parser.add_argument("--" + f.name.replace("_", "-"), type=flag_type(f.default), default=None,
                                help=f"EnvConfig.{f.name} (default: the task's)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    env = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(EnvConfig)
        if f.name not in ("camera", "env_id") and getattr(args, f.name) is not None
    }
    cfg = RankConfig(
        task=args.task,
        camera=args.camera,
        policies=list(args.policies),
        reference=None if args.reference == "none" else args.reference,
        world=args.world,
        episodes=args.episodes,
        seed=args.seed,
        resamples=args.resamples,
        confidence=args.confidence,
        checkpoint=args.checkpoint,
        env=env,
        batch=args.batch,
    )
    if cfg.task not in gym.registry:
        raise ValueError(
            f"unknown task {cfg.task!r}; registered: {sorted(i for i in gym.registry if i.startswith('RTFM/'))}"
        )
    result = rank(cfg, progress=not args.quiet)
    print(ranking_table(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
