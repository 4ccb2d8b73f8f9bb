"""The chapter-4 GAN as a family: its file format, detection, ``inspect``, the colorizer with tag edits, the CLI and
the bench row (tiny random weights; the networks themselves are tested in test_gan_networks.py)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from colorize.checkpoint import read_header, read_metadata
from colorize.cli import main
from colorize.errors import CheckpointError, InputError
from colorize.families import FAMILIES, detect_family, get_family
from colorize.families.gan import GAN, TINY_MANIPULATION, TINY_TAGS
from colorize.families.gan.checkpoint import (
    GAN_CONFIG_KEY,
    GANFileConfig,
    build_gan_modules,
    load_gan_checkpoint,
    read_gan_config,
    save_gan_checkpoint,
)
from colorize.families.gan.colorizer import GANColorizer
from colorize.families.gan.manipulation import global_average_pool
from colorize.families.gan.networks import TINY_GAN, GANConfig
from colorize.tiny import write_tiny_weights

REPO = Path(__file__).resolve().parents[2]
SKETCH, REFERENCE = REPO / "workflows" / "colorizediffusion_sketch.png", REPO / "workflows" / "colorizediffusion_reference.png"


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = write_tiny_weights(tmp_path_factory.mktemp("gan") / "models", versions=("gan",))
    return files["colorize-gan-tiny"]


@pytest.fixture(scope="module")
def gan(tiny_file: Path) -> GANColorizer:
    return GANColorizer.from_file(tiny_file, "cpu")


def _modules(components: tuple[str, ...], seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    mods = build_gan_modules(GANFileConfig(TINY_GAN, TINY_MANIPULATION, TINY_TAGS, components))
    return {c: mods[c] for c in components}


@pytest.mark.parametrize("components, stage", [
    (("tag_encoder",), "gan_tagger"),
    (("tag_encoder", "generator"), "gan_stage1"),
    (("tag_encoder", "generator", "tag_mapper"), "gan_stage2"),
])
def test_each_stage_file_round_trips_with_its_stage_and_tensors(tmp_path: Path, components: tuple[str, ...],
                                                               stage: str) -> None:
    mods = _modules(components)
    path = save_gan_checkpoint(tmp_path / "g.safetensors", mods, TINY_GAN, TINY_MANIPULATION, TINY_TAGS)
    loaded = load_gan_checkpoint(path)
    assert loaded.config.stage == stage and loaded.config.tags == TINY_TAGS
    assert (loaded.generator is None) == ("generator" not in components)
    assert (loaded.tag_mapper is None) == ("tag_mapper" not in components)
    for comp, module in mods.items():
        got = getattr(loaded, comp).state_dict()
        assert all(torch.equal(got[k], v) for k, v in module.state_dict().items())
    assert detect_family(read_header(path)) is GAN


def test_shapes_decide_the_sizes_and_a_contradicting_stored_config_is_refused(tmp_path: Path) -> None:
    mods = _modules(("tag_encoder", "generator", "tag_mapper"))
    path = save_gan_checkpoint(tmp_path / "g.safetensors", mods, TINY_GAN, TINY_MANIPULATION, TINY_TAGS)
    header, meta = read_header(path), read_metadata(path)
    bare = read_gan_config(header, None)  # no metadata: every size from the shapes, the rest defaults
    assert bare.generator.reference_size == GANConfig().reference_size  # not in the shapes: the default
    assert replace(bare.generator, discriminator_widths=TINY_GAN.discriminator_widths, reference_size=64) == TINY_GAN
    assert bare.manipulation == TINY_MANIPULATION and bare.tags == tuple(f"tag_{i}" for i in range(5))
    claim = json.loads(meta[GAN_CONFIG_KEY])
    claim["generator"]["encoder_widths"] = [8, 8, 8, 16, 16]
    with pytest.raises(CheckpointError, match=r"encoder_widths=\(8, 8, 8, 16, 16\) but the tensors show \(4, 8, 8"):
        read_gan_config(header, {**meta, GAN_CONFIG_KEY: json.dumps(claim)}, "g.safetensors")
    with pytest.raises(CheckpointError, match="must list 5 tag names"):
        read_gan_config(header, {**meta, "colorize_gan_tags": json.dumps(["a"])}, "g.safetensors")


def test_the_diffusion_loader_refuses_a_gan_file_naming_where_it_loads(tiny_file: Path) -> None:
    from colorize.loader import read_checkpoint_info

    with pytest.raises(CheckpointError, match="chapter-4 GAN file, not a diffusion checkpoint: load it with"):
        read_checkpoint_info(tiny_file)


def test_full_size_layout_has_table_4_1_widths_and_the_stated_parameter_counts() -> None:
    """Table 4.1 at full size, 6000 tags: generator 55,566,501 parameters, ResNet-34 + 6000-way head 24,362,672
    (21,284,672 + 512 * 6000 + 6000), M-Attention tag mapper 5,180,420 (fc 6000→512: 3,072,512; three 512→512:
    787,968; layer weights 2048→4: 8,196; projection 2048→512: 1,049,088; ω 512→512: 262,656)."""
    layout = GAN.layout()
    count = {c: sum(torch.Size(s).numel() for k, s in layout.items() if k.startswith(c + ".") and
                    not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
             for c in ("generator", "tag_encoder", "tag_mapper")}
    assert count == {"generator": 55_566_501, "tag_encoder": 24_362_672, "tag_mapper": 5_180_420}
    assert [layout[f"generator.encoder.{i}.conv.0.weight"][0] for i in range(5)] == [64, 128, 256, 512, 512]
    assert detect_family(layout) is GAN and [f for f in FAMILIES.values() if f.matches(layout)] == [GAN]
    assert get_family("gan").size_multiple == 32


def test_inspect_reports_the_stage_and_flags_a_missing_key(tiny_file: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tiny_file)]) == 0
    out = capsys.readouterr().out
    assert "chapter-4 GAN (family 'gan'" in out and "stage:            gan_stage2" in out and "OK" in out
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tiny_file))
    del sd["generator.to_image.bias"]
    broken = tmp_path / "broken.safetensors"
    save_file(sd, str(broken), metadata=read_metadata(tiny_file))
    assert main(["inspect", str(broken), "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["missing"] == ["generator.to_image.bias"] and rep["family"] == "gan"


def test_colorize_gives_an_image_of_the_sketch_aspect(gan: GANColorizer) -> None:
    sketch = torch.ones(1, 3, 100, 150)
    sketch[..., 40:60, :] = 0  # a dark line on white
    out = gan.colorize(sketch, torch.rand(1, 3, 80, 80))
    assert out.shape == (1, 3, 448, 640) and 0 <= out.min() and out.max() <= 1  # 512² area, multiples of 64
    assert gan.colorize(sketch, torch.rand(1, 3, 80, 80), width=128, height=64).shape == (1, 3, 64, 128)


def test_edits_follow_eq_4_15_and_chained_edits_equal_one_edit(gan: GANColorizer) -> None:
    code = gan.encode_reference(torch.rand(1, 3, 70, 90, generator=torch.Generator().manual_seed(1)))
    probs = gan.predicted_tags(code, top_k=5)
    assert [n for n, _ in probs] and {n for n, _ in probs} == set(TINY_TAGS)
    assert [p for _, p in probs] == sorted((p for _, p in probs), reverse=True)
    chained = gan.edit(gan.edit(code, {"red_shape": 2.0}), {"blue_shape": -1.0})
    once = gan.edit(code, {"blue_shape": -1.0, "red_shape": 2.0})
    assert torch.equal(gan.reference_features(chained), gan.reference_features(once))
    # Eq. 4.15 / 4.16 by hand: δ_b = φ(r_a) + ω(φ(r_a) / GAP(φ(r_a))) · (mapping(cls_t) − mapping(cls_a))
    mapper, phi, cls_a = gan.modules.tag_mapper, code.features, code.probabilities
    cls_t = cls_a.clone()
    cls_t[0, TINY_TAGS.index("red_shape")], cls_t[0, TINY_TAGS.index("blue_shape")] = 2.0, -1.0
    gap = global_average_pool(phi)[..., None, None]
    ratio = torch.where(gap == 0, torch.zeros_like(phi), phi / torch.where(gap == 0, torch.ones_like(gap), gap))
    modulation = torch.einsum("oc,bchw->bohw", mapper.omega.fc.weight, ratio) + mapper.omega.fc.bias[:, None, None]
    expected = phi + modulation * (mapper.mapping(cls_t) - mapper.mapping(cls_a))[..., None, None]
    torch.testing.assert_close(gan.reference_features(once), expected, rtol=1e-5, atol=1e-6)
    sketch = torch.ones(1, 3, 64, 64)
    assert not torch.equal(gan.colorize(sketch, once), gan.colorize(sketch, code))


def test_bad_edits_are_named_before_any_work(gan: GANColorizer, tmp_path: Path) -> None:
    code = gan.encode_reference(torch.rand(1, 3, 64, 64))
    with pytest.raises(InputError, match="unknown tag 'pink'.*e.g. red_shape"):
        gan.edit(code, {"pink": 1.0})
    with pytest.raises(InputError, match="not a finite number"):
        gan.check_edits({"red_shape": float("nan")})
    with pytest.raises(InputError, match="2 references for 3 sketches"):
        gan.colorize(torch.ones(3, 3, 64, 64), torch.rand(2, 3, 64, 64))
    stage1 = save_gan_checkpoint(tmp_path / "s1.safetensors", _modules(("tag_encoder", "generator")), TINY_GAN,
                                 None, TINY_TAGS)
    plain = GANColorizer.from_file(stage1, "cpu")
    assert not plain.can_edit and plain.colorize(torch.ones(1, 3, 64, 64), torch.rand(1, 3, 64, 64)).shape[-1] == 512
    with pytest.raises(InputError, match="no tag mapper \\(stage gan_stage2\\)"):
        plain.check_edits({"red_shape": 1.0})
    tagger = save_gan_checkpoint(tmp_path / "t.safetensors", _modules(("tag_encoder",)), TINY_GAN, None, TINY_TAGS)
    with pytest.raises(InputError, match="only the tag encoder"):
        GANColorizer.from_file(tagger, "cpu")


def test_cli_runs_a_gan_file_with_tag_edits_and_names_wrong_options(tiny_file: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gan.png"
    base = ["run", "--checkpoint", str(tiny_file), "--sketch", str(SKETCH), "--reference", str(REFERENCE)]
    assert main([*base, "--out", str(out), "--tag", "red_shape=2", "--tag", "blue_shape=0"]) == 0
    printed = capsys.readouterr().out
    assert "reference tags: " in printed and "red_shape" in printed and out.is_file()
    for extra, message in ((["--tag", "red_shape"], "write NAME=VALUE with a number"),
                           (["--tag", "pink=1"], "unknown tag 'pink'"),
                           (["--bg-enhance"], "--bg-enhance: the GAN has no such control")):
        assert main([*base, "--out", str(tmp_path / "x.png"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cli_refuses_tag_edits_on_a_diffusion_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = write_tiny_weights(tmp_path / "models", versions=("mult",))
    code = main(["run", "--checkpoint", str(files["mult-eps-ft"]), "--clip", str(files["clip-vit-h-14"]),
                 "--sketch", str(SKETCH), "--reference", str(REFERENCE), "--out", str(tmp_path / "o.png"),
                 "--tag", "red_hair=1", "--no-download"])
    assert code == 2 and "--tag edits the tags of a GAN checkpoint" in capsys.readouterr().err


def test_bench_times_one_gan_forward(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gan.json"
    assert main(["bench", "--gan", "64", "--config", "tiny", "--runs", "2", "--warmup", "0", "--device", "cpu",
                 "--json", str(out)]) == 0
    assert "thesis Tab. 5.5: 57 ms at 1024" in capsys.readouterr().out
    doc = json.loads(out.read_text())["gan"]
    assert doc["res"] == 64 and doc["runs"] == 2 and doc["total_s"] >= doc["generator_s"] > 0
    assert main(["bench", "--gan", "100", "--device", "cpu"]) == 2
    assert "--gan must be a multiple of 32" in capsys.readouterr().err


def test_full_config_validation_names_the_reference_width() -> None:
    with pytest.raises(ValueError, match="reference_channels \\(256\\) must be the tag encoder's last width"):
        GANConfig(reference_channels=256)
