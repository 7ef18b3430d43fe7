"""Fuzzing training shards: mutations of a small recording's shard file and manifest.

A mutated recording is opened the way training opens it, :class:`PosedFrameDataset` with
``verify=True`` (the manifest's SHA-256 of each shard is checked when the shard is opened), and
every sample is read. A recording that opens must give exactly the samples the original gives;
anything else is a corrupt shard accepted silently.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from fuzzlib import Case, SilentAcceptance
from mutate import byte_mutation, header_entry_edit, join, json_value, split

RES = 16
ENV_ID = "MiniWorld-OneRoom-v0"


def _write(root: Path) -> str:
    from rtfm_env.data import shards as sh
    from rtfm_env.geometry import Intrinsics, RobotState

    rng = np.random.default_rng(0)
    n = 12
    states = [RobotState(0.25 * i, 0.1 * i, 0.2 * i) for i in range(n)]
    episode = sh.Episode(
        info=sh.EpisodeInfo(0, seed=0, trajectory_seed=0, kind="random_walk", n_frames=n),
        frames=rng.integers(0, 256, size=(n, RES, RES, 3), dtype=np.uint8),
        poses=np.stack([s.pose() for s in states]),
        states=np.stack([s.as_array() for s in states]),
        actions=np.r_[-1, np.ones(n - 1, dtype=int)],
        collided=np.zeros(n, dtype=bool),
        depth=rng.uniform(0.5, 5.0, size=(n, RES, RES)).astype(np.float32),
    )
    root.mkdir(parents=True)
    name = sh.shard_name(ENV_ID, 0)
    entry = sh.write_shard(root / name, [episode], env_id=ENV_ID, split="train", shard_index=0,
                           intrinsics=Intrinsics(RES, RES, 60.0))
    sh.write_manifest(root, sh.Manifest(split="train", config={"note": "fuzz"}, shards=[entry], complete=True))
    return name


def _samples(root: Path) -> list[dict[str, Any]]:
    from rtfm_env.data.dataset import PosedFrameDataset

    ds = PosedFrameDataset(root, split="train", verify=True, seed=0)
    out = []
    for i in range(len(ds)):
        item = ds[i]
        out.append({k: (v.numpy() if hasattr(v, "numpy") else v) for k, v in item.items()})
    return out


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if set(x) != set(y):
            return False
        for k in x:
            u, v = x[k], y[k]
            if isinstance(u, np.ndarray):
                if u.shape != v.shape or not np.array_equal(u, v, equal_nan=u.dtype.kind == "f"):
                    return False
            elif u != v:
                return False
    return True


def setup(workdir: Path) -> dict[str, Any]:
    """Write the reference recording and read its samples."""
    root = workdir / "original"
    name = _write(root)
    return {"dir": workdir, "root": root, "name": name, "samples": _samples(root)}


def _manifest_edit(rng: np.random.Generator, manifest: dict[str, Any]) -> str:
    entries = manifest.get("shards") or [{}]
    entry = entries[0]
    key = str(rng.choice(["sha256", "bytes", "frames", "env_id", "split", "complete", "version", "episodes", "path",
                          "top_split", "shards"]))
    value = json_value(rng)
    if key == "top_split":
        manifest["split"] = rng.choice(["heldout", "", "TRAIN", 5])
        return f"manifest split := {manifest['split']!r}"
    if key == "shards":
        manifest["shards"] = value
        return f"manifest shards := {value!r}"
    if key == "complete":
        manifest["complete"] = value
        return f"manifest complete := {value!r}"
    if key == "version":
        for k in list(manifest):
            if "version" in k:
                manifest[k] = value
        return f"manifest version := {value!r}"
    target = next((k for k in entry if key in k), key)
    entry[target] = value
    return f"manifest shard entry {target} := {value!r}"


def make_case(rng: np.random.Generator, index: int, ctx: dict[str, Any]) -> Case:
    """One mutated recording to open and read."""
    src: Path = ctx["root"]
    shard_bytes = (src / ctx["name"]).read_bytes()
    manifest = json.loads((src / "manifest.json").read_text())
    r = rng.random()
    new_shard, new_manifest = shard_bytes, None
    if r < 0.5:
        what, new_shard = byte_mutation(rng, shard_bytes)
    elif r < 0.62:
        header, payload = split(shard_bytes)
        what = header_entry_edit(rng, header)
        new_shard = join(header, payload)
    elif r < 0.75:
        header, payload = split(shard_bytes)
        meta = header.get("__metadata__", {})
        key = sorted(meta)[0] if meta else "x"
        try:
            inner = json.loads(meta[key])
            field = sorted(inner)[int(rng.integers(0, len(inner)))]
            inner[field] = json_value(rng)
            meta[key] = json.dumps(inner)
            what = f"shard metadata {field} := {inner[field]!r}"
        except (KeyError, ValueError, TypeError):
            meta[key] = "{"
            what = "shard metadata := '{'"
        new_shard = join(header, payload)
    else:
        what = _manifest_edit(rng, manifest)
        new_manifest = json.dumps(manifest)
    valid: bool | None = False
    if new_shard == shard_bytes and (new_manifest is None or json.loads(new_manifest) == json.loads(
            (src / "manifest.json").read_text())):
        valid = True

    def run() -> None:
        case = Path(ctx["dir"]) / f"case{index}"
        shutil.copytree(src, case)
        try:
            (case / ctx["name"]).write_bytes(new_shard)
            if new_manifest is not None:
                (case / "manifest.json").write_text(new_manifest)
            got = _samples(case)
            if not _same(got, ctx["samples"]):
                raise SilentAcceptance(f"{what}: the recording opened without error but its samples differ")
        finally:
            shutil.rmtree(case, ignore_errors=True)

    return Case(what, valid if valid else None if new_manifest is not None else valid, run)
