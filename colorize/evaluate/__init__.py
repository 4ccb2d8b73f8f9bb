"""Evaluation of a colorizer (thesis §3.3.2, Tab. 5.4): ``python -m colorize evaluate``.

Modules: :mod:`~colorize.evaluate.metrics` (FID from features, PSNR, MS-SSIM, CLIP similarity),
:mod:`~colorize.evaluate.tps` (thin-plate-spline deformation of references),
:mod:`~colorize.evaluate.inception` (FID Inception-v3 features), :mod:`~colorize.evaluate.protocol`
(the random-reference and TPS-reference protocols), :mod:`~colorize.evaluate.report` (CSV/JSON/contact
sheet) and :mod:`~colorize.evaluate.cli`.
"""
from __future__ import annotations

from colorize.evaluate.metrics import clip_similarity, fid_from_features, frechet_distance, ms_ssim, psnr, ssim
from colorize.evaluate.tps import random_tps, tps_warp

__all__ = ["clip_similarity", "fid_from_features", "frechet_distance", "ms_ssim", "psnr", "random_tps", "ssim", "tps_warp"]
