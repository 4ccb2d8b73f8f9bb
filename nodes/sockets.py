"""The pack's socket types and the objects that flow through them (treated as immutable: ComfyUI caches
node outputs and may hand the same object to several nodes)."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from colorize.config import ColorizerConfig
from colorize.errors import InputError
from colorize.families import get_family
from colorize.families.gan import GAN
from colorize.families.gan.colorizer import GANColorizer, ReferenceCode
from colorize.sampling.noise_schedule import DiscreteSchedule

from .host import ManagedModule
from .schema import io

COLORIZE_MODEL = "COLORIZE_MODEL"
COLORIZE_REFERENCE_ENCODER = "COLORIZE_REFERENCE_ENCODER"
COLORIZE_REFERENCE = "COLORIZE_REFERENCE"
COLORIZE_HINTS = "COLORIZE_HINTS"
COLORIZE_ENHANCE = "COLORIZE_ENHANCE"
COLORIZE_ADVANCED = "COLORIZE_ADVANCED"
COLORIZE_GAN = "COLORIZE_GAN"
COLORIZE_GAN_REFERENCE = "COLORIZE_GAN_REFERENCE"

# The pack's socket types in the V3 schema (``ModelSocket.Input(...)`` / ``ModelSocket.Output(...)``).
ModelSocket = io.Custom(COLORIZE_MODEL)
ReferenceEncoderSocket = io.Custom(COLORIZE_REFERENCE_ENCODER)
ReferenceSocket = io.Custom(COLORIZE_REFERENCE)
HintsSocket = io.Custom(COLORIZE_HINTS)
EnhanceSocket = io.Custom(COLORIZE_ENHANCE)
AdvancedSocket = io.Custom(COLORIZE_ADVANCED)
GANSocket = io.Custom(COLORIZE_GAN)
GANReferenceSocket = io.Custom(COLORIZE_GAN_REFERENCE)  # carries a colorize.families.gan.ReferenceCode


@dataclass(frozen=True)
class ColorizeModel:
    """A loaded ColorizeDiffusion checkpoint: U-Net, sketch encoder and VAE, each placed by ComfyUI.

    ``extras``: the version's other modules by component name (v1.5: ``thresh_embedder``, ``transformer``;
    v2: ``bg_encoder``, ``style_encoder``; none for v1), placed by ComfyUI like the others.
    """

    name: str
    config: ColorizerConfig
    unet: ManagedModule
    sketch_encoder: ManagedModule
    vae: ManagedModule
    schedule: DiscreteSchedule
    dtype: torch.dtype
    extras: Mapping[str, ManagedModule] = field(default_factory=dict)
    #: what decided the prediction type (``colorize.loader.CheckpointInfo.parameterization_rule``: ``override``,
    #: ``metadata``, ``file name``, ``family``)
    parameterization_rule: str = "family"

    def describe(self) -> str:
        """One line for the UI: file, family detected from the keys, prediction type (and what decided it when
        that is not the family's fixed value), precision."""
        tiny = "; tiny random test weights" if self.config.tiny else ""
        dtype = str(self.dtype).replace("torch.", "")
        rule = {"family": "", "override": " (set on the loader)", "metadata": " (from the file's stored config)"
                }.get(self.parameterization_rule, f" (from the {self.parameterization_rule})")
        return (f"{self.name}: {get_family(self.config.version).title}, {self.config.parameterization}-prediction"
                f"{rule}, U-Net {dtype}{tiny}")


@dataclass(frozen=True)
class GANModel:
    """A loaded chapter-4 GAN file (thesis §4): its :class:`GANColorizer` (tag encoder, generator, tag mapper),
    whose networks ComfyUI places as one model (``networks``), and the compute precision (fp32 weights; fp16 /
    bf16 run under autocast)."""

    name: str
    colorizer: GANColorizer
    networks: ManagedModule
    dtype: torch.dtype

    def ready(self) -> GANColorizer:
        """The colorizer with its networks on their compute device (call before every use)."""
        module = self.networks.ready()
        device = next(module.parameters()).device
        return self.colorizer if device == self.colorizer.device else GANColorizer(self.colorizer.modules, device)

    @contextmanager
    def precision(self, device: torch.device) -> Iterator[None]:
        """Autocast to :attr:`dtype` on ``device`` (nothing for fp32)."""
        if self.dtype == torch.float32:
            yield
        else:
            with torch.autocast(device.type, dtype=self.dtype):
                yield

    def check_code(self, code: ReferenceCode, what: str = "the reference") -> ReferenceCode:
        """``code`` if this GAN's tag encoder could have made it (its tag count and feature channels), else the
        named error (a reference encoded by another GAN file)."""
        config = self.colorizer.modules.config.generator
        if not isinstance(code, ReferenceCode):
            raise InputError(f"{what} is not a GAN reference: connect GAN Reference (or GAN Tag Edit)")
        if code.probabilities.shape[-1] != config.num_tags or code.features.shape[1] != config.reference_channels:
            raise InputError(f"{what} was encoded by another GAN file ({code.probabilities.shape[-1]} tags, "
                             f"{code.features.shape[1]} channels; {self.name} has {config.num_tags} tags, "
                             f"{config.reference_channels} channels): encode it with this model's GAN Reference")
        return code

    def describe(self) -> str:
        """One line for the UI: file, stage, tag count, whether tag edits work, precision."""
        facts = self.colorizer.describe()
        edits = "tag edits" if facts["can_edit"] else "no tag edits (no tag mapper)"
        dtype = str(self.dtype).replace("torch.", "")
        return (f"{self.name}: chapter-4 {GAN.label} (thesis §4), stage {facts['stage']}, {facts['tags']} tags, "
                f"{edits}, reference {facts['reference_size']} px, {dtype}")


def code_on(code: ReferenceCode, device: torch.device) -> ReferenceCode:
    """The same reference code with its tensors on ``device`` (the edits are plain numbers)."""
    return ReferenceCode(code.features.to(device), code.probabilities.to(device), dict(code.edits))


class ReferenceTokenSource(Protocol):
    """What the reference-embedding node needs: ``tokens(image in [-1, 1], (B, 3, H, W)) -> (B, 256, C)``."""

    embed_dim: int

    def tokens(self, reference: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class ReferenceTokens:
    """The reference image's CLIP patch tokens (B, 256, C), fp32, on ComfyUI's intermediate device."""

    tokens: Tensor

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[-1])


@dataclass(frozen=True)
class SketchHints:
    """The sketch encoder's five hints for a prepared sketch, and those of the blank sketch (sketch CFG).

    ``sketch`` (lines +1, background -1) and ``strength`` are kept so the sampler can re-encode at
    another output size; ``model`` is the checkpoint whose sketch encoder made them.
    """

    hints: tuple[Tensor, ...]
    hints_uncond: tuple[Tensor, ...]
    sketch: Tensor
    strength: float
    model: ColorizeModel

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.sketch.shape[-2]), int(self.sketch.shape[-1])


def image_to_bchw(image: Tensor) -> Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] → (B, C, H, W) float32 in [0, 1]."""
    if image.ndim == 3:  # a single image without batch dimension
        image = image[None]
    return image.movedim(-1, 1).float()


def bchw_to_image(x01: Tensor) -> Tensor:
    """(B, C, H, W) in [0, 1] → ComfyUI IMAGE (B, H, W, C) float32, clamped to [0, 1]."""
    return x01.float().clamp(0, 1).movedim(1, -1).contiguous()


__all__ = [
    "COLORIZE_ADVANCED",
    "COLORIZE_ENHANCE",
    "COLORIZE_GAN",
    "COLORIZE_GAN_REFERENCE",
    "COLORIZE_HINTS",
    "COLORIZE_MODEL",
    "COLORIZE_REFERENCE",
    "COLORIZE_REFERENCE_ENCODER",
    "AdvancedSocket",
    "ColorizeModel",
    "EnhanceSocket",
    "GANModel",
    "GANReferenceSocket",
    "GANSocket",
    "HintsSocket",
    "ModelSocket",
    "ReferenceEncoderSocket",
    "ReferenceSocket",
    "ReferenceTokenSource",
    "ReferenceTokens",
    "SketchHints",
    "bchw_to_image",
    "code_on",
    "image_to_bchw",
]
