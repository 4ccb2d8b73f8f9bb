"""Checkpoint files: safe loading, clear errors, prefix split, version/config detection, inspect."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from colorize import checkpoint as ck
from colorize.checkpoint.inspection import format_report, inspect_path
from colorize.checkpoint.inspection import main as inspect_main
from colorize.config import FULL_MULT, TINY_MULT, replace
from colorize.errors import CheckpointError
from colorize.families import detect_family, get_family, split_checkpoint
from colorize.loader import checkpoint_config, read_checkpoint_info

VERSIONS = ("mult", "switch", "v2")


def _infer_config(shapes, metadata=None):  # type: ignore[no-untyped-def]
    """The config a loader derives: the family detected from the keys, then its config from the shapes (or the
    stored metadata)."""
    return checkpoint_config(detect_family(shapes), shapes, metadata)[0]


def _tiny_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Scale every width >= 16 of the full layout down by 16 (320->20, 1024->64, 16->1)."""
    return tuple(d // 16 if d >= 16 else d for d in shape)


def _tiny_state_dict(version: str = "mult", seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the released key names (no CLIP, no buffers, VAE in fp16 as released)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in get_family(version).layout().items():
        if ck.component_of(k) in ck.OPTIONAL_COMPONENTS:
            continue
        dtype = torch.float16 if k.startswith("first_stage_model.") else torch.float32
        sd[k] = torch.randn(_tiny_shape(shape), generator=g).to(dtype)
    return sd


# --- layouts shipped in the package ---------------------------------------------------------


def test_packaged_layouts_equal_shared_layouts(layout_dir: Path) -> None:
    for v in VERSIONS:
        shared = json.loads((layout_dir / f"keys_{v}.json").read_text())
        packaged = get_family(v).layout()
        assert list(packaged) == list(shared)
        assert all(packaged[k] == tuple(shape) for k, shape in shared.items())


# --- split / detect / parameterisation ------------------------------------------------------


def test_split_by_prefix_counts_and_stripping() -> None:
    parts = split_checkpoint(get_family("switch").layout())
    counts = {c: len(d) for c, d in parts.items() if d}
    # 392 visual + 294 text open_clip ViT-H-14 keys and the 12 DDPM buffers (official refnet/ldm/ddpm.py:125-146);
    # 42 MultiEncoder keys and the 248 SD kl-f8 VAE keys (official configs/inference/mult.yaml:27-41)
    assert counts["clip_visual"] == 392 and counts["clip_text"] == 294 and counts["schedule"] == 12
    assert counts["sketch_encoder"] == 42 and counts["vae"] == 248 and counts["thresh_embedder"] == 4
    assert "unexpected" not in counts
    assert "embedding" in parts["transformer"]  # top-level transformer.* is not the CLIP text transformer
    assert "input_blocks.0.0.weight" in parts["unet"]
    assert "betas" in parts["schedule"]
    odd = split_checkpoint({"model_ema.decay": 1, "cond_stage_model.model.x": 2})
    assert odd["unexpected"] == {"model_ema.decay": 1, "cond_stage_model.model.x": 2}


@pytest.mark.parametrize("version", VERSIONS)
def test_detect_version_from_released_layouts(version: str) -> None:
    layout = get_family(version).layout()
    assert detect_family(layout).name == version
    # without CLIP and buffers (as in the released files) the answer is the same
    keys = [k for k in layout if ck.component_of(k) not in ck.OPTIONAL_COMPONENTS]
    assert detect_family(keys).name == version


def test_detect_version_markers() -> None:
    mult = list(get_family("mult").layout())
    assert detect_family(mult + ["thresh_embedder.embed_layer.0.weight"]).name == "switch"
    assert detect_family(mult + ["bg_encoder.input_blocks.0.0.weight"]).name == "v2"
    assert get_family("v2").parameterization == "v"
    assert get_family("mult").parameterization == get_family("switch").parameterization == "eps"


def test_foreign_state_dicts_are_rejected_with_a_description() -> None:
    plain_sd = [k for k in get_family("mult").layout() if not k.startswith("control_encoder.")]
    with pytest.raises(CheckpointError, match="plain Stable Diffusion") as e:
        detect_family(plain_sd)
    assert "control_encoder" in str(e.value)
    with pytest.raises(CheckpointError, match="SDXL"):
        detect_family(["conditioner.embedders.0.transformer.x", "model.diffusion_model.input_blocks.0.0.weight"])
    with pytest.raises(CheckpointError, match="not a ColorizeDiffusion checkpoint"):
        detect_family(["foo.weight", "bar.bias"])
    # an open_clip file has transformer.resblocks.*: a CLIP model, not a v1.5 checkpoint
    open_clip_keys = ["visual.conv1.weight", "transformer.resblocks.0.attn.in_proj_weight", "token_embedding.weight"]
    with pytest.raises(CheckpointError, match="CLIP model"):
        detect_family(open_clip_keys)
    with pytest.raises(CheckpointError, match="no U-Net"):
        detect_family(["bg_encoder.input_blocks.0.0.weight", "control_encoder.model.0.weight"])


# --- config inference -----------------------------------------------------------------------


def test_infer_config_full_layout(layout_dir: Path) -> None:
    shapes = json.loads((layout_dir / "keys_mult.json").read_text())
    cfg = _infer_config(shapes)
    assert (cfg.version, cfg.parameterization) == ("mult", "eps")
    assert cfg.unet == FULL_MULT.unet and cfg.sketch == FULL_MULT.sketch and cfg.vae == FULL_MULT.vae
    v2 = _infer_config(get_family("v2").layout())
    assert (v2.version, v2.parameterization, v2.unet) == ("v2", "v", FULL_MULT.unet)


def test_infer_config_on_fixture_state_dicts(fixture_dir: Path) -> None:
    from colorize.parity.core import load_fixture

    fx = load_fixture(fixture_dir / "unet_mult.json")
    cfg = _infer_config(fx.state_dict)
    u = fx.config["unet_config"]["params"]
    assert cfg.unet.model_channels == u["model_channels"] and cfg.unet.channel_mult == tuple(u["channel_mult"])
    assert cfg.unet.num_res_blocks == u["num_res_blocks"] and cfg.unet.context_dim == u["context_dim"]
    assert cfg.unet.attention_resolutions == tuple(u["attention_resolutions"])
    assert cfg.unet.transformer_depth == u["transformer_depth"]
    assert cfg.unet.num_head_channels == u["num_head_channels"]  # heuristic agrees with the fixture (16 for 32 ch)
    s = fx.config["control_encoder_config"]["params"]
    assert cfg.sketch.model_channels == s["model_channels"] and cfg.sketch.ch_mults == tuple(s["ch_mults"])
    assert cfg.unet == TINY_MULT.unet and cfg.sketch == TINY_MULT.sketch

    vae = load_fixture(fixture_dir / "vae.json")
    dd = vae.config["params"]["ddconfig"]
    vc = ck.infer_vae_config(vae.state_dict)
    assert (vc.ch, vc.ch_mult, vc.num_res_blocks, vc.z_channels) == (
        dd["ch"], tuple(dd["ch_mult"]), dd["num_res_blocks"], dd["z_channels"]
    )
    assert vc.embed_dim == vae.config["params"]["embed_dim"]


def test_infer_config_prefers_metadata(tmp_path: Path) -> None:
    sd = _tiny_state_dict()
    cfg = _infer_config(sd)
    assert cfg.unet.model_channels == 20 and cfg.unet.context_dim == 64 and cfg.vae.ch == 8
    stored = replace(cfg, unet=replace(cfg.unet, num_head_channels=5))
    path = tmp_path / "tiny.safetensors"
    save_file(sd, str(path), metadata={ck.CONFIG_METADATA_KEY: json.dumps(stored.to_dict())})
    info = read_checkpoint_info(path)
    assert info.config_source == "metadata"
    assert info.config.unet.num_head_channels == 5 and info.config == replace(stored, version="mult")
    bad = replace(stored, unet=replace(stored.unet, model_channels=64))
    save_file(sd, str(tmp_path / "bad.safetensors"), metadata={ck.CONFIG_METADATA_KEY: json.dumps(bad.to_dict())})
    with pytest.raises(CheckpointError, match="model_channels"):
        read_checkpoint_info(tmp_path / "bad.safetensors")


def test_tiny_weights_writer_output_is_recognised(tmp_path: Path) -> None:
    for mod in ("colorize.models.unet", "colorize.models.sketch_encoder", "colorize.models.clip", "colorize.tiny"):
        pytest.importorskip(mod)
    from colorize.tiny import write_tiny_weights
    from colorize.weights import default_checkpoint_name, resolve

    write_tiny_weights(tmp_path)
    info = read_checkpoint_info(resolve(default_checkpoint_name(), tmp_path))
    assert (info.family.name, info.config.parameterization, info.config) == ("mult", "eps", TINY_MULT)
    by_shapes, source = checkpoint_config(info.family, info.header)
    assert source == "shapes" and by_shapes.unet == TINY_MULT.unet  # shapes alone agree with the metadata


# --- validate_keys --------------------------------------------------------------------------


def test_validate_keys_accepts_missing_optional_and_fp16() -> None:
    expected = get_family("mult").layout()
    got = {k: torch.empty(0).new_empty(s, dtype=torch.float16, device="meta") for k, s in expected.items()
           if ck.component_of(k) not in ck.OPTIONAL_COMPONENTS}
    ck.validate_keys(expected, got)  # CLIP and buffers absent, everything fp16: fine


def test_validate_keys_reports_missing_unexpected_and_shapes() -> None:
    expected = dict(get_family("mult").layout())
    got = {k: s for k, s in expected.items() if ck.component_of(k) == "unet"}
    got["model.diffusion_model.out.2.weight"] = (3, 320, 3, 3)
    got["model.diffusion_model.extra.weight"] = (1,)
    with pytest.raises(CheckpointError) as e:
        ck.validate_keys(expected, got)
    msg = str(e.value)
    assert "290 missing, 1 unexpected, 1 with the wrong shape" in msg  # 42 sketch + 248 VAE keys
    first_missing = next(k for k in expected if ck.component_of(k) in ("vae", "sketch_encoder"))
    assert first_missing in msg and "(+280 more)" in msg
    assert "model.diffusion_model.extra.weight" in msg
    assert "out.2.weight expected [4, 320, 3, 3] got [3, 320, 3, 3]" in msg
    # a present optional key with the wrong shape is still an error
    with pytest.raises(CheckpointError, match="betas"):
        ck.validate_keys({"betas": (1000,)}, {"betas": (999,)})


# --- reading files and their errors ---------------------------------------------------------


def test_safetensors_header_and_prefix_loading(tmp_path: Path) -> None:
    sd = {"model.diffusion_model.a": torch.randn(2, 3), "first_stage_model.b": torch.randn(4).half()}
    path = tmp_path / "x.safetensors"
    save_file(sd, str(path))
    header = ck.read_header(path)
    assert header["model.diffusion_model.a"] == ck.TensorInfo((2, 3), "float32")
    assert header["first_stage_model.b"] == ck.TensorInfo((4,), "float16")
    part = ck.load_state_dict_file(path, prefixes=["first_stage_model."])
    assert list(part) == ["first_stage_model.b"] and part["first_stage_model.b"].dtype == torch.float16
    assert torch.equal(ck.load_state_dict_file(path)["model.diffusion_model.a"], sd["model.diffusion_model.a"])


def test_missing_empty_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as e:
        ck.load_state_dict_file(tmp_path / "nope.safetensors")
    assert str(tmp_path / "nope.safetensors") in str(e.value) and "download" in str(e.value)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        ck.load_state_dict_file(tmp_path / "empty.safetensors")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(CheckpointError, match="unsupported file type"):
        ck.load_state_dict_file(tmp_path / "m.gguf")
    with pytest.raises(CheckpointError, match="folder"):
        ck.load_state_dict_file(tmp_path)


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.randn(64, 64)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for fn in (ck.load_state_dict_file, ck.read_header):
        with pytest.raises(CheckpointError, match="truncated or not a safetensors file; re-download it"):
            fn(path)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        ck.read_header(path)


def test_safetensors_of_another_model_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"encoder.layer.0.weight": torch.randn(3, 3), "head.bias": torch.randn(3)}, str(path))
    with pytest.raises(CheckpointError, match="not a ColorizeDiffusion checkpoint"):
        read_checkpoint_info(path)
    assert inspect_main([str(path)]) == 2


def test_ckpt_loads_with_weights_only_and_unwraps_state_dict(tmp_path: Path) -> None:
    sd = {"model.diffusion_model.a": torch.randn(3), "control_encoder.b": torch.randn(2)}
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 10}, tmp_path / "m.ckpt")
    got = ck.load_state_dict_file(tmp_path / "m.ckpt")
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    assert list(ck.load_state_dict_file(tmp_path / "m.ckpt", prefixes=["control_encoder."])) == ["control_encoder.b"]
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # not mmap-able
    assert ck.read_header(tmp_path / "legacy.pth")["control_encoder.b"].shape == (2,)


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # runs os.makedirs(marker) if a loader unpickles it
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.ones(1)}, "payload": _Evil(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="refused to load") as e:
        ck.load_state_dict_file(tmp_path / "evil.ckpt")
    assert "arbitrary code" in str(e.value)
    assert not marker.exists()


def test_corrupt_torch_file(tmp_path: Path) -> None:
    torch.save({"w": torch.randn(1000)}, tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.load_state_dict_file(tmp_path / "cut.pt")


# --- inspect --------------------------------------------------------------------------------


@pytest.mark.parametrize("version,param", [("mult", "eps"), ("switch", "eps"), ("v2", "v")])
def test_inspect_layout_files(layout_dir: Path, version: str, param: str, capsys: pytest.CaptureFixture) -> None:
    rep = inspect_path(layout_dir / f"keys_{version}.json")
    assert (rep.version, rep.parameterization, rep.size, rep.ok) == (version, param, "full", True)
    assert inspect_main([str(layout_dir / f"keys_{version}.json")]) == 0
    out = capsys.readouterr().out
    assert f"version:          {version}" in out and f"parameterization: {param}" in out


def test_inspect_renamed_tiny_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "my-model-v.safetensors"  # name suggests v2 / v-prediction; the keys say mult / eps
    save_file(_tiny_state_dict("mult"), str(path))
    rep = inspect_path(path)
    assert (rep.version, rep.parameterization, rep.size) == ("mult", "eps", "tiny")
    comps = {c.name: c for c in rep.components}
    assert comps["vae"].dtypes == {"float16": 248} and comps["unet"].dtypes == {"float32": 686}
    assert comps["clip_visual"].present == 0 and comps["clip_visual"].ok
    assert rep.ok
    assert inspect_main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "version:          mult" in out and "parameterization: eps" in out and "absent (optional" in out


def test_inspect_flags_missing_component(tmp_path: Path) -> None:
    sd = {k: v for k, v in _tiny_state_dict("switch").items() if not k.startswith("thresh_embedder.")}
    save_file(sd, str(tmp_path / "partial.safetensors"))
    rep = inspect_path(tmp_path / "partial.safetensors")
    assert rep.version == "switch" and not rep.ok
    assert "MISMATCH in thresh_embedder" in format_report(rep)
    assert inspect_main([str(tmp_path / "partial.safetensors")]) == 1


def test_metadata_parameterization_wins_over_the_version_default() -> None:
    """A v-trained v1 export says so in its metadata; the version's eps default must not override it."""
    import json
    from dataclasses import replace

    from colorize.config import TINY_MULT
    from colorize.tiny import build_tiny_state_dicts

    shapes = {k: tuple(v.shape) for k, v in build_tiny_state_dicts(TINY_MULT)[0].items()}
    meta = {ck.CONFIG_METADATA_KEY: json.dumps(replace(TINY_MULT, parameterization="v").to_dict())}
    assert _infer_config(shapes, meta).parameterization == "v"
    meta_eps = {ck.CONFIG_METADATA_KEY: json.dumps(TINY_MULT.to_dict())}
    assert _infer_config(shapes, meta_eps).parameterization == "eps"
