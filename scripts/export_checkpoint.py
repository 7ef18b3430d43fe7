"""Export a training checkpoint as a shippable one: bf16 weights, sampler settings chosen.

    .venv/bin/python scripts/export_checkpoint.py runs/v2/last rtfm_env/model/checkpoints/default \
        --sample-steps 4 --dtype bfloat16

The source is any checkpoint directory (``runs/NAME/last`` holds the EMA weights of the newest
step); the weights are loaded as saved, the config keeps every trained field, and only the
sampler fields given here change (the ones a checkpoint may override,
``rtfm_env.model.checkpoint.OVERRIDABLE_FIELDS``). The training record (step, wall time, data
hash, train config) is kept and the source noted. ``save_checkpoint`` writes the destination
atomically.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from rtfm_env.model.checkpoint import SAVE_DTYPES, load_checkpoint, save_checkpoint


def main(argv: list[str] | None = None) -> int:
    """Export ``source`` to ``dest``; returns the exit status."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("source", type=Path, help="checkpoint directory to export")
    p.add_argument("dest", type=Path, help="checkpoint directory to write")
    p.add_argument("--dtype", choices=sorted(SAVE_DTYPES), default="bfloat16", help="stored weight dtype")
    p.add_argument("--sample-steps", type=int, help="Euler steps per frame (default: keep)")
    p.add_argument("--sample-sigma", type=float, help="flow-start noise at sampling (default: keep)")
    p.add_argument("--keep-warp", choices=("true", "false"),
                   help="keep the warp where a context view covers the pixel (default: keep the setting)")
    args = p.parse_args(argv)
    ck = load_checkpoint(args.source)
    keep_warp = None if args.keep_warp is None else args.keep_warp == "true"
    changes = {k: v for k, v in (("sample_steps", args.sample_steps), ("sample_sigma", args.sample_sigma),
                                 ("keep_warp", keep_warp)) if v is not None}
    config = replace(ck.config, **changes)
    ck.model.config = config
    extra = {**ck.extra, "exported_from": str(args.source), "export_changes": changes}
    save_checkpoint(args.dest, ck.model, config, extra, dtype=args.dtype)
    print(f"exported {args.source} -> {args.dest} ({args.dtype}; {changes or 'sampler unchanged'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
