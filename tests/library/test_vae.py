"""kl-f8 VAE: official parity, full-size key layout, posterior, latent scaling, attention, dtypes."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from colorize.config import TINY_MULT, VAEConfig
from colorize.models.vae import AttnBlock, AutoencoderKL, DiagonalGaussian, vae_config_from_ddconfig
from colorize.parity.core import load_fixture, run_fixture


def _tiny(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(TINY_MULT.vae).eval()


def test_parity_official_fixture(fixture_dir: Path) -> None:
    res = run_fixture(load_fixture(fixture_dir / "vae.json"))
    assert res.passed, res.per_output or res.error
    assert set(res.per_output) == {"posterior_mean", "posterior_logvar", "posterior_std", "decoded_z", "decoded_mean"}


def test_full_size_keys_match_official_layout(layout_dir: Path) -> None:
    layout = json.loads((layout_dir / "keys_mult.json").read_text())
    prefix = "first_stage_model."
    expected = {k[len(prefix):]: v for k, v in layout.items() if k.startswith(prefix)}
    with torch.device("meta"):
        vae = AutoencoderKL(VAEConfig())
    got = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert got == expected


def test_ddconfig_with_attention_levels_builds_attn_keys() -> None:
    cfg, extra = vae_config_from_ddconfig(
        {"embed_dim": 3, "ddconfig": {"z_channels": 5, "ch": 32, "ch_mult": [1, 2], "num_res_blocks": 2,
                                      "attn_resolutions": [16], "resolution": 32, "double_z": True}}
    )
    assert (cfg.embed_dim, cfg.z_channels) == (3, 5)
    vae = AutoencoderKL(cfg, **extra)
    keys = vae.state_dict().keys()
    # resolution 32 -> level 1 of the encoder and decoder runs at 16
    assert "encoder.down.1.attn.1.q.weight" in keys and "decoder.up.1.attn.2.proj_out.weight" in keys
    assert not any(k.startswith(("encoder.down.0.attn", "decoder.up.0.attn")) for k in keys)
    assert vae.quant_conv.weight.shape == (6, 10, 1, 1) and vae.post_quant_conv.weight.shape == (5, 3, 1, 1)
    z = vae.encode(torch.randn(1, 3, 16, 24)).mean
    assert z.shape == (1, 3, 8, 12) and vae.decode(z).shape == (1, 3, 16, 24)


def test_shapes_and_downsampling_factor() -> None:
    vae = _tiny()
    f = TINY_MULT.vae.downsample_factor
    x = torch.rand(2, 3, 8 * f, 4 * f) * 2 - 1
    post = vae.encode(x)
    assert post.mean.shape == (2, TINY_MULT.vae.embed_dim, 8, 4)
    assert vae.decode(post.mean).shape == x.shape


def test_posterior_clamp_std_and_sampling() -> None:
    mean = torch.randn(2, 4, 3, 5)
    logvar = torch.randn(2, 4, 3, 5) * 3
    logvar[0, 0, 0, 0], logvar[1, 1, 1, 1] = -50.0, 40.0
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert torch.equal(post.mean, mean) and torch.equal(post.mode(), mean)
    assert post.logvar[0, 0, 0, 0] == -30.0 and post.logvar[1, 1, 1, 1] == 20.0
    torch.testing.assert_close(post.std, torch.exp(post.logvar / 2))
    torch.testing.assert_close(post.var, post.std**2)
    s1 = post.sample(torch.Generator().manual_seed(7))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(s1, mean + post.std * noise)
    assert not torch.equal(s1, post.sample(torch.Generator().manual_seed(8)))


def test_latent_scaling_helpers() -> None:
    vae = _tiny()
    x = torch.rand(1, 3, 32, 16) * 2 - 1
    s = vae.cfg.scale_factor
    with torch.no_grad():
        torch.testing.assert_close(vae.encode_latent(x, sample=False), vae.encode(x).mean * s)
        g = torch.Generator().manual_seed(3)
        expected = vae.encode(x).sample(torch.Generator().manual_seed(3)) * s
        torch.testing.assert_close(vae.encode_latent(x, generator=g), expected)
        z = torch.randn(1, 4, 4, 2)
        torch.testing.assert_close(vae.decode_latent(z), vae.decode(z / s))


def test_attention_matches_naive_softmax() -> None:
    torch.manual_seed(1)
    blk = AttnBlock(64).eval()
    x = torch.randn(2, 64, 5, 7)
    y = blk.norm(x)
    q, k, v = (m(y).flatten(2) for m in (blk.q, blk.k, blk.v))  # (b, c, n)
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(64), dim=-1)
    out = torch.einsum("bij,bcj->bci", w, v).reshape(2, 64, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), x + blk.proj_out(out), atol=1e-5, rtol=1e-5)


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).pow(2).mean() / b.double().pow(2).mean()).sqrt().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_runs_in_other_dtypes(dtype: torch.dtype) -> None:
    vae = _tiny()
    x, z = torch.rand(1, 3, 32, 32) * 2 - 1, torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        ref_mean, ref_dec = vae.encode(x).mean, vae.decode(z)
        vae.to(dtype)
        mean, dec = vae.encode(x.to(dtype)).mean, vae.decode(z.to(dtype))
    assert mean.dtype == dec.dtype == dtype
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-5  # bf16: ~3 significant digits per op
    assert _rel_rms(mean, ref_mean) < tol and _rel_rms(dec, ref_dec) < tol
