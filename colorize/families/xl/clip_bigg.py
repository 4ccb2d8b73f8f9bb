"""CLIP ViT-bigG/14 vision tower of ColorizeDiffusion XL, in the Hugging Face ``CLIPVisionModelWithProjection`` key
format (``vision_model.*``, ``visual_projection.weight``), so the ``clip_vision_g.safetensors`` files users already
have load unchanged.

Facts (official repository tellurion-kanata/ColorizeDiffusionXL at commit ec78784): the reference encoder is
transformers' ``CLIPVisionModelWithProjection`` of ``laion/CLIP-ViT-bigG-14-laion2B-39B-b160k``
(``refnet/modules/embedder.py:310``): hidden 1664, 48 layers, 16 heads, MLP 8192, patch 14, image 224 (257 tokens),
projection 1280, exact GELU, LayerNorm eps 1e-5. The reference is resized bicubically to 224² with
``align_corners=True`` and ``antialias=True``, mapped from [-1, 1] to [0, 1] and normalised with the CLIP mean/std;
the ``last_hidden_state`` (all 257 tokens, before the post-LayerNorm) then goes through ``post_layernorm`` and
``visual_projection`` token by token (``refnet/modules/embedder.py:329-347``, ``refnet/models/colorizerXL.py:91-101``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.checkpoint.assign import materialize

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipVisionConfig:
    """Vision tower sizes; the defaults are ViT-bigG/14 (laion2B-39B-b160k)."""

    hidden_size: int = 1664
    intermediate_size: int = 8192
    num_hidden_layers: int = 48
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 1280
    num_channels: int = 3
    layer_norm_eps: float = 1e-5

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def from_hf(cls, cfg: dict) -> "ClipVisionConfig":
        """From a Hugging Face ``CLIPVisionConfig`` dict (unknown keys ignored; only the exact GELU is supported)."""
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"CLIP vision activation {act!r} is not supported (only the exact 'gelu')")
        names = cls.__dataclass_fields__
        return cls(**{k: cfg[k] for k in names if k in cfg})

    def to_dict(self) -> dict:
        return asdict(self)


#: Head counts of the released CLIP ViTs by hidden size (B, L, H, bigG); the head count is not in the shapes.
_KNOWN_HEADS = {768: 12, 1024: 16, 1280: 16, 1664: 16}


def infer_clip_config(
    state_dict: dict[str, Tensor], prefix: str = "", num_attention_heads: int | None = None
) -> ClipVisionConfig:
    """The tower's sizes read from the shapes of an HF-format state dict (keys under ``prefix``).

    The head count is not visible in the shapes: give it, or it is taken from the released CLIP ViTs' sizes
    (bigG: 1664 wide, 16 heads), else head width 64."""
    vm = prefix + "vision_model."
    patch = state_dict[vm + "embeddings.patch_embedding.weight"]
    hidden, channels, p, _ = patch.shape
    positions = state_dict[vm + "embeddings.position_embedding.weight"].shape[0]
    grid = math.isqrt(positions - 1)
    layers = 0
    while f"{vm}encoder.layers.{layers}.self_attn.q_proj.weight" in state_dict:
        layers += 1
    inter = state_dict[f"{vm}encoder.layers.0.mlp.fc1.weight"].shape[0]
    proj = state_dict[prefix + "visual_projection.weight"].shape[0]
    heads = num_attention_heads or _KNOWN_HEADS.get(int(hidden)) or (hidden // 64 if hidden % 64 == 0 else 1)
    return ClipVisionConfig(int(hidden), int(inter), layers, int(heads), int(grid * p), int(p), int(proj), int(channels))


class _Embeddings(nn.Module):
    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(cfg.num_channels, cfg.hidden_size, cfg.patch_size, cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight[None]


class _Attention(nn.Module):
    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.heads = cfg.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        # explicit attention as HF's "eager" path (what the official fixtures ran); softmax in float32
        w = torch.softmax((q * (d // h) ** -0.5) @ k.transpose(-1, -2), dim=-1, dtype=torch.float32).to(v.dtype)
        return self.out_proj((w @ v).transpose(1, 2).reshape(b, n, d))


class _Mlp(nn.Module):
    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Layer(nn.Module):
    """Pre-norm transformer layer: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.self_attn = _Attention(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = _Mlp(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class _VisionModel(nn.Module):
    def __init__(self, cfg: ClipVisionConfig) -> None:
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)  # HF's spelling
        self.encoder = _Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def last_hidden_state(self, pixels: Tensor) -> Tensor:
        x = self.pre_layrnorm(self.embeddings(pixels))
        for layer in self.encoder.layers:
            x = layer(x)
        return x


def preprocess_clip(images: Tensor, image_size: int = 224) -> Tensor:
    """(b, 3, H, W) in [-1, 1] → (b, 3, s, s) CLIP input: bicubic resize (align_corners, antialias), [0, 1],
    CLIP mean/std (``refnet/modules/embedder.py:329-336``)."""
    x = F.interpolate(images.float(), (image_size, image_size), mode="bicubic", align_corners=True, antialias=True)
    x = (x + 1.0) * 0.5
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ClipVisionTower(nn.Module):
    """``CLIPVisionModelWithProjection`` look-alike: ``state_dict()`` keys equal HF's."""

    def __init__(self, cfg: ClipVisionConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ClipVisionConfig()
        self.vision_model = _VisionModel(self.cfg)
        self.visual_projection = nn.Linear(self.cfg.hidden_size, self.cfg.projection_dim, bias=False)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Tensor], cfg: ClipVisionConfig | None = None) -> "ClipVisionTower":
        """Build on the meta device (config inferred when not given) and assign the tensors strictly, so the
        1.8 G-parameter tower needs no second copy. HF's ``position_ids`` buffer is ignored, and so are the text
        parts of a whole ``CLIPModel`` file (``text_model.*``, ``text_projection``, ``logit_scale``)."""
        sd = {k: v for k, v in state_dict.items()
              if k.startswith(("vision_model.", "visual_projection.")) and not k.endswith("embeddings.position_ids")}
        cfg = cfg or infer_clip_config(sd)
        return materialize(lambda: cls(cfg), sd, "CLIP vision tower")

    def preprocess(self, images: Tensor) -> Tensor:
        return preprocess_clip(images, self.cfg.image_size)

    def encode_pixels(self, pixels: Tensor) -> Tensor:
        """Preprocessed pixels → (b, 257, projection): post-LN and projection on every last-hidden-state token."""
        h = self.vision_model.last_hidden_state(pixels)
        return self.visual_projection(self.vision_model.post_layernorm(h))

    def reference_tokens(self, images: Tensor) -> Tensor:
        """(b, 3, H, W) reference in [-1, 1] → (b, 257, projection) tokens, as the official ``encode(x, 'full')``."""
        return self.encode_pixels(self.preprocess(images))

    forward = reference_tokens
