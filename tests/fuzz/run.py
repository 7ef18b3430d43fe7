"""``make fuzz``: >= 1,000 generated inputs per interface; writes a Markdown table and a compact JSON.

    .venv/bin/python tests/fuzz/run.py --inputs 1000 --out docs/results/fuzz

writes ``docs/results/fuzz.md`` and ``docs/results/fuzz.json``: per interface the inputs, clear
errors, process deaths, silent acceptances and files lost, and the failing cases (each
reproducible from its seed and index).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fuzzlib import INTERFACES, run_interface  # noqa: E402

TARGETS = "0 process deaths, 0 silently accepted invalid inputs or corrupt files, 0 files lost"


def _markdown(report: dict) -> str:
    lines = ["# Fuzz suite", "",
             f"Produced by `{report['command']}` in {report['seconds']:.0f} s on {report['machine']} "
             f"(seed {report['seed']}). Generators: `tests/fuzz/` (one `iface_*.py` per interface); "
             "`make test` runs a bounded slice of the same generators (`tests/fuzz/test_fuzz.py`).", "",
             f"Target: {TARGETS}.", "",
             "| interface | inputs | accepted | clear errors | unclear errors | process deaths | silent acceptances "
             "| files lost | valid inputs refused |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["interfaces"]:
        c = r["counts"]
        if r["skipped"]:
            lines.append(f"| {r['interface']} | skipped: {r['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {r['interface']} | {r['inputs']} | {c['accepted']} | {c['clear_error']} | "
                     f"{c['unclear_error']} | {c['process_death']} | {c['silent_acceptance']} | {c['file_lost']} | "
                     f"{c['valid_refused']} |")
    lines += ["", "Outcomes: *accepted* (a valid or harmless input), *clear error* (an exception of an expected "
              "type with a message), *unclear error* (an expected type without a message), *process death* (the "
              "worker or the ROS node died, a case hung, or an unexpected exception type such as MemoryError, "
              "IndexError, AttributeError escaped), *silent acceptance* (an invalid input or a corrupt file accepted "
              "without error, or a refused call that changed state), *file lost* (an existing saved file damaged "
              "by a failed operation).", ""]
    failing = [r for r in report["interfaces"] if r["failures"] or r["notes"]]
    if failing:
        lines += ["## Failing cases", "", "Distinct cases (first of each kind), with their case index:", ""]
    for r in failing:
        lines.append(f"### {r['interface']}")
        lines.append("")
        seen: set[str] = set()
        for f in r["failures"] + r["notes"]:
            key = f["outcome"] + ":" + f["what"][:70] + f["detail"][:40]
            if key in seen:
                continue
            seen.add(key)
            lines.append(f"- #{f['index']} **{f['outcome']}**: `{f['what'][:160]}` → {f['detail'][:240]}")
            if len(seen) >= 15:
                break
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run every interface and write the report."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=1000, help="generated inputs per interface (default: 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interfaces", nargs="+", default=list(INTERFACES), choices=list(INTERFACES))
    p.add_argument("--timeout", type=float, default=30.0, help="seconds one case may take")
    p.add_argument("--out", default="runs/fuzz", help="path stem: writes STEM.md and STEM.json (default: runs/fuzz)")
    a = p.parse_args()
    t0 = time.perf_counter()
    results = []
    for name in a.interfaces:
        r = run_interface(name, a.inputs, seed=a.seed, timeout_s=a.timeout)
        c = r.counts
        print(f"{name}: {r.inputs} inputs, {c['clear_error']} clear errors, {c['process_death']} process deaths, "
              f"{c['silent_acceptance']} silent acceptances, {c['file_lost']} files lost ({r.seconds:.0f} s)"
              + (f" [skipped: {r.skipped}]" if r.skipped else ""), flush=True)
        results.append(r.to_dict())
    report = {"command": shlex.join([".venv/bin/python", "tests/fuzz/run.py", *sys.argv[1:]]), "seed": a.seed,
              "machine": f"{platform.platform()}, Python {platform.python_version()}",
              "seconds": time.perf_counter() - t0, "target": TARGETS,
              "met": all(not r["failures"] for r in results), "interfaces": results}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compact = {**report, "interfaces": [{**r, "failures": r["failures"][:20], "notes": r["notes"][:10]}
                                        for r in results]}
    out.with_suffix(".json").write_text(json.dumps(compact, indent=1) + "\n")
    out.with_suffix(".md").write_text(_markdown(report))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}; "
          f"{sum(len(r['failures']) for r in results)} failing inputs of {sum(r['inputs'] for r in results)}")
    return 0 if report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
