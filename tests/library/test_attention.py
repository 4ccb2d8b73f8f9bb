"""The one attention-extension mechanism: processors passed per call (``AttentionPatches``), with the layer's own
projections or with a host's, and nothing left on the modules."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _helpers import randomize

from colorize.config import TINY_MULT
from colorize.models.attention import (
    AttentionCall,
    AttentionPatches,
    AttentionSite,
    CrossAttention,
    attend_heads,
    plain_attention,
)
from colorize.models.lora import SplitLoraConfig
from colorize.models.split_attention import SplitAttention, SplitOptions
from colorize.models.unet import NUM_ATTENTION_BLOCKS, DualCondUNet

pytestmark = pytest.mark.usefixtures("single_thread")


def reference_attention(layer: CrossAttention, x: torch.Tensor, ctx: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """softmax(q kᵀ/√d) v per head, written out, times ``scale``, then to_out."""
    q, k, v = layer.to_q.weight, layer.to_k.weight, layer.to_v.weight
    h = layer.heads
    b, n, _ = x.shape
    qh = (x @ q.T).view(b, n, h, -1).transpose(1, 2)
    kh = (ctx @ k.T).view(b, ctx.shape[1], h, -1).transpose(1, 2)
    vh = (ctx @ v.T).view(b, ctx.shape[1], h, -1).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)
    out = (w @ vh).transpose(1, 2).reshape(b, n, -1) * scale
    return layer.to_out(out)


@pytest.fixture(scope="module")
def unet() -> DualCondUNet:
    torch.manual_seed(0)
    model = DualCondUNet(TINY_MULT.unet).eval()
    randomize(model, 1)
    return model


def inputs(b: int = 2) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    return (torch.randn(b, 4, 16, 16, generator=g), torch.full((b,), 400.0),
            torch.randn(b, 7, TINY_MULT.unet.context_dim, generator=g))


def test_plain_processor_is_scaled_softmax_attention() -> None:
    torch.manual_seed(0)
    layer = CrossAttention(16, 12, heads=2, dim_head=8)
    x, ctx = torch.randn(3, 5, 16), torch.randn(3, 4, 12)
    want = reference_attention(layer, x, ctx, 0.7)
    call = AttentionCall(x, ctx, AttentionSite(cross=True), layer=layer, scale=0.7)
    torch.testing.assert_close(plain_attention(call), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer(x, ctx, AttentionPatches(reference_scales=[0.7]), AttentionSite(0, 0, True)),
                               want, atol=1e-5, rtol=1e-5)


def test_a_host_call_uses_the_hosts_projections_and_leaves_to_out_to_it() -> None:
    """Given q, k, v and a kernel (as ComfyUI's attn2 replace hands them over) the processor returns the attention
    result before to_out; with the layer it is the layer's own output."""
    torch.manual_seed(0)
    layer = CrossAttention(16, 12, heads=2, dim_head=8)
    x, ctx = torch.randn(2, 6, 16), torch.randn(2, 4, 12)
    q, k, v = layer.to_q(x), layer.to_k(ctx), layer.to_v(ctx)
    host = AttentionCall(x, ctx, AttentionSite(cross=True), attend=lambda a, b_, c: attend_heads(a, b_, c, 2),
                         q=q, k=k, v=v, scale=1.5)
    ours = AttentionCall(x, ctx, AttentionSite(cross=True), layer=layer, scale=1.5)
    torch.testing.assert_close(layer.to_out(plain_attention(host)), plain_attention(ours), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="needs q, k, v"):
        AttentionCall(x, ctx, AttentionSite(cross=True), q=q)


def test_every_site_reaches_the_processors_once_with_its_place(unet: DualCondUNet) -> None:
    seen: list[AttentionSite] = []

    def record(call: AttentionCall) -> torch.Tensor:
        seen.append(call.site)
        return plain_attention(call)

    x, t, ctx = inputs()
    unet(x, t, ctx, None, AttentionPatches(self_attention=record, cross_attention=record))
    cross = [s for s in seen if s.cross]
    assert len(cross) == len(seen) - len(cross) == NUM_ATTENTION_BLOCKS
    assert sorted(s.index for s in cross) == list(range(NUM_ATTENTION_BLOCKS))
    assert {s.index: s.grid for s in cross}[6] == (2, 2)  # the middle block of a 16x16 latent
    assert {s.index: s.grid for s in cross}[0] == (16, 16)


def test_reference_strength_scales_each_cross_attention_block(unet: DualCondUNet) -> None:
    """The per-block strengths arrive as ``call.scale`` of the cross-attention calls only."""
    got: dict[tuple[int, bool], float] = {}

    def record(call: AttentionCall) -> torch.Tensor:
        got[(call.site.index, call.site.cross)] = float(call.scale)
        return plain_attention(call)

    scales = [0.1 * i for i in range(NUM_ATTENTION_BLOCKS)]
    x, t, ctx = inputs()
    unet(x, t, ctx, None, AttentionPatches(self_attention=record, cross_attention=record, reference_scales=scales))
    assert {i: s for (i, cross), s in got.items() if cross} == pytest.approx(dict(enumerate(scales)))
    assert all(s == 1.0 for (_, cross), s in got.items() if not cross)
    # strength 0 everywhere = the empty reference (zero context): the cross-attention result is exactly 0
    zero = unet(x, t, ctx, None, AttentionPatches(reference_scales=[0.0] * NUM_ATTENTION_BLOCKS))
    torch.testing.assert_close(zero, unet(x, t, torch.zeros_like(ctx), None), atol=1e-6, rtol=1e-6)
    for count in (3, 17):
        with pytest.raises(ValueError, match=f"expected 16 reference scales .one per attention block., got {count}"):
            unet(x, t, ctx, None, AttentionPatches(reference_scales=[1.0] * count))


def test_a_processor_is_called_even_when_it_is_falsy(unet: DualCondUNet) -> None:
    """A processor object with ``__len__`` (attention injection's bank starts empty) is still a processor."""

    class EmptyLooking:
        calls = 0

        def __len__(self) -> int:
            return 0

        def __call__(self, call: AttentionCall) -> torch.Tensor:
            EmptyLooking.calls += 1
            return plain_attention(call)

    x, t, ctx = inputs()
    unet(x, t, ctx, None, AttentionPatches(self_attention=EmptyLooking()))
    assert EmptyLooking.calls == NUM_ATTENTION_BLOCKS


def test_processors_leave_no_state_on_the_modules(unet: DualCondUNet) -> None:
    """Per-call extensions are arguments: the modules are the same objects with the same attributes after a call,
    and the next plain call equals a plain call before it."""
    x, t, ctx = inputs()
    before = unet(x, t, ctx, None)
    state = {name: dict(vars(m)) for name, m in unet.named_modules()}
    split = SplitAttention(SplitOptions(mask=torch.rand(1, 1, 16, 16), use_fg_lora=True, use_bg_lora=True))
    unet(x, t, torch.cat([ctx, ctx.flip(1)], 1), None,
         AttentionPatches(cross_attention=split, reference_scales=[0.5] * NUM_ATTENTION_BLOCKS))
    assert {name: dict(vars(m)) for name, m in unet.named_modules()} == state
    assert torch.equal(unet(x, t, ctx, None), before)


def test_graph_key_only_for_plain_float_patches() -> None:
    """A CUDA graph may replay a call whose patches are plain processors with float strengths (the key holds the
    strengths); processors or tensor strengths make the call ungraphable."""
    from colorize.speedups import _signature

    plain = AttentionPatches(reference_scales=[1.0, 0.5])
    assert plain.graph_key() == ("attention", (1.0, 0.5))
    assert _signature((1, [2.0], plain), {}) == (1, ("list", (2.0,)), ("attention", (1.0, 0.5)))
    assert _signature((1, AttentionPatches(reference_scales=[0.5])), {}) != _signature((1, plain), {})
    for ungraphable in (AttentionPatches(reference_scales=[torch.tensor(1.0)]),
                        AttentionPatches(cross_attention=plain_attention)):
        assert ungraphable.graph_key() is None and _signature((1, ungraphable), {}) is None


def test_split_attention_through_the_layer_equals_a_host_call_with_the_same_weights() -> None:
    """The bridge runs the same processor on the host's projections: identical math (to_out applied after)."""
    torch.manual_seed(0)
    unet = DualCondUNet(TINY_MULT.unet, SplitLoraConfig(fg_rank=2, bg_rank=3)).eval()
    randomize(unet, 2)
    layer = unet.attention_blocks()[3].transformer_blocks[0].attn2
    x, ctx = torch.randn(2, 64, layer.to_q.in_features), torch.randn(2, 14, TINY_MULT.unet.context_dim)
    mask = (torch.rand(1, 1, 8, 8) > 0.5).float()
    opts = SplitOptions(mask=mask, threshold=0.5, fg_scale=1.2, bg_scale=0.8, merge_scale=0.25, use_fg_lora=True,
                        use_bg_lora=True, lora_scale=0.7)
    site = AttentionSite(3, 0, True, (8, 8))
    ours = layer(x, ctx, AttentionPatches(cross_attention=SplitAttention(opts), reference_scales=[0.9] * 16), site)
    host = AttentionCall(x, ctx, site, attend=layer.attend, q=layer.to_q(x), k=layer.to_k(ctx), v=layer.to_v(ctx),
                         lora=layer.lora, scale=0.9)
    torch.testing.assert_close(layer.to_out(SplitAttention(opts)(host)), ours, atol=1e-5, rtol=1e-5)
    # and the processor is Eq. 5.4 on the two halves
    mask_tokens = F.interpolate(mask, size=(8, 8), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    fg_ctx, bg_ctx = ctx.chunk(2, dim=1)

    def half(tokens: torch.Tensor, branch: str) -> torch.Tensor:
        q = layer.to_q(x) + 0.7 * layer.to_q.delta(x, branch)
        k = layer.to_k(tokens) + 0.7 * layer.to_k.delta(tokens, branch)
        v = layer.to_v(tokens) + 0.7 * layer.to_v.delta(tokens, branch)
        return attend_heads(q, k, v, layer.heads)

    fg, bg = half(fg_ctx, "fg") * 0.9 * 1.2, half(bg_ctx, "bg") * 0.9 * 0.8
    fg = fg * 0.75 + bg * 0.25
    want = layer.to_out(torch.where(mask_tokens.repeat(2, 1, 1) > 0.5, fg, bg))
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)
    assert copy.copy(layer).lora is not None
