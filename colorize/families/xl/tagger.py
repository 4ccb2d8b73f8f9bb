"""WD v1.4 SwinV2 tagger of ColorizeDiffusion XL (the second reference encoder), in timm's ``SwinTransformerV2`` key
naming, so ``SmilingWolf/wd-v1-4-swinv2-tagger-v2`` ``model.safetensors`` loads unchanged.

Facts (official repository tellurion-kanata/ColorizeDiffusionXL at commit ec78784): ``WDv14SwinTransformerV2``
(``refnet/modules/embedder.py:42``) builds timm ``swinv2_base_window8_256`` with ``img_size 448, window_size 14,
num_classes 9083, global_pool avg, act gelu`` (``refnet/modules/__init__.py:4-34``): embed 128, depths 2/2/18/2,
heads 4/8/16/32, patch 4, MLP ratio 4. The reference is resized bicubically to 448² (``align_corners=True``,
``antialias=True``), not normalised (the [-1, 1] input already is the tagger's mean/std-0.5 convention) and turned
RGB→BGR (``embedder.py:224-234``); the tokens are patch_embed, every stage (downsample, then blocks) and the final
norm: 14×14×1024 (``embedder.py:171-222``).

SwinV2 as implemented here: post-norm residual blocks ``x + norm1(attn(x))``, ``x + norm2(mlp(x))``; window attention
with cosine similarity scaled by ``exp(min(logit_scale, log 100))`` per head, plus ``16·sigmoid`` of a continuous
position bias (a 2→512→heads ReLU MLP over log-spaced relative coordinates); shifted windows (shift = window/2 on
odd blocks, none once the window covers the whole grid) with the −100 attention mask between regions; v2 patch
merging (2×2 neighbours concatenated, Linear 4C→2C without bias, then LayerNorm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.checkpoint.assign import materialize

#: Buffers timm builds itself (older exports may carry them); never loaded.
_DERIVED_BUFFERS = ("relative_position_index", "relative_coords_table", "attn_mask", "k_bias")


@dataclass(frozen=True)
class TaggerConfig:
    """SwinV2 tagger sizes; defaults are the official ``swinv2_base_window8_256`` at 448 px / window 14."""

    img_size: int = 448
    patch_size: int = 4
    in_chans: int = 3
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 14
    mlp_ratio: float = 4.0
    num_classes: int = 9083
    cpb_hidden: int = 512

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def grid(self) -> int:
        """Token grid side of the last stage (14 at full size)."""
        return self.img_size // self.patch_size // 2 ** (len(self.depths) - 1)

    @classmethod
    def from_timm_kwargs(cls, kwargs: dict, num_classes: int | None = None) -> "TaggerConfig":
        """From the keyword arguments given to timm (``embed_dim``, ``depths``, ``num_heads``, ``img_size``, …)."""
        d: dict = {}
        for k in ("img_size", "patch_size", "in_chans", "embed_dim", "window_size", "mlp_ratio"):
            if k in kwargs:
                v = kwargs[k]
                d[k] = int(v[0] if isinstance(v, (list, tuple)) else v) if k != "mlp_ratio" else float(v)
        for k in ("depths", "num_heads"):
            if k in kwargs:
                d[k] = tuple(int(x) for x in kwargs[k])
        if num_classes is not None:
            d["num_classes"] = int(num_classes)
        act = kwargs.get("act_layer", "gelu")
        if act not in ("gelu", None):
            raise ValueError(f"tagger activation {act!r} is not supported (only 'gelu')")
        return cls(**d)


def infer_tagger_config(state_dict: dict[str, Tensor], prefix: str = "", img_size: int = 448,
                        window_size: int = 14) -> TaggerConfig:
    """Tagger sizes from timm-named shapes (keys under ``prefix``, either timm layout). Image size and window are not
    in the shapes (the official 448/14 by default); heads come from ``logit_scale`` (heads, 1, 1)."""
    sd = to_timm_layout({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
    embed, chans, patch, _ = sd["patch_embed.proj.weight"].shape
    depths, heads = [], []
    i = 0
    while f"layers.{i}.blocks.0.attn.logit_scale" in sd:
        j = 0
        while f"layers.{i}.blocks.{j}.attn.logit_scale" in sd:
            j += 1
        depths.append(j)
        heads.append(int(sd[f"layers.{i}.blocks.0.attn.logit_scale"].shape[0]))
        i += 1
    fc1 = sd["layers.0.blocks.0.mlp.fc1.weight"]
    cpb = sd["layers.0.blocks.0.attn.cpb_mlp.0.weight"]
    head = sd.get("head.fc.weight")
    return TaggerConfig(
        img_size=img_size, patch_size=int(patch), in_chans=int(chans), embed_dim=int(embed), depths=tuple(depths),
        num_heads=tuple(heads), window_size=window_size, mlp_ratio=fc1.shape[0] / embed,
        num_classes=int(head.shape[0]) if head is not None else 0, cpb_hidden=int(cpb.shape[0]),
    )


def to_timm_layout(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """A SwinV2 state dict in the current timm layout: the derived buffers (relative position index/table,
    attention masks, k bias) dropped; an older export (timm < 0.9: ``layers.i.downsample`` at the *end* of stage
    i, ``head.weight``) renamed to ``layers.{i+1}.downsample`` and ``head.fc.*``. Current-layout dicts pass
    through unchanged."""
    sd = {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in _DERIVED_BUFFERS}
    old = any(k.startswith("layers.0.downsample.") for k in sd)
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if old and k.startswith("layers.") and ".downsample." in k:
            i, rest = k[len("layers."):].split(".", 1)
            k = f"layers.{int(i) + 1}.{rest}"
        elif k in ("head.weight", "head.bias"):
            k = "head.fc." + k.split(".")[1]
        out[k] = v
    return out


# --- windows ---------------------------------------------------------------------------------------------------


def window_partition(x: Tensor, ws: tuple[int, int]) -> Tensor:
    """(B, H, W, C) → (B·nW, wh·ww, C), windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws[0], ws[0], w // ws[1], ws[1], c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws[0] * ws[1], c)


def window_reverse(windows: Tensor, ws: tuple[int, int], h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B·nW, wh·ww, C) → (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws[0], w // ws[1], ws[0], ws[1], c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shift_attention_mask(h: int, w: int, ws: tuple[int, int], shift: tuple[int, int]) -> Tensor | None:
    """(nW, N, N) additive mask of a cyclically shifted grid: 0 within one region, −100 across regions; None for
    no shift. Regions along each axis: [0, −window), [−window, −shift), [−shift, end)."""
    if not any(shift):
        return None
    img = torch.zeros(1, h, w, 1, device="cpu")
    label = 0
    for hs in _regions(h, ws[0], shift[0]):
        for wsl in _regions(w, ws[1], shift[1]):
            img[:, hs, wsl, :] = label
            label += 1
    win = window_partition(img, ws).squeeze(-1)  # (nW, N)
    diff = win[:, None, :] - win[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def _regions(n: int, window: int, shift: int) -> list[slice]:
    if shift == 0:
        return [slice(0, n)]
    return [slice(0, n - window), slice(n - window, n - shift), slice(n - shift, n)]


def relative_coords_table(ws: tuple[int, int]) -> Tensor:
    """(2wh−1, 2ww−1, 2) log-spaced relative coordinates: each axis divided by (window−1), ×8, then
    sign(x)·log2(1+|x|)/log2(8)."""
    rh = torch.arange(-(ws[0] - 1), ws[0], dtype=torch.float32, device="cpu")
    rw = torch.arange(-(ws[1] - 1), ws[1], dtype=torch.float32, device="cpu")
    t = torch.stack(torch.meshgrid(rh, rw, indexing="ij"), dim=-1)
    t[..., 0] /= max(ws[0] - 1, 1)
    t[..., 1] /= max(ws[1] - 1, 1)
    t = t * 8
    return torch.sign(t) * torch.log2(t.abs() + 1.0) / math.log2(8)


def relative_position_index(ws: tuple[int, int]) -> Tensor:
    """(N, N) index into the flattened (2wh−1)·(2ww−1) table for every query/key pair of a window."""
    ch, cw = torch.meshgrid(torch.arange(ws[0], device="cpu"), torch.arange(ws[1], device="cpu"), indexing="ij")
    coords = torch.stack([ch.flatten(), cw.flatten()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return (rel[0] + ws[0] - 1) * (2 * ws[1] - 1) + (rel[1] + ws[1] - 1)


# --- modules ---------------------------------------------------------------------------------------------------


class WindowAttentionV2(nn.Module):
    """Cosine window attention with a continuous position bias. Its derived tables are built on the CPU even
    under a meta-device construction (they are no part of a state dict, so nothing would replace them)."""

    def __init__(self, dim: int, heads: int, ws: tuple[int, int], cpb_hidden: int = 512) -> None:
        super().__init__()
        self.heads = heads
        self.ws = ws
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, cpb_hidden), nn.ReLU(inplace=True), nn.Linear(cpb_hidden, heads,
                                                                                                 bias=False))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)
        self.register_buffer("relative_coords_table", relative_coords_table(ws), persistent=False)
        self.register_buffer("relative_position_index", relative_position_index(ws), persistent=False)

    def position_bias(self) -> Tensor:
        """(heads, N, N) = 16·sigmoid(cpb_mlp(table))[index]."""
        n = self.ws[0] * self.ws[1]
        table = self.cpb_mlp(self.relative_coords_table.to(self.q_bias.dtype)).view(-1, self.heads)
        bias = table[self.relative_position_index.reshape(-1)].view(n, n, self.heads).permute(2, 0, 1)
        return 16 * torch.sigmoid(bias)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        bw, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
        attn = attn + self.position_bias()[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(-1, nw, self.heads, n, n) + mask.to(attn.dtype)[None, :, None]).view(-1, self.heads, n, n)
        out = torch.softmax(attn, dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def window_and_shift(resolution: tuple[int, int], window: int, shift: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Per axis: the window is clipped to the grid; no shift where the window covers the whole axis."""
    ws = tuple(min(r, window) for r in resolution)
    sh = tuple(0 if r <= w else shift for r, w in zip(resolution, ws))
    return ws, sh  # type: ignore[return-value]


class SwinV2Block(nn.Module):
    def __init__(self, dim: int, heads: int, resolution: tuple[int, int], window: int, shift: int,
                 mlp_ratio: float = 4.0, cpb_hidden: int = 512) -> None:
        super().__init__()
        self.resolution = resolution
        self.ws, self.shift = window_and_shift(resolution, window, shift)
        self.attn = WindowAttentionV2(dim, heads, self.ws, cpb_hidden)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)
        ph, pw = (-(-r // w) * w for r, w in zip(resolution, self.ws))
        mask = shift_attention_mask(ph, pw, self.ws, self.shift)
        self.register_buffer("attn_mask", mask, persistent=False)

    def _attn(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        if any(self.shift):
            x = torch.roll(x, shifts=(-self.shift[0], -self.shift[1]), dims=(1, 2))
        ph, pw = (-h) % self.ws[0], (-w) % self.ws[1]
        if ph or pw:
            x = F.pad(x, (0, 0, 0, pw, 0, ph))
        hp, wp = h + ph, w + pw
        win = self.attn(window_partition(x, self.ws), self.attn_mask)
        x = window_reverse(win, self.ws, hp, wp)[:, :h, :w]
        if any(self.shift):
            x = torch.roll(x, shifts=self.shift, dims=(1, 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.norm1(self._attn(x))
        return x + self.norm2(self.mlp(x))


class PatchMergingV2(nn.Module):
    """(B, H, W, C) → (B, H/2, W/2, out): 2×2 neighbours concatenated in the order (0,0), (1,0), (0,1), (1,1)
    (row offset fastest), Linear without bias, then LayerNorm."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.norm(self.reduction(x))


class SwinV2Stage(nn.Module):
    def __init__(self, dim: int, out_dim: int, in_resolution: tuple[int, int], depth: int, heads: int, window: int,
                 downsample: bool, mlp_ratio: float, cpb_hidden: int) -> None:
        super().__init__()
        res = (in_resolution[0] // 2, in_resolution[1] // 2) if downsample else in_resolution
        self.downsample = PatchMergingV2(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinV2Block(out_dim, heads, res, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, cpb_hidden)
            for i in range(depth)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.downsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class _PatchEmbed(nn.Module):
    def __init__(self, cfg: TaggerConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, cfg.patch_size)
        self.norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class _Head(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(features, classes) if classes > 0 else nn.Identity()


def preprocess_tagger(images: Tensor, image_size: int = 448) -> Tensor:
    """(b, 3, H, W) RGB in [-1, 1] → (b, 3, s, s) BGR in [-1, 1]: bicubic resize (align_corners, antialias), no
    normalisation, channels reversed (``refnet/modules/embedder.py:224-234``)."""
    x = F.interpolate(images.float(), (image_size, image_size), mode="bicubic", align_corners=True, antialias=True)
    return x.flip(1)


class SwinV2Tagger(nn.Module):
    """timm ``SwinTransformerV2`` look-alike (``state_dict()`` keys equal timm's) with the tagger's uses."""

    def __init__(self, cfg: TaggerConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or TaggerConfig()
        self.patch_embed = _PatchEmbed(cfg)
        res = (cfg.img_size // cfg.patch_size,) * 2
        stages = []
        dim = cfg.embed_dim
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            out_dim = cfg.embed_dim * 2**i
            stages.append(SwinV2Stage(dim, out_dim, res, depth, heads, cfg.window_size, i > 0, cfg.mlp_ratio,
                                      cfg.cpb_hidden))
            if i > 0:
                res = (res[0] // 2, res[1] // 2)
            dim = out_dim
        self.layers = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(cfg.num_features)
        self.head = _Head(cfg.num_features, cfg.num_classes)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, Tensor], cfg: TaggerConfig | None = None) -> "SwinV2Tagger":
        """Build on the meta device (config inferred when not given) and assign the tensors strictly, after
        :func:`to_timm_layout`; parameters keep the file's dtype and device."""
        sd = to_timm_layout(state_dict)
        cfg = cfg or infer_tagger_config(sd)
        return materialize(lambda: cls(cfg), sd, "WD tagger")

    def preprocess(self, images: Tensor) -> Tensor:
        return preprocess_tagger(images, self.cfg.img_size)

    def forward_grid(self, pixels: Tensor) -> Tensor:
        """Preprocessed pixels → (b, h, w, num_features) after the final norm."""
        x = self.patch_embed(pixels.to(self.norm.weight.dtype))
        x = self.layers(x)
        return self.norm(x)

    def features(self, images: Tensor) -> Tensor:
        """(b, 3, H, W) reference in [-1, 1] → (b, grid², num_features) tokens (14×14×1024 at full size)."""
        return self.forward_grid(self.preprocess(images)).flatten(1, 2)

    def pooled(self, images: Tensor) -> Tensor:
        """(b, 1, num_features): the tokens averaged (timm's global average pool)."""
        return self.features(images).mean(dim=1, keepdim=True)

    def logits(self, tokens: Tensor) -> Tensor:
        """Classifier head on tokens (b, n, num_features) → (b, n, num_classes); on pooled tokens the tag logits."""
        return self.head.fc(tokens)

    def forward(self, images: Tensor) -> Tensor:
        return self.logits(self.pooled(images))[:, 0]
