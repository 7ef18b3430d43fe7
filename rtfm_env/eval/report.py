"""Summary, plots and the report page (Markdown and HTML) of a revisit-consistency evaluation.

:func:`summarize` turns the per-episode records of :mod:`rtfm_env.eval.revisit` into the
numbers the report shows (means with standard errors over episodes, binned curves, cost
ratios, the headline targets); :func:`write_report` draws the plots with matplotlib and writes
``report.md`` and ``report.html`` from one list of blocks, headline table first.

The page is drawn from the compact ``results.json`` alone (the summary holds the curves already
aggregated over episodes), so a folder kept without its ``episodes/`` still rebuilds its report;
only the image strips need the per-episode PNGs, and their plot is kept as it is without them.
This module imports nothing from :mod:`rtfm_env.eval.revisit` (which imports it): what both need
is in :mod:`rtfm_env.eval.results`.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from rtfm_env.data.shards import atomic_write_bytes
from rtfm_env.eval.metrics import PERCEPTUAL_METRIC_NOTE, PSNR_CAP, mean_se
from rtfm_env.eval.results import RevisitConfig, n_episodes

__all__ = ["TARGETS", "DT_EDGES", "all_cap", "strip_entries", "summarize", "write_report"]

#: Headline targets for the shipped checkpoint (issue 6).
TARGETS = {
    "excursion_psnr": 30.0,  # dB, spatial memory's revisit PSNR after the out-and-back excursion
    "spatial_over_last_k": 10.0,  # dB, spatial minus last_k on the same revisits
    "spatial_cost_ratio": 1.1,  # cost per frame at the tour's end over its start (step 10)
    # The revisit frame judged against the ground truth as well as against its first visit, so
    # that grey against grey cannot score (issue 12): PSNR and edge energy relative to the truth.
    "excursion_psnr_gt": 28.0,  # dB, spatial memory's revisit frame against the ground truth
    "excursion_sharpness": 0.7,  # the revisit frame's sharpness over the ground truth's
}
#: Bin edges (steps since the first visit) of the revisit-consistency curve.
DT_EDGES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
# Tour steps [start, end) whose per-frame cost is the "step 10" cost: ten frames from step 10, so
# a strategy whose cost grows with the memory (all, capped above 20) is measured at about 10-20
# stored frames, not past its cap. The cost is the thread's CPU time, so ten frames suffice.
EARLY = (10, 20)
LATE = 50  # last tour steps whose per-frame cost is the "step 1000" cost
PLOT_FILES = {
    "revisit": "plots/revisit_vs_time.png",
    "along": "plots/psnr_along_trajectory.png",
    "cost": "plots/cost_vs_length.png",
    "strips": "plots/strips.png",
}


# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------


def _stat(values: list[float] | np.ndarray) -> dict[str, float | int]:
    m, se, n = mean_se(np.asarray(values, dtype=np.float64))
    return {"mean": m, "se": se, "n": n}


def _arr(values: list) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _excursion_revisit(traj: dict, strategy: str, key: str = "revisit_psnr") -> float:
    """The metric at the out-and-back's last frame (its anchor's revisit), NaN if it is none."""
    pairs = traj["revisits"]
    if not pairs or pairs[-1][0] != traj["n"] - 1:
        return float("nan")
    return float(_arr(traj["strategies"][strategy][key])[-1])


def _excursion_sharpness(traj: dict, strategy: str) -> float | None:
    """The revisit frame's sharpness over the ground truth's, NaN without a revisit, None if unrecorded."""
    row = traj["strategies"][strategy]
    if "sharpness" not in row or "sharpness_gt" not in traj:  # episodes saved before sharpness was kept
        return None
    pairs = traj["revisits"]
    if not pairs or pairs[-1][0] != traj["n"] - 1:
        return float("nan")
    truth = float(_arr(traj["sharpness_gt"])[-1])
    return float(_arr(row["sharpness"])[-1]) / truth if truth > 0 else float("nan")


def all_cap(results: dict) -> int | None:
    """The most stored frames the ``all`` strategy attended to: its ``all_cap``, else max_context."""
    cap = results["config"].get("all_cap")
    if cap is not None:
        return int(cap)
    return ((results.get("camera") or {}).get("model_config") or {}).get("max_context")


def _fit_context_cost(results: dict) -> tuple[float, float] | None:
    """(intercept, slope) of ms per frame against the number of context views.

    From the tour when it ran both ``spatial`` (k views) and ``all`` (max_context views): the
    same timer and run as the headline. Otherwise from the generate calls timed at start-up.
    """
    cost = results["summary"]["headline"]["cost"]
    k, views = results["config"]["k"], all_cap(results)
    if "spatial" in cost and "all" in cost and views and views > k:
        slope = (cost["all"]["late_ms"] - cost["spatial"]["late_ms"]) / (views - k)
        return float(cost["spatial"]["late_ms"] - slope * k), float(max(slope, 0.0))
    context_cost = results.get("context_cost")
    if not context_cost or len(context_cost["views"]) < 2:
        return None
    slope, intercept = np.polyfit(context_cost["views"], context_cost["ms"], 1)
    return float(intercept), float(max(slope, 0.0))


def strip_entries(episodes: list[dict], envs: list[str]) -> list[dict[str, Any]]:
    """Which image strips the report shows: the first episode of each env id that has one.

    Returns:
        Per env id, ``{"env", "episode", "file", "strategies", "first", "revisit"}`` (the strip's
        PNG relative to the evaluation folder, its rows, and the frames it compares).
    """
    shown = []
    for env in envs:
        ep = next((ep for ep in episodes if ep["env"] == env and ep.get("strip", {}).get("file")), None)
        if ep is not None:
            shown.append({"env": env, "episode": ep["episode"], **ep["strip"]})
    return shown


def summarize(
    episodes: list[dict], strategies: list[str], cfg: Any, timer: str = "wall", cap: int | None = None
) -> dict[str, Any]:
    """Aggregate episode records into the report's numbers.

    Standard errors are over episodes (each episode's mean is one sample), because frames and
    revisits of one episode are correlated; the revisit-vs-time curve pools revisits per bin
    and its error bars are therefore optimistic.

    Args:
        episodes: records written by :func:`rtfm_env.eval.revisit.run_episode`.
        strategies: the strategies evaluated.
        cfg: the :class:`~rtfm_env.eval.results.RevisitConfig` (its kinds and lengths).
        timer: ``"cpu"`` to measure cost by the evaluating thread's CPU time (valid for a CPU
            model on one torch thread; immune to other jobs' load), ``"wall"`` for wall time.
            Episodes recorded without CPU times fall back to wall time.
        cap: the most stored frames the ``all`` strategy attended to (:func:`all_cap`), when
            known. A cap reached before the early window makes "all must grow" unmeasurable
            there, so that target is left out (the discussion says why).

    Returns:
        ``{"headline", "per_strategy", "revisit_vs_dt", "along", "cost_along"}``.
    """
    kinds = list(cfg.kinds)
    gt = bool(episodes) and episodes[0]["ground_truth"]
    per_strategy: dict[str, dict] = {}
    for s in strategies:
        per_strategy[s] = {}
        for kind in kinds:
            rows = [ep["trajectories"][kind]["strategies"][s] for ep in episodes if kind in ep["trajectories"]]
            stats: dict[str, Any] = {
                "revisits": int(sum(len(r["revisit_psnr"]) for r in rows)),
                "revisit_psnr": _stat([np.nanmean(_arr(r["revisit_psnr"])) for r in rows if r["revisit_psnr"]]),
                "revisit_ssim": _stat([np.nanmean(_arr(r["revisit_ssim"])) for r in rows if r["revisit_ssim"]]),
                "wall_ms_median": (float(np.median(np.concatenate([_arr(r["wall_ms"])[1:] for r in rows])))
                                   if rows else None),
            }
            if gt:
                # Frame 0 is the reset's ground truth for every camera; it says nothing about the camera.
                stats["psnr_gt"] = _stat([np.nanmean(_arr(r["psnr_gt"])[1:]) for r in rows])
                stats["ssim_gt"] = _stat([np.nanmean(_arr(r["ssim_gt"])[1:]) for r in rows])
            per_strategy[s][kind] = stats

    # Revisit consistency against the steps since the first visit, all families pooled.
    revisit_vs_dt: dict[str, dict] = {}
    edges = np.array(DT_EDGES)
    for s in strategies:
        dts, vals = [], []
        for ep in episodes:
            for traj in ep["trajectories"].values():
                pairs = np.array(traj["revisits"], dtype=np.int64).reshape(-1, 2)
                dts.append(pairs[:, 0] - pairs[:, 1])
                vals.append(_arr(traj["strategies"][s]["revisit_psnr"]))
        dt, val = (np.concatenate(dts), np.concatenate(vals)) if dts else (np.zeros(0), np.zeros(0))
        bins = np.digitize(dt, edges) - 1
        stats = [_stat(val[bins == b]) for b in range(len(edges) - 1)]
        revisit_vs_dt[s] = {
            "edges": list(DT_EDGES),
            "mean": [x["mean"] for x in stats],
            "se": [x["se"] for x in stats],
            "n": [x["n"] for x in stats],
        }

    # Mean PSNR against ground truth at each step, per family (trajectories of one family have one length,
    # except out-and-back ones shortened by a blocked move, which are cut to the shortest).
    along: dict[str, dict] = {}
    if gt:
        for s in strategies:
            along[s] = {}
            for kind in kinds:
                rows = [_arr(ep["trajectories"][kind]["strategies"][s]["psnr_gt"]) for ep in episodes
                        if kind in ep["trajectories"]]
                if rows:
                    n = min(len(r) for r in rows)
                    along[s][kind] = [None if np.isnan(v) else round(float(v), 3)
                                      for v in np.nanmean(np.stack([r[:n] for r in rows]), axis=0)]

    # Cost per frame along the tour (the longest trajectory), median over episodes per step.
    cost_along: dict[str, dict] = {}
    cost_head: dict[str, dict] = {}
    tours = [ep["trajectories"]["tour"] for ep in episodes if "tour" in ep["trajectories"]]
    has_cpu = all("cpu_ms" in r for t in tours for r in t["strategies"].values())
    key = "cpu_ms" if timer == "cpu" and has_cpu else "wall_ms"
    if tours:
        for s in strategies:
            rows = [_arr(t["strategies"][s][key]) for t in tours]
            mem = [np.asarray(t["strategies"][s]["memory_frames"]) for t in tours]
            n = min(len(r) for r in rows)
            wall = np.stack([r[:n] for r in rows])  # (episodes, n)
            per_step = np.median(wall, axis=0)
            cost_along[s] = {
                "timer": key,
                "median_ms": [round(float(v), 3) for v in per_step],
                "memory_frames": np.median(np.stack([m[:n] for m in mem]), axis=0).tolist(),
            }
            lo, hi = EARLY
            if n > hi + LATE:
                early = float(np.median(wall[:, lo:hi]))
                late = float(np.median(wall[:, n - LATE :]))
                per_episode = np.median(wall[:, n - LATE :], axis=1) / np.median(wall[:, lo:hi], axis=1)
                cost_head[s] = {
                    "timer": key,
                    "early_steps": [lo, hi],
                    "late_steps": [n - LATE, n],
                    "start_ms": float(np.median(wall[:, 1:4])),  # steps 1-3: 1 to 3 frames stored
                    "early_ms": early,
                    "late_ms": late,
                    "ratio": late / early,
                    "ratio_per_episode": _stat(per_episode),
                    "early_memory_frames": float(np.median(np.stack([m[lo:hi] for m in mem]))),
                    "late_memory_frames": float(np.median(np.stack([m[n - LATE : n] for m in mem]))),
                }

    headline = _headline(episodes, strategies, cost_head, gt, cfg, cap)
    return {
        "headline": headline,
        "per_strategy": per_strategy,
        "revisit_vs_dt": revisit_vs_dt,
        "along": along,
        "cost_along": cost_along,
    }


def _headline(
    episodes: list[dict], strategies: list[str], cost: dict, gt: bool, cfg: Any, cap: int | None = None
) -> dict[str, Any]:
    """The headline numbers and each target's verdict."""
    head: dict[str, Any] = {"excursion_steps": cfg.excursion, "excursion": {}, "excursion_ssim": {}, "cost": cost}
    obb = [ep["trajectories"]["out_and_back"] for ep in episodes if "out_and_back" in ep["trajectories"]]
    values: dict[str, np.ndarray] = {}
    for s in strategies:
        values[s] = np.array([_excursion_revisit(t, s) for t in obb])
        head["excursion"][s] = _stat(values[s])
        head["excursion_ssim"][s] = _stat([_excursion_revisit(t, s, "revisit_ssim") for t in obb])
        if gt:
            head.setdefault("excursion_psnr_gt", {})[s] = _stat([float(_arr(t["strategies"][s]["psnr_gt"])[-1])
                                                                 for t in obb])
            # The same at the anchor (the first visit), where the revisit is compared to.
            head.setdefault("anchor_psnr_gt", {})[s] = _stat(
                [float(_arr(t["strategies"][s]["psnr_gt"])[t["revisits"][-1][1]]) for t in obb if t["revisits"]]
            )
            ratios = [_excursion_sharpness(t, s) for t in obb]
            if ratios and all(r is not None for r in ratios):
                head.setdefault("excursion_sharpness", {})[s] = _stat(ratios)
    targets = []
    if "spatial" in values and len(obb):
        v = head["excursion"]["spatial"]
        targets.append(_target(f"revisit PSNR, spatial, after a {cfg.excursion}-step excursion (dB)",
                               v, TARGETS["excursion_psnr"], ">="))
    if gt and "spatial" in values and len(obb):
        targets.append(_target(f"revisit frame against the ground truth, spatial, after a {cfg.excursion}-step "
                               "excursion (dB)", head["excursion_psnr_gt"]["spatial"], TARGETS["excursion_psnr_gt"],
                               ">="))
        if "spatial" in head.get("excursion_sharpness", {}):
            targets.append(_target("revisit frame's sharpness over the ground truth's, spatial (ratio)",
                                   head["excursion_sharpness"]["spatial"], TARGETS["excursion_sharpness"], ">="))
    if "spatial" in values and "last_k" in values and len(obb):
        diff = _stat(values["spatial"] - values["last_k"])
        head["spatial_minus_last_k"] = diff
        targets.append(_target("revisit PSNR, spatial minus last_k, same revisits (dB)", diff,
                               TARGETS["spatial_over_last_k"], ">="))
    if "spatial" in cost:
        c = cost["spatial"]
        v = {"mean": c["ratio"], "se": c["ratio_per_episode"]["se"], "n": c["ratio_per_episode"]["n"]}
        targets.append(_target(f"cost per frame, spatial, tour steps {c['late_steps'][0]}-{c['late_steps'][1] - 1} "
                               f"over steps {c['early_steps'][0]}-{c['early_steps'][1] - 1} (ratio)", v,
                               TARGETS["spatial_cost_ratio"], "<="))
    if "all" in cost and (cap is None or cap > cost["all"]["early_memory_frames"]):
        c = cost["all"]
        v = {"mean": c["ratio"], "se": c["ratio_per_episode"]["se"], "n": c["ratio_per_episode"]["n"]}
        capped = f"capped at {cap} frames" if cap is not None else "capped at max_context"
        targets.append(_target(f"cost per frame, all ({capped}), same ratio: must grow", v, 1.1, ">"))
    head["targets"] = targets
    head["lines"] = [f"{t['name']}: {_fmt(t['value'], t['se'])} (target {t['op']} {t['target']}: "
                     f"{'met' if t['met'] else 'missed by ' + format(t['gap'], '.2f')})" for t in targets]
    return head


def _target(name: str, stat: dict, target: float, op: str) -> dict[str, Any]:
    value = stat["mean"]
    met = bool(value >= target) if op == ">=" else bool(value <= target) if op == "<=" else bool(value > target)
    gap = 0.0 if met else abs(target - value)
    return {"name": name, "value": value, "se": stat["se"], "n": stat["n"], "target": target, "op": op,
            "met": met, "gap": gap}


def _fmt(mean: float, se: float | None = None, digits: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


# --------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------

_COLOURS = {"spatial": "C0", "last_k": "C1", "first_only": "C2", "all": "C3", "ground_truth": "k"}


def _save(fig: Any, path: Path) -> None:
    """Save ``fig`` as a PNG with a 256-colour palette.

    Plots and 64-pixel frames need few colours; the palette makes the committed plots about a
    third of their RGBA size. No dithering: it would add noise to the frames in the strips.
    """
    import io

    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    buf.seek(0)
    image = Image.open(buf).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    small = io.BytesIO()
    image.save(small, format="PNG", optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, small.getvalue())


def _plot_revisit(summary: dict, strategies: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    edges = np.array(DT_EDGES, dtype=float)
    centres = np.sqrt(edges[:-1] * edges[1:])
    top = 0.0
    for s in strategies:
        d = summary["revisit_vs_dt"][s]
        m, se = np.array(d["mean"], dtype=float), np.array(d["se"], dtype=float)
        ok = ~np.isnan(m)
        label = s
        if s == "ground_truth":
            label = f"ground_truth (identical frames: the {PSNR_CAP:.0f} dB cap)"
        else:
            top = max(top, float(np.nanmax(m + np.nan_to_num(se)))) if ok.any() else top
        ax.errorbar(centres[ok], m[ok], yerr=np.nan_to_num(se[ok]), marker="o", ms=3, capsize=2,
                    label=label, color=_COLOURS.get(s), ls=":" if s == "ground_truth" else "-")
    if top:  # the ground truth's cap would squash the model curves: it stays above the axis
        ax.set_ylim(min(10.0, ax.get_ylim()[0]), top + 3)
    ax.set_xscale("log")
    ax.set_xlabel("steps since the first visit")
    ax.set_ylabel("revisit PSNR, first visit vs revisit (dB)")
    ax.set_title("Revisit consistency against time since the first visit (all families)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def _plot_along(summary: dict, strategies: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    kinds = [k for k in ("out_and_back", "loop", "turn360", "tour") if any(k in summary["along"].get(s, {})
                                                                            for s in strategies)]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(8, 2.4 * len(kinds)), squeeze=False, layout="constrained")
    for ax, kind in zip(axes[:, 0], kinds, strict=True):
        for s in strategies:
            if s == "ground_truth" or kind not in summary["along"].get(s, {}):
                continue
            y = np.array([np.nan if v is None else v for v in summary["along"][s][kind]], dtype=float)
            ax.plot(np.arange(1, len(y)), y[1:], lw=1, label=s, color=_COLOURS.get(s))
        ax.set_title(f"{kind}: PSNR against ground truth along the trajectory (mean over episodes)", fontsize=9)
        ax.set_ylabel("dB")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].legend(fontsize=8, ncol=4)
    _save(fig, path)
    plt.close(fig)


def _plot_cost(summary: dict, strategies: list[str], fit: tuple[float, float] | None, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    mem = None
    for s in strategies:
        d = summary["cost_along"].get(s)
        if not d:
            continue
        y = np.array(d["median_ms"], dtype=float)[1:]
        x = np.arange(1, len(y) + 1)
        # A running median over about a tenth of the step count (even on the log axis; at most 25
        # steps): single frames jitter, and the first steps, where `all` fills its context, stay sharp.
        half = [min(12, i // 10) for i in range(len(y))]
        smooth = np.array([np.median(y[i - h : i + h + 1]) for i, h in enumerate(half)])
        ax.plot(x, smooth, lw=1.2, label=s, color=_COLOURS.get(s))
        mem = np.array(d["memory_frames"], dtype=float)[1:] if s != "ground_truth" else mem
    if fit is not None and mem is not None:
        a, b = fit
        ax.plot(np.arange(1, len(mem) + 1), a + b * mem, "C3--", lw=1,
                label="all, uncapped (extrapolated linearly from the cost per context view)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("step of the tour (frames in memory = step + 1)")
    timer = next(iter(summary["cost_along"].values()))["timer"]
    what = "CPU time of the evaluating thread" if timer == "cpu_ms" else "wall time"
    ax.set_ylabel(f"{what} per frame (ms, running median)", fontsize=8)
    ax.set_title("Cost per frame against trajectory length (tour)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def _plot_strips(results: dict, out: Path, path: Path) -> bool:
    """Draw the strips of ``results["strips"]`` whose PNGs are at hand; True when ``path`` shows strips.

    Without every per-episode PNG (a folder kept without ``episodes/``) an existing plot is kept
    rather than redrawn with fewer env ids.
    """
    import imageio.v2 as imageio
    import matplotlib.pyplot as plt

    entries = results.get("strips") or []
    shown = [s for s in entries if (out / s["file"]).is_file()]
    if len(shown) < len(entries) and path.is_file():
        return True
    if not shown:
        return False
    gt = results["ground_truth_available"]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 0.9 * len(results["strategies"]) + 1),
                             squeeze=False)
    for ax, ep in zip(axes[0], shown, strict=True):
        img = imageio.imread(out / ep["file"])
        ax.imshow(img, interpolation="nearest")
        h = (img.shape[0] + 2) / len(ep["strategies"])
        ax.set_yticks([h * (i + 0.5) - 1 for i in range(len(ep["strategies"]))])
        ax.set_yticklabels(ep["strategies"], fontsize=8)
        cols = ["first visit", "revisit"] + (["ground truth"] if gt else [])
        wcol = (img.shape[1] + 2) / len(cols)
        ax.set_xticks([wcol * (i + 0.5) - 1 for i in range(len(cols))])
        ax.set_xticklabels(cols, fontsize=8)
        ax.set_title(f"{ep['env']} #{ep['episode']}\nframe {ep['first']} vs {ep['revisit']}",
                     fontsize=8)
    _save(fig, path)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------


def _companions(results: dict, out: Path) -> list[tuple[str, dict]]:
    """(path relative to ``out``, results) of the companion evaluations listed in ``results``."""
    found = []
    for rel in results.get("companions", []):
        path = out / rel / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"companion evaluation {out / rel} has no results.json")
        found.append((rel, json.loads(path.read_text())))
    return found


def _target_row(t: dict, run: str) -> list[str]:
    return [t["name"], _fmt(t["value"], t["se"]), f"{t['op']} {t['target']}",
            "met" if t["met"] else f"**missed by {t['gap']:.2f}**", str(t["n"]), run]


#: Columns of the headline table that opens report.md (and that ``rtfm-env eval`` prints).
HEADLINE_HEADER = ("headline", "measured", "target", "verdict", "n", "run")


def _headline_rows(results: dict, companions: list[tuple[str, dict]] | tuple = (), link: bool = False) -> list:
    """The rows of the headline table: this run's targets, then every companion's."""
    rows = [_target_row(t, "this run") for t in results["summary"]["headline"]["targets"]]
    for rel, other in companions:
        run = f"[{rel}]({rel}/report.md)" if link else rel
        rows += [_target_row(t, run) for t in other["summary"]["headline"]["targets"]]
    return rows


def headline_lines(results: dict, out: str | os.PathLike) -> list[str]:
    """The headline table of ``out/report.md`` as plain text lines, one per row, companions included.

    What ``rtfm-env eval revisit`` and ``rtfm-env eval report`` print: the same rows as the
    report's first table (built by the same code), so the terminal and the page cannot disagree.

    Args:
        results: the content of results.json (its ``companions`` are read from ``out``).
        out: the evaluation directory.

    Raises:
        FileNotFoundError: a companion listed in ``results`` has no results.json.
    """
    lines = []
    for name, measured, target, verdict, n, run in _headline_rows(results, _companions(results, Path(out))):
        lines.append(f"{name}: {measured} (target {target}: {verdict.strip('*')}; n = {n}; {run})")
    return lines


def _blocks(results: dict, plots: dict[str, bool], companions: list[tuple[str, dict]] = ()) -> list[tuple]:
    """The report as blocks.

    Blocks: ("h", level, text), ("p", text), ("table", header, rows), ("img", path, alt), ("code", text).
    """
    summ, cfg = results["summary"], results["config"]
    head = summ["headline"]
    strategies = results["strategies"]
    gt = results["ground_truth_available"]
    n_eps = n_episodes(results)
    where = cfg["world"] or ", ".join(results["envs"])
    ck = results["checkpoint"]
    b: list[tuple] = [("h", 1, "Revisit consistency and cost per frame")]
    shown = "none"
    if ck:
        path = Path(ck["path"])
        path = Path(os.path.relpath(path)) if path.is_absolute() and path.is_relative_to(Path.cwd()) else path
        step = f", training step {ck['step']}" if ck.get("step") is not None else ""
        shown = f"`{path.as_posix()}` (weights SHA-256 `{ck['sha256']}`{step})"
    b.append(("p", f"{where}; {cfg['episodes']} episode{'s' if cfg['episodes'] > 1 else ''} per "
                   f"{'world' if cfg['world'] else 'env id'} "
                   f"({n_eps} in all); checkpoint {shown}; mean ± standard error over episodes."))
    if not gt:
        b.append(("p", "**Ground-truth metrics are unavailable**: this is a saved world with no scene to render, "
                       "so only revisit consistency (first visit vs revisit) and cost are reported."))
    rows = _headline_rows(results, companions, link=True)
    if rows:
        b.append(("table", list(HEADLINE_HEADER), rows))
    for rel, other in companions:
        oc = other["config"]
        b.append(("p", f"[{rel}]({rel}/report.md): the same checkpoint (weights SHA-256 "
                       f"`{(other['checkpoint'] or {}).get('sha256', '-')[:12]}…`), families {', '.join(oc['kinds'])}, "
                       f"strategies {', '.join(other['strategies'])}, {n_episodes(other)} episodes"
                       + (f", cost timed by {other.get('cost_timer', 'wall')} time" if "tour" in oc["kinds"] else "")
                       + "."))
    ex = head["excursion"]
    rows = []
    for s in strategies:
        row = [s, _fmt(ex[s]["mean"], ex[s]["se"]), _fmt(head["excursion_ssim"][s]["mean"],
                                                          head["excursion_ssim"][s]["se"], 3)]
        if gt:
            g = head["excursion_psnr_gt"][s]
            row.append(_fmt(g["mean"], g["se"]))
            sh = head.get("excursion_sharpness", {}).get(s)
            row.append(_fmt(sh["mean"], sh["se"]) if sh else "n/a")
        c = head["cost"].get(s)
        row += [_fmt(c["early_ms"]) if c else "n/a", _fmt(c["late_ms"]) if c else "n/a",
                _fmt(c["ratio"], None, 3) if c else "n/a"]
        rows.append(row)
    header = ["strategy", f"revisit PSNR after {head['excursion_steps']} steps (dB)", "revisit SSIM"]
    header += (["PSNR vs GT at the revisit (dB)", "sharpness / GT's at the revisit"] if gt else [])
    header += [f"ms/frame, tour steps {EARLY[0]}-{EARLY[1] - 1}", f"ms/frame, last {LATE} tour steps", "cost ratio"]
    b.append(("table", header, rows))
    b.append(("p", _discussion(results)))

    b.append(("h", 2, "Plots"))
    if plots.get("revisit"):
        b.append(("img", PLOT_FILES["revisit"], "revisit PSNR against steps since the first visit"))
    if plots.get("along"):
        b.append(("img", PLOT_FILES["along"], "PSNR against ground truth along the trajectory"))
    if plots.get("cost"):
        b.append(("img", PLOT_FILES["cost"], "wall time per frame against trajectory length"))
    if plots.get("strips"):
        b.append(("p", "Image strips of the out-and-back anchor: the frame shown at the first visit, at the revisit "
                       f"{head['excursion_steps']} steps later" + (", and the ground truth there." if gt else ".")))
        b.append(("img", PLOT_FILES["strips"], "first visit / revisit / ground truth"))

    b.append(("h", 2, "Per strategy and trajectory family"))
    header = ["strategy", "family", "revisits", "revisit PSNR (dB)", "revisit SSIM"]
    header += (["PSNR vs GT (dB)", "SSIM vs GT"] if gt else []) + ["median ms/frame"]
    rows = []
    for s in strategies:
        for kind, st in summ["per_strategy"][s].items():
            row = [s, kind, str(st["revisits"]), _fmt(st["revisit_psnr"]["mean"], st["revisit_psnr"]["se"]),
                   _fmt(st["revisit_ssim"]["mean"], st["revisit_ssim"]["se"], 3)]
            if gt:
                row += [_fmt(st["psnr_gt"]["mean"], st["psnr_gt"]["se"]),
                        _fmt(st["ssim_gt"]["mean"], st["ssim_gt"]["se"], 3)]
            row.append(_fmt(st["wall_ms_median"]) if st["wall_ms_median"] is not None else "n/a")
            rows.append(row)
    b.append(("table", header, rows))
    if results.get("context_cost"):
        cc = results["context_cost"]
        key, what = ("cpu_ms", "CPU time") if "cpu_ms" in cc else ("ms", "wall time, shared cores")
        b.append(("p", f"One generate call against the number of context views, timed at start-up (median ms, {what}): "
                       + ", ".join(f"{v} view{'s' if v > 1 else ''}: {m:.1f}"
                                   for v, m in zip(cc["views"], cc[key], strict=True))
                       + f". `all` is capped at {all_cap(results)} stored frames."))

    b.append(("h", 2, "Method"))
    b.append(("p", "Trajectory families (rtfm_env/eval/trajectories.py), all through the scene's collision-aware "
                   f"moves: out_and_back ({cfg['lead_in']}-step lead-in, then a random walk out, a turn around, the "
                   f"path retraced and a turn back, so the anchor is revisited {cfg['excursion']} steps after it was "
                   f"first seen), loop (rectangles closed on their first pose, {cfg['loop_steps']} steps), turn360 "
                   f"({cfg['turn_rotations']} full turns in place) and tour ({cfg['tour_steps']} steps along a chain "
                   f"of {cfg['tour_landmarks']} landmarks with side trips, going back and forth between them). A frame "
                   f"revisits the first earlier frame within {cfg['position_tol']} m and {cfg['heading_tol']} deg of "
                   "it, once the camera has left that place. Every strategy sees the same poses and seeds; model "
                   f"cameras use k = {cfg['k']} context views (all: every stored frame, evenly thinned to "
                   f"{all_cap(results)} when more are stored), "
                   "one observe call per frame, and start from the ground-truth frame at the start pose. Revisit "
                   "PSNR compares the frame the camera showed at the first visit with the one it shows at the "
                   f"revisit; identical frames give the {PSNR_CAP:.0f} dB cap. "
                   + ("Cost is the evaluating thread's CPU time per camera call (one torch thread, so other jobs "
                      "on the machine do not change it); medians are used. "
                      if results.get("cost_timer") == "cpu" else
                      "Cost is the wall time of each camera call on this machine, which other jobs share, so it is "
                      "noisy; medians are used. ")
                   + _inference_note(results)))
    b.append(("p", PERCEPTUAL_METRIC_NOTE))
    m = results["machine"]
    b.append(("p", f"Machine: {m['platform']}, {m['cpu_count']} CPUs, torch {m['torch']} "
                   f"({m['torch_threads']} threads), "
                   f"CUDA: {m['cuda'] or 'none'}, 1-min load average at the end: {m['load_average_1min']:.1f}."))
    b.append(("p", "Reproduce:"))
    b.append(("code", _command(cfg)))
    b.append(("p", "The config, the checkpoint hash, the machine and every number on this page are in "
                   "`results.json`; each episode's numbers are in `episodes/<env>/<n>.json` where the folder keeps "
                   "them (or `episodes.tar.xz`), and the command above regenerates them."))
    return b


def _command(cfg: dict) -> str:
    """The command line that reproduces an evaluation: every option that differs from the defaults."""
    defaults = RevisitConfig().__dict__
    parts = ["rtfm-env eval revisit"]
    for key, value in cfg.items():
        if key == "out" or value == defaults.get(key) or value is None:
            continue
        shown = " ".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"--{key.replace('_', '-')} {shown}")
    parts.append(f"--out {cfg['out']}")
    return " ".join(parts)


def _inference_note(results: dict) -> str:
    """How the model cameras ran the network (precision and GELU form), from the saved options."""
    camera = results.get("camera")
    if not camera:
        return ""
    gelu = camera.get("gelu", "tanh")  # evaluations from before the option ran the trained tanh form
    form = "tanh form (as trained)" if gelu == "tanh" else "erf form (within bf16 rounding of the trained tanh form)"
    return (f"The network ran under {camera.get('autocast', 'bfloat16')} autocast with the GELU in its {form}"
            + (", compiled" if camera.get("compile") else "") + ".")


def _all_note(results: dict) -> str:
    """How the `all` strategy's cost grew along the tour, where its cap stopped it, and beyond."""
    cost = results["summary"]["headline"]["cost"]
    c, cap = cost["all"], all_cap(results)
    fit = _fit_context_cost(results)
    text = (f"The `all` strategy attends to every stored frame up to {cap}: its cost per frame goes from "
            f"{c['start_ms']:.1f} ms over steps 1-3 to {c['early_ms']:.1f} ms over steps "
            f"{c['early_steps'][0]}-{c['early_steps'][1] - 1} and {c['late_ms']:.1f} ms at the tour's end "
            f"({c['ratio']:.2f}x), and stops growing once {cap} frames are stored, at the cap")
    if "spatial" in cost:
        text += (f"; at the tour's end it costs {c['late_ms'] / cost['spatial']['late_ms']:.1f}x spatial's "
                 f"k = {results['config']['k']}")
    text += "."
    if cap is not None and cap <= c["early_memory_frames"]:
        text += (f" With the cap at {cap} views it is reached before step {c['early_steps'][0]}, so this run "
                 "cannot show growth over the tour and the 'all must grow' target is left out of its headline; "
                 "`--all-cap` raises the cap.")
    if fit is not None:
        a, b = fit
        text += (f" Attending to every stored frame would keep growing with the memory: at {b:.1f} ms per context "
                 f"view (on top of {a:.1f} ms), {(a + b * c['late_memory_frames']) / 1e3:.1f} s per frame with "
                 f"{c['late_memory_frames']:.0f} frames stored (the dashed line in the cost plot; a linear "
                 "extrapolation, so a lower bound: attention grows with the square of the views).")
    return text


def _discussion(results: dict) -> str:
    """Plain words, with this run's numbers, on each missed target: by how much and why."""
    head = results["summary"]["headline"]
    ex, cost = head["excursion"], head["cost"]
    gt = results["ground_truth_available"]
    notes = []
    for t in head["targets"]:
        if t["met"]:
            continue
        name = t["name"]
        if name.startswith("revisit PSNR, spatial, after"):
            text = (f"Revisit PSNR with spatial memory misses {t['target']:.0f} dB by {t['gap']:.2f} dB. The anchor's "
                    "own frame is in the context of the revisit (retrieval ranks the stored view at the same pose "
                    "first), but the model regenerates the view instead of copying it, so the revisit differs from "
                    "the first visit by part of the model's own error.")
            if gt:
                text += (f" Against the ground truth, spatial's anchor frames score "
                         f"{_fmt(head['anchor_psnr_gt']['spatial']['mean'])} dB and its revisit frames "
                         f"{_fmt(head['excursion_psnr_gt']['spatial']['mean'])} dB.")
            notes.append(text)
        elif name.startswith("revisit PSNR, spatial minus"):
            per = results["summary"]["per_strategy"]
            gaps = {k: per["spatial"][k]["revisit_psnr"]["mean"] - per["last_k"][k]["revisit_psnr"]["mean"]
                    for k in per["spatial"] if per["spatial"][k]["revisits"]}
            by_family = ", ".join(f"{k} {v:+.1f} dB" for k, v in gaps.items() if not math.isnan(v))
            notes.append(f"Spatial memory's advantage over last_k ({_fmt(ex['spatial']['mean'])} vs "
                         f"{_fmt(ex['last_k']['mean'])} dB) misses {t['target']:.0f} dB by {t['gap']:.2f} dB: at the "
                         "out-and-back revisit last_k's context is the closing half turn, frames taken at the same "
                         "spot 15 and 30 degrees away that already show most of the view. Over all revisits of each "
                         f"family, spatial minus last_k is: {by_family}.")
        elif name.startswith("cost per frame, spatial"):
            c = cost["spatial"]
            what = "the thread's CPU time" if c["timer"] == "cpu_ms" else "wall time on cores other jobs share"
            notes.append(f"Spatial memory's cost per frame ({what}) goes from {c['early_ms']:.1f} ms "
                         f"({c['early_memory_frames']:.0f} frames stored) to {c['late_ms']:.1f} ms "
                         f"({c['late_memory_frames']:.0f} frames): ratio {c['ratio']:.2f}, {t['gap']:.2f} over the "
                         f"{t['target']} target.")
        elif name.startswith("cost per frame, all"):
            notes.append(_all_note(results))
    if "all" in cost and not any(t["name"].startswith("cost per frame, all") and not t["met"] for t in head["targets"]):
        notes.append(_all_note(results))
    if (gt and "spatial" in head.get("excursion_psnr_gt", {})
            and not math.isnan(head["excursion_psnr_gt"]["spatial"]["mean"])):
        # Consistency is measured against the first visit; say how far both frames are from the truth.
        notes.append(f"Revisit PSNR measures consistency with the first visit, not accuracy: against the ground "
                     f"truth, spatial memory's frames score {_fmt(head['anchor_psnr_gt']['spatial']['mean'])} dB at "
                     f"the anchor and {_fmt(head['excursion_psnr_gt']['spatial']['mean'])} dB at the revisit.")
    missed = any(not t["met"] for t in head["targets"])
    return " ".join(notes if missed or not head["targets"] else ["Every headline target is met.", *notes])


def _md(blocks: list[tuple]) -> str:
    out = []
    for blk in blocks:
        if blk[0] == "h":
            out.append("#" * blk[1] + " " + blk[2])
        elif blk[0] == "p":
            out.append(blk[1])
        elif blk[0] == "table":
            header, rows = blk[1], blk[2]
            out.append("\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                                 + ["| " + " | ".join(r) + " |" for r in rows]))
        elif blk[0] == "img":
            out.append(f"![{blk[2]}]({blk[1]})")
        elif blk[0] == "code":
            out.append("    " + blk[1])
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    """Markdown's **bold** and `code` in escaped HTML."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"\[(.+?)\]\((.+?)\.md\)", r'<a href="\2.html">\1</a>', text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html(blocks: list[tuple]) -> str:
    body = []
    for blk in blocks:
        if blk[0] == "h":
            body.append(f"<h{blk[1]}>{_inline_html(blk[2])}</h{blk[1]}>")
        elif blk[0] == "p":
            body.append(f"<p>{_inline_html(blk[1])}</p>")
        elif blk[0] == "table":
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in blk[1])
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in blk[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif blk[0] == "img":
            body.append(f'<p><img src="{html.escape(blk[1])}" alt="{html.escape(blk[2])}"></p>')
        elif blk[0] == "code":
            body.append(f"<pre><code>{html.escape(blk[1])}</code></pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;font-size:13px}"
             "th{background:#eee}img{max-width:100%}")
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Revisit consistency</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(results: dict, out: str | os.PathLike) -> None:
    """Draw the plots under ``out/plots`` and write ``out/report.md`` and ``out/report.html``.

    Args:
        results: the content of results.json (what :func:`rtfm_env.eval.revisit.evaluate` saves);
            episode records are not needed.
        out: the evaluation directory.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out)
    summ, strategies = results["summary"], results["strategies"]
    plots = {}
    if any(any(n for n in summ["revisit_vs_dt"][s]["n"]) for s in strategies):
        _plot_revisit(summ, strategies, out / PLOT_FILES["revisit"])
        plots["revisit"] = True
    if any(s != "ground_truth" for s in summ["along"]):  # the ground truth alone is a flat line at the cap
        _plot_along(summ, strategies, out / PLOT_FILES["along"])
        plots["along"] = True
    if summ["cost_along"]:
        _plot_cost(summ, strategies, _fit_context_cost(results), out / PLOT_FILES["cost"])
        plots["cost"] = True
    plots["strips"] = _plot_strips(results, out, out / PLOT_FILES["strips"])
    blocks = _blocks(results, plots, _companions(results, out))
    atomic_write_bytes(out / "report.md", _md(blocks).encode())
    atomic_write_bytes(out / "report.html", _html(blocks).encode())
