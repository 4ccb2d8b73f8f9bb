"""The chapter-4 GAN nodes (thesis §4) without ComfyUI, on the tiny random GAN file of make-tiny-weights: loading and
refusing files, predicted tags, chained tag edits, colorization, and the one-line errors of wrong inputs."""
from __future__ import annotations

from _helpers import (
    ProgressRecorder,
    combo_choices,
    comfy_image,
    placed_copy,
    randomize,
    require_node_api,
    tiny_models_folder,
)

require_node_api()  # the nodes import ComfyUI's comfy_api

import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

import colorize.weights as w
from colorize.errors import CheckpointError, InputError, SizeLimitError, WeightsMissingError
from colorize.families import FAMILIES
from colorize.families.gan import TINY_GAN_FILE, TINY_MANIPULATION, TINY_TAGS
from colorize.families.gan.checkpoint import GAN_COMPONENTS, GANFileConfig, build_gan_modules, save_gan_checkpoint
from colorize.families.gan.colorizer import GANColorizer, ReferenceCode
from colorize.families.gan.networks import TINY_GAN
from colorize.preprocess import target_size
from nodes import NODE_CLASSES as M
from nodes import gan as node_gan
from nodes.loaders import SUPPORTED_VERSIONS
from nodes.models import manifest_files
from nodes.sockets import GANModel

REPO = Path(__file__).resolve().parents[2]
CKPT = "mult-eps-ft.safetensors"
LOADER, REFERENCE_NODE = M["ColorizeDiffusionGANLoader"], M["ColorizeDiffusionGANReference"]
EDIT, COLORIZE = M["ColorizeDiffusionGANTagEdit"], M["ColorizeDiffusionGANColorize"]


SKETCH = comfy_image(REPO / "workflows" / "colorizediffusion_sketch.png")
REFERENCE = comfy_image(REPO / "workflows" / "colorizediffusion_reference.png")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from tiny_models_folder(tmp_path_factory, ("mult", "gan"))


@pytest.fixture(scope="module")
def gan(tiny_dir: Path) -> GANModel:
    return LOADER.execute(TINY_GAN_FILE, "fp32").result[0]


@pytest.fixture(scope="module")
def lively(tiny_dir: Path) -> GANModel:
    """A tiny GAN with every weight random and non-zero (all three stages): the tiny file's generator starts its
    reference paths near zero, so its images hardly depend on the reference; this one's do."""
    torch.manual_seed(0)
    config = GANFileConfig(TINY_GAN, TINY_MANIPULATION, TINY_TAGS, tuple(GAN_COMPONENTS))
    modules = build_gan_modules(config)
    for seed, module in enumerate(modules.values()):
        randomize(module, seed)
    path = tiny_dir / "colorizediffusion_gan" / "lively.safetensors"
    save_gan_checkpoint(path, modules, TINY_GAN, TINY_MANIPULATION, TINY_TAGS, overwrite=True)
    return LOADER.execute(path.name, "fp32").result[0]


@pytest.fixture(scope="module")
def library(tiny_dir: Path) -> GANColorizer:
    """The same file loaded by the library alone (CPU)."""
    return GANColorizer.from_file(tiny_dir / "colorizediffusion_gan" / TINY_GAN_FILE, "cpu")


def encode(gan: GANModel, image: torch.Tensor = REFERENCE, top_k: int = 20) -> tuple[ReferenceCode, str]:
    code, text = REFERENCE_NODE.execute(gan, image, top_k).result
    return code, text


def edit(gan: GANModel, code: ReferenceCode, tag: str, value: float = 1.0) -> ReferenceCode:
    return EDIT.execute(gan, code, tag, value)[0]


def colorize(gan: GANModel, reference: ReferenceCode | None = None, sketch: torch.Tensor = SKETCH,
             reference_image: torch.Tensor | None = None, width: int = 128, height: int = 128,
             polarity: str = "auto") -> torch.Tensor:
    return COLORIZE.execute(gan, sketch, width, height, polarity, reference=reference,
                            reference_image=reference_image)[0]


def one_line(message: str) -> str:
    assert "\n" not in message.strip(), message
    return message


def write_gan(path: Path, components: tuple[str, ...], config: Any = TINY_GAN,
              tags: tuple[str, ...] = TINY_TAGS) -> Path:
    """A random GAN file with only ``components`` (a stage-1 export: tag encoder + generator)."""
    torch.manual_seed(0)
    modules = build_gan_modules(GANFileConfig(config, None, tags, components))
    return save_gan_checkpoint(path, {c: modules[c] for c in components}, config, None, tags, overwrite=True)


# ------------------------------------------------------------------------------------- loader


def test_the_gan_nodes_are_registered_under_their_category() -> None:
    for node_id in ("ColorizeDiffusionGANLoader", "ColorizeDiffusionGANReference", "ColorizeDiffusionGANTagEdit",
                    "ColorizeDiffusionGANColorize"):
        assert M[node_id].define_schema().category == "ColorizeDiffusion/gan"
    # the library's error for a GAN file in a diffusion loader names this node
    assert LOADER.define_schema().display_name == node_gan.LOADER_NAME == "Load ColorizeDiffusion GAN"


def test_the_diffusion_loaders_list_only_diffusion_families() -> None:
    assert "gan" in FAMILIES and "gan" not in SUPPORTED_VERSIONS
    assert set(SUPPORTED_VERSIONS) == {name for name, family in FAMILIES.items() if not family.standalone}
    assert {"mult", "switch", "v2", "sdxl", "xlv2"} <= set(SUPPORTED_VERSIONS)


def test_the_picker_lists_the_gan_folder(tiny_dir: Path) -> None:
    assert combo_choices(LOADER, "gan_name") == [TINY_GAN_FILE]
    own = tiny_dir / "colorizediffusion_gan" / "my-gan.safetensors"
    shutil.copy(tiny_dir / "colorizediffusion_gan" / TINY_GAN_FILE, own)
    # the training inputs the manifest keeps in the folder (the tag encoder's ImageNet start) are no GAN files
    inputs = [e["filename"] for e in manifest_files("colorizediffusion_gan")]
    for name in inputs:
        (tiny_dir / "colorizediffusion_gan" / name).write_bytes(b"")
    try:
        assert combo_choices(LOADER, "gan_name") == [TINY_GAN_FILE, "my-gan.safetensors"]
        assert TINY_GAN_FILE not in combo_choices(M["ColorizeDiffusionCheckpointLoader"], "ckpt_name")
    finally:
        own.unlink()
        for name in inputs:
            (tiny_dir / "colorizediffusion_gan" / name).unlink()


def test_the_loader_reads_the_file_and_describes_it(tiny_dir: Path) -> None:
    loaded = LOADER.execute(TINY_GAN_FILE, "auto")
    model, info = loaded.result
    assert isinstance(model, GANModel) and model.colorizer.tags == TINY_TAGS and model.colorizer.can_edit
    assert loaded.ui.as_dict()["text"][0] == info
    assert info.startswith(f"{TINY_GAN_FILE}: chapter-4 GAN") and "stage gan_stage2" in info and "5 tags" in info
    assert "float32" in info  # auto on the CPU


def test_the_loader_keeps_the_file_until_it_changes(tiny_dir: Path, gan: GANModel) -> None:
    again = LOADER.execute(TINY_GAN_FILE, "fp32").result[0]
    assert again.networks is gan.networks and again.colorizer is gan.colorizer  # read once
    path = tiny_dir / "colorizediffusion_gan" / TINY_GAN_FILE
    copy = path.with_name("copy.safetensors")
    shutil.copy(path, copy)
    try:
        first = LOADER.execute(copy.name, "fp32").result[0]
        st = copy.stat()
        os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert LOADER.execute(copy.name, "fp32").result[0].networks is not first.networks  # re-read
    finally:
        copy.unlink()


def test_the_loader_refuses_a_diffusion_checkpoint_naming_its_loader(tiny_dir: Path) -> None:
    message = r"diffusion\.safetensors is a ColorizeDiffusion v1 diffusion checkpoint, not a GAN file: load it with " \
              r"Colorize Loader"
    target = tiny_dir / "colorizediffusion_gan" / "diffusion.safetensors"
    with placed_copy(tiny_dir / "colorizediffusion" / CKPT, target) as wrong, \
            pytest.raises(CheckpointError, match=message) as e:
        LOADER.execute(wrong.name, "auto")
    one_line(str(e.value))


def test_the_loader_refuses_a_file_of_no_family(tiny_dir: Path) -> None:
    with placed_copy(tiny_dir / "clip_vision" / "open_clip_model.safetensors",
                     tiny_dir / "colorizediffusion_gan" / "clip.safetensors") as wrong, \
            pytest.raises(CheckpointError, match=r"clip\.safetensors is not a chapter-4 GAN file.*CLIP") as e:
        LOADER.execute(wrong.name, "auto")
    one_line(str(e.value))


def test_a_diffusion_loader_sends_a_gan_file_to_this_loader(tiny_dir: Path) -> None:
    target = tiny_dir / "colorizediffusion" / "gan.safetensors"
    with placed_copy(tiny_dir / "colorizediffusion_gan" / TINY_GAN_FILE, target) as wrong, \
            pytest.raises(CheckpointError, match=re.escape(node_gan.LOADER_NAME)) as e:
        M["ColorizeDiffusionCheckpointLoader"].execute(wrong.name, "auto")
    one_line(str(e.value))


def test_a_missing_tiny_file_says_how_to_make_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(w.MODELS_DIR_ENV, str(tmp_path))
    assert combo_choices(LOADER, "gan_name") == [TINY_GAN_FILE]  # listed though absent: the default
    with pytest.raises(WeightsMissingError, match=r"make-tiny-weights DIR --versions gan") as e:
        LOADER.execute(TINY_GAN_FILE, "auto")
    assert "colorizediffusion_gan" in one_line(str(e.value))
    with pytest.raises(WeightsMissingError, match=r"mine\.safetensors not found") as e:
        LOADER.execute("mine.safetensors", "auto")
    assert "make-tiny-weights" not in one_line(str(e.value))


def test_a_tag_encoder_only_file_cannot_colorize(tiny_dir: Path) -> None:
    write_gan(tiny_dir / "colorizediffusion_gan" / "tagger.safetensors", ("tag_encoder",))
    try:
        with pytest.raises(InputError, match="only the tag encoder") as e:
            LOADER.execute("tagger.safetensors", "auto")
        one_line(str(e.value))
    finally:
        (tiny_dir / "colorizediffusion_gan" / "tagger.safetensors").unlink()


def test_precision_runs_under_autocast(tiny_dir: Path, gan: GANModel) -> None:
    half = LOADER.execute(TINY_GAN_FILE, "bf16").result
    assert half[0].dtype == torch.bfloat16 and "bfloat16" in half[1]
    assert half[0].networks is gan.networks  # the same fp32 weights
    ref = encode(gan)[0]
    got, want = colorize(half[0], ref), colorize(gan, ref)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, atol=0.05, rtol=0)


# ------------------------------------------------------------------------------------- reference and tags


def test_reference_lists_the_predicted_tags(gan: GANModel, library: GANColorizer) -> None:
    out = REFERENCE_NODE.execute(gan, REFERENCE, 3)
    code, text = out.result
    assert out.ui.as_dict()["text"][0] == text
    assert isinstance(code, ReferenceCode) and code.batch == 1 and not code.edits
    assert re.fullmatch(r"\w+ \d\.\d\d(, \w+ \d\.\d\d){2}", text), text
    want = library.predicted_tags(library.encode_reference(REFERENCE.movedim(-1, 1)), 3)
    assert text == ", ".join(f"{name} {p:.2f}" for name, p in want)
    probabilities = [float(p) for p in re.findall(r"\d\.\d\d", text)]
    assert probabilities == sorted(probabilities, reverse=True)
    assert len(encode(gan, top_k=100)[1].split(", ")) == len(TINY_TAGS)  # every tag at most


def test_a_reference_batch_gives_one_line_per_image(gan: GANModel) -> None:
    batch = torch.cat([REFERENCE, 1 - REFERENCE])
    code, text = encode(gan, batch, top_k=2)
    lines = text.splitlines()
    assert code.batch == 2 and len(lines) == 2
    assert lines[0].startswith("image 1: ") and lines[1].startswith("image 2: ")
    assert lines[0][len("image 1: "):] == encode(gan, REFERENCE, top_k=2)[1]


# ------------------------------------------------------------------------------------- tag edits


def test_a_chain_of_edits_equals_one_combined_edit(gan: GANModel, library: GANColorizer) -> None:
    code = encode(gan)[0]
    chained = edit(gan, edit(gan, code, "red_shape", 2.0), "blue_shape", -1.0)
    combined = edit(gan, code, "red_shape=2, blue_shape=-1")
    assert dict(chained.edits) == dict(combined.edits) == {0: 2.0, 2: -1.0}
    assert not code.edits  # the input code is unchanged
    got = colorize(gan, chained)
    torch.testing.assert_close(got, colorize(gan, combined), atol=0, rtol=0)
    read = gan.colorizer.reference_features  # what the generator reads: the tag mapper's δ_b (Eq. 4.15)
    torch.testing.assert_close(read(chained), read(combined), atol=0, rtol=0)
    assert (read(chained) - read(code)).abs().max() > 1e-3
    want = library.colorize(SKETCH.movedim(-1, 1), library.encode_reference(REFERENCE.movedim(-1, 1)), 128, 128,
                            tags={"red_shape": 2.0, "blue_shape": -1.0})
    torch.testing.assert_close(got, want.movedim(1, -1), atol=1e-5, rtol=1e-5)


def test_a_later_edit_of_a_tag_replaces_the_earlier(gan: GANModel) -> None:
    code = encode(gan)[0]
    assert dict(edit(gan, edit(gan, code, "red_shape", 3.0), "red_shape", 0.5).edits) == {0: 0.5}


def test_tag_text_forms() -> None:
    parse = node_gan.parse_tag_edits
    assert parse("red_hair", 0.7) == {"red_hair": 0.7}
    assert parse(" red_hair , long_hair\n", 1.0) == {"red_hair": 1.0, "long_hair": 1.0}
    assert parse("red_hair=1, blue_eyes = -0.5", 3.0) == {"red_hair": 1.0, "blue_eyes": -0.5}
    assert parse("red_hair=1\nred_hair=0", 3.0) == {"red_hair": 0.0}
    assert parse("=_=", 2.0) == {"=_=": 2.0} and parse("=_==0.5", 2.0) == {"=_=": 0.5}  # a tag with '=' in it


def test_tag_names_resolve_with_spaces(gan: GANModel) -> None:
    code = encode(gan)[0]
    assert dict(edit(gan, code, "white background, green_shape=0").edits) == {4: 1.0, 1: 0.0}


@pytest.mark.parametrize("tag, message", [
    ("", r"names no tag"),
    (" , ", r"names no tag"),
    ("purple_shape", r"unknown tag 'purple_shape': this model knows 5 tags"),
    ("shape=1", r"unknown tag 'shape'.*close: red_shape"),
    ("red_shape=nan", r"not a finite number"),
], ids=["empty", "only-commas", "unknown", "close-names", "nan"])
def test_bad_tag_edits_are_one_line_errors(gan: GANModel, tag: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as e:
        edit(gan, encode(gan)[0], tag)
    one_line(str(e.value))


def test_a_file_without_tag_mapper_colorizes_but_refuses_edits(tiny_dir: Path) -> None:
    path = write_gan(tiny_dir / "colorizediffusion_gan" / "stage1.safetensors", ("tag_encoder", "generator"))
    try:
        stage1, info = LOADER.execute(path.name, "auto").result
        assert "stage gan_stage1" in info and "no tag edits" in info and not stage1.colorizer.can_edit
        code, text = encode(stage1)
        assert text.count(",") == len(TINY_TAGS) - 1
        assert colorize(stage1, code).shape == (1, 128, 128, 3)
        with pytest.raises(InputError, match=r"no tag mapper \(stage gan_stage2\)") as e:
            edit(stage1, code, "red_shape")
        one_line(str(e.value))
    finally:
        path.unlink()


def test_a_reference_of_another_gan_is_refused(tiny_dir: Path, gan: GANModel) -> None:
    path = write_gan(tiny_dir / "colorizediffusion_gan" / "three.safetensors", ("tag_encoder", "generator"),
                     replace(TINY_GAN, num_tags=3), ("a", "b", "c"))
    try:
        other = LOADER.execute(path.name, "auto").result[0]
        foreign = encode(other)[0]
        for call in (lambda: edit(gan, foreign, "red_shape"), lambda: colorize(gan, foreign)):
            with pytest.raises(InputError, match=r"encoded by another GAN file \(3 tags") as e:
                call()
            one_line(str(e.value))
    finally:
        path.unlink()


# ------------------------------------------------------------------------------------- colorize


def test_colorize_shape_range_and_the_library(gan: GANModel, library: GANColorizer) -> None:
    code = encode(gan)[0]
    image = colorize(gan, code, width=0, height=0)
    h, w = SKETCH.shape[1:3]
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert image.shape[1] % 64 == 0 and image.shape[2] % 64 == 0
    assert abs(image.shape[1] / image.shape[2] - h / w) < 0.2  # the sketch's aspect, about 512² in area
    assert 0.5 * 512**2 <= image.shape[1] * image.shape[2] <= 1.5 * 512**2
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    want = library.colorize(SKETCH.movedim(-1, 1), REFERENCE.movedim(-1, 1))
    torch.testing.assert_close(image, want.movedim(1, -1), atol=1e-5, rtol=1e-5)
    assert colorize(gan, code, width=200, height=0).shape[1:3] == target_size((h, w), 200, None)


def test_a_reference_image_equals_its_encoded_reference(gan: GANModel) -> None:
    torch.testing.assert_close(colorize(gan, reference_image=REFERENCE), colorize(gan, encode(gan)[0]),
                               atol=0, rtol=0)


def test_edits_change_the_colours(lively: GANModel) -> None:
    code = encode(lively)[0]
    plain, edited = colorize(lively, code), colorize(lively, edit(lively, code, "red_shape=3, blue_shape=-2"))
    assert (edited - plain).abs().max() > 1e-4


def test_references_pair_up_with_a_sketch_batch(lively: GANModel) -> None:
    gan = lively
    sketches = torch.cat([SKETCH, 1 - SKETCH, SKETCH])
    one = colorize(gan, encode(gan)[0], sketch=sketches, width=64, height=64)
    assert one.shape == (3, 64, 64, 3)
    torch.testing.assert_close(one[0], one[2])
    refs = torch.cat([REFERENCE, torch.rand_like(REFERENCE), REFERENCE])
    each = colorize(gan, reference_image=refs, sketch=sketches, width=64, height=64)
    torch.testing.assert_close(each[0], one[0], atol=1e-6, rtol=0)
    assert (each[1] - one[1]).abs().max() > 1e-4  # the second sketch has its own reference
    with pytest.raises(InputError, match="2 references for 3 sketches") as e:
        colorize(gan, reference_image=refs[:2], sketch=sketches, width=64, height=64)
    one_line(str(e.value))


@pytest.mark.parametrize("inputs, message", [
    ({}, r"GAN Colorize has no reference"),
    ({"reference_image": REFERENCE, "both": True}, r"got both reference and reference_image"),
], ids=["none", "both"])
def test_colorize_needs_exactly_one_reference(gan: GANModel, inputs: dict[str, Any], message: str) -> None:
    code = encode(gan)[0] if inputs.pop("both", False) else None
    with pytest.raises(InputError, match=message) as e:
        colorize(gan, code, **inputs)
    one_line(str(e.value))


def test_colorize_refuses_an_oversized_output_before_any_work(gan: GANModel,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def no_work() -> None:
        raise AssertionError("the GAN was placed before the size check")

    monkeypatch.setattr(gan.networks, "ready", no_work)
    with pytest.raises(SizeLimitError, match="above the limit"):
        colorize(gan, reference_image=REFERENCE, width=4096, height=4096)


def test_colorize_reports_progress_and_stops_on_cancel(gan: GANModel, monkeypatch: pytest.MonkeyPatch) -> None:
    recorder = ProgressRecorder.fresh()
    monkeypatch.setattr(node_gan, "Progress", recorder)
    code, sketches = encode(gan)[0], torch.cat([SKETCH] * 3)
    colorize(gan, code, sketch=sketches, width=64, height=64)
    assert recorder.updates == [(1, 3), (2, 3), (3, 3)]

    class Cancelled(Exception):
        pass

    calls = {"n": 0}

    def cancel_after_one() -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            raise Cancelled

    recorder.updates.clear()
    monkeypatch.setattr(node_gan, "check_interrupted", cancel_after_one)
    with pytest.raises(Cancelled):
        colorize(gan, code, sketch=sketches, width=64, height=64)
    assert recorder.updates == [(1, 3)]
