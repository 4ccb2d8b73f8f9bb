"""The reference encoders of ColorizeDiffusion XL, loaded from their own files: the OpenCLIP ViT-bigG/14 vision tower
(:mod:`.clip_bigg`) and the WD v1.4 SwinV2 tagger (:mod:`.tagger`).

Accepted files (Hugging Face ``CLIPVisionModelWithProjection`` / ``CLIPModel`` key format for CLIP, timm format for
the tagger): ComfyUI's ``models/clip_vision/clip_vision_g.safetensors`` (the vision tower core's CLIP Vision loader
reads), ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`` ``model.safetensors`` (vision + text; the text tower is
skipped), and ``SmilingWolf/wd-v1-4-swinv2-tagger-v2`` ``model.safetensors``. A wrong file is a one-line
:class:`~colorize.errors.CheckpointError` before anything is built: an SD2.1 ViT-H file, an open_clip-format file,
a tagger with another class count (another WD tagger generation), a CLIP whose projection width is not the one the
checkpoint's ClusterConcat reads.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from colorize.checkpoint import check_weight_dtypes, load_state_dict_file
from colorize.errors import CheckpointError
from colorize.families.xl.clip_bigg import ClipVisionConfig, ClipVisionTower, infer_clip_config
from colorize.families.xl.tagger import SwinV2Tagger, TaggerConfig, infer_tagger_config, to_timm_layout

PathLike = str | os.PathLike[str]
#: Classes of the WD v1.4 SwinV2 tagger v2 the XL models were trained with (its head is not used, the count
#: identifies the file).
XL_TAGGER_CLASSES = 9083
#: Tiny CLIP tower and tagger of the test weights (same topology, small widths; 257 tokens, 14×14 tagger grid). The
#: CLIP head count is not in the shapes: a 32-wide tower reads back with one head, so it is written with one.
TINY_XL_CLIP = ClipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
                                projection_dim=48)
TINY_XL_TAGGER = TaggerConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), num_classes=XL_TAGGER_CLASSES,
                               cpb_hidden=16)
CLIP_HINT = ("use the OpenCLIP ViT-bigG-14 vision tower: ComfyUI's clip_vision_g.safetensors or "
             "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k model.safetensors")
TAGGER_HINT = "use SmilingWolf/wd-v1-4-swinv2-tagger-v2 model.safetensors"


class XLReferenceEncoder(nn.Module):
    """CLIP-bigG vision tower (``clip``) and WD tagger (``tagger``): what the XL ClusterConcat reads."""

    def __init__(self, clip: ClipVisionTower, tagger: SwinV2Tagger) -> None:
        super().__init__()
        self.clip = clip
        self.tagger = tagger

    @property
    def projection_dim(self) -> int:
        return self.clip.cfg.projection_dim

    @property
    def feature_dim(self) -> int:
        return self.tagger.cfg.num_features


def clip_from_state_dict(sd: dict[str, Tensor], what: str) -> ClipVisionTower:
    """The CLIP-bigG tower from an HF-format state dict; a named error for other formats."""
    if any(k.startswith("visual.") for k in sd):
        raise CheckpointError(f"{what} is an open_clip-format CLIP file (visual.* keys); XL reads the Hugging Face "
                              f"format: {CLIP_HINT}")
    if "vision_model.embeddings.patch_embedding.weight" not in sd or "visual_projection.weight" not in sd:
        raise CheckpointError(f"{what} is not a CLIP vision tower with projection (no vision_model.* / "
                              f"visual_projection keys): {CLIP_HINT}")
    hidden = int(sd["vision_model.embeddings.patch_embedding.weight"].shape[0])
    if hidden != 1664 and hidden >= 256:  # (the tiny test towers are narrower)
        raise CheckpointError(f"{what} is a {hidden}-wide CLIP vision tower, not ViT-bigG-14 (1664; an SD2.1 "
                              f"ColorizeDiffusion file uses ViT-H-14, 1280): {CLIP_HINT}")
    try:
        cfg = infer_clip_config(sd)
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"{what}: cannot read the CLIP vision tower's sizes ({type(e).__name__}: {e}); "
                              f"{CLIP_HINT}") from None
    check_weight_dtypes(sd, what, [k for k in sd if k.startswith(("vision_model.", "visual_projection."))
                                   and not k.endswith("position_ids")])
    return ClipVisionTower.from_state_dict(sd, cfg)


def tagger_from_state_dict(sd: dict[str, Tensor], what: str) -> SwinV2Tagger:
    """The SwinV2 tagger from a timm-format state dict; a named error for other files or class counts."""
    sd = to_timm_layout(sd)
    if "patch_embed.proj.weight" not in sd or "layers.0.blocks.0.attn.logit_scale" not in sd:
        raise CheckpointError(f"{what} is not a SwinV2 tagger (no patch_embed / layers.*.attn.logit_scale keys): "
                              f"{TAGGER_HINT}")
    try:
        cfg = infer_tagger_config(sd)
    except (KeyError, IndexError, ValueError) as e:
        raise CheckpointError(f"{what}: cannot read the tagger's sizes ({type(e).__name__}: {e}); {TAGGER_HINT}") \
            from None
    if cfg.num_classes != XL_TAGGER_CLASSES:
        raise CheckpointError(f"{what} is a tagger with {cfg.num_classes} classes, not the WD v1.4 SwinV2 tagger v2 "
                              f"({XL_TAGGER_CLASSES}) the XL models were trained with: {TAGGER_HINT}")
    check_weight_dtypes(sd, what, [k for k, v in sd.items() if k.rsplit(".", 1)[-1] != "num_batches_tracked"])
    return SwinV2Tagger.from_state_dict(sd, cfg)


def load_xl_reference_encoder(clip: PathLike, tagger: PathLike) -> XLReferenceEncoder:
    """Both XL reference encoders from their files (safetensors, or weights-only ``torch.load``), frozen, fp32."""
    clip_name, tagger_name = Path(clip).name, Path(tagger).name
    tower = clip_from_state_dict(load_state_dict_file(clip), clip_name)
    swin = tagger_from_state_dict(load_state_dict_file(tagger), tagger_name)
    encoder = XLReferenceEncoder(tower, swin).float().eval()
    encoder.requires_grad_(False)
    return encoder


def check_encoder_fits(encoder: XLReferenceEncoder, proj: nn.Module, what: str) -> None:
    """A named error when the checkpoint's ClusterConcat (``proj``) cannot read these encoders' tokens."""
    cfg = proj.cfg  # type: ignore[attr-defined]
    if encoder.projection_dim != cfg.input_dim:
        raise CheckpointError(f"{what} reads {cfg.input_dim}-wide CLIP tokens; this CLIP tower projects to "
                              f"{encoder.projection_dim}: {CLIP_HINT}")
    if encoder.feature_dim != cfg.c_dim:
        raise CheckpointError(f"{what} reads {cfg.c_dim}-wide tagger features; this tagger gives "
                              f"{encoder.feature_dim}: {TAGGER_HINT}")
    grid = encoder.tagger.cfg.grid
    if grid * grid != cfg.token_length:
        raise CheckpointError(f"{what} keeps {cfg.token_length} tokens; this tagger gives {grid * grid}: "
                              f"{TAGGER_HINT}")


def tiny_encoder_state_dicts(seed: int = 0) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Random ``(CLIP, tagger)`` state dicts of the tiny test encoders in the released file formats."""
    torch.manual_seed(seed)
    clip = ClipVisionTower(TINY_XL_CLIP).state_dict()
    tagger = SwinV2Tagger(TINY_XL_TAGGER).state_dict()
    return ({k: v.detach().contiguous() for k, v in clip.items()},
            {k: v.detach().contiguous() for k, v in tagger.items()})


__all__ = ["TINY_XL_CLIP", "TINY_XL_TAGGER", "XLReferenceEncoder", "XL_TAGGER_CLASSES", "check_encoder_fits",
           "clip_from_state_dict", "load_xl_reference_encoder", "tagger_from_state_dict",
           "tiny_encoder_state_dicts"]
