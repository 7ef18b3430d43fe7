"""Tests for rtfm_env.eval.metrics."""

import math

import numpy as np
import pytest

from rtfm_env.eval import PSNR_CAP, psnr, ssim


def test_identical_images_give_the_cap():
    """Identical images: PSNR is the documented cap, SSIM is 1."""
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert psnr(img, img) == PSNR_CAP
    assert ssim(img, img) == pytest.approx(1.0)


@pytest.mark.parametrize("sigma", [2.0, 8.0, 20.0])
def test_known_noise_level_gives_expected_psnr(sigma):
    """Gaussian noise of std sigma gives PSNR = 20 log10(255 / sigma) (within rounding)."""
    rng = np.random.default_rng(1)
    clean = np.full((128, 128, 3), 128, dtype=np.uint8)
    noisy = np.clip(np.round(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)
    assert psnr(clean, noisy) == pytest.approx(20 * math.log10(255 / sigma), abs=0.15)
    assert ssim(clean, noisy) < 1.0


def test_bad_input_is_rejected():
    """Mismatched shapes, float images and grey images raise ValueError naming the problem."""
    a = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="same shape"):
        psnr(a, np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ssim(a, a.astype(np.float32))
    with pytest.raises(ValueError, match="RGB"):
        psnr(a[..., 0], a[..., 0])
