"""ColorizeDiffusion v1 (``mult``), thesis §5.3–5.4: the SD2.1 U-Net reads the reference's 256 OpenCLIP
ViT-H/14 patch tokens in every cross-attention, and a sketch encoder's five hints are added to its features
(Eq. 5.1); eps-prediction, trained at 512² (official ``configs/inference/mult.yaml`` at commit ``c9bd9fb``).

Everything v1 has is shared with the other SD2.1 families, so this family is the :class:`Family` defaults:
its U-Net is the shared ``DualCondUNet`` and it has no extra modules and no foreground/background separation.
Its training model (Stage I noisy training and Stage II fine-tuning, §5.4) is :mod:`.training`.
"""
from __future__ import annotations

from colorize.families.base import Family, TrainingStart
from colorize.families.v1.training import build_denoiser


class V1Family(Family):
    name = "mult"
    label = "v1"
    title = "ColorizeDiffusion v1 (mult)"
    parameterization = "eps"
    base_resolution = 512
    training_sources = ("mult",)  # v1 files (an SD2.1 text-to-image LDM file also starts v1 training)

    def training_model(self, start: TrainingStart):  # type: ignore[no-untyped-def]
        return build_denoiser(start)


V1 = V1Family()

__all__ = ["V1", "V1Family"]
