"""OpenCLIP reference/text encoder: parity, official key mapping, checkpoint formats, errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from colorize.config import TINY_CLIP, ClipConfig
from colorize.models.clip import CLIP_MEAN, CLIP_STD, ReferenceEncoder, tokenize
from colorize.models.clip_convert import from_official, open_clip_to_hf, to_official, to_open_clip
from colorize.parity.core import load_fixture, run_fixture


@pytest.fixture(scope="module")
def tiny() -> ReferenceEncoder:
    torch.manual_seed(0)
    enc = ReferenceEncoder(TINY_CLIP)
    with torch.no_grad():  # open_clip zero-inits nothing we need, but make biases / norms non-trivial
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return enc


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(2, 3, 150, 90, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_parity_official_fixture(fixture_dir: Path) -> None:
    fx = load_fixture(fixture_dir / "clip_embedder.json")
    res = run_fixture(fx)
    assert res.passed, res.per_output or res.error
    assert set(res.per_output) == {"preprocessed", "tokens_full", "tokens_local", "text_emb"}
    # the stored ids are open_clip.tokenize(prompts): our tokenizer must reproduce them
    assert torch.equal(tokenize(fx.scalars["prompts"]).float(), fx.inputs["token_ids"])


def test_full_size_official_key_mapping(layout_dir: Path) -> None:
    layout = json.loads((layout_dir / "keys_mult.json").read_text())
    expected = {k: v for k, v in layout.items() if k.startswith("cond_stage_model.")}
    with torch.device("meta"):
        enc = ReferenceEncoder(ClipConfig())
    sd = enc.state_dict()
    mapped = {to_official(k): list(v.shape) for k, v in sd.items()}
    assert mapped == expected
    assert sum(".visual.model." in k for k in mapped) == 392 and sum(".transformer.model." in k for k in mapped) == 294
    assert all(from_official(to_official(k)) == k for k in sd)
    # a whole colorizer checkpoint (other modules included) is recognised and mapped back
    official = {to_official(k): v for k, v in sd.items()} | {"model.diffusion_model.out.2.bias": torch.zeros(4)}
    assert to_open_clip(official).keys() == sd.keys()


def test_preprocess_squash_resize_and_normalise(tiny: ReferenceEncoder, image: torch.Tensor) -> None:
    out = tiny.preprocess(image)
    s = TINY_CLIP.vision["image_size"]
    assert out.shape == (2, 3, s, s)
    x = F.interpolate(image, size=(s, s), mode="bicubic", align_corners=True, antialias=True)
    for c in range(3):
        torch.testing.assert_close(out[:, c], ((x[:, c] + 1) / 2 - CLIP_MEAN[c]) / CLIP_STD[c])


def test_image_tokens_and_open_clip_pooled_output(tiny: ReferenceEncoder, image: torch.Tensor) -> None:
    with torch.no_grad():
        full = tiny.encode_image(image, "full")
        grid = (TINY_CLIP.vision["image_size"] // TINY_CLIP.vision["patch_size"]) ** 2
        assert full.shape == (2, grid + 1, TINY_CLIP.embed_dim)
        assert torch.equal(tiny.encode_image(image, "local"), full[:, 1:])
        assert torch.equal(tiny.encode_image(image, "cls"), full[:, :1])
        # open_clip's own forward pools the class token after ln_post and proj: same numbers
        pooled = tiny.visual(tiny.preprocess(image))
    torch.testing.assert_close(full[:, 0], pooled, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="output"):
        tiny.encode_image(image, "mean")  # type: ignore[arg-type]


def test_text_embedding_shape_norm_and_ids(tiny: ReferenceEncoder) -> None:
    prompts = ["a girl with red hair", "blue sky"]
    with torch.no_grad():
        emb = tiny.encode_text(prompts)
        assert emb.shape == (2, 1, TINY_CLIP.embed_dim)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2, 1))
        torch.testing.assert_close(tiny.encode_text_ids(tokenize(prompts)), emb)
        # causal mask: tokens after EOT cannot change the EOT feature
        ids = tokenize(prompts)
        ids[:, -1] = 400
        ids[torch.arange(2), tokenize(prompts).argmax(-1)] = 49407
        torch.testing.assert_close(tiny.encode_text_ids(ids), emb)


def test_frozen_and_eval(tiny: ReferenceEncoder) -> None:
    assert not any(p.requires_grad for p in tiny.parameters())
    tiny.train()
    assert not tiny.training and not tiny.visual.training


def _hf_reference_tokens(sd: dict[str, torch.Tensor], pixels: torch.Tensor, heads: int) -> torch.Tensor:
    """Independent HF-CLIP-vision forward on HF-named tensors (separate q/k/v, HF layer names)."""
    p = "vision_model."
    patch = sd[p + "embeddings.patch_embedding.weight"]
    x = F.conv2d(pixels, patch, stride=patch.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    cls = sd[p + "embeddings.class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + sd[p + "embeddings.position_embedding.weight"]
    ln = lambda t, n: F.layer_norm(t, t.shape[-1:], sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
    lin = lambda t, n: F.linear(t, sd[n + ".weight"], sd[n + ".bias"])  # noqa: E731
    x = ln(x, p + "pre_layrnorm")
    i = 0
    while f"{p}encoder.layers.{i}.layer_norm1.weight" in sd:
        L = f"{p}encoder.layers.{i}."
        h = ln(x, L + "layer_norm1")
        b, n, d = h.shape
        q, k, v = (lin(h, L + f"self_attn.{c}_proj").view(b, n, heads, -1).transpose(1, 2) for c in "qkv")
        w = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
        x = x + lin((w @ v).transpose(1, 2).reshape(b, n, d), L + "self_attn.out_proj")
        x = x + lin(F.gelu(lin(ln(x, L + "layer_norm2"), L + "mlp.fc1")), L + "mlp.fc2")
        i += 1
    return F.linear(ln(x, p + "post_layernorm"), sd["visual_projection.weight"])


def test_hf_clip_vision_round_trip(tiny: ReferenceEncoder, image: torch.Tensor) -> None:
    hf = open_clip_to_hf(tiny.state_dict())
    assert "vision_model.pre_layrnorm.weight" in hf and "vision_model.encoder.layers.0.self_attn.q_proj.weight" in hf
    assert not any(k.startswith("text_model.") for k in hf)
    with torch.no_grad():
        expected = tiny.encode_image(image, "full")
        heads = TINY_CLIP.vision["width"] // TINY_CLIP.vision["head_width"]
        independent = _hf_reference_tokens(hf, tiny.preprocess(image), heads)
        torch.testing.assert_close(independent, expected, atol=1e-5, rtol=1e-5)
        enc = ReferenceEncoder(TINY_CLIP)
        enc.load_reference_state_dict({"clip_vision." + k: v for k, v in hf.items()})  # any outer prefix
        assert torch.equal(enc.encode_image(image, "full"), expected)
    assert not enc.has_text
    back = to_open_clip(hf)
    vis = {k: v for k, v in tiny.state_dict().items() if k.startswith("visual.")}
    assert back.keys() == vis.keys() and all(torch.equal(back[k], vis[k]) for k in vis)


def test_hf_with_text_and_open_clip_prefixes(tiny: ReferenceEncoder, image: torch.Tensor) -> None:
    sd = tiny.state_dict()
    with torch.no_grad():
        tokens, text = tiny.encode_image(image), tiny.encode_text(["red hair"])
        variants = {
            "hf": open_clip_to_hf(sd, with_text=True),
            "official": {to_official(k): v for k, v in sd.items()},
            "module": {("visual.model." + k[7:] if k.startswith("visual.") else "transformer.model." + k): v
                       for k, v in sd.items()},
            "open_clip": dict(sd),
        }
        for name, variant in variants.items():
            enc = ReferenceEncoder(TINY_CLIP)
            enc.load_reference_state_dict(variant)
            assert enc.has_text, name
            assert torch.equal(enc.encode_image(image), tokens), name
            assert torch.equal(enc.encode_text(["red hair"]), text), name


def test_vision_only_checkpoint_makes_text_unavailable(tiny: ReferenceEncoder) -> None:
    enc = ReferenceEncoder(TINY_CLIP)
    enc.load_reference_state_dict({k: v for k, v in tiny.state_dict().items() if k.startswith("visual.")})
    with pytest.raises(RuntimeError, match="text tower is unavailable"):
        enc.encode_text(["a"])
    with pytest.raises(RuntimeError, match="text tower is unavailable"):
        ReferenceEncoder(TINY_CLIP, with_text=False).encode_text_ids(torch.zeros(1, 77, dtype=torch.long))
    no_text = ReferenceEncoder(TINY_CLIP, with_text=False)
    no_text.load_reference_state_dict(tiny.state_dict())  # text weights in the file are ignored
    assert all(k.startswith("visual.") for k in no_text.state_dict())


def test_unknown_and_broken_formats_raise() -> None:
    with pytest.raises(ValueError, match="unknown CLIP checkpoint format.*vision_model"):
        to_open_clip({"encoder.conv_in.weight": torch.zeros(1), "foo": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown CLIP checkpoint format"):
        ReferenceEncoder(TINY_CLIP).load_reference_state_dict({"bar.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="visual_projection"):
        to_open_clip({"vision_model.embeddings.patch_embedding.weight": torch.zeros(1)})


def test_dtype_agnostic_bfloat16(tiny: ReferenceEncoder, image: torch.Tensor) -> None:
    enc = ReferenceEncoder(TINY_CLIP)
    enc.load_reference_state_dict(tiny.state_dict())
    with torch.no_grad():
        ref = enc.encode_image(image)
        out = enc.to(torch.bfloat16).encode_image(image)
        emb = enc.encode_text(["x"])
    assert out.dtype == emb.dtype == torch.bfloat16
    rel = ((out.double() - ref.double()).pow(2).mean() / ref.double().pow(2).mean()).sqrt().item()
    assert rel < 5e-2
