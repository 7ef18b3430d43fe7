"""Evaluation: image metrics, the revisit-consistency trajectory suite, the evaluator and its report.

``rtfm-env eval revisit`` (:mod:`rtfm_env.eval.revisit`) runs the evaluation; the metrics are
importable from here without loading MiniWorld or torch.
"""

from rtfm_env.eval.metrics import PSNR_CAP, mean_se, per_step, psnr, revisit_consistency, ssim

__all__ = ["PSNR_CAP", "psnr", "ssim", "per_step", "revisit_consistency", "mean_se"]
