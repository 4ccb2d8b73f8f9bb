"""Inception-v3 features for FID: the 2048-d ``pool_3`` activations (thesis §3.3.2).

Weights: ``pt_inception-2015-12-05-6726825d.pth`` (manifest name ``fid-inception``), the pytorch-fid
project's PyTorch conversion of the 2015-12-05 TensorFlow Inception graph that the original TF FID
code uses (1008-way classifier, torchvision ``Inception3`` key names). The network is torchvision's
``inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)``; its blocks are run
by this module so the pooling matches the FID graph:

* the pooling branch of every Mixed_5x / 6x block and of Mixed_7b averages over real pixels only
  (``count_include_pad=False``, TF's "SAME" average pooling);
* Mixed_7c's pooling branch is a 3×3 *max* pool (a quirk of the 2015 graph).

Input: images in [0, 1], resized to 299×299 with bilinear interpolation (``align_corners=False``, no
antialias) and scaled to [−1, 1]; features are the global average of Mixed_7c (2048-d, "pool_3").
Known deviation from TF-FID: TF1's bilinear resize uses a different pixel-centre convention, so FIDs
differ slightly (typically < 1 %) from the TF reference on images that are not 299×299 — the same
deviation as pytorch-fid. Any other torchvision-layout Inception-v3 state dict (e.g. torchvision's
1000-class weights) also loads; then torchvision's own pooling is used and the scores are not
comparable with published FIDs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.weights import resolve

FID_INCEPTION = "fid-inception"
FID_NUM_CLASSES = 1008
FEATURE_DIM = 2048
INPUT_SIZE = 299
FeatureFn = Callable[[Tensor], Tensor]


def build_inception(num_classes: int = FID_NUM_CLASSES) -> nn.Module:
    """torchvision Inception-v3 without pretrained weights or auxiliary head (weights to be loaded)."""
    from torchvision.models import inception_v3

    return inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=num_classes)


def _pool(x: Tensor, fid_graph: bool) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=not fid_graph)


def _block_a(m: nn.Module, x: Tensor, fid_graph: bool) -> Tensor:
    b5 = m.branch5x5_2(m.branch5x5_1(x))
    b3 = m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x)))
    return torch.cat([m.branch1x1(x), b5, b3, m.branch_pool(_pool(x, fid_graph))], 1)


def _block_c(m: nn.Module, x: Tensor, fid_graph: bool) -> Tensor:
    b7 = m.branch7x7_3(m.branch7x7_2(m.branch7x7_1(x)))
    bd = x
    for name in ("branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5"):
        bd = getattr(m, name)(bd)
    return torch.cat([m.branch1x1(x), b7, bd, m.branch_pool(_pool(x, fid_graph))], 1)


def _block_e(m: nn.Module, x: Tensor, pool: Tensor) -> Tensor:
    b3 = m.branch3x3_1(x)
    b3 = torch.cat([m.branch3x3_2a(b3), m.branch3x3_2b(b3)], 1)
    bd = m.branch3x3dbl_2(m.branch3x3dbl_1(x))
    bd = torch.cat([m.branch3x3dbl_3a(bd), m.branch3x3dbl_3b(bd)], 1)
    return torch.cat([m.branch1x1(x), b3, bd, m.branch_pool(pool)], 1)


class InceptionFeatures(nn.Module):
    """Images in [0, 1] (B, 3, H, W) → (B, 2048) pool_3 features (float32), FID-graph pooling if ``fid_graph``."""

    def __init__(self, net: nn.Module, fid_graph: bool = True) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.fid_graph = fid_graph

    @torch.no_grad()
    def forward(self, images01: Tensor) -> Tensor:
        n = self.net
        ref = n.Conv2d_1a_3x3.conv.weight
        x = images01.to(ref.device, ref.dtype)
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False) * 2.0 - 1.0
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3"):
            x = getattr(n, name)(x)
        x = F.max_pool2d(x, 3, stride=2)
        x = n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            x = _block_a(getattr(n, name), x, self.fid_graph)
        x = n.Mixed_6a(x)
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = _block_c(getattr(n, name), x, self.fid_graph)
        x = n.Mixed_7a(x)
        x = _block_e(n.Mixed_7b, x, _pool(x, self.fid_graph))
        last_pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.fid_graph else _pool(x, False)
        x = _block_e(n.Mixed_7c, x, last_pool)
        return x.mean(dim=(2, 3)).float()


def inception_from_state_dict(sd: Mapping[str, Tensor]) -> InceptionFeatures:
    """Build and strictly load a torchvision-layout Inception-v3; the classifier size picks the pooling
    (1008 classes = the TF FID graph). ``AuxLogits.*`` keys are ignored."""
    sd = {k.removeprefix("module."): v for k, v in sd.items() if not k.removeprefix("module.").startswith("AuxLogits.")}
    fc = sd.get("fc.weight")
    if fc is None or fc.ndim != 2 or fc.shape[1] != FEATURE_DIM:
        raise ValueError("not an Inception-v3 state dict in torchvision layout (no fc.weight of shape (classes, 2048))")
    with torch.device("meta"):  # no throw-away random init; the file's tensors are assigned
        net = build_inception(int(fc.shape[0]))
    net.load_state_dict(dict(sd), strict=True, assign=True)
    return InceptionFeatures(net, fid_graph=fc.shape[0] == FID_NUM_CLASSES)


def load_inception(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> InceptionFeatures:
    """Inception features from a ``.pth`` (``torch.load(weights_only=True)``) or ``.safetensors`` file."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    try:
        model = inception_from_state_dict(sd)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: {e}") from None
    return model.to(device)


# ------------------------------------------------------------------------------------------ files


def resolve_inception(
    name_or_path: str | os.PathLike[str] = FID_INCEPTION,
    models_dir: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Path:
    """A local Inception weights file: an existing path, or the manifest entry's file in ``models_dir``,
    fetched from the entry's ``url`` (sha256 prefix checked, atomic) when ``download`` is allowed."""
    return resolve(name_or_path, models_dir, download=download)


__all__ = [
    "FEATURE_DIM",
    "FID_INCEPTION",
    "FeatureFn",
    "InceptionFeatures",
    "build_inception",
    "inception_from_state_dict",
    "load_inception",
    "resolve_inception",
]
