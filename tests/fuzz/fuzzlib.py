"""The fuzz harness: seeded cases, outcome classification and the worker processes that run them.

A *case* is one generated input to one interface. Each interface module (``iface_*.py`` here)
has ``setup(workdir) -> context`` and ``make_case(rng, index, context) -> Case``; cases are a
pure function of (seed, index), so a run can be resumed after its worker died and any failure
reproduced from the line that reports it.

Every case ends in one outcome:

- ``accepted``: a valid input (or a harmless one) was accepted;
- ``clear_error``: refused with an exception of an expected type carrying a message;
- ``unclear_error``: an expected type with no message;
- ``process_death``: the worker died (a signal, an out-of-memory kill), a case ran past its time
  limit, or an unexpected exception type (MemoryError, IndexError, AttributeError,
  ZeroDivisionError, OverflowError, RuntimeError, ...) escaped; for the ROS interface, the node
  process exited;
- ``silent_acceptance``: an invalid input or a corrupt file was accepted without error (a
  corrupt file that loads to something other than what was saved, or a refused call that
  changed state anyway);
- ``file_lost``: an existing saved file was damaged by a failed operation;
- ``valid_refused``: an input the generator knows is valid was refused (reported, not a target).

Cases run in a worker subprocess per interface (``python fuzzlib.py``), under an address-space
limit, so an allocation a hostile input asks for ends that worker with a MemoryError (or a
signal) instead of exhausting the machine; the parent records the case in flight as a process
death and restarts the worker after it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

#: interface name -> module (in this folder) holding its generator.
INTERFACES: dict[str, str] = {
    "env": "iface_env",
    "vector_env": "iface_vector",
    "memory_api": "iface_memory_api",
    "memory_files": "iface_memory_files",
    "checkpoints": "iface_checkpoints",
    "shards": "iface_shards",
    "ros": "iface_ros",
}
OUTCOMES = ("accepted", "clear_error", "unclear_error", "process_death", "silent_acceptance", "file_lost",
            "valid_refused")
#: Outcomes that the suite's targets forbid.
FAILURES = ("process_death", "silent_acceptance", "file_lost")
#: Virtual memory a worker may map (bytes): torch, MiniWorld and rclpy fit; a 17 GB request does not.
ADDRESS_SPACE_LIMIT = 12 << 30


class SilentAcceptance(Exception):  # noqa: N818 (an outcome, raised by a case's own checks)
    """Raised by a case's checks: an invalid input or a corrupt file was accepted."""


class FileLost(Exception):  # noqa: N818
    """Raised by a case's checks: a failed operation damaged an existing saved file."""


class ProcessDeath(Exception):  # noqa: N818
    """Raised by a case's checks: a process it drives died or a call hung."""


class CaseTimeout(BaseException):
    """A case ran past its time limit (raised from SIGALRM; a BaseException so nothing swallows it)."""


@dataclass
class Case:
    """One generated input.

    Attributes:
        what: a short description (enough to reproduce the input by hand).
        valid: True: must be accepted; False: must be refused; None: either, as long as an
            acceptance passes the case's own checks (which raise :class:`SilentAcceptance`).
        run: performs the input; returns on acceptance, raises on refusal.
        expected: exception types that count as a clear refusal.
    """

    what: str
    valid: bool | None
    run: Callable[[], object]
    expected: tuple[type[BaseException], ...] = ()


#: Exception types that are a clear refusal everywhere (with a message).
CLEAR_TYPES: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, FileNotFoundError,
                                                 FileExistsError, IsADirectoryError, NotADirectoryError,
                                                 PermissionError)


def classify(case: Case, timeout_s: float) -> tuple[str, str]:
    """Run ``case`` and return (outcome, detail)."""

    def on_alarm(signum: int, frame: object) -> None:
        raise CaseTimeout()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        case.run()
    except CaseTimeout:
        return "process_death", f"hung: no answer within {timeout_s:.0f} s"
    except SilentAcceptance as e:
        return "silent_acceptance", str(e)
    except FileLost as e:
        return "file_lost", str(e)
    except ProcessDeath as e:
        return "process_death", str(e)
    except BaseException as e:  # noqa: BLE001 (classifying every escape is the point)
        if isinstance(e, KeyboardInterrupt):
            raise
        name = f"{type(e).__module__}.{type(e).__qualname__}".removeprefix("builtins.")
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        if isinstance(e, CLEAR_TYPES + case.expected):
            if not msg.strip():
                return "unclear_error", f"{name} without a message"
            if case.valid is True:
                return "valid_refused", f"{name}: {msg[:300]}"
            return "clear_error", f"{name}: {msg[:200]}"
        where = traceback.extract_tb(e.__traceback__)[-1]
        return "process_death", f"{name}: {msg[:200]} (at {Path(where.filename).name}:{where.lineno})"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if case.valid is False:
        return "silent_acceptance", "accepted an invalid input"
    return "accepted", ""


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of case ``index`` of a run seeded ``seed``."""
    return np.random.default_rng([seed, index])


# --------------------------------------------------------------------------------------
# Worker (one process per interface) and the parent that restarts it
# --------------------------------------------------------------------------------------


def _worker(interface: str, seed: int, start: int, stop: int, out: Path, workdir: Path, timeout_s: float,
            deadline: float | None = None) -> None:
    """Run cases ``start..stop-1`` of ``interface``, appending one JSON line per case to ``out``.

    A ``started`` line precedes each case, so the parent knows which case was in flight when the
    worker died. No case starts after ``deadline`` (epoch seconds).
    """
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(INTERFACES[interface])
    context = module.setup(workdir)
    try:
        with open(out, "a", encoding="utf-8") as f:
            for index in range(start, stop):
                if deadline is not None and time.time() > deadline:
                    break
                f.write(json.dumps({"index": index, "started": True}) + "\n")
                f.flush()
                case = module.make_case(case_rng(seed, index), index, context)
                t0 = time.perf_counter()
                outcome, detail = classify(case, timeout_s)
                f.write(json.dumps({"index": index, "what": case.what, "valid": case.valid, "outcome": outcome,
                                    "detail": detail, "seconds": round(time.perf_counter() - t0, 4)}) + "\n")
                f.flush()
    finally:
        teardown = getattr(module, "teardown", None)
        if teardown is not None:
            teardown(context)


@dataclass
class InterfaceResult:
    """What one interface's fuzzing found."""

    interface: str
    inputs: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    failures: list[dict[str, Any]] = field(default_factory=list)  # cases with an outcome in FAILURES
    notes: list[dict[str, Any]] = field(default_factory=list)  # unclear errors and refused valid inputs
    seconds: float = 0.0
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"interface": self.interface, "inputs": self.inputs, "counts": self.counts,
                "failures": self.failures, "notes": self.notes, "seconds": round(self.seconds, 1),
                "skipped": self.skipped}


def run_interface(interface: str, n: int, seed: int = 0, timeout_s: float = 30.0,
                  budget_s: float | None = None) -> InterfaceResult:
    """Fuzz ``interface`` with ``n`` generated inputs in worker processes; restart a worker that dies.

    Args:
        interface: a key of :data:`INTERFACES`.
        n: inputs to generate.
        seed: the run's seed.
        timeout_s: time limit of one case.
        budget_s: stop starting workers after this many seconds (the inputs run are reported).
    """
    result = InterfaceResult(interface)
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    module = importlib.import_module(INTERFACES[interface])
    skip = getattr(module, "skip_reason", lambda: None)()
    if skip:
        result.skipped = skip
        return result
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{interface}-") as tmp:
        log = Path(tmp) / "cases.jsonl"
        done: dict[int, dict] = {}
        start = 0
        while start < n:
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                break
            workdir = Path(tmp) / f"work{start}"
            workdir.mkdir()
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
            cmd = [sys.executable, str(HERE / "fuzzlib.py"), interface, "--seed", str(seed), "--start", str(start),
                   "--stop", str(n), "--log", str(log), "--workdir", str(workdir), "--timeout", str(timeout_s)]
            if budget_s is not None:
                cmd += ["--deadline", str(time.time() + budget_s - (time.perf_counter() - t0))]
            proc = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True)
            started = None
            for line in log.read_text(encoding="utf-8").splitlines() if log.exists() else []:
                rec = json.loads(line)
                if rec.get("started"):
                    started = rec["index"]
                else:
                    done[rec["index"]] = rec
                    started = None if started == rec["index"] else started
            if proc.returncode != 0 and started is not None and started not in done:
                how = (f"signal {-proc.returncode} ({signal.Signals(-proc.returncode).name})" if proc.returncode < 0
                       else f"exit status {proc.returncode}")
                tail = (proc.stderr or "").strip().splitlines()[-3:]
                done[started] = {"index": started, "what": "(the case in flight)", "valid": None,
                                 "outcome": "process_death", "detail": f"worker died: {how}; {' | '.join(tail)}"}
                start = started + 1
            elif proc.returncode != 0:
                tail = (proc.stderr or "").strip()[-2000:]
                raise RuntimeError(f"fuzz worker for {interface} failed outside any case "
                                   f"(exit {proc.returncode}):\n{tail}")
            else:
                start = max(done, default=-1) + 1
                if start < n and (budget_s is None or time.perf_counter() - t0 <= budget_s):
                    continue
                break
    for index in sorted(done):
        rec = done[index]
        result.inputs += 1
        result.counts[rec["outcome"]] += 1
        if rec["outcome"] in FAILURES:
            result.failures.append(rec)
        elif rec["outcome"] in ("unclear_error", "valid_refused"):
            result.notes.append(rec)
    result.seconds = time.perf_counter() - t0
    return result


def main() -> int:
    """Worker entry point (see :func:`_worker`)."""
    p = argparse.ArgumentParser(description="fuzz worker: run cases of one interface")
    p.add_argument("interface", choices=list(INTERFACES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0)
    p.add_argument("--stop", type=int, required=True)
    p.add_argument("--log", type=Path, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--deadline", type=float, default=None, help="wall-clock time (epoch s) to stop starting cases")
    a = p.parse_args()
    _worker(a.interface, a.seed, a.start, a.stop, a.log, a.workdir, a.timeout, a.deadline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
