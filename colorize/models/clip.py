"""OpenCLIP reference-image and text encoder (thesis ch. 5: the reference is encoded by CLIP ViT-H/14).

The ViT's 257 output tokens — ``ln_post`` and ``proj`` applied to *every* token, no L2 norm — are the
colorizer's cross-attention context (the 256 patch tokens). Text embeddings (unit-norm EOT features
from all text blocks but the last) are only used by the token manipulation.

Built from config with ``open_clip`` (never downloads); state-dict keys are open_clip ``CLIP`` names:
``visual.*`` and the text parts at the top level (see :mod:`colorize.models.clip_convert`).
"""
from __future__ import annotations

import math
from typing import Literal

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import _build_text_tower, _build_vision_tower
from torch import Tensor, nn

from colorize.config import ClipConfig
from colorize.models.clip_convert import to_open_clip

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TokenOutput = Literal["full", "local", "cls"]


def tokenize(prompts: list[str], context_length: int = 77) -> Tensor:
    """open_clip BPE ids (SOT 49406 … EOT 49407, zero padded), shape (n, context_length), int64."""
    return open_clip.tokenize(list(prompts), context_length=context_length)


def _run_blocks(transformer: nn.Module, blocks: list[nn.Module], x: Tensor, mask: Tensor | None) -> Tensor:
    """Residual blocks on batch-first ``x`` (N, L, D), whatever layout the open_clip version uses."""
    batch_first = getattr(transformer, "batch_first", False)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks:
        x = blk(x, attn_mask=mask)
    return x if batch_first else x.transpose(0, 1)


class ReferenceEncoder(nn.Module):
    """Frozen OpenCLIP: ``.visual`` (open_clip ViT) and, if ``with_text``, the text tower parts."""

    def __init__(self, cfg: ClipConfig, with_text: bool = True, quick_gelu: bool = False) -> None:
        super().__init__()
        oc = cfg.open_clip_config()
        self.cfg = cfg
        self.image_size = int(oc["vision_cfg"].get("image_size", 224))
        self.visual = _build_vision_tower(oc["embed_dim"], oc["vision_cfg"], quick_gelu)
        self.context_length = int(oc["text_cfg"].get("context_length", 77))
        if with_text:
            text = _build_text_tower(oc["embed_dim"], oc["text_cfg"], quick_gelu)
            self.token_embedding = text.token_embedding
            self.positional_embedding = text.positional_embedding
            self.transformer = text.transformer
            self.ln_final = text.ln_final
            self.text_projection = text.text_projection
            self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "ReferenceEncoder":
        """Always stays in eval mode (frozen encoder)."""
        return super().train(False)

    @property
    def has_text(self) -> bool:
        return hasattr(self, "token_embedding")

    def drop_text(self) -> None:
        """Remove the text tower (e.g. after loading a vision-only checkpoint)."""
        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection",
                     "logit_scale"):
            if hasattr(self, name):
                delattr(self, name)

    # ---------------------------------------------------------------- image path
    def preprocess(self, image: Tensor) -> Tensor:
        """[-1,1] image of any size → squash-resized (S×S, bicubic, align_corners, antialias), CLIP-normalised."""
        x = image.float()
        device = x.device
        if device.type == "mps":  # antialiased bicubic is missing on MPS in many torch releases; it is cheap on CPU
            x = x.cpu()
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=True,
                          antialias=True).to(device)
        x = (x + 1.0) / 2.0
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def encode_image(self, image: Tensor, output: TokenOutput = "full", preprocess: bool = True) -> Tensor:
        """Tokens after ``ln_post`` and ``proj`` on every token: "full" (b, 1+g², d), "local" (b, g², d),
        "cls" (b, 1, d). ``image`` in [-1, 1] (or already preprocessed with ``preprocess=False``)."""
        v = self.visual
        ref = v.conv1.weight
        x = self.preprocess(image) if preprocess else image
        x = v.conv1(x.to(device=ref.device, dtype=ref.dtype))
        x = x.flatten(2).transpose(1, 2)  # (b, g², width)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        x = v.ln_pre(x)
        x = _run_blocks(v.transformer, list(v.transformer.resblocks), x, None)
        x = v.ln_post(x)
        if v.proj is not None:
            x = x @ v.proj
        if output == "full":
            return x
        if output == "local":
            return x[:, 1:]
        if output == "cls":
            return x[:, :1]
        raise ValueError(f"output must be 'full', 'local' or 'cls', got {output!r}")

    # ---------------------------------------------------------------- text path
    def _require_text(self) -> None:
        if not self.has_text:
            raise RuntimeError(
                "the CLIP text tower is unavailable: this ReferenceEncoder was built with with_text=False or "
                "loaded from a vision-only checkpoint (e.g. an HF/ComfyUI clip_vision file); load a checkpoint "
                "with the open_clip text weights (e.g. the colorizer's cond_stage_model.transformer.model.*) "
                "to use text manipulation"
            )

    def encode_text_ids(self, ids: Tensor) -> Tensor:
        """Token ids (n, L≤context) → unit-norm EOT features (n, 1, embed_dim) from all blocks but the last."""
        self._require_text()
        ids = ids.to(device=self.token_embedding.weight.device, dtype=torch.long)
        n, length = ids.shape
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        # causal mask built per call (no buffer: the module can then be built on the meta device)
        mask = torch.full((length, length), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        x = _run_blocks(self.transformer, list(self.transformer.resblocks)[:-1], x, mask)
        x = self.ln_final(x)
        x = x[torch.arange(n, device=x.device), ids.argmax(dim=-1)]  # EOT token (largest id)
        proj = self.text_projection
        if isinstance(proj, nn.Linear):
            x = proj(x)
        elif proj is not None:
            x = x @ proj
        return F.normalize(x, dim=-1).unsqueeze(1)

    def encode_text(self, prompts: list[str]) -> Tensor:
        """Prompts → (n, 1, embed_dim) unit-norm text features (open_clip tokenizer, 77 ids)."""
        self._require_text()
        return self.encode_text_ids(tokenize(list(prompts), self.context_length))

    # ---------------------------------------------------------------- weights
    def load_reference_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load open_clip / official (any prefix) or HF/ComfyUI clip_vision weights, strictly.

        A vision-only checkpoint removes the text tower (``encode_text`` then raises); text weights
        present in ``sd`` are ignored when the encoder was built without text.
        """
        oc = to_open_clip(sd)
        has_text = "token_embedding.weight" in oc
        if not has_text:
            self.drop_text()
            oc = {k: v for k, v in oc.items() if k.startswith("visual.")}
        elif not self.has_text:
            oc = {k: v for k, v in oc.items() if k.startswith("visual.")}
        elif "logit_scale" not in oc:
            oc["logit_scale"] = self.logit_scale.detach().clone()  # unused by the colorizer
        self.load_state_dict(oc, strict=True)


def clip_config_from_open_clip(name: str, config: dict) -> ClipConfig:
    """``ClipConfig`` from an open_clip model-config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
    return ClipConfig(name=name, embed_dim=int(config["embed_dim"]), vision=dict(config["vision_cfg"]),
                      text=dict(config["text_cfg"]))


__all__ = ["CLIP_MEAN", "CLIP_STD", "ReferenceEncoder", "clip_config_from_open_clip", "tokenize"]
