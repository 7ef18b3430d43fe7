"""Fuzzing frame-model checkpoints: mutations of a tiny saved checkpoint's config.json and weights.

Each mutated checkpoint directory is loaded with :func:`rtfm_env.model.checkpoint.load_checkpoint`.
A load that succeeds must give the saved network: the same config (apart from the fields the
checkpoint module documents as overridable) and the same weights; anything else is a corrupt
checkpoint accepted silently. A config asking for a huge network must be refused before any
allocation (the worker's address-space limit turns such an allocation into a process death).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from fuzzlib import Case, SilentAcceptance
from mutate import byte_mutation, header_entry_edit, join, json_value, split


def setup(workdir: Path) -> dict[str, Any]:
    """Save a tiny checkpoint (the T model on 16x16 frames)."""
    import torch

    from rtfm_env.model.checkpoint import save_checkpoint
    from rtfm_env.model.network import FrameNetwork, model_config

    torch.manual_seed(0)
    net = FrameNetwork(model_config("T", height=16, width=16, patch=4))
    src = workdir / "original"
    save_checkpoint(src, net, extra={"step": 1})
    return {"dir": workdir, "src": src, "config": asdict(net.config),
            "state": {k: v.detach().clone() for k, v in net.state_dict().items()}}


def _config_edit(rng: np.random.Generator, cfg: dict[str, Any]) -> tuple[str, bool | None]:
    """Edit config.json's dict in place; returns (description, valid)."""
    kind = str(rng.choice(["format_version", "weights", "model_field", "model_field", "model_special", "format",
                           "drop_field", "add_field", "overridable"]))
    if kind == "format_version":
        value = [0, -1, True, "1", 99, 1.0, None, 2, [1]][int(rng.integers(0, 9))]
        cfg["format_version"] = value
        return f"format_version := {value!r}", False
    if kind == "weights":
        w = cfg.get("weights")
        choice = int(rng.integers(0, 7))
        if choice == 0:
            cfg["weights"] = "x"
        elif choice == 1:
            cfg["weights"] = {}
        elif choice == 2:
            w.pop("bytes", None)
        elif choice == 3:
            w.pop("sha256", None)
        elif choice == 4:
            w["bytes"] = int(w["bytes"]) + int(rng.choice([-1, 1, 10**12]))
        elif choice == 5:
            w["sha256"] = "0" * 64
        else:
            w["file"] = str(rng.choice(["../original/model.safetensors", "/etc/passwd", "config.json", ""]))
        return f"weights edit {choice}: {cfg['weights']!r:.80}", False
    mc = cfg["model_config"]
    if kind == "model_field":
        key = sorted(mc)[int(rng.integers(0, len(mc)))]
        value = json_value(rng)
        if value == mc[key] and type(value) is type(mc[key]):
            return f"model_config.{key} := {value!r} (unchanged)", True
        same_number = (not isinstance(value, bool) and not isinstance(mc[key], bool)
                       and isinstance(value, (int, float)) and value == mc[key])
        mc[key] = value
        if same_number:  # 0 for 0.0: JSON does not tell them apart; the value is unchanged
            return f"model_config.{key} := {value!r} (same number)", None
        return f"model_config.{key} := {value!r}", None if key in _overridable() else False
    if kind == "model_special":
        key, value = [("dim", 65536), ("depth", 10**6), ("height", 10**5), ("width", 32), ("patch", 3),
                      ("pos_embed", not mc.get("pos_embed", True)), ("max_context", 10**9), ("heads", 7),
                      ("height", 32), ("dim", 128), ("qk_norm", not mc.get("qk_norm", True)),
                      ("mlp_ratio", 8.0), ("max_context", 2)][int(rng.integers(0, 13))]
        mc[key] = value
        return f"model_config.{key} := {value!r}", False
    if kind == "format":
        cfg["format"] = str(rng.choice(["", "rtfm-frame-model2", "safetensors"]))
        return f"format := {cfg['format']!r}", False
    if kind == "drop_field":
        key = sorted(mc)[int(rng.integers(0, len(mc)))]
        del mc[key]
        return f"model_config drops {key}", None  # old configs lack new fields: the default must equal the saved
    if kind == "add_field":
        mc["bogus"] = 1
        return "model_config.bogus := 1", False
    key = _overridable()[int(rng.integers(0, len(_overridable())))]
    value = {"sample_steps": [1, 2, 8, 0, -1, True, 10**9, 1.5], "sample_sigma": [0.0, 0.1, -0.1, float("nan"), 1e308,
                                                                                   True]}.get(key, [1])
    v = value[int(rng.integers(0, len(value)))]
    mc[key] = v
    ok = (key == "sample_steps" and type(v) is int and 1 <= v <= 64) or (
        key == "sample_sigma" and type(v) is float and 0.0 <= v <= 1.0)
    return f"model_config.{key} := {v!r} (overridable)", True if ok else False


def _overridable() -> tuple[str, ...]:
    from rtfm_env.model import checkpoint

    return tuple(getattr(checkpoint, "OVERRIDABLE_FIELDS", ()))


def make_case(rng: np.random.Generator, index: int, ctx: dict[str, Any]) -> Case:
    """One mutated checkpoint directory to load."""
    src: Path = ctx["src"]
    case_dir = Path(ctx["dir"]) / f"case{index}"
    cfg = json.loads((src / "config.json").read_text())
    weights = (src / "model.safetensors").read_bytes()
    r = rng.random()
    valid: bool | None = False
    config_text = None
    if r < 0.55:
        what, valid = _config_edit(rng, cfg)
        config_text = json.dumps(cfg, indent=2)
    elif r < 0.6:
        text = (src / "config.json").read_text()
        cut = int(rng.integers(0, len(text)))
        config_text = text[:cut]
        what = f"config.json truncated to {cut} characters"
        if text[:cut].strip() == text.strip():
            valid = True  # only trailing white space cut
    elif r < 0.85:
        what, weights = byte_mutation(rng, weights)
    else:
        header, payload = split(weights)
        what = header_entry_edit(rng, header)
        weights = join(header, payload)
    if weights == (src / "model.safetensors").read_bytes() and config_text is None:
        valid = True

    def run() -> None:
        import torch

        from rtfm_env.model.checkpoint import load_checkpoint

        shutil.copytree(src, case_dir)
        try:
            if config_text is not None:
                (case_dir / "config.json").write_text(config_text)
            (case_dir / "model.safetensors").write_bytes(weights)
            ckpt = load_checkpoint(case_dir)
            got = asdict(ckpt.config)
            diff = [k for k in set(got) | set(ctx["config"]) if k not in _overridable()
                    and got.get(k) != ctx["config"].get(k)]
            state = ckpt.model.state_dict()
            bad = [k for k, v in ctx["state"].items() if k not in state or not torch.equal(state[k].float(), v.float())]
            if diff or bad or set(state) != set(ctx["state"]):
                raise SilentAcceptance(f"{what}: loaded without error, but config fields {sorted(diff)} and "
                                       f"{len(bad)} weight tensors differ from what was saved")
        finally:
            shutil.rmtree(case_dir, ignore_errors=True)

    return Case(what, valid, run)
