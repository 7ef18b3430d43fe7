"""Evaluation: image metrics (and, later, the revisit-consistency suite and reports)."""

from rtfm_env.eval.metrics import PSNR_CAP, psnr, ssim

__all__ = ["PSNR_CAP", "psnr", "ssim"]
