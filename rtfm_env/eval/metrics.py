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
    "grey",
    "sharpness",
    "contrast",
    "ms_ssim",
    "MS_SSIM_WIN",
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


# --------------------------------------------------------------------------------------
# Blur and contrast (a grey or blurred frame scores PSNR well but fails these), MS-SSIM
# --------------------------------------------------------------------------------------


def grey(frames: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) of uint8 RGB, float64 in [0, 255], shape (..., H, W)."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (..., H, W, 3) RGB, got {frames.dtype} {frames.shape}")
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def sharpness(frames: np.ndarray) -> np.ndarray | float:
    """Mean absolute image gradient of the grey image: mean |dx| + mean |dy| (grey levels per pixel).

    ``dx`` and ``dy`` are differences of horizontally and vertically adjacent pixels of
    :func:`grey`. A flat frame scores 0; blurring lowers it. Compare a frame against the ground
    truth seen from the same pose as a ratio (1.0 is right, below about 0.7 is visibly blurred).

    Args:
        frames: one uint8 (H, W, 3) frame or a stack (..., H, W, 3).

    Returns:
        A float for one frame, else an array of the leading shape.
    """
    g = grey(frames)
    value = np.abs(np.diff(g, axis=-1)).mean(axis=(-2, -1)) + np.abs(np.diff(g, axis=-2)).mean(axis=(-2, -1))
    return float(value) if np.ndim(value) == 0 else value


def contrast(frames: np.ndarray) -> np.ndarray | float:
    """RMS contrast: standard deviation of the grey image's pixels (grey levels); 0 for a flat frame.

    Args:
        frames: one uint8 (H, W, 3) frame or a stack (..., H, W, 3).

    Returns:
        A float for one frame, else an array of the leading shape.
    """
    value = grey(frames).std(axis=(-2, -1))
    return float(value) if np.ndim(value) == 0 else value


#: Gaussian window of :func:`ms_ssim`: the largest odd size that its 4 halvings allow at 64x64.
MS_SSIM_WIN = 3


def ms_ssim(frames: np.ndarray, truth: np.ndarray, win_size: int = MS_SSIM_WIN) -> np.ndarray:
    """Multi-scale SSIM (Wang, Simoncelli and Bovik, 2003) of each frame against its ground truth.

    A weight-free perceptual metric: no network, so nothing to download. Computed by the
    ``pytorch-msssim`` package with its 5 scales and their standard weights and a Gaussian
    window of ``win_size`` pixels (sigma 1.5): the package requires the smaller image side to
    exceed ``(win_size - 1) * 16``, so 3 is the largest window valid at 64x64 (the standard 11
    needs more than 160 pixels).

    Args:
        frames: (n, H, W, 3) uint8.
        truth: (n, H, W, 3) uint8, the ground truth at the same poses.
        win_size: odd Gaussian window size.

    Returns:
        (n,) float64 in [0, 1]; 1 for identical frames.

    Raises:
        ImportError: ``pytorch-msssim`` is not installed (``pip install pytorch-msssim``).
        ValueError: mismatched shapes, or frames too small for 5 scales at this window.
    """
    try:
        from pytorch_msssim import ms_ssim as _ms_ssim
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("ms_ssim needs the pytorch-msssim package: pip install pytorch-msssim") from e
    import torch

    frames, truth = _check_frames(frames, "frames"), _check_frames(truth, "truth")
    if frames.shape != truth.shape:
        raise ValueError(f"frames and truth must have the same shape, got {frames.shape} and {truth.shape}")
    if min(frames.shape[1:3]) <= (win_size - 1) * 16:
        raise ValueError(f"MS-SSIM with window {win_size} needs frames larger than {(win_size - 1) * 16} pixels")

    def to_tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).to(torch.float64)  # (n, 3, H, W)

    with torch.no_grad():
        value = _ms_ssim(to_tensor(frames), to_tensor(truth), data_range=255, size_average=False, win_size=win_size)
    return value.numpy().astype(np.float64)
