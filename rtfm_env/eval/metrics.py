"""Image metrics on uint8 RGB frames, computed with scikit-image, and their use along trajectories.

PSNR of identical images is infinite; it is reported as :data:`PSNR_CAP` so that means and
plots stay finite (the cap is far above anything a generated frame reaches).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = [
    "PSNR_CAP",
    "PERCEPTUAL_METRIC_NOTE",
    "psnr",
    "ssim",
    "per_step",
    "revisit_consistency",
    "mean_se",
]

#: dB reported for identical images (whose PSNR is infinite).
PSNR_CAP = 100.0


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype} and {b.dtype}")
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"images must be (H, W, 3) RGB, got {a.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, cap: float = PSNR_CAP) -> float:
    """PSNR in dB between two uint8 (H, W, 3) images, ``cap`` when they are identical."""
    a, b = _check_pair(a, b)
    if np.array_equal(a, b):
        return float(cap)
    return float(min(cap, peak_signal_noise_ratio(a, b, data_range=255)))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM between two uint8 (H, W, 3) images (7x7 windows, colour channels averaged)."""
    a, b = _check_pair(a, b)
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


# --------------------------------------------------------------------------------------
# Sequences: per step against ground truth, and revisit consistency
# --------------------------------------------------------------------------------------

#: Why no perceptual metric (LPIPS, DISTS, ...) is reported: each needs a pretrained network
#: whose weights are downloaded on first use, and none of the installed packages ships them.
PERCEPTUAL_METRIC_NOTE = (
    "No perceptual metric: LPIPS and DISTS need pretrained network weights downloaded at first use, "
    "and no installed package (scikit-image, torch; no torchvision, torchmetrics, lpips or piq) ships "
    "them, so only PSNR and SSIM are reported."
)


def _check_frames(frames: np.ndarray, name: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (n, H, W, 3) RGB frames, got {frames.dtype} {frames.shape}")
    return frames


def per_step(frames: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PSNR (capped) and SSIM of each frame against the ground truth seen from the same pose.

    Args:
        frames: (n, H, W, 3) uint8, what a camera showed along a trajectory.
        truth: (n, H, W, 3) uint8, the scene's ground truth at the same poses.

    Returns:
        (psnr, ssim), each (n,) float64.
    """
    frames, truth = _check_frames(frames, "frames"), _check_frames(truth, "truth")
    if frames.shape != truth.shape:
        raise ValueError(f"frames and truth must have the same shape, got {frames.shape} and {truth.shape}")
    return (
        np.array([psnr(a, b) for a, b in zip(frames, truth, strict=True)]),
        np.array([ssim(a, b) for a, b in zip(frames, truth, strict=True)]),
    )


def revisit_consistency(frames: np.ndarray, first_visit: np.ndarray) -> dict[str, np.ndarray]:
    """PSNR and SSIM between the frame shown at each revisit and the one shown at the first visit.

    Args:
        frames: (n, H, W, 3) uint8, what a camera showed along a trajectory.
        first_visit: (n,) int, for each frame the index of the frame it revisits, -1 if none
            (see :func:`rtfm_env.eval.trajectories.find_revisits`).

    Returns:
        ``{"index", "first", "dt", "psnr", "ssim"}``, one entry per revisit: the revisit's frame
        index, its first visit's index, the steps between them, and the two metrics.
    """
    frames = _check_frames(frames, "frames")
    first_visit = np.asarray(first_visit)
    if first_visit.shape != (len(frames),) or not np.issubdtype(first_visit.dtype, np.integer):
        raise ValueError(f"first_visit must be ({len(frames)},) integers, got {first_visit.dtype} {first_visit.shape}")
    index = np.flatnonzero(first_visit >= 0)
    first = first_visit[index].astype(np.int64)
    if (first >= index).any():
        raise ValueError("first_visit must point to earlier frames")
    return {
        "index": index.astype(np.int64),
        "first": first,
        "dt": (index - first).astype(np.int64),
        "psnr": np.array([psnr(frames[i], frames[j]) for i, j in zip(index, first, strict=True)]),
        "ssim": np.array([ssim(frames[i], frames[j]) for i, j in zip(index, first, strict=True)]),
    }


def mean_se(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error of the mean (sample std / sqrt(n); NaN for n < 2) and n, ignoring NaN."""
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    se = float(np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return float(np.mean(values)), se, n
