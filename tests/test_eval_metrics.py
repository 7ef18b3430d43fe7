"""Tests for rtfm_env.eval.metrics."""

import math

import numpy as np
import pytest

from rtfm_env.eval import PSNR_CAP, psnr, ssim
from rtfm_env.eval.metrics import mean_se, per_step, revisit_consistency


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


def test_per_step_against_known_frames():
    """per_step gives the cap where frames equal the truth and the noise PSNR where they do not."""
    rng = np.random.default_rng(2)
    truth = np.full((3, 64, 64, 3), 100, dtype=np.uint8)
    frames = truth.copy()
    frames[1] = np.clip(np.round(truth[1] + rng.normal(0, 8.0, truth[1].shape)), 0, 255).astype(np.uint8)
    p, s = per_step(frames, truth)
    assert p[0] == PSNR_CAP and p[2] == PSNR_CAP
    assert p[1] == pytest.approx(20 * math.log10(255 / 8.0), abs=0.15)
    assert s[0] == pytest.approx(1.0) and s[1] < 0.9


def test_revisit_consistency_pairs_each_revisit_with_its_first_visit():
    """Each revisit is compared with the frame of its first visit, with the steps between them."""
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    frames[3] = frames[0]  # an exact revisit
    first = np.array([-1, -1, -1, 0, 1])
    rev = revisit_consistency(frames, first)
    assert rev["index"].tolist() == [3, 4] and rev["first"].tolist() == [0, 1] and rev["dt"].tolist() == [3, 3]
    assert rev["psnr"][0] == PSNR_CAP
    assert rev["psnr"][1] == pytest.approx(psnr(frames[4], frames[1]))
    assert rev["ssim"][1] == pytest.approx(ssim(frames[4], frames[1]))


def test_revisit_consistency_rejects_bad_input():
    """A first visit that is not earlier, or a wrong-length index, raises ValueError."""
    frames = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="earlier"):
        revisit_consistency(frames, np.array([-1, 2, -1]))
    with pytest.raises(ValueError, match="first_visit"):
        revisit_consistency(frames, np.array([-1, 0]))
    with pytest.raises(ValueError, match="uint8"):
        per_step(frames.astype(np.float32), frames)


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1.0, 3.0], (2.0, 1.0, 2)), ([2.0, np.nan, 4.0, 6.0], (4.0, 2.0 / math.sqrt(3), 3)), ([5.0], (5.0, None, 1))],
)
def test_mean_se_known_values(values, expected):
    """Mean and standard error (sample std / sqrt(n)) ignore NaN; one value has no standard error."""
    m, se, n = mean_se(np.array(values))
    assert m == pytest.approx(expected[0]) and n == expected[2]
    assert math.isnan(se) if expected[1] is None else se == pytest.approx(expected[1])


def test_sharpness_and_contrast_known_values():
    """A flat frame has 0 sharpness and contrast; a vertical step edge has known values."""
    from rtfm_env.eval.metrics import contrast, sharpness

    flat = np.full((8, 8, 3), 77, np.uint8)
    assert sharpness(flat) == 0.0 and contrast(flat) == 0.0
    edge = np.zeros((8, 8, 3), np.uint8)
    edge[:, 4:] = 200  # one column step of 200 grey levels in each row: mean |dx| = 200 / 7, dy = 0
    assert sharpness(edge) == pytest.approx(200.0 / 7.0)
    assert contrast(edge) == pytest.approx(100.0)  # half at 0, half at 200
    stack = np.stack([flat, edge])
    assert np.allclose(sharpness(stack), [0.0, 200.0 / 7.0])


def test_sharpness_falls_with_blur():
    """Blurring a textured frame lowers its sharpness (what the closed-loop benchmark flags)."""
    from scipy.ndimage import uniform_filter

    from rtfm_env.eval.metrics import sharpness

    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    blurred = uniform_filter(img.astype(np.float64), size=(5, 5, 1)).round().astype(np.uint8)
    assert sharpness(blurred) < 0.5 * sharpness(img)


def test_ms_ssim_identity_and_flat():
    """MS-SSIM is 1 for identical frames and far lower for a flat frame of the same mean."""
    pytest.importorskip("pytorch_msssim")
    from rtfm_env.eval.metrics import ms_ssim

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert np.allclose(ms_ssim(img, img), 1.0)
    flat = np.broadcast_to(img.mean(axis=(1, 2), keepdims=True).round().astype(np.uint8), img.shape)
    assert (ms_ssim(flat, img) < 0.5).all()
    with pytest.raises(ValueError, match="larger than"):
        ms_ssim(img[:, :32, :32], img[:, :32, :32])
