"""Attention injection (the official app's "Attention injection": ``refnet/sampling/hook.py:284-383`` and
``refnet/models/basemodel.py:399-431`` at commit c9bd9fb) on tiny weights, all versions."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from test_guidance_window import enhance_for as separation_for
from test_guidance_window import outline_sketch, reference
from torch import Tensor

from colorize.errors import InputError
from colorize.injection import (
    AttentionInjector,
    InjectionBank,
    WriteComplete,
    injected_self_attention,
    transformer_block_count,
)
from colorize.models.attention import (
    AttentionCall,
    AttentionPatches,
    AttentionSite,
    BasicTransformerBlock,
    CrossAttention,
)
from colorize.pipeline import Colorizer
from colorize.preprocess import prepare_reference, prepare_sketch
from colorize.sampling.denoiser import COND, UNCOND_REF, UNCOND_SKETCH
from colorize.settings import GenerationSettings
from colorize.tiny import VERSIONS


def enhance_for(version: str) -> dict:  # type: ignore[type-arg]
    """The separation path of each family, except xlv2's: its bank also replaces the self-attention, so
    injection runs on its plain path (together they are refused: test below)."""
    return {} if version == "xlv2" else separation_for(version)


SIZE = (128, 128)  # the tiny U-Net bottoms out at 1×1 for 64², where GroupNorm refuses a batch of 1
S = GenerationSettings(steps=2, width=128, height=128, sketch_cfg=2.0, injection=True)
ROWS = (COND, UNCOND_REF, UNCOND_SKETCH)


def by_hand_attention(attn: CrossAttention, x: Tensor, ctx: Tensor) -> Tensor:
    """softmax(q kᵀ/√d) v per head, written out (no SDPA), then ``to_out``."""
    b, n, _ = x.shape
    h = attn.heads
    q, k, v = (t.unflatten(-1, (h, -1)).transpose(1, 2) for t in (attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)))
    w = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return attn.to_out((w @ v).transpose(1, 2).reshape(b, n, -1))


def test_injected_self_attention_is_attention_over_own_and_bank_tokens() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(32, None, heads=2, dim_head=16)
    x, bank = torch.randn(3, 10, 32), torch.randn(3, 7, 32)
    call = AttentionCall(x, x, AttentionSite(), layer=attn)  # a self-attention layer's call
    injected = by_hand_attention(attn, x, torch.cat([x, bank], 1))
    torch.testing.assert_close(injected_self_attention(call, bank), injected, rtol=1e-5, atol=1e-6)
    plain = by_hand_attention(attn, x, x)
    rows = torch.tensor([1])
    out = injected_self_attention(call, bank, rows, fidelity=0.3)
    torch.testing.assert_close(out[1], 0.3 * plain[1] + 0.7 * injected[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[[0, 2]], injected[[0, 2]], rtol=1e-5, atol=1e-6)
    one = injected_self_attention(call, bank, rows, fidelity=1.0)
    torch.testing.assert_close(one[1], plain[1], rtol=1e-5, atol=1e-6)  # fidelity 1: plain on those rows
    tiny = injected_self_attention(call, bank, rows, fidelity=1e-6)  # official: no blend below 1e-5
    torch.testing.assert_close(tiny, injected, rtol=1e-5, atol=1e-6)


def _holds(module: torch.nn.Module, obj: object) -> bool:
    """Whether any submodule of ``module`` keeps a reference to ``obj`` as an attribute."""
    return any(v is obj for m in module.modules() for v in vars(m).values())


def test_bank_is_per_call_and_leaves_no_state_on_errors() -> None:
    """The bank acts only in the calls it is passed to (``AttentionPatches(self_attention=bank)``): after a
    failing read and after a write/read, the blocks called without it compute exactly their plain forward."""
    torch.manual_seed(0)
    blocks = torch.nn.ModuleList([BasicTransformerBlock(32, 2, 16, 8), BasicTransformerBlock(32, 2, 16, 8)])
    x, ctx = torch.randn(1, 6, 32), torch.randn(1, 4, 8)
    first = blocks[0](x, ctx)
    y = torch.randn(1, 6, 32)
    plain_y = blocks[0](y, ctx)
    bank = InjectionBank(blocks=2)
    patches = AttentionPatches(self_attention=bank)
    # each block at its own site (attention-block index), as the U-Net's SpatialTransformers call them
    bank.mode = "read"
    with pytest.raises(RuntimeError, match="without a written bank"):
        blocks[0](x, ctx, patches, 0)
    assert not _holds(blocks, bank) and len(bank) == 0
    assert torch.equal(blocks[0](x, ctx), first)
    bank.mode = "write"
    assert torch.equal(blocks[0](x, ctx, patches, 0), first)  # the write pass attends plainly
    with pytest.raises(WriteComplete):  # the last block stores and ends the write pass
        blocks[1](first, ctx, patches, 1)
    assert len(bank) == 2
    bank.mode = "read"  # (reading the tokens just written would be plain: [x ‖ x] has x's softmax)
    assert not torch.allclose(blocks[0](y, ctx, patches, 0), plain_y)
    assert len(bank) == 1  # consumed
    # no sticky state: without the processor the blocks compute their plain forward
    assert not _holds(blocks, bank)
    assert torch.equal(blocks[0](x, ctx), first) and torch.equal(blocks[0](y, ctx), plain_y)


def conditioning(model: Colorizer, version: str, settings: GenerationSettings):  # type: ignore[no-untyped-def]
    sketch = prepare_sketch(outline_sketch(), SIZE)
    return model.conditioning(sketch, prepare_reference(reference()), settings, sketch_hw=(64, 64),
                              **enhance_for(version))


def rows_call(model: Colorizer, cond, t: float = 500.0):  # type: ignore[no-untyped-def]
    """The stacked guided-batch inputs of one call and a U-Net call with the generation's arguments bound."""
    context, hints = cond.rows(ROWS)
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(3)).repeat(3, 1, 1, 1)
    tt = torch.full((3,), t)

    def call(x: Tensor, t: Tensor, context: Tensor, hints, self_attention=None):  # type: ignore[no-untyped-def]
        patches = AttentionPatches(self_attention=self_attention, cross_attention=cond.cross_attention)
        return model.unet(x, t, context, hints, patches, **cond.unet_kwargs)
    return call, x, tt, context, hints


@pytest.mark.parametrize("version", VERSIONS)
def test_fidelity_one_keeps_the_reference_uncond_rows_plain(models: dict[str, Colorizer], version: str) -> None:
    """At fidelity 1 the reference-unconditional rows get exactly the plain computation (the blend's whole
    weight is on the plain self-attention); the other rows read the bank, so injection still acts there."""
    model = models[version]
    cond = conditioning(model, version, S)
    call, x, t, context, hints = rows_call(model, cond)
    plain = call(x, t, context, hints)
    inj = AttentionInjector(model.unet, cond.injection, model.schedule.alphas_cumprod, fidelity=1.0)
    out = inj(call, x, t, context, hints, ROWS)
    torch.testing.assert_close(out[1], plain[1], rtol=0, atol=1e-6)
    assert (out[0] - plain[0]).abs().max() > 1e-4 and (out[2] - plain[2]).abs().max() > 1e-4


@pytest.mark.parametrize("version", VERSIONS)
def test_one_write_per_context_equals_the_official_full_batch_write(models: dict[str, Colorizer],
                                                                      version: str) -> None:
    """The official writes the bank with the whole CFG batch; rows sharing a context share it here."""
    model = models[version]
    cond = conditioning(model, version, S)
    call, x, t, context, hints = rows_call(model, cond)
    acp = model.schedule.alphas_cumprod
    ours = AttentionInjector(model.unet, cond.injection, acp, fidelity=0.4, seed=5)(call, x, t, context, hints, ROWS)
    full = AttentionInjector(model.unet, cond.injection, acp, fidelity=0.4, seed=5)
    bank = InjectionBank(0.4, transformer_block_count(model.unet))
    bank.mode = "write"
    with pytest.raises(WriteComplete):  # stops once the last block has written
        call(full.noisy_reference(t, 3, x.device, x.dtype), t, context, None, bank)
    bank.mode, bank.plain_rows = "read", torch.tensor([1])
    official = call(x, t, context, hints, bank)
    torch.testing.assert_close(ours, official, rtol=0, atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS)
def test_injection_never_active_equals_the_plain_path(models: dict[str, Colorizer], version: str) -> None:
    """Start 1: no dpm_solver timestep (t ≥ 1) has 1 − t/999 ≥ 1, so every call is the plain one."""
    model = models[version]
    plain = replace(S, injection=False)
    ref = model.decode(model.sample(conditioning(model, version, plain), SIZE, plain))
    late = replace(S, injection_start=1.0)
    assert torch.equal(model.decode(model.sample(conditioning(model, version, late), SIZE, late)), ref)
    on = model.decode(model.sample(conditioning(model, version, S), SIZE, S))
    assert torch.isfinite(on).all() and (on - ref).abs().max() > 1e-3
    again = model.decode(model.sample(conditioning(model, version, S), SIZE, S))
    assert torch.equal(on, again)  # seeded: the same generation reproduces


def test_sketch_fidelity_feeds_the_negated_reference_to_the_sketch_encoder(models: dict[str, Colorizer]) -> None:
    model = models["mult"]
    cond = conditioning(model, "mult", replace(S, injection_control=0.5))
    image = F.interpolate(prepare_reference(reference()), size=SIZE, mode="bilinear", antialias=True).clamp(-1, 1)
    expected = [h * 0.5 for h in model.sketch_encoder(-image)]
    assert len(cond.injection.hints) == len(expected)
    for got, want in zip(cond.injection.hints, expected):
        torch.testing.assert_close(got, want)
    assert conditioning(model, "mult", S).injection.hints is None  # control 0 = zero hints = none


def test_injection_settings_are_validated(models: dict[str, Colorizer]) -> None:
    for bad in ({"injection_fidelity": 1.5}, {"injection_start": -0.1}, {"injection_control": float("nan")},
                {"injection_control": -1.0}):
        with pytest.raises(InputError):
            replace(S, **bad).validate()
    model = models["mult"]
    cond = conditioning(model, "mult", replace(S, injection=False))  # no reference latent
    with pytest.raises(InputError, match="attention injection needs the reference latent"):
        model.sample(cond, SIZE, S)


def test_injection_bypasses_installed_speedups(models: dict[str, Colorizer]) -> None:
    """A captured CUDA graph / compiled forward of the same signature would replay the plain self-attention:
    injection runs the eager forward (here a fake fast path that always returns the plain output)."""
    from colorize.speedups import SpeedupState, _install, remove

    model = models["mult"]
    cond = conditioning(model, "mult", S)
    call, x, t, context, hints = rows_call(model, cond)
    acp = model.schedule.alphas_cumprod
    expected = AttentionInjector(model.unet, cond.injection, acp, seed=1)(call, x, t, context, hints, ROWS)
    stale = call(x, t, context, hints)
    state = _install(model.unet, lambda *a, **k: stale, SpeedupState("fake"))
    try:
        assert torch.equal(call(x, t, context, hints), stale)  # the fast path is in use for plain calls
        got = AttentionInjector(model.unet, cond.injection, acp, seed=1)(call, x, t, context, hints, ROWS)
    finally:
        remove(model.unet)
    assert state.active and torch.equal(got, expected) and not torch.equal(got, stale)


def test_injection_reference_batch_must_pair_with_the_generation(models: dict[str, Colorizer]) -> None:
    model = models["mult"]
    cond = conditioning(model, "mult", S)
    call, x, t, context, hints = rows_call(model, cond)
    two = replace(cond.injection, latent=cond.injection.latent.repeat(2, 1, 1, 1))
    match = "injection reference batch of 2 cannot be paired with a generation batch of 1"
    with pytest.raises(InputError, match=match):
        AttentionInjector(model.unet, two, model.schedule.alphas_cumprod)(call, x, t, context, hints, ROWS)


def test_injection_and_the_xlv2_bank_are_refused_together(models: dict[str, Colorizer]) -> None:
    """Both replace the self-attention: a one-line named error before sampling, not a silent choice."""
    model = models["xlv2"]
    cond = model.conditioning(prepare_sketch(outline_sketch(), SIZE), prepare_reference(reference()), S,
                              sketch_hw=(64, 64), **separation_for("xlv2"))
    with pytest.raises(InputError, match="injection and XL v2 background enhance") as e:
        model.sample(cond, SIZE, S)
    assert "\n" not in str(e.value)
