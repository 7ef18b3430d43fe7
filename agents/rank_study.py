r"""The ranking study: every policy under every camera on the same episodes, agreement with ground truth.

``agents/rank.py`` ranks a user's policies under one camera against the reference; this command
runs the committed study behind ``agents/RESULTS.md``: each camera is evaluated once (the
reference too), then each camera's per-policy success and SPL are compared with the reference's
(Pearson r, Spearman rho, MMRV with bootstrap intervals: :mod:`agents.ranking`). It also makes
the blind check of the task (the ``blind`` camera: ground truth with every view replaced by grey;
a task that needs eyes has the vision policies' blind success at most ``blind_ratio`` of their
ground-truth success) and the scatter of per-policy success, reference against each camera.

Policies are ``NAME=SPEC`` (a short label and an agent spec of :mod:`agents.evaluate`) or a bare
spec. ``--privileged`` names the labels that do not read the view (the oracle, random): they
are ranked with the others but left out of the blind check.

Each camera's evaluations are saved in ``OUT/cameras/<camera>.json``, one entry per policy (by its
spec and the settings); a rerun reuses every policy already evaluated with the same settings
(resume, or a policy added to a finished study: only it is evaluated), and a changed setting
re-evaluates. ``OUT/rank.json``
holds the config, the machine, every policy's per-episode success and SPL (compact) and the
agreement; ``OUT/rank.md`` the tables; ``OUT/scatter.png`` the scatter.

Example::

    .venv/bin/python -m agents.rank_study --task RTFM/ObjectNav-v0 --scene MiniWorld-OneRoom-v0 \
        --max-steps 100 --max-goal-distance 6 --cameras ground_truth model reprojection blind \
        --policies random shortest_path seeker bc_s0=ppo:runs/bc/s0/policy --privileged random shortest_path \
        --episodes 100 --out agents/results/objectnav_rank
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.envs import EnvConfig, flag_type
from agents.plot_curves import save_figure
from agents.rank import BLIND, RANKED, RankConfig, _ranks, env_setup, evaluate_camera
from agents.ranking import MEASURES, agreement, percentile_interval
from rtfm_env.data.shards import atomic_write_bytes
from rtfm_env.provenance import machine_info

__all__ = ["parse_policies", "study", "study_table", "transfer", "main"]


def parse_policies(items: list[str]) -> tuple[list[str], list[str]]:
    """``NAME=SPEC`` items (or bare specs, named by themselves) -> (names, specs); names must be unique."""
    names, specs = [], []
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            name, spec = item, item
        if not name or not spec:
            raise ValueError(f"a policy is NAME=SPEC or SPEC, got {item!r}")
        names.append(name)
        specs.append(spec)
    if len(set(names)) != len(names):
        raise ValueError(f"policy names are listed twice: {names}")
    return names, specs


def _digest(config: dict[str, Any], camera: str, drop: tuple[str, ...] = (), **extra: Any) -> str:
    """Hash of a study config (``dataclasses.asdict`` of a RankConfig) for one camera, less what does not count."""
    data = {k: v for k, v in config.items() if k not in ("camera", "reference", "resamples", *drop)}
    data.update(camera=camera, **extra)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _key(config: dict[str, Any], camera: str) -> str:
    """What a camera's evaluation of the whole policy list depends on (the study's record of it)."""
    return _digest(config, camera)


def _policy_key(config: dict[str, Any], camera: str, spec: str) -> str:
    """What one policy's evaluation under ``camera`` depends on: the settings (not the other policies) and its spec.

    Episodes are reset with fixed seeds and each policy gets fresh agents, so a policy's numbers
    do not depend on which policies are evaluated beside it (``agents.rank.evaluate_camera``).
    """
    return _digest(config, camera, drop=("policies",), spec=spec)


#: Format of ``OUT/cameras/<camera>.json``: one entry per evaluated policy, by :func:`_policy_key`.
CACHE_FORMAT, CACHE_VERSION = "rank-study-camera", 2


def _load_cache(path: Path, camera: str) -> dict[str, dict[str, Any]]:
    """Policy key -> {spec, wall_s, row} from a camera's cache file; empty when there is none.

    A file of the first format (one entry for a whole policy list) is read through the study's
    ``rank.json`` beside it, whose config names the policies in order: each row is kept when
    that config reproduces the file's key. A file that cannot be read is an error naming it.
    """
    if not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"camera cache {path} is not readable JSON ({e}); delete it to re-evaluate") from e
    if saved.get("format") == CACHE_FORMAT:
        return dict(saved.get("policies", {}))
    entries: dict[str, dict[str, Any]] = {}
    study_file = path.parent.parent / "rank.json"
    if "rows" in saved and study_file.is_file():
        try:
            config = json.loads(study_file.read_text(encoding="utf-8"))["config"]
        except (OSError, json.JSONDecodeError, KeyError):
            return {}
        if _key(config, camera) != saved.get("key"):
            return {}
        if len(config["policies"]) != len(saved["rows"]):
            return {}
        for spec, row in zip(config["policies"], saved["rows"], strict=True):
            entries[_policy_key(config, camera, spec)] = {"spec": spec, "wall_s": None,
                                                           "row": {k: v for k, v in row.items() if k != "name"}}
    return entries


def _save_cache(path: Path, camera: str, entries: dict[str, dict[str, Any]]) -> None:
    record = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "camera": camera, "policies": entries}
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())


def _compact(rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """Rows without per-episode records, with per-episode success (0/1 string) and SPL (3 decimals)."""
    out = []
    for name, row in zip(names, rows, strict=True):
        records = row["records"]
        out.append(
            {
                "name": name,
                **{k: v for k, v in row.items() if k != "records"},
                "episode_success": "".join("1" if r["success"] else "0" for r in records),
                "episode_spl": [round(float(r["spl"]), 3) for r in records],
                "mean_steps": float(np.mean([r["steps"] for r in records])),
            }
        )
    return out


def _scores(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    if key == "success":
        return np.array([[float(c) for c in row["episode_success"]] for row in rows])
    return np.array([row["episode_spl"] for row in rows], dtype=np.float64)


def study(
    cfg: RankConfig,
    cameras: list[str],
    names: list[str],
    privileged: list[str],
    out: Path,
    blind_ratio: float = 0.3,
    progress: bool = True,
    groups: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Evaluate (or reuse) every camera, measure agreement with ``cfg.reference``; returns the JSON result.

    ``groups`` maps a training camera to the names of the policies trained with it (the same
    recipe and budget); the result then holds the train x test transfer matrix over the cameras
    evaluated (:func:`transfer`).
    """
    if cfg.reference not in cameras:
        raise ValueError(f"the reference {cfg.reference!r} must be one of the cameras {cameras}")
    unknown = sorted(set(privileged) - set(names))
    if unknown:
        raise ValueError(f"--privileged names {unknown} are not policy names {names}")
    groups = groups or {}
    unknown = sorted({n for members in groups.values() for n in members} - set(names))
    if unknown:
        raise ValueError(f"--groups names {unknown} are not policy names {names}")
    cfg.check()
    env_config, memory = env_setup(cfg)
    cache = out / "cameras"
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    config = dataclasses.asdict(cfg)
    for camera in cameras:
        path = cache / f"{camera}.json"
        entries = _load_cache(path, camera)
        keys = [_policy_key(config, camera, spec) for spec in cfg.policies]
        missing = [spec for spec, k in zip(cfg.policies, keys, strict=True) if k not in entries]
        if missing:  # only the policies this camera has not seen with these settings
            t0 = time.perf_counter()
            rows = evaluate_camera(dataclasses.replace(cfg, policies=missing), camera, env_config, memory, progress)
            wall = round((time.perf_counter() - t0) / len(missing), 1)
            for spec, row in zip(missing, _compact(rows, missing), strict=True):
                row.pop("name")
                entries[_policy_key(config, camera, spec)] = {"spec": spec, "wall_s": wall, "row": row}
            _save_cache(path, camera, entries)
        rows = [{"name": n, **entries[k]["row"]} for n, k in zip(names, keys, strict=True)]
        walls = [entries[k]["wall_s"] for k in keys]
        results[camera] = {"key": _key(config, camera), "camera": camera,
                           "wall_s": None if None in walls else round(sum(walls), 1),
                           "rows": rows, "ranks": _ranks(rows)}  # fmt: skip
    reference = results[cfg.reference]

    def agree_on(rows: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for camera in cameras:
            if camera == cfg.reference:
                continue
            out[camera] = {
                key: {
                    m: e.to_dict()
                    for m, e in agreement(
                        _scores(results[camera]["rows"], key)[rows],
                        _scores(reference["rows"], key)[rows],
                        cfg.resamples,
                        cfg.confidence,
                        cfg.seed,
                    ).items()
                }
                for key in RANKED
            }
        return out

    agree = agree_on(list(range(len(names))))
    # Privileged policies (the oracle, random) score the same under every camera: at the ends of
    # the range they lift Pearson r whatever the camera shows. Agreement over the vision policies
    # alone is the stricter figure.
    vision_rows = [i for i, n in enumerate(names) if n not in privileged]
    agree_vision = agree_on(vision_rows) if privileged and len(vision_rows) >= 3 else None
    blind = None
    if BLIND in results:
        vision = [i for i, n in enumerate(names) if n not in privileged]
        ref_success = sum(reference["rows"][i]["success"] for i in vision)
        blind_success = sum(results[BLIND]["rows"][i]["success"] for i in vision)
        ratio = blind_success / ref_success if ref_success > 0 else math.nan
        blind = {
            "policies": [names[i] for i in vision],
            "reference_success": ref_success / max(len(vision), 1),
            "blind_success": blind_success / max(len(vision), 1),
            "ratio": ratio,
            "limit": blind_ratio,
            "needs_eyes": bool(ratio <= blind_ratio),
        }
    return {
        "config": dataclasses.asdict(cfg),
        "env": env_config.to_dict(),
        "cameras": cameras,
        "policies": names,
        "privileged": privileged,
        "seeds": [cfg.seed, cfg.seed + cfg.episodes - 1],
        "machine": machine_info(),
        "results": results,
        "agreement": agree,
        "agreement_vision": agree_vision,
        "blind_check": blind,
        "transfer": transfer(results, names, groups, cfg.reference, cfg.resamples, cfg.confidence, cfg.seed)
        if groups
        else None,
    }


def transfer(
    results: dict[str, Any],
    names: list[str],
    groups: dict[str, list[str]],
    reference: str,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """The train x test matrix: each group's mean success and SPL under each evaluated camera.

    Cells are means over the group's policies of their success rates (standard error over all
    the group's episodes, pooled). ``ratio[train]`` is the group's success under ``reference``
    divided by the ``reference``-trained group's success under ``reference`` (1 = as good as
    training on the real thing); ``ratio_interval[train]`` its percentile bootstrap interval over
    episodes (the same episodes drawn for every policy), which does not cover the spread between
    training seeds. ``ratio_interval_seeds[train]`` covers it: a two-level bootstrap that
    resamples each group's policies (its training seeds) with replacement and then the episodes,
    so a group's seeds that disagree widen it; it needs at least two policies in both groups
    (NaN otherwise; a few seeds give a coarse interval). ``ratio_per_policy[train]`` pairs the
    group's policies with the reference group's by position (seed i against seed i) when the
    groups are the same size, else it is None.
    """
    index = {n: i for i, n in enumerate(names)}
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for train, members in groups.items():
        cells[train] = {}
        for test, entry in results.items():
            if test == BLIND:
                continue
            rows = [entry["rows"][index[n]] for n in members]
            success = np.array([float(c) for r in rows for c in r["episode_success"]])
            spl = np.array([v for r in rows for v in r["episode_spl"]], dtype=np.float64)
            se = float(success.std(ddof=1) / math.sqrt(len(success))) if len(success) > 1 else 0.0
            cells[train][test] = {"success": float(success.mean()), "success_se": se, "spl": float(spl.mean()),
                                  "policies": len(rows)}  # fmt: skip
    ratio, interval, seeds_interval, per_policy = {}, {}, {}, {}
    base = cells.get(reference, {}).get(reference, {}).get("success")
    ref_rows = results[reference]["rows"] if reference in results else None
    rng = np.random.default_rng(seed)

    def episodes(members: list[str]) -> np.ndarray:  # (P, N) each policy's success per episode
        return np.array([[float(c) for c in ref_rows[index[n]]["episode_success"]] for n in members])

    def seed_draws(per_episode: np.ndarray, pick: np.ndarray) -> np.ndarray:  # (R,) mean over drawn seeds, episodes
        return np.take_along_axis(per_episode[pick].mean(axis=1), draws, axis=1).mean(axis=1)

    def percentiles(r: np.ndarray) -> list[float]:
        return list(percentile_interval(r, confidence))

    draws = None
    if ref_rows is not None and reference in groups:
        n = len(ref_rows[0]["episode_success"])
        draws = rng.integers(0, n, size=(resamples, n))
        base_episodes = episodes(groups[reference])
        base_draws = base_episodes.mean(axis=0)[draws].mean(axis=1)
        # two levels: the reference group's seeds, then (below) each other group's, then the shared episodes
        base_pick = rng.integers(0, len(base_episodes), size=(resamples, len(base_episodes)))
        base_seed_draws = seed_draws(base_episodes, base_pick)
    for train in groups:
        own = cells[train].get(reference, {}).get("success")
        ratio[train] = own / base if base and own is not None else math.nan
        interval[train], seeds_interval[train] = [math.nan, math.nan], [math.nan, math.nan]
        per_policy[train] = None
        if draws is None:
            continue
        own_episodes = episodes(groups[train])
        with np.errstate(divide="ignore", invalid="ignore"):
            interval[train] = percentiles(own_episodes.mean(axis=0)[draws].mean(axis=1) / base_draws)
            if len(own_episodes) == len(base_episodes):
                own_mean, base_mean = own_episodes.mean(axis=1), base_episodes.mean(axis=1)
                per_policy[train] = [float(a / b) if b else math.nan for a, b in zip(own_mean, base_mean, strict=True)]
            if len(own_episodes) >= 2 and len(base_episodes) >= 2:
                if train == reference:  # the reference against itself: the same draws, ratio 1
                    seeds_interval[train] = percentiles(base_seed_draws / base_seed_draws)
                else:
                    pick = rng.integers(0, len(own_episodes), size=(resamples, len(own_episodes)))
                    seeds_interval[train] = percentiles(seed_draws(own_episodes, pick) / base_seed_draws)
    return {"groups": groups, "cells": cells, "ratio": ratio, "ratio_interval": interval,
            "ratio_interval_seeds": seeds_interval, "ratio_per_policy": per_policy, "reference": reference}


def _fmt(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def study_table(result: dict[str, Any]) -> str:
    """Markdown: per-policy success / SPL under every camera, agreement per camera, the blind check."""
    cfg, cams, names = result["config"], result["cameras"], result["policies"]
    first, last = result["seeds"]
    ref = cfg["reference"]
    lines = [
        f"{cfg['task']}, scene {result['env']['scene']}, {cfg['episodes']} episodes per policy and camera "
        f"(seeds {first}-{last}, the same episodes everywhere), memory cameras in world `{cfg['world'] or 'scan'}`.",
        "",
        "| policy | " + " | ".join(f"{c}: success / SPL" for c in cams) + " |",
        "|---|" + "---:|" * len(cams),
    ]
    order = sorted(range(len(names)), key=lambda i: -result["results"][ref]["rows"][i]["success"])
    for i in order:
        cells = []
        for c in cams:
            row = result["results"][c]["rows"][i]
            cells.append(f"{row['success']:.2f} ± {row['success_se']:.2f} / {row['spl']:.2f}")
        mark = " (privileged)" if names[i] in result["privileged"] else ""
        lines.append(f"| {names[i]}{mark} | " + " | ".join(cells) + " |")
    lines.append("")
    conf = round(100 * cfg["confidence"])
    labels = {"pearson": "Pearson r", "spearman": "Spearman ρ", "mmrv": "MMRV"}
    lines.append(f"| camera vs {ref} | score | " + " | ".join(f"{labels[m]} [{conf}% CI]" for m in MEASURES) + " |")
    lines.append("|---|---|" + "---:|" * len(MEASURES))
    sets = [("", result["agreement"])]
    if result.get("agreement_vision"):
        sets.append((" (vision policies only)", result["agreement_vision"]))
    for label, agreements in sets:
        for c, per_key in agreements.items():
            for key in RANKED:
                cells = [f"{_fmt(per_key[key][m]['value'])} [{_fmt(per_key[key][m]['low'])}, "
                         f"{_fmt(per_key[key][m]['high'])}]" for m in MEASURES]  # fmt: skip
                lines.append(f"| {c}{label} | {key} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Intervals: percentile bootstrap over episodes, {cfg['resamples']} resamples. MMRV is in success "
                 "(or SPL) units; lower is better.")  # fmt: skip
    tr = result.get("transfer")
    if tr:
        tests = [c for c in cams if c != BLIND]
        lines += ["", f"Transfer (train x test; mean success / SPL over each group's policies; ratio = success under "
                      f"{tr['reference']} / the {tr['reference']}-trained group's, with its "
                      f"{round(100 * cfg['confidence'])}% bootstrap interval over episodes, then over training seeds "
                      "and episodes (each group's policies resampled too: the seed spread is in it; needs two or more "
                      "policies per group), and per policy paired by position (seed i against seed i)):", "",
                  "| trained with | " + " | ".join(f"test: {c}" for c in tests)
                  + f" | ratio on {tr['reference']} [episodes] | [seeds and episodes] | per policy |",
                  "|---|" + "---:|" * (len(tests) + 3)]  # fmt: skip
        for train, row in tr["cells"].items():
            cells = [f"{row[c]['success']:.2f} ± {row[c]['success_se']:.2f} / {row[c]['spl']:.2f}" for c in tests]
            low, high = tr.get("ratio_interval", {}).get(train, [math.nan, math.nan])
            s_low, s_high = tr.get("ratio_interval_seeds", {}).get(train, [math.nan, math.nan])
            per = tr.get("ratio_per_policy", {}).get(train)
            per_text = ", ".join(_fmt(v) for v in per) if per else "-"
            lines.append(f"| {train} ({', '.join(tr['groups'][train])}) | " + " | ".join(cells)
                         + f" | {_fmt(tr['ratio'][train])} [{_fmt(low)}, {_fmt(high)}]"
                         + f" | [{_fmt(s_low)}, {_fmt(s_high)}] | {per_text} |")  # fmt: skip
    blind = result["blind_check"]
    if blind is not None:
        verdict = "holds" if blind["needs_eyes"] else "FAILS"
        lines += [
            "",
            f"Blind check ({verdict}): the vision policies ({', '.join(blind['policies'])}) succeed "
            f"{blind['blind_success']:.3f} of the time blind against {blind['reference_success']:.3f} with "
            f"{ref}: ratio {_fmt(blind['ratio'], 3)} (the task needs eyes when it is at most {blind['limit']}).",
        ]
    return "\n".join(lines) + "\n"


def plot_scatter(result: dict[str, Any], path: Path) -> None:
    """Per-policy success, reference (x) against each other camera (y), with y = x.

    Policies of a transfer group are coloured by the camera they were trained with. When every
    success is below 0.6 the axes stop just above the largest one, so policies of close skill
    stay apart (the y = x line is drawn either way).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = result["config"]["reference"]
    others = [c for c in result["cameras"] if c != ref]
    fig, axes = plt.subplots(1, len(others), figsize=(3.6 * len(others), 3.6), squeeze=False)
    x = [r["success"] for r in result["results"][ref]["rows"]]
    groups = (result.get("transfer") or {}).get("groups", {})
    trained = {name: train for train, members in groups.items() for name in members}
    colours = [f"C{list(groups).index(trained[n])}" if n in trained else "0.3" for n in result["policies"]]
    top = max([*x, *(r["success"] for c in others for r in result["results"][c]["rows"])])
    high = 1.03 if top > 0.6 else 1.15 * top + 0.03
    for ax, cam in zip(axes[0], others, strict=True):
        y = [r["success"] for r in result["results"][cam]["rows"]]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        ax.scatter(x, y, s=18, c=colours)
        for name, xi, yi in zip(result["policies"], x, y, strict=True):
            ax.annotate(name, (xi, yi), fontsize=5, xytext=(2, 2), textcoords="offset points")
        if groups:
            handles = [plt.Line2D([], [], ls="", marker="o", ms=4, color=f"C{i}") for i in range(len(groups))]
            ax.legend(handles, [f"trained with {t}" for t in groups], fontsize=5, loc="upper left")
        r = result["agreement"][cam]["success"]["pearson"]["value"]
        ax.set_title(f"{cam} (r = {_fmt(r)})", fontsize=8)
        ax.set_xlabel(f"success, {ref}", fontsize=7)
        ax.set_ylabel(f"success, {cam}", fontsize=7)
        ax.set_xlim(-0.03, high)
        ax.set_ylim(-0.03, high)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=6)
    fig.suptitle(f"{result['config']['task']}: per-policy success", fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, run the study, write OUT/rank.json, rank.md and scatter.png; returns the result."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default=RankConfig.task)
    p.add_argument("--cameras", nargs="+", default=["ground_truth", "model", "reprojection", BLIND])
    p.add_argument("--reference", default="ground_truth")
    p.add_argument("--policies", nargs="+", required=True, help="NAME=SPEC or SPEC, 2 or more")
    p.add_argument("--privileged", nargs="*", default=[], help="names of policies that do not read the view")
    p.add_argument("--groups", nargs="*", default=[], metavar="CAMERA=NAME,NAME",
                   help="policies trained with each camera (same recipe), for the transfer matrix")
    p.add_argument("--world", default=None, help="memory cameras' world (default: the envs' default, scan)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=RankConfig.seed)
    p.add_argument("--resamples", type=int, default=RankConfig.resamples)
    p.add_argument("--checkpoint", default=None, help="model camera: frame-model checkpoint (default: shipped)")
    p.add_argument("--batch", type=int, default=RankConfig.batch)
    p.add_argument("--blind-ratio", type=float, default=0.3)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--quiet", action="store_true")
    for f in dataclasses.fields(EnvConfig):
        if f.name not in ("camera", "env_id"):
            p.add_argument("--" + f.name.replace("_", "-"), type=flag_type(f.default), default=None)
    args = p.parse_args(argv)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    names, specs = parse_policies(args.policies)
    groups = {}
    for item in args.groups:
        camera, sep, members = item.partition("=")
        if not sep or not camera or not members:
            raise ValueError(f"a group is CAMERA=NAME[,NAME...], got {item!r}")
        groups[camera] = members.split(",")
    env = {f.name: getattr(args, f.name) for f in dataclasses.fields(EnvConfig)
           if f.name not in ("camera", "env_id") and getattr(args, f.name) is not None}  # fmt: skip
    cfg = RankConfig(task=args.task, camera=args.cameras[0], policies=specs, reference=args.reference,
                     world=args.world, episodes=args.episodes, seed=args.seed, resamples=args.resamples,
                     checkpoint=args.checkpoint, env=env, batch=args.batch)  # fmt: skip
    out = Path(args.out)
    result = study(cfg, list(args.cameras), names, list(args.privileged), out, args.blind_ratio, not args.quiet, groups)
    atomic_write_bytes(out / "rank.json", (json.dumps(result, indent=1) + "\n").encode())
    table = study_table(result)
    atomic_write_bytes(out / "rank.md", table.encode())
    if len(result["cameras"]) > 1:  # with the reference alone there is nothing to plot against it
        plot_scatter(result, out / "scatter.png")
    print(table)
    return result


if __name__ == "__main__":
    try:
        main()
    except (ValueError, KeyError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
