"""Native-bridge nodes without ComfyUI: node contracts, the patch objects' routing (hint rows per
``cond_or_uncond`` chunk, reference strength per block, LoRA paths) on a stand-in MODEL, and the schedules.
The bridge inside the real host: ``tests/host/test_comfyui_native.py``."""
from __future__ import annotations

from _helpers import require_node_api

require_node_api()  # the nodes import ComfyUI's comfy_api

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from colorize.config import ColorizerConfig
from colorize.generate import noise_schedule, sketch_hints
from colorize.models.attention import attend_heads
from colorize.models.split_attention import SplitAttention, SplitOptions
from colorize.native import read_native_checkpoint
from colorize.sampling import sampler_sigmas
from colorize.tiny import CHECKPOINT_NAMES, write_tiny_weights
from nodes import NODE_CLASSES
from nodes.native.guider import SIGMA_SCHEDULES, host_schedule, official_sigmas
from nodes.native.model import NativeParts, reference_conditioning
from nodes.native.model_patches import NativeReferenceStrength, NativeSketch
from nodes.native.patches import (
    SKETCH_UNCOND_KEY,
    AttentionPatch,
    HintPatch,
    SplitState,
)

NATIVE = {k: v for k, v in NODE_CLASSES.items() if "Native" in k}


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, NativeParts]:
    paths = write_tiny_weights(tmp_path_factory.mktemp("native_nodes"), versions=("mult", "switch"))
    out = {}
    for version in ("mult", "switch"):
        path = paths[CHECKPOINT_NAMES[version]]
        ck = read_native_checkpoint(path)
        out[version] = NativeParts(path.name, Path(path), ck.config, ck.extras, ck.encoders, torch.float32)
    return out


class StandInModel:
    """The part of ComfyUI's ModelPatcher the patch nodes use (clone, patch setters, additional models)."""

    def __init__(self) -> None:
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.additional: dict[str, Any] = {}

    def clone(self) -> StandInModel:
        m = StandInModel()
        m.model_options = copy.deepcopy(self.model_options)
        return m

    def _patch(self, name: str, patch: Any) -> None:
        self.model_options["transformer_options"].setdefault("patches", {}).setdefault(name, []).append(patch)

    def set_model_input_block_patch(self, patch: Any) -> None:
        self._patch("input_block_patch", patch)

    def set_model_attn2_patch(self, patch: Any) -> None:
        self._patch("attn2_patch", patch)

    def set_model_attn2_replace(self, patch: Any, block: str, number: int) -> None:
        to = self.model_options["transformer_options"]
        to.setdefault("patches_replace", {}).setdefault("attn2", {})[(block, number)] = patch

    def set_additional_models(self, key: str, models: list[Any]) -> None:
        self.additional[key] = models


def test_native_nodes_are_in_their_category() -> None:
    # tooltips, descriptions and outputs of every node: test_nodes.py's schema test
    assert len(NATIVE) == 7
    assert {cls.define_schema().category for cls in NATIVE.values()} == {"ColorizeDiffusion/native"}


def test_conditioning_negative_is_the_empty_reference() -> None:
    tokens = torch.randn(2, 256, 64)
    (pos,), (neg,) = reference_conditioning(tokens)
    assert torch.equal(pos[0], tokens) and neg[0].shape == tokens.shape and not neg[0].any()


def test_sketch_patch_adds_hints_per_chunk(parts: dict[str, NativeParts]) -> None:
    p = parts["mult"]
    image = (torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0)) > 0.9).float()
    model, latent = NativeSketch.execute(StandInModel(), p, image, 0.7)
    assert latent["samples"].shape == (1, 4, 8, 8) and not latent["samples"].any()
    (patch,) = model.model_options["transformer_options"]["patches"]["input_block_patch"]
    assert isinstance(patch, HintPatch) and copy.deepcopy(patch) is patch
    assert model.additional == {}  # outside ComfyUI there is no ModelPatcher to attach (inside: an additional model)
    hints, blank = sketch_hints(p.module.sketch_encoder, patch.sketch, 0.7)
    h = torch.zeros(6, hints[1].shape[1], *hints[1].shape[-2:])
    opts = {"block": ("input", 3), "original_shape": [6, 4, 8, 8], "cond_or_uncond": [0, 2, 1],
            SKETCH_UNCOND_KEY: (2,)}
    out = patch(h, opts)
    torch.testing.assert_close(out[:2], hints[1].expand(2, -1, -1, -1))
    torch.testing.assert_close(out[2:4], blank[1].expand(2, -1, -1, -1))  # the guider's sketch-uncond chunk
    torch.testing.assert_close(out[4:], hints[1].expand(2, -1, -1, -1))  # the reference-uncond chunk: sketch hints
    plain = patch(h[:2], {"block": ("input", 3), "original_shape": [2, 4, 8, 8], "cond_or_uncond": [1]})
    torch.testing.assert_close(plain, hints[1].expand(2, -1, -1, -1))  # KSampler: no sketch-uncond rows
    assert patch(h, {**opts, "block": ("input", 4)}) is h
    again, _ = NativeSketch.execute(model, p, image, 1.0)  # a second Native Sketch replaces the first
    assert len(again.model_options["transformer_options"]["patches"]["input_block_patch"]) == 1


def test_reference_strength_and_split_combine_in_one_attention_patch(parts: dict[str, NativeParts]) -> None:
    p = parts["switch"]
    (neutral,) = NativeReferenceStrength.execute(StandInModel(), p, 1.0, 1.0, 1.0, 1.0)
    assert "patches_replace" not in neutral.model_options["transformer_options"]  # host attention untouched
    (model,) = NativeReferenceStrength.execute(StandInModel(), p, 0.5, 1.0, 2.0, 1.0)
    replaces = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replaces) == {b.key for b in p.blocks} and len({id(v) for v in replaces.values()}) == 1
    patch = replaces[("input", 4)]
    assert isinstance(patch, AttentionPatch) and patch.scales[2] == 1.0 and patch.scales[10] == 1.0 * 0.5 * 2
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 16, 32, generator=g) for _ in range(3))
    # block 9 of 16: the "low" level; the host always passes original_shape (the latent's shape)
    out = patch(q, k, v, {"block": ("output", 5), "n_heads": 2, "original_shape": [2, 4, 4, 4]})
    torch.testing.assert_close(out, attend_heads(q, k, v, 2) * patch.scales[9])
    for block in p.blocks:  # every split layer finds its LoRA under the path the host reports
        assert p.module.lora_for(f"{block.path}.transformer_blocks.0.attn2") is not None
    split = patch.with_(split=SplitState(SplitAttention(SplitOptions(torch.ones(1, 1, 8, 8))), 8))
    assert split.scales == patch.scales and split.split is not None
    with pytest.raises(ValueError, match="8-token"):
        split(q, k[:, :6], v[:, :6], {"block": ("input", 1), "n_heads": 2, "original_shape": [2, 4, 4, 4]})


@pytest.mark.parametrize("scheduler", SIGMA_SCHEDULES)
def test_sigmas_equal_the_sampler_schedules(scheduler: str) -> None:
    cfg = ColorizerConfig()
    ours = noise_schedule(cfg)

    class Sampling:
        sigmas = ours.sigmas.clone()

    class Model:
        @staticmethod
        def get_model_object(name: str) -> Any:
            assert name == "model_sampling"
            return Sampling

    sampler, name = ("ddim", "leading") if scheduler == "ddim_leading" else ("euler", scheduler)
    want = sampler_sigmas(sampler, name, 7, ours, torch.device("cpu"))
    got = official_sigmas(host_schedule(Model()), scheduler, 7)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
