"""Reference conditioning of ColorizeDiffusion XL: ClusterConcat, the scalar (sinusoid) embedder, the adm vector
``y`` and the cross-attention context of one reference (plain, or doubled [reference | background] for the
foreground/background separation).

Facts (official repository tellurion-kanata/ColorizeDiffusionXL at commit ec78784):

* ``ClusterConcat`` (``refnet/modules/proj.py:47``, forward ``proj.py:62-70``): multi-head self-attention over the
  projected CLIP tokens (q/k/v without bias, ``to_out.0`` with bias; no norm before it, no residual), the first
  ``token_length`` outputs kept (class token included), ``LayerNorm(input_dim)``, the WD tagger tokens concatenated
  along channels, then ``Linear → SiLU → Linear → LayerNorm`` (keys ``proj.proj.0/2/3``). Full size: input 1280,
  c_dim 1024, output 2048, token_length 196, head width 128. Its ``fgbg`` concatenation splits along the batch axis
  and is a no-op for batch 1 (``proj.py:68-69``), so it is not reproduced.
* ``TimestepEmbedding(256)`` (``refnet/modules/embedder.py:470``): no parameters, [cos, sin] sinusoid.
* adm vector (``refnet/models/colorizerXL.py:145-146``): sinusoids of √(H·W) (output pixel size) and of the constant
  score 7.0, concatenated → 512.
* No reference → zero context of the same shape (``colorizerXL.py:140-143``). With bg_enhance the context is
  [reference tokens | tokens of the reference with the character (reference mask ≥ threshold) painted white]
  (``colorizerXL.py:148-169``) and the U-Net mask is the sketch mask downsampled ×1/8 by nearest interpolation
  (``colorizerXL.py:176-180``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.models.unet import timestep_embedding


class ScalarEmbedder(nn.Module):
    """``TimestepEmbedding(embed_dim)``: parameter-free sinusoid embedding of scalars."""

    def __init__(self, embed_dim: int = 256) -> None:
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, values: Tensor) -> Tensor:
        return timestep_embedding(values.reshape(-1), self.embed_dim)


@dataclass(frozen=True)
class ClusterConcatConfig:
    """Sizes of ``ClusterConcat``; defaults are the released sdxl model's."""

    input_dim: int = 1280
    c_dim: int = 1024
    output_dim: int = 2048
    token_length: int = 196
    dim_head: int = 128

    @property
    def heads(self) -> int:
        return max(1, self.input_dim // self.dim_head)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t: Tensor) -> Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)))
        return self.to_out(out.transpose(1, 2).reshape(b, n, d))


class ClusterConcat(nn.Module):
    """CLIP tokens (b, n, input_dim) and WD tokens (b, token_length, c_dim) → context (b, token_length, output_dim).

    ``state_dict()`` keys: ``attn.to_{q,k,v}.weight``, ``attn.to_out.0.*``, ``norm.*``, ``proj.{0,2,3}.*``."""

    def __init__(self, cfg: ClusterConcatConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ClusterConcatConfig()
        self.attn = _SelfAttention(cfg.input_dim, cfg.heads)
        self.norm = nn.LayerNorm(cfg.input_dim)
        self.proj = nn.Sequential(
            nn.Linear(cfg.input_dim + cfg.c_dim, cfg.output_dim),
            nn.SiLU(),
            nn.Linear(cfg.output_dim, cfg.output_dim),
            nn.LayerNorm(cfg.output_dim),
        )

    @classmethod
    def from_state_dict(
        cls, state_dict: dict[str, Tensor], token_length: int = 196, dim_head: int = 128
    ) -> "ClusterConcat":
        """Build from ``proj.*``-stripped keys (sizes from the shapes; token length and head width are not in them)."""
        cfg = infer_cluster_concat_config(state_dict, token_length, dim_head)
        m = cls(cfg)
        m.load_state_dict(state_dict, strict=True)
        return m

    def forward(self, clip_tokens: Tensor, wd_tokens: Tensor) -> Tensor:
        x = self.attn(clip_tokens)[:, : self.cfg.token_length]
        x = torch.cat([self.norm(x), wd_tokens.to(x.dtype)], dim=-1)
        return self.proj(x)


def infer_cluster_concat_config(
    state_dict: dict[str, Tensor], token_length: int = 196, dim_head: int = 128
) -> ClusterConcatConfig:
    """``ClusterConcat`` sizes from (``proj.``-stripped) weight shapes."""
    input_dim = int(state_dict["attn.to_q.weight"].shape[0])
    out_dim, cat_dim = state_dict["proj.0.weight"].shape
    return ClusterConcatConfig(input_dim, int(cat_dim) - input_dim, int(out_dim), token_length, dim_head)


def paint_character_white(reference: Tensor, rmask: Tensor, threshold: float = 0.5) -> Tensor:
    """The reference with every pixel whose mask is ≥ ``threshold`` set to white (+1 in [-1, 1]). A mask of another
    size is first resized bilinearly to the reference (our choice: the app's masks already have its size)."""
    m = rmask.to(reference.dtype)
    if m.shape[-2:] != reference.shape[-2:]:
        m = F.interpolate(m, reference.shape[-2:], mode="bilinear", align_corners=False)
    return torch.where(m >= threshold, torch.ones_like(reference), reference)


#: State-dict prefixes of the three modules in the official sdxl wrapper. Released checkpoints carry only
#: ``proj.*``; the CLIP tower and the tagger come from their own files (``ckpt_util.py:79-96``).
CLIP_PREFIX, TAGGER_PREFIX, PROJ_PREFIX = "cond_stage_model.model.", "img_embedder.model.", "proj."


class ReferenceConditioner(nn.Module):
    """The three reference modules of the sdxl wrapper: CLIP tower (``clip``, anything with
    ``reference_tokens``), WD tagger (``tagger``, anything with ``features``) and ClusterConcat (``proj``)."""

    def __init__(self, clip: nn.Module, tagger: nn.Module, proj: ClusterConcat) -> None:
        super().__init__()
        self.clip = clip
        self.tagger = tagger
        self.proj = proj

    @classmethod
    def from_state_dicts(
        cls, clip: dict[str, Tensor], tagger: dict[str, Tensor], proj: dict[str, Tensor], *,
        clip_config: object = None, tagger_config: object = None, token_length: int = 196, dim_head: int = 128,
    ) -> "ReferenceConditioner":
        """From the HF-format CLIP vision dict, the timm-format tagger dict and the ``proj.``-stripped ClusterConcat
        dict (configs inferred from the shapes when not given)."""
        from colorize.families.xl.clip_bigg import ClipVisionTower
        from colorize.families.xl.tagger import SwinV2Tagger

        return cls(ClipVisionTower.from_state_dict(clip, clip_config),  # type: ignore[arg-type]
                   SwinV2Tagger.from_state_dict(tagger, tagger_config),  # type: ignore[arg-type]
                   ClusterConcat.from_state_dict(proj, token_length, dim_head))

    def embed(self, reference: Tensor) -> tuple[Tensor, Tensor]:
        """(b, 3, H, W) reference in [-1, 1] → (context (b, token_length, output_dim), class token (b, 1, proj)),
        as the official ``get_learned_embedding``."""
        clip_tokens = self.clip.reference_tokens(reference)
        wd_tokens = self.tagger.features(reference)
        return self.proj(clip_tokens, wd_tokens), clip_tokens[:, :1]

    def context(self, reference: Tensor | None, batch: int) -> Tensor:
        """The cross-attention context for ``batch`` rows (zeros when there is no reference)."""
        if reference is None:
            cfg = self.proj.cfg
            w = self.proj.proj[0].weight
            return torch.zeros(batch, cfg.token_length, cfg.output_dim, dtype=w.dtype, device=w.device)
        ctx, _ = self.embed(reference)
        return _rows(ctx, batch)

    def context_bg_enhance(
        self, reference: Tensor, rmask: Tensor, batch: int, threshold: float = 0.5, background: Tensor | None = None
    ) -> Tensor:
        """(batch, 2·token_length, output_dim) = [reference tokens | background tokens]; the background is
        ``background`` when given, else the reference with the character painted white."""
        bg = background if background is not None else paint_character_white(reference, rmask, threshold)
        ctx = self.embed(torch.cat([reference, bg], dim=0))[0]
        n = reference.shape[0]
        return _rows(torch.cat([ctx[:n], ctx[n:]], dim=1), batch)


def unet_mask(smask: Tensor, batch: int) -> Tensor:
    """The sketch mask as the U-Net gets it: nearest ×1/8 downsampling, expanded to ``batch`` rows."""
    m = F.interpolate(smask.float(), scale_factor=0.125, mode="nearest")
    return _rows(m, batch)


def _rows(x: Tensor, batch: int) -> Tensor:
    if x.shape[0] == batch:
        return x
    if x.shape[0] != 1:
        raise ValueError(f"cannot spread {x.shape[0]} rows over a batch of {batch}")
    return x.expand(batch, *x.shape[1:]).contiguous()
