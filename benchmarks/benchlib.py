"""What every benchmark script shares: where it ran, and how it writes its results."""

from __future__ import annotations

from pathlib import Path

from rtfm_env.data.shards import atomic_write_bytes
from rtfm_env.provenance import machine_info

__all__ = ["machine_info", "write_atomic"]


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, creating parents."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
