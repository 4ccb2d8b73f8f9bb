"""The thesis' chapter-4 GAN framework as a model family (thesis §4.1-§4.4).

A one-pass colorizer (no diffusion, no VAE, no CLIP): a tag-pretrained ResNet-34 reference encoder
(``networks.ReferenceTagEncoder``), the attention/RBCA U-Net generator of Table 4.1
(``networks.ColorizationGenerator``) and the stage-2 tag manipulation (``manipulation.TagManipulator``). No
weights or code were released with the thesis: everything here is written from its text, and the files are the
ones ``training/`` writes (``checkpoint.py`` describes them). The family plugs into the registry for detection,
``inspect``, tiny test files and training; it brings its own colorizer (``colorizer.GANColorizer``) instead of
the diffusion pipeline, so the diffusion hooks of :class:`~colorize.families.base.Family` refuse a GAN file with
a one-line error saying where it loads.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from colorize.errors import CheckpointError
from colorize.families.base import Family
from colorize.families.gan.checkpoint import (
    GAN_COMPONENTS,
    GANFileConfig,
    build_gan_modules,
    gan_state_dict,
    is_gan_state_dict,
)
from colorize.families.gan.manipulation import ManipulationConfig
from colorize.families.gan.networks import TINY_GAN, GANConfig

#: where the pack keeps GAN files (ComfyUI ``models/colorizediffusion_gan``; also the tiny file's folder)
GAN_MODELS_SUBDIR = "colorizediffusion_gan"
#: the tiny test file ``make-tiny-weights`` writes (no GAN weights were released, so no manifest entry)
TINY_GAN_FILE = "colorize-gan-tiny.safetensors"
#: the tags of the tiny file: the colours of the synthetic training data (``training.synthetic.PALETTE``)
TINY_TAGS = ("red_shape", "green_shape", "blue_shape", "yellow_shape", "white_background")
TINY_MANIPULATION = ManipulationConfig(num_tags=len(TINY_TAGS), feature_channels=TINY_GAN.reference_channels,
                                       hidden_widths=(16, 16))


class GANFamily(Family):
    """The chapter-4 GAN: detected by its ``tag_encoder.*`` / ``generator.*`` keys (and no U-Net)."""

    name: ClassVar[str] = "gan"
    label: ClassVar[str] = "GAN"
    title: ClassVar[str] = "chapter-4 GAN (thesis §4): one-pass colorization, tag edits"
    parameterization: ClassVar[str] = "none"
    base_resolution: ClassVar[int] = 512
    components: ClassVar[dict[str, str]] = dict(GAN_COMPONENTS)
    optional_keys: ClassVar[tuple[str, ...]] = ("generator.", "tag_mapper.")
    size_multiple: ClassVar[int] = 32
    standalone: ClassVar[bool] = True
    models_subdir: ClassVar[str] = GAN_MODELS_SUBDIR

    def matches(self, keys: Collection[str]) -> bool:
        return is_gan_state_dict(keys)

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Key → shape of the full-size model of thesis Table 4.1 with all three stages (built on meta)."""
        full = GANConfig()
        config = GANFileConfig(full, ManipulationConfig(num_tags=full.num_tags,
                                                        feature_channels=full.reference_channels),
                               (), tuple(GAN_COMPONENTS))
        with torch.device("meta"):
            modules = build_gan_modules(config)
        return {k: tuple(v.shape) for k, v in gan_state_dict(modules).items()}

    def infer_config(self, parts: Mapping[str, Mapping[str, Any]], num_head_channels: int | None = None) -> Any:
        raise CheckpointError(
            "this is a chapter-4 GAN file, not a diffusion checkpoint: load it with the 'Load ColorizeDiffusion "
            "GAN' node, `python -m colorize run --checkpoint FILE` or colorize.GANColorizer.from_file")

    def resolve_parameterization(self, metadata: Mapping[str, str] | None, file_name: str | None,
                                 override: str | None = None) -> tuple[str, str]:
        return "none", "family"

    def open_colorizer(self, path: str | Path, device: str | torch.device = "auto") -> Any:
        """The family's own colorizer for a file (:class:`~colorize.families.gan.colorizer.GANColorizer`)."""
        from colorize.families.gan.colorizer import GANColorizer

        return GANColorizer.from_file(path, device)

    def tiny_checkpoint(self, seed: int = 0) -> tuple[str, dict[str, torch.Tensor], dict[str, str]]:
        """``(path under the models folder, tensors, metadata)`` of a tiny random GAN file with all three stages
        (the tags of the synthetic data, so the nodes' tag edits can be tried with it)."""
        torch.manual_seed(seed)
        config = GANFileConfig(TINY_GAN, TINY_MANIPULATION, TINY_TAGS, tuple(GAN_COMPONENTS))
        modules = build_gan_modules(config)
        with torch.no_grad():  # receiving-block and self-attention gains start at 0; give the tiny file some
            for name, p in modules["generator"].named_parameters():
                if name.endswith("gamma"):
                    p.fill_(0.5)
        return f"{GAN_MODELS_SUBDIR}/{TINY_GAN_FILE}", gan_state_dict(modules), config.metadata()


GAN = GANFamily()

__all__ = ["GAN", "GANFamily", "GAN_MODELS_SUBDIR", "TINY_GAN_FILE", "TINY_MANIPULATION", "TINY_TAGS"]
