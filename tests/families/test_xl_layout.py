"""ColorizeDiffusion XL key layouts, model-type detection, config inference from shapes and parameterisation.

Official facts: tellurion-kanata/ColorizeDiffusionXL at commit ec78784 (``backend/appfunc.py:36-40, 133-137,
147``: model type and parameterisation from the file name; ``ckpt_util.py:79-96``: what a released file holds).

Every prefix a released file carries is compared with its meta-device build, key for key and shape for shape:
``model.diffusion_model.*`` (sdxl: the XL U-Net; xlv2: the same with the background LoRA
``…attn2.to_{q,k,v}.lora_{down,up}_background.weight`` on all 70 blocks and ``conv_fg``), ``control_encoder.*``,
``proj.*``, ``first_stage_model.*`` (the shared kl-f8 VAE) and, for xlv2, ``bg_encoder.*`` (the ReferenceNet).
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from colorize.checkpoint.infer import CONFIG_METADATA_KEY, infer_unet_config
from colorize.checkpoint.inspection import load_layout_json
from colorize.checkpoint.inspection import main as inspect_main
from colorize.config import FULL_MULT, VAEConfig
from colorize.errors import CheckpointError, InputError
from colorize.families import get_family, split_checkpoint
from colorize.families.xl.conditioning import ClusterConcat, ClusterConcatConfig
from colorize.families.xl.detect import is_xlv2_key, xl_config_from_shapes, xl_model_type, xl_parameterization
from colorize.families.xl.layout import MODEL_TYPES, layout_path, pack_layout, xl_layout
from colorize.families.xl.reference_net import build_reference_net, build_xlv2_unet
from colorize.families.xl.sizes import XL_VAE_SCALE
from colorize.families.xl.sketch_encoder import (
    FULL_XL_SKETCH_ENCODER,
    MultiScaleAttentionEncoder,
    MultiScaleEncoderConfig,
)
from colorize.families.xl.split_attention import BackgroundLoraLinear
from colorize.families.xl.unet import TINY_XL_UNET, XL_UNET, build_xl_unet
from colorize.masks.isnet import isnet_layout
from colorize.models.unet import DualCondUNet
from colorize.models.vae import AutoencoderKL

UNET = "model.diffusion_model."
OPTIONAL = ("cond_stage_model.", "img_embedder.")  # from their own files, never in a released checkpoint
LORA = re.compile(r"model\.diffusion_model\.(.+\.attn2)\.to_([qkv])\.lora_(down|up)_background\.weight")


def _shapes(module: torch.nn.Module, prefix: str) -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def _with(layout: dict, prefix: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in layout.items() if k.startswith(prefix)}


def _released(layout: dict) -> dict[str, tuple[int, ...]]:
    """What a released file holds: no CLIP, tagger or DDPM buffers."""
    return {k: v for k, v in layout.items() if k.startswith(("model.", "control_encoder.", "proj.",
                                                               "first_stage_model.", "bg_encoder."))}


@pytest.fixture(scope="module")
def unet_shapes() -> dict[str, tuple[int, ...]]:
    return _shapes(build_xl_unet(device="meta"), UNET)


# ------------------------------------------------------------------ the packed layouts


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_packed_layouts_equal_the_shared_layouts(layout_dir: Path, model_type: str, tmp_path: Path) -> None:
    source = layout_dir / f"keys_xl_{model_type}.json"
    shared = json.loads(source.read_text())
    packed = xl_layout(model_type)
    assert list(packed) == list(shared)  # the official state_dict() order
    assert all(packed[k] == tuple(v) for k, v in shared.items())
    # the shipped bytes are what the documented packer writes (reproducible: gzip mtime 0)
    assert pack_layout(source, tmp_path / "x.json.gz") == layout_path(model_type).read_bytes()


def test_the_packer_writes_the_sd21_families_format(layout_dir: Path, tmp_path: Path) -> None:
    """The SD2.1 families' keys.json.gz are this same packing of their shared layouts, byte for byte."""
    for folder, name in (("v1", "mult"), ("v15", "switch"), ("v2", "v2")):
        shipped = (get_family(name).folder / "keys.json.gz").read_bytes()
        assert get_family(name).folder.name == folder
        assert pack_layout(layout_dir / f"keys_{name}.json", tmp_path / f"{name}.json.gz") == shipped


def test_layout_counts_and_unknown_type() -> None:
    sdxl, xlv2 = xl_layout("sdxl"), xl_layout("xlv2")
    assert (len(sdxl), len(xlv2)) == (3201, 4785)  # official meta-device build of sdxl.yaml / xlv2.yaml
    # a released file: 2,000 / 3,584 entries with the 12 DDPM buffers (official-xl facts, ckpt_util.py:79-96)
    assert (len(_released(sdxl)) + 12, len(_released(xlv2)) + 12) == (2000, 3584)
    assert set(sdxl) < set(xlv2) and all(xlv2[k] == v for k, v in sdxl.items())
    with pytest.raises(ValueError, match="unknown XL model type 'xl'"):
        xl_layout("xl")


# ------------------------------------------------------------------ full-size meta builds against the layouts


def test_full_size_sdxl_unet_equals_the_layout(unet_shapes: dict) -> None:
    assert unet_shapes == _with(xl_layout("sdxl"), UNET)


def test_full_size_xlv2_unet_and_reference_net_equal_the_layout() -> None:
    layout = xl_layout("xlv2")
    assert _shapes(build_xlv2_unet(device="meta"), UNET) == _with(layout, UNET)
    assert _shapes(build_reference_net(device="meta"), "bg_encoder.") == _with(layout, "bg_encoder.")


def test_xlv2_unet_adds_exactly_the_background_lora_and_conv_fg(unet_shapes: dict) -> None:
    """The xlv2 U-Net is the sdxl one plus the background LoRA pairs of every attn2 q/k/v (rank 4, shapes of
    ``BackgroundLoraLinear`` at that site) and ``conv_fg``, nothing else."""
    xlv2 = _with(xl_layout("xlv2"), UNET)
    assert {k: v for k, v in xlv2.items() if k in unet_shapes} == unet_shapes
    pending = {k: v for k, v in xlv2.items() if k not in unet_shapes}
    assert all(is_xlv2_key(k) for k in pending) and not any(is_xlv2_key(k) for k in unet_shapes)
    assert {k: v for k, v in pending.items() if not LORA.fullmatch(k)} == {
        f"{UNET}conv_fg.weight": (320, 4, 3, 3), f"{UNET}conv_fg.bias": (320,)}
    sites = {(m.group(1), m.group(2)) for k in pending if (m := LORA.fullmatch(k))}
    attn2 = {(k[len(UNET):-len(".to_q.weight")], p) for k in unet_shapes if k.endswith("attn2.to_q.weight")
             for p in "qkv"}
    assert sites == attn2 and len(sites) == 70 * 3
    for site, proj in sites:
        out_f, in_f = unet_shapes[f"{UNET}{site}.to_{proj}.weight"]
        with torch.device("meta"):
            lora = BackgroundLoraLinear(in_f, out_f, 4)
        expected = {f"{UNET}{site}.to_{proj}.{k}": tuple(v.shape) for k, v in lora.state_dict().items()}
        assert {k: xlv2[k] for k in expected} == expected


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_full_size_sketch_encoder_proj_and_vae_equal_the_layout(model_type: str) -> None:
    layout = xl_layout(model_type)
    with torch.device("meta"):
        sketch = MultiScaleAttentionEncoder(FULL_XL_SKETCH_ENCODER)
        proj = ClusterConcat(ClusterConcatConfig())
        vae = AutoencoderKL(VAEConfig(scale_factor=XL_VAE_SCALE))  # SD's kl-f8 VAE, XL's latent scale
    assert _shapes(sketch, "control_encoder.") == _with(layout, "control_encoder.")
    assert _shapes(proj, "proj.") == _with(layout, "proj.")
    assert _shapes(vae, "first_stage_model.") == _with(layout, "first_stage_model.")


# ------------------------------------------------------------------ model type from keys


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_both_layouts_are_detected_as_their_type(model_type: str) -> None:
    layout = xl_layout(model_type)
    assert xl_model_type(layout) == model_type  # names and shapes
    assert xl_model_type(list(layout)) == model_type  # names only
    assert xl_model_type(_released(layout)) == model_type  # without CLIP, tagger and buffers
    assert xl_model_type(load_layout_json(layout_path(model_type))) == model_type  # TensorInfo values


@pytest.mark.parametrize("marker", [
    "bg_encoder.input_blocks.0.0.weight",
    f"{UNET}middle_block.1.transformer_blocks.3.attn2.to_v.lora_up_background.weight",
    f"{UNET}conv_fg.bias",
])
def test_any_xlv2_marker_makes_an_sdxl_file_xlv2(marker: str) -> None:
    assert xl_model_type([*xl_layout("sdxl"), marker]) == "xlv2"


@pytest.mark.parametrize("name", ["mult", "switch", "v2"])
def test_sd21_layouts_are_not_xl(name: str) -> None:
    layout = get_family(name).layout()  # v2 has bg_encoder.*: not a marker without the XL base
    assert xl_model_type(layout) is None and xl_model_type(list(layout)) is None


def test_foreign_files_are_not_xl() -> None:
    sdxl = xl_layout("sdxl")
    unet = {k: v for k, v in sdxl.items() if k.startswith(UNET)}
    community = {**unet, "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
                 "conditioner.embedders.1.model.ln_final.weight": (1280,), **_with(sdxl, "first_stage_model.")}
    clip = {k[len("cond_stage_model.model."):]: v for k, v in sdxl.items() if k.startswith("cond_stage_model.model.")}
    for keys in (community, clip, isnet_layout(), {k: v for k, v in sdxl.items() if not k.startswith("proj.")},
                 {k: v for k, v in sdxl.items() if not k.startswith("control_encoder.attn_layer")}, {}):
        assert xl_model_type(keys) is None and xl_model_type(list(keys)) is None
    # an SD2.1 sketch encoder next to an XL U-Net is not XL either
    mult_sketch = _with(get_family("mult").layout(), "control_encoder.")
    assert xl_model_type({**unet, **mult_sketch, **_with(sdxl, "proj.")}) is None


def test_shapes_that_contradict_the_names_are_not_xl() -> None:
    sdxl = dict(xl_layout("sdxl"))
    conv = {k: (*v, 1, 1) if k.endswith(".proj_in.weight") else v for k, v in sdxl.items()}
    assert xl_model_type(conv) is None
    narrow = {**sdxl, "proj.proj.0.weight": (1024, 2304)}  # ClusterConcat output != cross-attention width
    assert xl_model_type(narrow) is None
    assert xl_model_type(list(conv)) == "sdxl"  # names alone cannot tell


# ------------------------------------------------------------------ configs from shapes


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_infer_unet_config_on_the_xl_layouts_is_the_xl_config(model_type: str) -> None:
    assert infer_unet_config(split_checkpoint(xl_layout(model_type))["unet"]) == XL_UNET


@pytest.mark.parametrize("name", ["mult", "switch", "v2"])
def test_infer_unet_config_on_sd21_layouts_is_unchanged(name: str) -> None:
    cfg = infer_unet_config(split_checkpoint(get_family(name).layout())["unet"])
    assert cfg == FULL_MULT.unet
    assert (cfg.transformer_depth, cfg.transformer_depth_middle, cfg.use_linear_in_transformer, cfg.adm_in_channels,
            cfg.hint_blocks) == (1, None, False, None, None)


def test_infer_unet_config_sd21_with_linear_proj_keeps_the_sd21_answer() -> None:
    """SD2.x text-to-image files store Linear proj_in/out; without label_emb or uneven depths they stay SD2.1."""
    unet = split_checkpoint(get_family("mult").layout())["unet"]
    linear = {k: v[:2] if k.endswith((".proj_in.weight", ".proj_out.weight")) else v for k, v in unet.items()}
    assert infer_unet_config(linear) == FULL_MULT.unet


def test_infer_unet_config_tiny_xl_round_trip_and_variants() -> None:
    for cfg in (TINY_XL_UNET, replace(TINY_XL_UNET, transformer_depth=(1, 3, 2), transformer_depth_middle=4),
                replace(TINY_XL_UNET, adm_in_channels=96, use_linear_in_transformer=False)):
        shapes = {k: tuple(v.shape) for k, v in build_xl_unet(cfg, device="meta").state_dict().items()}
        assert infer_unet_config(shapes) == cfg
    # uneven depths without an adm input are an SDXL-style U-Net too
    cfg = replace(TINY_XL_UNET, adm_in_channels=None)
    with torch.device("meta"):
        shapes = _shapes(DualCondUNet(cfg), "")
    assert infer_unet_config(shapes) == cfg


def test_infer_unet_config_refuses_mixed_proj_in() -> None:
    unet = dict(split_checkpoint(xl_layout("sdxl"))["unet"])
    unet["input_blocks.4.1.proj_in.weight"] = (640, 640, 1, 1)
    with pytest.raises(CheckpointError, match="some proj_in layers are Linear"):
        infer_unet_config(unet)
    mult = {**split_checkpoint(get_family("mult").layout())["unet"], "label_emb.0.0.weight": (1280,)}
    with pytest.raises(CheckpointError, match="label_emb.0.0.weight has shape"):
        infer_unet_config(mult)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_xl_config_from_shapes_of_the_layouts(model_type: str) -> None:
    cfg = xl_config_from_shapes(_released(xl_layout(model_type)))
    assert cfg.model_type == model_type
    assert (cfg.unet, cfg.sketch, cfg.proj) == (XL_UNET, FULL_XL_SKETCH_ENCODER, ClusterConcatConfig())
    assert (cfg.has_bg_encoder, cfg.background_lora_rank) == ((True, 4) if model_type == "xlv2" else (False, None))


def test_xl_config_from_shapes_tiny_round_trip_and_errors() -> None:
    sketch_cfg = MultiScaleEncoderConfig(model_channels=16, ch_mults=(1, 2, 1), dim_head=8)
    proj_cfg = ClusterConcatConfig(input_dim=48, c_dim=24, output_dim=TINY_XL_UNET.context_dim, dim_head=16)
    with torch.device("meta"):
        sketch, proj = MultiScaleAttentionEncoder(sketch_cfg), ClusterConcat(proj_cfg)
    shapes = {**_shapes(build_xl_unet(TINY_XL_UNET, device="meta"), UNET), **_shapes(sketch, "control_encoder."),
              **_shapes(proj, "proj.")}
    cfg = xl_config_from_shapes(shapes, num_head_channels=16, what="tiny.safetensors", sketch_dim_head=8,
                                proj_dim_head=16)
    assert (cfg.model_type, cfg.unet, cfg.sketch, cfg.proj, cfg.has_bg_encoder) == (
        "sdxl", TINY_XL_UNET, sketch_cfg, proj_cfg, False)
    assert xl_config_from_shapes(shapes, sketch_dim_head=8).proj == replace(proj_cfg, dim_head=128)  # released
    with pytest.raises(CheckpointError, match="mult.safetensors is not a ColorizeDiffusion XL checkpoint"):
        xl_config_from_shapes(get_family("mult").layout(), what="mult.safetensors")
    with pytest.raises(CheckpointError, match="different ranks"):
        xl_config_from_shapes({**shapes, f"{UNET}a.attn2.to_q.lora_down_background.weight": (4, 32),
                               f"{UNET}b.attn2.to_q.lora_down_background.weight": (8, 32)}, sketch_dim_head=8)


# ------------------------------------------------------------------ parameterisation


def _meta(**config: object) -> dict[str, str]:
    return {CONFIG_METADATA_KEY: json.dumps(config)}


@pytest.mark.parametrize(("metadata", "file_name", "override", "expected"), [
    (None, "xlv2-eps.safetensors", None, ("eps", "file name")),
    (None, "sdxl_eps_ft.safetensors", None, ("eps", "file name")),
    (None, "xlv2.safetensors", None, ("v", "file name")),
    (None, "sdxl-v.safetensors", None, ("v", "file name")),
    (None, "models/eps/sdxl.safetensors", None, ("v", "file name")),  # the file's own name, not its folder
    (None, "sdxl-EPS.safetensors", None, ("v", "file name")),  # the official test is case-sensitive
    (None, None, None, ("v", "file name")),
    ({}, "sdxl.safetensors", None, ("v", "file name")),
    ({"other": "x"}, "sdxl-eps.safetensors", None, ("eps", "file name")),
    (_meta(version="xl"), "sdxl-eps.safetensors", None, ("eps", "file name")),  # stored config without it
    (_meta(parameterization="eps"), "xlv2.safetensors", None, ("eps", "metadata")),
    (_meta(parameterization="v"), "xlv2-eps.safetensors", None, ("v", "metadata")),
    (_meta(parameterization="v"), "xlv2-eps.safetensors", "eps", ("eps", "override")),
    (None, "xlv2-eps.safetensors", "v", ("v", "override")),
    (None, "xlv2.safetensors", "eps", ("eps", "override")),
])
def test_parameterization_rule_table(metadata, file_name, override, expected) -> None:  # type: ignore[no-untyped-def]
    assert xl_parameterization(metadata, file_name, override) == expected


def test_parameterization_errors() -> None:
    with pytest.raises(InputError, match="'eps' or 'v'"):
        xl_parameterization(None, "x.safetensors", "x0")
    with pytest.raises(CheckpointError, match="x.safetensors: the stored config says parameterization='x0'"):
        xl_parameterization(_meta(parameterization="x0"), "x.safetensors")
    with pytest.raises(CheckpointError, match="is not JSON"):
        xl_parameterization({CONFIG_METADATA_KEY: "{"}, "x.safetensors")


# ------------------------------------------------------------------ inspect


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_inspect_reports_the_xl_model_type(model_type: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / f"{model_type}-eps.json.gz"
    path.write_bytes(layout_path(model_type).read_bytes())
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert f"model type {model_type}" in out and "parameterization: eps" in out
    assert f"OK - matches the released XL {model_type} key layout" in out
    assert inspect_main([str(layout_path(model_type)), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert (rep["model_type"], rep["parameterization"], rep["parameterization_rule"], rep["size"], rep["ok"]) == (
        model_type, "v", "file name", "full", True)
    assert rep["components"]["unet"]["present"] == len(_with(xl_layout(model_type), UNET))


def test_inspect_xl_mismatch_and_sd21_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    layout = {k: list(v) for k, v in _released(xl_layout("xlv2")).items()}
    del layout[f"{UNET}conv_fg.bias"]
    layout[f"{UNET}out.2.bias"] = [5]
    path = tmp_path / "broken.json.gz"
    path.write_bytes(gzip.compress(json.dumps(layout).encode()))
    assert inspect_main([str(path)]) == 1
    out = capsys.readouterr().out
    assert "model type xlv2" in out and "MISMATCH in unet" in out and "conv_fg.bias" in out
    path = tmp_path / "mult.json"
    path.write_text(json.dumps({k: list(v) for k, v in get_family("mult").layout().items()}))
    assert inspect_main([str(path)]) == 0
    assert "OK - matches the released mult key layout" in capsys.readouterr().out


def test_inspect_a_tiny_xl_safetensors_file_uses_the_stored_parameterization(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from safetensors.torch import save_file

    sketch_cfg = MultiScaleEncoderConfig(model_channels=32, ch_mults=(1, 2, 4))  # attention 128: one head of 128
    proj_cfg = ClusterConcatConfig(input_dim=48, c_dim=24, output_dim=TINY_XL_UNET.context_dim)
    modules = {UNET: build_xlv2_unet(TINY_XL_UNET), "control_encoder.": MultiScaleAttentionEncoder(sketch_cfg),
               "proj.": ClusterConcat(proj_cfg)}
    sd = {p + k: v.contiguous() for p, m in modules.items() for k, v in m.state_dict().items()}
    path = tmp_path / "xlv2-eps-tiny.safetensors"  # the name says eps, the stored config says v
    save_file(sd, str(path), metadata={CONFIG_METADATA_KEY: json.dumps({"parameterization": "v"})})
    assert inspect_main([str(path), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert (rep["model_type"], rep["parameterization"], rep["parameterization_rule"], rep["size"]) == (
        "xlv2", "v", "metadata", "custom")
    # names are compared at this size; CLIP, tagger and buffers may be absent; the VAE and the ReferenceNet may not
    assert {n for n, c in rep["components"].items() if not c["ok"]} == {"vae", "bg_encoder"}
    assert all(rep["components"][n]["present"] == 0 for n in ("clip", "tagger", "schedule"))
    assert rep["ok"] is False


@pytest.mark.parametrize(("key", "shape"), [
    ("proj.attn.to_q.weight", ()),
    (f"{UNET}label_emb.0.0.weight", (1280,)),
    ("control_encoder.model.0.weight", (16,)),
    ("proj.proj.0.weight", (2048, 1000)),  # fewer inputs than the CLIP width
])
def test_crafted_xl_shapes_are_named_errors(key: str, shape: tuple, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    layout = {**_released(xl_layout("sdxl")), key: shape}
    with pytest.raises(CheckpointError):
        xl_config_from_shapes(layout, what="crafted.safetensors")
    path = tmp_path / "crafted.json"
    path.write_text(json.dumps({k: list(v) for k, v in layout.items()}))
    assert inspect_main([str(path)]) == 2
    assert "error:" in capsys.readouterr().err
