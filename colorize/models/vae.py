"""kl-f8 autoencoder (SD ``AutoencoderKL``) with the SD-2 key layout.

The latent diffusion model works in the 4-channel latent of this VAE (thesis ch. 5): images in
[-1, 1] are encoded to a diagonal Gaussian posterior, and the sampler's latents (divided by
``scale_factor`` = 0.18215) are decoded back to pixels.

Key names (module level): ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``;
``down.{i}.block.{j}``, ``down.{i}.downsample.conv``, ``up.{i}.block.{j}``, ``up.{i}.upsample.conv``,
``mid.block_1 / attn_1 / block_2`` with 1x1-conv ``q, k, v, proj_out`` and ``norm``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.config import VAEConfig


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm → swish → 3x3 conv, twice, plus a (1x1 ``nin_shortcut`` when widths differ) skip."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections (scale 1/sqrt(C)), via SDPA."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (b, c, h, w) -> (b, 1, h*w, c): one head over all spatial positions
        q, k, v = (m(y).flatten(2).transpose(1, 2).unsqueeze(1) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv after an asymmetric (right/bottom) zero pad of one pixel."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 followed by a 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResnetBlock(ch, ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution level: res blocks (each optionally followed by attention) and a resampler."""

    def __init__(self, chans: Sequence[tuple[int, int]], attn: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o) for i, o in chans)
        self.attn = nn.ModuleList(AttnBlock(o) for _, o in chans) if attn else nn.ModuleList()

    def run_blocks(self, x: Tensor) -> Tensor:
        for j, blk in enumerate(self.block):
            x = blk(x)
            if len(self.attn):
                x = self.attn[j](x)
        return x


class Encoder(nn.Module):
    """Image → ``2 * z_channels`` moments at 1/``2**(len(ch_mult)-1)`` resolution."""

    def __init__(self, cfg: VAEConfig, attn_resolutions: Sequence[int] = (), resolution: int = 512) -> None:
        super().__init__()
        ch, mult = cfg.ch, (1, *cfg.ch_mult)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.down = nn.ModuleList()
        res = resolution
        for i in range(len(cfg.ch_mult)):
            c_in, c_out = ch * mult[i], ch * mult[i + 1]
            chans = [(c_in if j == 0 else c_out, c_out) for j in range(cfg.num_res_blocks)]
            level = _Level(chans, res in attn_resolutions)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c_out)
                res //= 2
            self.down.append(level)
        top = ch * cfg.ch_mult[-1]
        self.mid = _Mid(top)
        self.norm_out = _norm(top)
        self.conv_out = nn.Conv2d(top, 2 * cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``z_channels`` latent → image; ``up`` is indexed by level (``up.0`` is the full-resolution one)."""

    def __init__(self, cfg: VAEConfig, attn_resolutions: Sequence[int] = (), resolution: int = 512) -> None:
        super().__init__()
        ch, n = cfg.ch, len(cfg.ch_mult)
        top = ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, top, 3, padding=1)
        self.mid = _Mid(top)
        levels: list[_Level] = [None] * n  # type: ignore[list-item]
        c_in, res = top, resolution // 2 ** (n - 1)
        for i in reversed(range(n)):
            c_out = ch * cfg.ch_mult[i]
            chans = [(c_in if j == 0 else c_out, c_out) for j in range(cfg.num_res_blocks + 1)]
            level = _Level(chans, res in attn_resolutions)
            if i != 0:
                level.upsample = Upsample(c_out)
                res *= 2
            levels[i] = level
            c_in = c_out
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.out_ch, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) from stacked moments; log-variance clamped to [-30, 20]."""

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean


class AutoencoderKL(nn.Module):
    """kl-f8 VAE. ``encode``/``decode`` work on unscaled latents; ``*_latent`` apply ``scale_factor``."""

    def __init__(self, cfg: VAEConfig, attn_resolutions: Sequence[int] = (), resolution: int = 512) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, attn_resolutions, resolution)
        self.decoder = Decoder(cfg, attn_resolutions, resolution)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Image in [-1, 1] (b, in_channels, H, W) → posterior over (b, embed_dim, H/f, W/f)."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latent (b, embed_dim, h, w) → image (b, out_ch, h·f, w·f), roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))

    def encode_latent(
        self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None
    ) -> Tensor:
        """Diffusion latent ``scale_factor · z``; z is a posterior sample (official) or the mean."""
        post = self.encode(x)
        z = post.sample(generator) if sample else post.mode()
        return z * self.cfg.scale_factor

    def decode_latent(self, z: Tensor) -> Tensor:
        """Decode a diffusion latent: divide by ``scale_factor`` first."""
        return self.decode(z / self.cfg.scale_factor)

    def forward(self, x: Tensor, sample: bool = False) -> Tensor:
        post = self.encode(x)
        return self.decode(post.sample() if sample else post.mode())


def vae_config_from_ddconfig(params: dict) -> tuple[VAEConfig, dict]:
    """``(VAEConfig, extra kwargs)`` from an ldm ``AutoencoderKL`` params dict (``embed_dim`` + ``ddconfig``)."""
    dd = params.get("ddconfig", params)
    if not dd.get("double_z", True):
        raise ValueError("only double_z=True (KL posterior) autoencoders are supported")
    cfg = VAEConfig(
        embed_dim=int(params.get("embed_dim", dd["z_channels"])),
        z_channels=int(dd["z_channels"]),
        in_channels=int(dd.get("in_channels", 3)),
        out_ch=int(dd.get("out_ch", 3)),
        ch=int(dd["ch"]),
        ch_mult=tuple(int(m) for m in dd["ch_mult"]),
        num_res_blocks=int(dd["num_res_blocks"]),
    )
    extra = {"attn_resolutions": tuple(dd.get("attn_resolutions", ())), "resolution": int(dd.get("resolution", 512))}
    return cfg, extra


@torch.no_grad()
def posterior_latent(vae: nn.Module, image: Tensor, noise: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """Image in [-1, 1] → diffusion latent ``scale_factor · z``: ``z`` the posterior sample with the given
    standard-normal draw (the official ``posterior.sample()``) or one drawn from ``generator`` (on the CPU), or the
    posterior mean when neither is given."""
    post = vae.encode(image)
    if noise is None and generator is not None:
        noise = torch.randn(post.mean.shape, generator=generator)
    z = post.mean if noise is None else post.mean + post.std * noise.to(post.mean)
    return z * vae.cfg.scale_factor


class SeededLatentEncoder:
    """``image in [-1, 1] → scale_factor · z`` with ``z`` a VAE posterior sample (as the official v2 app),
    its noise drawn from a CPU generator seeded per generation so results reproduce on any device."""

    def __init__(self, vae: nn.Module, seed: int) -> None:
        self.vae = vae
        self.generator = torch.Generator().manual_seed(int(seed))

    def __call__(self, image: Tensor) -> Tensor:
        w = next(self.vae.parameters())
        return posterior_latent(self.vae, image.to(w.device, w.dtype), generator=self.generator)


__all__ = ["AutoencoderKL", "DiagonalGaussian", "SeededLatentEncoder", "posterior_latent", "vae_config_from_ddconfig"]
