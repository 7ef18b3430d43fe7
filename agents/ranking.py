"""Ranking agreement between two evaluations of the same policies: Pearson r, Spearman rho, MMRV.

A camera is useful for evaluating policies when it ranks them as the reference (ground truth)
does. Given each policy's per-episode scores under a candidate camera and under the reference,
on the same episodes, this module measures how well the candidate's per-policy means agree with
the reference's, and puts percentile bootstrap confidence intervals on each measure by
resampling episodes (the same resampled episodes for every policy and both cameras, since
episode i is the same seeded episode everywhere).

Measures, for candidate means ``c`` and reference means ``r`` over P policies:

- Pearson r: the linear correlation of ``c`` and ``r``.
- Spearman rho: the Pearson r of their ranks (ties take their average rank), as
  ``scipy.stats.spearmanr``.
- MMRV, the mean maximum rank violation of SIMPLER (Li et al., 2024, "Evaluating Real-World
  Robot Manipulation Policies in Simulation", ``simpler_env/utils/metrics.py``)::

      MMRV(c, r) = (1 / P) * sum_i max_j |r_i - r_j| * 1[(c_i > c_j) != (r_i > r_j)]

  A pair of policies is a rank violation when the candidate orders it differently from the
  reference (strict comparisons, so a tie on one side and an order on the other counts); the
  violation weighs as much as the two policies differ under the reference. Each policy
  contributes its worst violation. 0 is perfect agreement; lower is better; it is in the
  reference's units (a success rate or an SPL).

Correlations are undefined when either side gives every policy the same score; they are then
NaN, and bootstrap resamples where they are undefined are left out of the interval (the count
kept is reported).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["MEASURES", "Estimate", "pearson", "spearman", "mmrv", "check_scores", "bootstrap", "agreement"]


def _pair(candidate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(candidate, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if c.shape != r.shape:
        raise ValueError(f"candidate and reference scores differ in shape: {c.shape} vs {r.shape}")
    if c.ndim < 1 or c.shape[-1] < 2:
        raise ValueError(f"ranking needs at least 2 policies (the last axis), got shape {c.shape}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(r))):
        raise ValueError("scores must be finite numbers; got NaN or infinity")
    return c, r


def pearson(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray | float:
    """Pearson r over the last axis (policies); NaN where either side is constant.

    Args:
        candidate: (..., P) scores.
        reference: (..., P) scores, the same shape.
    """
    c, r = _pair(candidate, reference)
    dc = c - c.mean(axis=-1, keepdims=True)
    dr = r - r.mean(axis=-1, keepdims=True)
    norm = np.sqrt((dc * dc).sum(axis=-1) * (dr * dr).sum(axis=-1))
    # A constant side has a zero norm up to rounding; treat anything that small as constant.
    scale = np.maximum(np.abs(c).max(axis=-1), 1.0) * np.maximum(np.abs(r).max(axis=-1), 1.0)
    defined = norm > 1e-12 * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(defined, (dc * dr).sum(axis=-1) / np.where(defined, norm, 1.0), np.nan)
    out = np.clip(out, -1.0, 1.0)
    return float(out) if out.ndim == 0 else out


def spearman(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray | float:
    """Spearman rho over the last axis: Pearson r of the ranks (average ranks for ties)."""
    c, r = _pair(candidate, reference)
    return pearson(stats.rankdata(c, axis=-1), stats.rankdata(r, axis=-1))


def mmrv(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray | float:
    """SIMPLER's mean maximum rank violation over the last axis (see the module docstring).

    Args:
        candidate: (..., P) scores under the camera judged.
        reference: (..., P) scores under the reference; violations weigh by their differences.
    """
    c, r = _pair(candidate, reference)
    flipped = (c[..., :, None] > c[..., None, :]) != (r[..., :, None] > r[..., None, :])  # (..., P, P)
    weight = np.abs(r[..., :, None] - r[..., None, :])
    out = np.where(flipped, weight, 0.0).max(axis=-1).mean(axis=-1)
    return float(out) if out.ndim == 0 else out


#: The agreement measures by name, in report order.
MEASURES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray | float]] = {
    "pearson": pearson,
    "spearman": spearman,
    "mmrv": mmrv,
}


@dataclass(frozen=True)
class Estimate:
    """A measure on the full data and its percentile bootstrap interval."""

    value: float  # on every episode (NaN if undefined)
    low: float  # lower end of the interval (NaN if no resample defines it)
    high: float  # upper end
    confidence: float  # e.g. 0.95
    resamples: int  # bootstrap resamples drawn
    defined: int  # resamples where the measure is defined (finite), the ones the interval uses

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready fields."""
        return asdict(self)


def check_scores(candidate: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate per-episode scores: two (P, N) finite arrays of the same shape, P >= 2, N >= 1.

    Returns:
        Both as float64 arrays.

    Raises:
        ValueError: another shape, mismatched shapes, fewer than 2 policies, no episode, NaN or inf.
    """
    c = np.asarray(candidate, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if c.ndim != 2 or r.ndim != 2:
        raise ValueError(f"scores must be (policies, episodes) arrays, got shapes {c.shape} and {r.shape}")
    if c.shape != r.shape:
        raise ValueError(
            f"candidate and reference scores differ in shape: {c.shape} vs {r.shape}; both need the same "
            "policies on the same episodes"
        )
    if c.shape[0] < 2:
        raise ValueError(f"ranking needs at least 2 policies, got {c.shape[0]}")
    if c.shape[1] < 1:
        raise ValueError("ranking needs at least 1 episode per policy, got 0")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(r))):
        raise ValueError("scores must be finite numbers; got NaN or infinity")
    return c, r


def bootstrap(
    measure: str,
    candidate: np.ndarray,
    reference: np.ndarray,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """A measure of the per-policy means and its percentile bootstrap interval over episodes.

    Args:
        measure: a name of :data:`MEASURES`.
        candidate: (P, N) per-episode scores of P policies on N episodes under the camera judged.
        reference: (P, N) the same under the reference, episode for episode.
        resamples: bootstrap resamples (each draws N episodes with replacement, the same ones
            for every policy and both cameras).
        confidence: the interval's coverage, in (0, 1).
        seed: seeds the resampling, so a report is reproducible.

    Raises:
        ValueError: an unknown measure (the message lists them), bad scores (:func:`check_scores`),
            a non-positive number of resamples or a confidence outside (0, 1).
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; valid: {list(MEASURES)}")
    c, r = check_scores(candidate, reference)
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)) or resamples < 1:
        raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
    if not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    fn = MEASURES[measure]
    value = float(fn(c.mean(axis=1), r.mean(axis=1)))
    n = c.shape[1]
    idx = np.random.default_rng(seed).integers(0, n, size=(int(resamples), n))  # (B, N)
    c_means = c[:, idx].mean(axis=-1).T  # (B, P)
    r_means = r[:, idx].mean(axis=-1).T  # (B, P)
    values = np.asarray(fn(c_means, r_means))  # (B,)
    low, high = percentile_interval(values, confidence)
    return Estimate(value, low, high, float(confidence), int(resamples), int(np.isfinite(values).sum()))


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central ``confidence`` percentile interval of the finite ``values`` (NaN, NaN when none is finite)."""
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    alpha = 1.0 - float(confidence)
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def agreement(
    candidate: np.ndarray,
    reference: np.ndarray,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Every measure of :data:`MEASURES` with its bootstrap interval (:func:`bootstrap`), by name."""
    return {name: bootstrap(name, candidate, reference, resamples, confidence, seed) for name in MEASURES}
