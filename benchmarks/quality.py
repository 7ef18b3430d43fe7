"""Frame-model quality on the public held-out worlds: PSNR/SSIM against ground truth.

For samples drawn from recorded held-out episodes (YMaze, WallGap, Sign; never trained on),
with the target 1-4 steps from each of its 2 context views, it scores:

* the model: ``FrameModel.generate`` from the 2 posed context views;
* copy: the context frame nearest to the target pose (distance + rotation, as the model's
  flow start uses);
* mean: the pixel mean of the context frames.

and then PSNR of the model against the number of context views (1, 2, 4, 8), drawn from the
frames within 4 steps of the target, which moves the task from extrapolation towards
reconstruction. Only samples where the camera moved (the target pose differs from every
context pose) count. Writes JSON (config, machine, per-method means with standard errors) and a
PNG grid (context views | copy | model | ground truth).

    .venv/bin/rtfm-env record --split heldout --episodes 16 --out data/heldout
    .venv/bin/python benchmarks/quality.py --checkpoint rtfm_env/model/checkpoints/default \
        --data data/heldout --samples 512 --out docs/results/quality.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from benchlib import machine_info, write_atomic
from tqdm import tqdm

from rtfm_env.data.dataset import PosedFrameDataset
from rtfm_env.eval.metrics import psnr, ssim
from rtfm_env.geometry import Intrinsics
from rtfm_env.model import FrameModel, nearest_context


@dataclass
class QualityConfig:
    """What the benchmark measures."""

    checkpoint: str = "rtfm_env/model/checkpoints/default"  # checkpoint directory
    data: str = "data/heldout"  # a held-out recording (rtfm-env record --split heldout)
    samples: int = 512  # (context, target) samples per measurement
    batch: int = 32  # targets per generate call
    steps: int | None = None  # sampling steps; None: the model's default
    sample_sigma: float | None = None  # start-noise std when sampling; None: the model's default
    gelu: str | None = None  # the network's GELU form ("tanh" as trained, "none" = erf); None: the default
    min_gap: int = 1  # fewest steps between target and a context view
    max_gap: int = 4  # most steps between target and a context view
    context_sweep: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # views for the sweep
    seed: int = 0  # dataset draw and flow noise
    threads: int = 0  # torch threads; 0 keeps torch's default
    out: str = "runs/quality.json"  # JSON path; the PNG grid goes beside it


def _draw(ds: PosedFrameDataset, n: int, seed: int) -> list[dict]:
    """``n`` samples where the target pose differs from every context pose."""
    rng = np.random.default_rng(seed)
    picked: list[dict] = []
    for i in rng.permutation(len(ds)):
        item = ds[int(i)]
        moved = [not np.allclose(p, item["target_pose"], atol=1e-6) for p in item["context_poses"]]
        if all(moved):
            picked.append(item)
        if len(picked) == n:
            break
    return picked


def _score(model: FrameModel, items: list[dict], cfg: QualityConfig, intr: Intrinsics) -> dict[str, list]:
    gen = torch.Generator().manual_seed(cfg.seed)
    out: dict[str, list] = {"model": [], "copy": [], "mean": [], "model_ssim": [], "copy_ssim": [], "mean_ssim": []}
    frames_out = []
    for s in tqdm(range(0, len(items), cfg.batch), desc="generate", unit="batch", leave=False):
        chunk = items[s : s + cfg.batch]
        ctx = np.stack([it["context_frames"] for it in chunk])  # (B, K, H, W, 3)
        ctx_poses = np.stack([it["context_poses"] for it in chunk])  # (B, K, 4, 4)
        tgt_poses = np.stack([it["target_pose"] for it in chunk])  # (B, 4, 4)
        gen_frames = model.generate(tgt_poses, ctx, ctx_poses, intr, steps=cfg.steps, generator=gen)
        nearest = nearest_context(tgt_poses, ctx_poses, None, model.config.nearest_rotation_weight).numpy()
        for j, it in enumerate(chunk):
            gt = np.asarray(it["target_frame"])
            copy = ctx[j, nearest[j]]
            mean = np.round(ctx[j].astype(np.float64).mean(0)).astype(np.uint8)
            for name, img in (("model", gen_frames[j]), ("copy", copy), ("mean", mean)):
                out[name].append(psnr(img, gt))
                out[f"{name}_ssim"].append(ssim(img, gt))
            frames_out.append((ctx[j], copy, gen_frames[j], gt))
    out["_frames"] = frames_out
    return out


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()),
        "stderr": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0,
        "n": len(v),
    }


def _grid(path: Path, frames: list[tuple], rows: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = min(rows, len(frames))
    k = frames[0][0].shape[0]
    cols = k + 3
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    titles = [f"context {i + 1}" for i in range(k)] + ["copy nearest", "model", "ground truth"]
    for r in range(rows):
        ctx, copy, gen, gt = frames[r]
        for c, img in enumerate(list(ctx) + [copy, gen, gt]):
            ax = axes[r][c]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def main(cfg: QualityConfig) -> dict:
    """Run the benchmark and write its JSON and PNG; returns the result dict."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    model = FrameModel.from_pretrained(cfg.checkpoint, gelu=cfg.gelu)
    if cfg.sample_sigma is not None:
        model.network.config = dataclasses.replace(model.config, sample_sigma=cfg.sample_sigma)
    ds = PosedFrameDataset(
        cfg.data, split="heldout", n_context=2, min_gap=cfg.min_gap, max_gap=cfg.max_gap, seed=cfg.seed
    )
    intr = ds.intrinsics
    items = _draw(ds, cfg.samples, cfg.seed)
    scores = _score(model, items, cfg, intr)
    frames = scores.pop("_frames")
    result = {
        "benchmark": "quality",
        "config": asdict(cfg),
        "model_config": asdict(model.config),
        "machine": machine_info(),
        "data_envs": sorted({it["env_id"] for it in items}),
        "two_views": {name: _summary(v) for name, v in scores.items()},
    }
    sweep = {}
    for n in tqdm(cfg.context_sweep, desc="context sweep", unit="K"):
        ds_n = PosedFrameDataset(
            cfg.data,
            split="heldout",
            n_context=n,
            n_candidates=max(8, n),
            min_gap=cfg.min_gap,
            max_gap=cfg.max_gap,
            seed=cfg.seed,
        )
        s = _score(model, _draw(ds_n, cfg.samples, cfg.seed + 1), cfg, intr)
        s.pop("_frames")
        sweep[str(n)] = {"model": _summary(s["model"]), "copy": _summary(s["copy"]), "mean": _summary(s["mean"])}
    result["context_sweep"] = sweep
    m, c = result["two_views"]["model"]["mean"], result["two_views"]["copy"]["mean"]
    result["model_minus_copy_db"] = m - c
    result["seconds"] = time.perf_counter() - t0
    out = Path(cfg.out)
    write_atomic(out, json.dumps(result, indent=2))
    _grid(out.with_suffix(".png"), frames)
    return result


def _parse() -> QualityConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = QualityConfig()
    for f in QualityConfig.__dataclass_fields__.values():
        d = getattr(defaults, f.name)
        if isinstance(d, list):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=int, nargs="+", default=d)
        elif f.name == "gelu":
            p.add_argument("--gelu", choices=["tanh", "none"], default=None)
        elif f.name in ("steps", "sample_sigma"):
            p.add_argument(f"--{f.name.replace('_', '-')}", type=int if f.name == "steps" else float, default=None)
        else:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=type(d), default=d)
    return QualityConfig(**vars(p.parse_args()))


if __name__ == "__main__":
    r = main(_parse())
    tv, c = r["two_views"], r["config"]
    print(f"held-out {r['data_envs']}: {tv['model']['n']} samples, targets {c['min_gap']}-{c['max_gap']} steps away")
    for name in ("model", "copy", "mean"):
        m, se, ss = tv[name]["mean"], tv[name]["stderr"], tv[name + "_ssim"]["mean"]
        print(f"  {name:5s}: PSNR {m:.2f} ± {se:.2f} dB   SSIM {ss:.3f}")
    print(f"  model - copy: {r['model_minus_copy_db']:+.2f} dB")
    for n, s in r["context_sweep"].items():
        m, cp, mn = s["model"]["mean"], s["copy"]["mean"], s["mean"]["mean"]
        print(f"  {n} views: model {m:.2f} dB, copy {cp:.2f} dB, mean {mn:.2f} dB")
