"""The family protocol: what a model family tells the loader, the pipeline, the nodes and training.

A family is one kind of released model (ColorizeDiffusion v1 ``mult``, v1.5 ``switch``, v2, ...). Everything
that differs between families lives in the family's folder behind these hooks; everything else (file reading,
U-Net blocks, attention, VAE, CLIP, sampling) is shared. :class:`Family` holds the defaults, which are the SD2.1
ones of v1: a family with another backbone overrides the hooks it changes, the callers stay as they are.

Data that crosses the hooks:

* :class:`SeparationInputs`: what one generation offers a family's conditioning (reference tokens and image,
  encoders, masks);
* :class:`UNetInputs`: what the family's conditioning gives the U-Net at every step (context, its
  cross-attention processor, other forward arguments).
"""
from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from colorize.checkpoint.assign import materialize
from colorize.checkpoint.claims import config_from_metadata
from colorize.checkpoint.infer import CONFIG_METADATA_KEY, infer_sketch_config, infer_unet_config, infer_vae_config
from colorize.checkpoint.keys import DEFAULT_OPTIONAL
from colorize.config import ClipConfig, ColorizerConfig, SketchEncoderConfig, VAEConfig
from colorize.errors import InputError
from colorize.models.attention import Processor
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.unet import DualCondUNet
from colorize.preprocess import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_OUTPUT_SIDE, check_image, target_size

#: image in [-1, 1] (b, 3, H, W) → CLIP local tokens (b, N, c), or → diffusion latent (b, 4, H/8, W/8).
Encoder = Callable[[Tensor], Tensor]
Parts = dict[str, dict[str, Tensor]]


@dataclass
class SeparationInputs:
    """One generation's inputs to a family's foreground/background conditioning (tensors on one device).

    tokens: CLIP local tokens of the reference (after any text edit); reference / background: images in
    [-1, 1] at their own sizes; size: output (H, W) in pixels; encode_tokens / encode_latent: image → CLIP
    tokens / → diffusion latent (a seeded VAE posterior sample); latent_mask: sketch foreground mask at latent
    resolution ``(b, 1, h, w)`` when foreground/background enhance is on (``Family.latent_mask`` of
    ``sketch_mask``, the same mask at the output size in pixels); reference_mask / background_mask: pixel
    foreground masks ``(b, 1, H, W)`` in [0, 1].
    """

    tokens: Tensor
    reference: Tensor
    size: tuple[int, int]
    encode_tokens: Encoder
    encode_latent: Encoder
    latent_mask: Tensor | None = None
    reference_mask: Tensor | None = None
    background: Tensor | None = None
    background_mask: Tensor | None = None
    sketch_mask: Tensor | None = None


@dataclass(frozen=True)
class UNetInputs:
    """What a family gives its U-Net at every step of one generation: the context, the cross-attention processor
    that reads it (``None`` = plain attention), the self-attention processor (``None`` = plain; the xlv2 bank) and
    the family's other U-Net arguments. The reference-unconditional CFG rows get a zero context of the same shape
    and the same processors and arguments (official rows)."""

    context: Tensor
    cross_attention: Processor | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    self_attention: Processor | None = None


@dataclass
class TrainingStart:
    """Where a training run starts: the checkpoint's tensors by component (prefixes stripped; empty for a random
    start), its config, whether it holds a sketch encoder, the prediction target, gradient checkpointing, the seed
    of fresh initialisations, the device random modules are built on and the file's name (for errors)."""

    parts: Parts
    config: ColorizerConfig
    has_sketch: bool
    prediction: str
    gradient_checkpointing: bool = False
    init_seed: int = 0
    device: str | torch.device = "cpu"
    name: str = "init checkpoint"


class Family:
    """A model family. Subclasses set the class attributes and override the hooks that differ (see the module
    docstring); every method has the SD2.1 v1 behaviour here."""

    #: registry key: the official file prefix and ``ColorizerConfig.version`` (``mult``, ``switch``, ``v2``)
    name: ClassVar[str] = ""
    #: the name users see in the UI and documentation (``v1``, ``v1.5``, ``v2``)
    label: ClassVar[str] = ""
    #: one line for ``inspect`` and the loader nodes
    title: ClassVar[str] = ""
    #: prediction target of the released weights (``eps`` or ``v``)
    parameterization: ClassVar[str] = "eps"
    #: side of the square whose area the output gets when no size is given
    base_resolution: ClassVar[int] = 512
    #: largest output side and area (pixels) a 24 GB card serves with this family's backbone, unless the user
    #: raises them (``colorize.preprocess.output_limits``: the SD2.1 reasoning behind the defaults). A family may
    #: lower them, never raise them: checks made before a model is loaded use the defaults
    max_output_side: ClassVar[int] = DEFAULT_MAX_OUTPUT_SIDE
    max_output_pixels: ClassVar[int] = DEFAULT_MAX_OUTPUT_PIXELS
    #: checkpoint components only this family has: component name → key prefix (the U-Net, sketch encoder, VAE
    #: and CLIP prefixes are shared: ``colorize.checkpoint.keys.COMPONENT_PREFIXES``)
    components: ClassVar[dict[str, str]] = {}
    #: families whose files this family's training stages can start from (``name`` values)
    training_sources: ClassVar[tuple[str, ...]] = ()
    #: key names or prefixes (ending in ".") of the released layout that a file may lack (CLIP, schedule buffers)
    optional_keys: ClassVar[tuple[str, ...]] = DEFAULT_OPTIONAL
    #: transformer blocks of the full-size U-Net: one reference strength each (``block_strengths``)
    attention_block_count: ClassVar[int] = 16
    #: ``(sampler, scheduler)`` of the official app of this family (what the CLI and nodes default to)
    default_sampling: ClassVar[tuple[str, str]] = ("dpm_solver", "auto")
    #: manifest names of the reference-encoder files this family reads besides the checkpoint (empty: the SD2.1
    #: OpenCLIP file, ``colorize.weights.default_clip_name``)
    reference_files: ClassVar[tuple[str, ...]] = ()
    #: what every image side must be a multiple of (the sketch encoder's total stride; training buckets)
    size_multiple: ClassVar[int] = 64
    #: whether the family's file holds every network it needs and the family brings its own colorizer
    #: (``open_colorizer``, ``tiny_checkpoint``) instead of the diffusion pipeline (the chapter-4 GAN)
    standalone: ClassVar[bool] = False

    # ------------------------------------------------------------------ detection and config
    def matches(self, keys: Collection[str]) -> bool:
        """Whether a state dict with these keys is this family's (the registry asks the most specific first): v1's
        markers are a U-Net and a sketch encoder."""
        return has_unet(keys) and any(k.startswith("control_encoder.") for k in keys)

    @property
    def folder(self) -> Path:
        """This family's folder (the package that defines it; its key layout ``keys.json.gz`` lies there)."""
        return Path(sys.modules[type(self).__module__].__file__).resolve().parent  # type: ignore[arg-type]

    def layout(self) -> dict[str, tuple[int, ...]]:
        """Key → shape of the released full-size model (incl. CLIP and schedule buffers, which files may lack)."""
        return dict(_layout(self.folder / "keys.json.gz"))

    def infer_config(self, parts: Mapping[str, Mapping[str, Any]],
                     num_head_channels: int | None = None) -> ColorizerConfig:
        """The config of a checkpoint from its shapes (component → key → shape, prefixes stripped)."""
        return ColorizerConfig(
            version=self.name,  # type: ignore[arg-type]
            parameterization=self.parameterization,  # type: ignore[arg-type]
            unet=infer_unet_config(parts["unet"], num_head_channels),
            sketch=infer_sketch_config(parts["sketch_encoder"]) if parts.get("sketch_encoder") else SketchEncoderConfig(),
            vae=infer_vae_config(parts["vae"]) if parts.get("vae") else VAEConfig(),
            clip=ClipConfig(),
        )

    def resolve_parameterization(self, metadata: Mapping[str, str] | None, file_name: str | None,
                                 override: str | None = None) -> tuple[str, str]:
        """``(parameterization, rule)``: an explicit ``override`` (``eps``/``v``), else the config our exports
        store, else the family's released value; ``rule`` names what decided (``override``, ``metadata``,
        ``family``)."""
        if override is not None:
            if override not in ("eps", "v"):
                raise InputError(f"parameterization must be 'eps' or 'v', got {override!r}")
            return override, "override"
        if metadata and CONFIG_METADATA_KEY in metadata:
            return config_from_metadata(metadata[CONFIG_METADATA_KEY], file_name or "checkpoint").parameterization, \
                "metadata"
        return self.parameterization, "family"

    # ------------------------------------------------------------------ modules
    def build_unet(self, config: ColorizerConfig, parts: Parts, name: str) -> nn.Module:
        """The denoising U-Net from the checkpoint's tensors (``parts["unet"]`` is consumed)."""
        return materialize(lambda: DualCondUNet(config.unet), parts.pop("unet"), f"{name} (U-Net)")

    def sketch_encoder_module(self, config: ColorizerConfig, shapes: Mapping[str, Any]) -> nn.Module:
        """An untrained sketch encoder of this family for the given sketch-encoder tensor shapes (prefix
        stripped), built on the current device (SD2.1: the MultiEncoder of ``config.sketch``)."""
        return SketchEncoder(config.sketch)

    def build_sketch_encoder(self, config: ColorizerConfig, parts: Parts, name: str) -> nn.Module:
        """The sketch encoder from the checkpoint's tensors (``parts["sketch_encoder"]`` is consumed)."""
        sd = parts.pop("sketch_encoder")
        return materialize(lambda: self.sketch_encoder_module(config, sd), sd, f"{name} (sketch encoder)")

    def build_extras(self, config: ColorizerConfig, parts: Parts, name: str) -> dict[str, nn.Module]:
        """The family's other modules by component name (their parts are consumed)."""
        return {}

    def unet_additions(self, config: ColorizerConfig, parts: Parts) -> dict[str, nn.Module]:
        """Modules inside this family's U-Net that a plain SD2.1 U-Net lacks (besides the LoRA pairs), built
        empty (on the meta device when called there) for a host that runs its own SD2.1 U-Net (the native
        bridge); their weights are the U-Net keys ``<name>.*``."""
        return {}

    def native_unused_unet_key(self, key: str) -> bool:
        """Whether a U-Net key (prefix stripped) is left out of the native bridge's host U-Net and its extras (a
        module only the pack's own sampler uses)."""
        return False

    def cast_extras(self, extras: Mapping[str, nn.Module], device: torch.device, dtype: torch.dtype) -> None:
        """Place and cast the extra modules for inference (in place, frozen, eval)."""
        for module in extras.values():
            module.to(device, torch.float32).eval().requires_grad_(False)

    def check_reference_files(self, clip: Any, tagger: Any = None) -> None:
        """A named :class:`~colorize.errors.InputError` when the reference-encoder files given cannot serve this
        family (SD2.1: no tagger; CLIP may be inside the checkpoint)."""
        if tagger is not None:
            raise InputError(f"{self.label} checkpoints read no tagger: the WD tagger file is for ColorizeDiffusion XL")

    def load_reference_encoder(self, clip: Any, tagger: Any = None, with_text: bool = False,
                               extras: Mapping[str, nn.Module] | None = None) -> nn.Module:
        """The reference encoder from its file(s) (SD2.1: the OpenCLIP ViT-H/14 file)."""
        self.check_reference_files(clip, tagger)
        from colorize.models.clip_files import load_reference_encoder

        return load_reference_encoder(clip, with_text)

    # ------------------------------------------------------------------ generation
    def encode_reference(self, encoder: Any, extras: Mapping[str, nn.Module], reference: Tensor) -> Tensor:
        """Reference image(s) in [-1, 1] → the context tokens the U-Net reads (SD2.1: the 256 CLIP patch tokens)."""
        return reference_tokens(encoder, reference)

    def check_size(self, width: int | None, height: int | None) -> None:
        """A one-line :class:`~colorize.errors.InputError` for requested sides this family cannot produce (SD2.1:
        any size is rounded to a multiple of 64)."""

    def output_size(self, sketch_hw: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
        """``(height, width)`` of the output (:func:`colorize.preprocess.target_size` at ``base_resolution``)."""
        return target_size(sketch_hw, width, height, self.base_resolution)

    def reference_scales(self, unet_config: Any, settings: Any) -> list[float]:
        """One reference strength per transformer block from the settings' sliders (the SD2.1 app's rules:
        :meth:`colorize.settings.GenerationSettings.reference_scales`)."""
        return settings.reference_scales()

    def unet_kwargs(self, size: tuple[int, int], device: torch.device) -> dict[str, Any]:
        """U-Net arguments every call of a generation of ``size`` (H, W) pixels gets (SD2.1: none)."""
        return {}

    def latent_mask(self, pixel_mask: Tensor, factor: int) -> Tensor:
        """A pixel sketch mask ``(b, 1, H, W)`` on the latent grid (SD2.1: bicubic, official
        ``backend/appfunc.py:264``)."""
        from colorize.masks.inputs import sketch_mask_to_latent

        return sketch_mask_to_latent(pixel_mask, factor)

    def check_enhance(self, enhance: Any) -> None:
        """A clear :class:`~colorize.errors.InputError` for foreground/background settings
        (:class:`colorize.settings.EnhanceSettings`) this family cannot use."""
        if enhance.active or enhance.remove_background_foreground:
            raise InputError(f"{self.label} ('{self.name}') checkpoints have no foreground/background separation: "
                             "load switch-eps (BG/FG enhance) or v2-full (BG/FG/style enhance)")

    def separation(self, extras: Mapping[str, nn.Module], enhance: Any, inputs: SeparationInputs) -> UNetInputs:
        """The U-Net inputs of one generation with foreground/background enhance on (``check_enhance`` passed)."""
        raise NotImplementedError(f"{self.label} has no foreground/background separation")

    # ------------------------------------------------------------------ tiny test models and training
    def tiny_config(self, base: ColorizerConfig) -> ColorizerConfig:
        """The tiny test config of this family derived from the v1 tiny config ``base``."""
        return base

    def fresh_modules(self, config: ColorizerConfig) -> dict[str, nn.Module]:
        """The U-Net and the extra modules by component name, freshly initialised (tiny test weights)."""
        return {"unet": DualCondUNet(config.unet)}

    def tiny_reference_state_dicts(self, seed: int = 0) -> tuple[dict[str, Tensor], ...]:
        """Random state dicts of :attr:`reference_files`, in that order (tiny test weights)."""
        return ()

    def training_model(self, start: TrainingStart) -> tuple[ColorizerConfig, nn.Module, nn.Module]:
        """``(export config, trainable model, VAE)`` of this family's training stages, from ``start``. The model is
        an ``nn.Module`` whose attributes are checkpoint components, with ``groups()`` (the module groups stages
        name as trainable), ``training_inputs(batch, latent, encoders, autocast, **stage_options)`` →
        ``(reference tokens, forward arguments)`` and ``preview_inputs(tokens, batch, encode_tokens,
        latent_factor)`` → ``(context, cross-attention processor, U-Net arguments)`` (see
        ``families/v1/training.py``). ``training_inputs`` also gets ``objective=`` (the run's objective config) and
        ``progress=`` (step and epoch); ``forward`` may return ``(prediction, {name: extra loss})``."""
        raise NotImplementedError(f"{self.label} has no training stage")

    def text_to_image_config(self, parts: Mapping[str, Mapping[str, Any]]) -> ColorizerConfig | None:
        """The config of this family's colorizer when its training starts from a text-to-image checkpoint with
        these components (no sketch encoder), or ``None`` when the checkpoint is not this family's base (the
        SD2.1 families are the training folder's fallback)."""
        return None

    def training_reference_encoder(self, denoiser: nn.Module, clip: str | None, tagger: str | None,
                                   device: str | torch.device, allow_random: bool = False) -> nn.Module | None:
        """The frozen reference encoder of this family's training runs (``allow_random``: random weights when no
        files are given, for benchmarks), or ``None`` for the SD2.1 OpenCLIP encoder the training folder builds
        (``model.clip``)."""
        return None

    # ------------------------------------------------------------------ standalone families
    def open_colorizer(self, path: str | Path, device: str | torch.device = "auto") -> Any:
        """A standalone family's colorizer for its file (``colorize(sketch, reference, width, height, polarity,
        tags)``); the diffusion families load through :class:`colorize.pipeline.Colorizer`."""
        raise NotImplementedError(f"{self.label} files load through colorize.Colorizer.from_files")

    def tiny_checkpoint(self, seed: int = 0) -> tuple[str, dict[str, Tensor], dict[str, str]]:
        """A standalone family's tiny test file: ``(path under the models folder, tensors, metadata)``."""
        raise NotImplementedError(f"{self.label} tiny files are written from tiny_config / fresh_modules")

    def __repr__(self) -> str:
        return f"<family {self.name} ({self.label})>"


@torch.no_grad()
def reference_tokens(reference_encoder: nn.Module, reference: Tensor) -> Tensor:
    """Reference image(s) in [-1, 1] → (b, 256, C) patch tokens (CLS dropped, as the released SD2.1 models use).

    ``reference_encoder`` is anything with ``encode_image(image, "full") -> (b, 1 + 256, C)``; the image is
    moved to the device of its first parameter when it has one."""
    image = check_image(reference, "reference", value_range=(-1.0, 1.0))
    params = getattr(reference_encoder, "parameters", None)
    if params is not None:
        image = image.to(next(params()).device)
    return reference_encoder.encode_image(image, "full")[:, 1:]


def has_unet(keys: Collection[str]) -> bool:
    """Whether the keys hold an SD-style U-Net (``model.diffusion_model.*``)."""
    return any(k.startswith("model.diffusion_model.") for k in keys)


@lru_cache(maxsize=None)
def _layout(path: Path) -> tuple[tuple[str, tuple[int, ...]], ...]:
    if not path.is_file():
        raise FileNotFoundError(f"key layout {path} not found")
    return tuple((k, tuple(v)) for k, v in json.loads(gzip.decompress(path.read_bytes())).items())


__all__ = ["Encoder", "Family", "Parts", "SeparationInputs", "TrainingStart", "UNetInputs", "has_unet",
           "reference_tokens"]
