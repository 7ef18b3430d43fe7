"""Byte-level and header-level mutations of safetensors files, shared by the file interfaces."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

#: numpy dtypes of the safetensors dtype codes used here.
ST_DTYPES = {"U8": np.uint8, "I8": np.int8, "I32": np.int32, "I64": np.int64, "F16": np.float16,
             "F32": np.float32, "F64": np.float64, "BF16": np.uint16, "BOOL": np.bool_}


def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header dict, payload bytes) of a safetensors file."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any], payload: bytes) -> bytes:
    """A safetensors file from a header dict and payload (the header padded to 8 bytes)."""
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + payload


def tensor(header: dict[str, Any], payload: bytes, name: str) -> np.ndarray:
    """A copy of tensor ``name`` of a split file."""
    e = header[name]
    a, b = e["data_offsets"]
    return np.frombuffer(payload[a:b], dtype=ST_DTYPES[e["dtype"]]).reshape(e["shape"]).copy()


def put_tensor(header: dict[str, Any], payload: bytes, name: str, value: np.ndarray) -> bytes:
    """``payload`` with tensor ``name`` overwritten in place by ``value`` (same dtype and size)."""
    e = header[name]
    a, b = e["data_offsets"]
    raw = np.ascontiguousarray(value, dtype=ST_DTYPES[e["dtype"]]).tobytes()
    assert len(raw) == b - a, (name, len(raw), b - a)
    return payload[:a] + raw + payload[b:]


def header_offset(data: bytes) -> int:
    """Where the payload starts."""
    return 8 + int.from_bytes(data[:8], "little")


def byte_mutation(rng: np.random.Generator, data: bytes) -> tuple[str, bytes]:
    """A random low-level damage of ``data``; returns (description, new bytes).

    Bit flips (header or payload), truncation, appended bytes, a rewritten header length, or a
    zeroed block.
    """
    kind = rng.choice(["flip_payload", "flip_payload", "flip_header", "truncate", "append", "length", "zero_block"])
    start = header_offset(data)
    b = bytearray(data)
    if kind in ("flip_payload", "flip_header"):
        lo, hi = (start, len(b)) if kind == "flip_payload" and start < len(b) else (8, start)
        n = int(rng.integers(1, 9))
        where = sorted(int(x) for x in rng.integers(lo, hi, size=n))
        for pos in where:
            b[pos] ^= 1 << int(rng.integers(0, 8))
        return f"{kind} x{n} at bytes {where[:4]}", bytes(b)
    if kind == "truncate":
        cut = int(rng.integers(0, len(b)))
        return f"truncate to {cut} of {len(b)} bytes", bytes(b[:cut])
    if kind == "append":
        extra = rng.integers(0, 256, size=int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
        return f"append {len(extra)} bytes", bytes(b) + extra
    if kind == "length":
        value = int(rng.choice([0, 1, 7, start - 9, start - 7, start + 8, len(b), 2**32, 2**63 - 1, 2**64 - 1]))
        value = max(0, min(value, 2**64 - 1))
        return f"header length field := {value}", value.to_bytes(8, "little") + bytes(b[8:])
    lo = int(rng.integers(0, len(b)))
    hi = min(len(b), lo + int(rng.integers(1, 256)))
    b[lo:hi] = bytes(hi - lo)
    return f"zero bytes {lo}..{hi}", bytes(b)


#: Hostile scalar values for JSON fields.
JSON_VALUES: list[Any] = [None, True, False, 0, -1, 1, 2, 3, 255, 2**31, 2**53 + 1, 10**30, -(10**30), 0.5, -0.0,
                          1e-307, 1e308, float("nan"), float("inf"), "", "x", "3", "1e400", [], {}, [1, 2], {"a": 1}]


def json_value(rng: np.random.Generator) -> Any:
    """One hostile JSON value."""
    return JSON_VALUES[int(rng.integers(0, len(JSON_VALUES)))]


def header_entry_edit(rng: np.random.Generator, header: dict[str, Any]) -> str:
    """Edit one tensor entry of ``header`` in place (dtype, shape or offsets); returns a description."""
    names = [k for k in header if k != "__metadata__"]
    name = names[int(rng.integers(0, len(names)))]
    e = header[name]
    field = rng.choice(["dtype", "shape", "data_offsets", "drop", "dup"])
    if field == "dtype":
        e["dtype"] = str(rng.choice(["U8", "I64", "F64", "F16", "F32", "BOOL", "X9", "I32"]))
        return f"{name}.dtype := {e['dtype']}"
    if field == "shape":
        shape = list(e["shape"])
        choice = int(rng.integers(0, 4))
        if choice == 0 and shape:
            i = int(rng.integers(0, len(shape)))
            shape[i] = int(rng.choice([0, 1, shape[i] + 1, 2**31, 2**40, -1]))
        elif choice == 1:
            shape = [*shape, 1]
        elif choice == 2:
            shape = shape[:-1]
        else:
            shape = [2**20, 2**20, 2**20]
        e["shape"] = shape
        return f"{name}.shape := {shape}"
    if field == "data_offsets":
        a, b = e["data_offsets"]
        new = [a, b]
        new[int(rng.integers(0, 2))] += int(rng.choice([-8, -1, 1, 8, 2**40]))
        e["data_offsets"] = new
        return f"{name}.data_offsets := {new}"
    if field == "drop":
        del header[name]
        return f"drop tensor {name}"
    header[name + "_copy"] = dict(e)
    return f"duplicate tensor entry {name}"


def apply(rng: np.random.Generator, data: bytes, edits: list[Callable[[np.random.Generator, bytes], tuple[str, bytes]]]
          ) -> tuple[str, bytes]:
    """Apply one of ``edits`` at random."""
    return edits[int(rng.integers(0, len(edits)))](rng, data)
