"""Image metrics on uint8 RGB frames, computed with scikit-image.

PSNR of identical images is infinite; it is reported as :data:`PSNR_CAP` so that means and
plots stay finite (the cap is far above anything a generated frame reaches).
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

__all__ = ["PSNR_CAP", "psnr", "ssim"]

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
