"""What every benchmark script shares: where it ran, and how it writes its results."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import TypeVar

from rtfm_env.data.shards import atomic_write_bytes
from rtfm_env.provenance import machine_info

__all__ = ["machine_info", "write_atomic", "parse_config"]

C = TypeVar("C")


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, creating parents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def parse_config(cls: type[C], doc: str, argv: list[str] | None = None) -> C:
    """A benchmark's command line generated from its config dataclass: one ``--field-name`` per field."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    defaults = cls()
    for f in fields(cls):
        default = getattr(defaults, f.name)
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(default), default=default)
    return cls(**vars(parser.parse_args(argv)))
