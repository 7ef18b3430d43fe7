"""The standing fuzz suite, on a bounded budget for CI (all interfaces together: under 3 minutes).

Each interface runs a seeded slice of its generated inputs (``make fuzz`` runs >= 1,000 of each
and writes docs/results/fuzz.md). The targets: no process deaths, no silently accepted invalid
inputs or corrupt files, no damaged saved files. A failure lists the cases, each reproducible
from its index (``fuzzlib.case_rng(seed, index)``).
"""

from __future__ import annotations

import pytest
from fuzzlib import FAILURES, INTERFACES, run_interface

#: interface -> (inputs, seconds of budget) in CI.
CI_BUDGET: dict[str, tuple[int, float]] = {
    "env": (80, 25.0),
    "vector_env": (60, 18.0),
    "memory_api": (400, 12.0),
    "memory_files": (250, 15.0),
    "checkpoints": (150, 18.0),
    "shards": (200, 12.0),
    "ros": (150, 30.0),
}
SEED = 20260101


def test_budget_covers_every_interface():
    assert set(CI_BUDGET) == set(INTERFACES)
    assert sum(seconds for _, seconds in CI_BUDGET.values()) <= 150.0  # + worker start-up: < 3 min


@pytest.mark.parametrize("interface", list(INTERFACES))
def test_fuzz_interface(interface):
    """No process death, silent acceptance or lost file among this interface's generated inputs."""
    n, budget = CI_BUDGET[interface]
    result = run_interface(interface, n, seed=SEED, timeout_s=20.0, budget_s=budget)
    if result.skipped:
        pytest.skip(result.skipped)
    assert result.inputs >= min(n, 10), f"only {result.inputs} inputs ran in {budget} s"
    bad = {k: result.counts[k] for k in FAILURES if result.counts[k]}
    lines = [f"#{f['index']} {f['outcome']}: {f['what']} -> {f['detail']}" for f in result.failures[:25]]
    assert not bad, f"{interface}: {bad} in {result.inputs} inputs (seed {SEED}):\n" + "\n".join(lines)
