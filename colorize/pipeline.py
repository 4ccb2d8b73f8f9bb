"""The colorization pipeline: reference tokens + sketch hints → dual-CFG sampling → VAE decode.

:class:`Colorizer` holds the loaded networks (device, precision, optional low-VRAM offload) and strings the
steps of :mod:`colorize.generate` together (thesis §5.3; the v1.5 §5.5 and v2 §5.6 separation through the model's
family, :mod:`colorize.families`).
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.device import resolve_device, resolve_dtype
from colorize.errors import InputError
from colorize.families import get_family
from colorize.generate import (
    Conditioning,
    StepCallback,
    cast_for_inference,
    initial_noise,
    make_conditioning,
    noise_schedule,
    sample_latent,
    separation_inputs,
    sketch_hints,
    vae_decode,
)
from colorize.injection import generation_injection
from colorize.models.vae import SeededLatentEncoder
from colorize.models.vae_tiling import TilingMode
from colorize.offload import enable_low_vram, offloaded
from colorize.preprocess import (
    check_image,
    content_box,
    crop_to_box,
    pad_reference,
    pad_width,
    prepare_reference,
    prepare_sketch,
    to_signed,
)
from colorize.settings import MAX_SEED, EnhanceSettings, GenerationSettings


class Colorizer:
    """A loaded colorizer (v1, v1.5 or v2): ``colorize(sketch, reference, settings) -> image``.

    Device and precision are choices of the caller (``auto`` = CUDA/MPS in fp16 where present,
    else CPU in fp32). As in the official app, the U-Net and sketch encoder run in the chosen
    precision while the U-Net's time embedding and output head, the VAE and CLIP stay fp32.
    ``extras`` are the family's other modules (:class:`colorize.loader.ColorizerModules`); v1.5/v2
    foreground/background separation is asked for with :class:`colorize.settings.EnhanceSettings`.
    ``low_vram`` keeps the large modules (CLIP and the XL tagger, the U-Net, a family's large encoders such as
    v2's and XL v2's ReferenceNet) on the CPU, each on the device only while it runs (:mod:`colorize.offload`),
    and tiles large VAE decodes; ``vae_tiling`` is off / auto / on. XL: the VAE always runs in fp32 (the SDXL VAE
    overflows in fp16) unless ``vae_precision`` says otherwise (for a fixed fp16 SDXL VAE given as ``vae``).
    """

    def __init__(
        self,
        config: ColorizerConfig,
        unet: nn.Module,
        sketch_encoder: nn.Module,
        vae: nn.Module,
        reference_encoder: nn.Module,
        device: str | torch.device = "auto",
        precision: str | torch.dtype = "auto",
        alphas_cumprod: Tensor | None = None,
        extras: Mapping[str, nn.Module] | None = None,
        low_vram: bool = False,
        vae_precision: str | torch.dtype = "fp32",
    ) -> None:
        self.config = config
        self.family = get_family(config.version)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        place = torch.device("cpu") if low_vram else self.device
        cast_for_inference(unet, sketch_encoder, vae, place, self.dtype)
        vae_dtype = resolve_dtype(vae_precision, self.device)
        if vae_dtype != torch.float32:  # e.g. a fixed fp16 SDXL VAE; the released VAEs overflow in fp16
            vae.to(vae_dtype)
        self.extras = dict(extras or {})
        self.family.cast_extras(self.extras, self.device, self.dtype)
        self.unet, self.sketch_encoder, self.vae = unet, sketch_encoder, vae
        self.reference_encoder = reference_encoder.to(place, torch.float32).eval()
        self.schedule = noise_schedule(config, alphas_cumprod)
        self.offload = None
        self.vae_tiling: TilingMode = "off"
        if low_vram:
            enable_low_vram(self)

    @classmethod
    def from_files(
        cls,
        checkpoint: str | os.PathLike[str],
        clip: str | os.PathLike[str] | None,
        device: str | torch.device = "auto",
        precision: str | torch.dtype = "auto",
        with_text: bool = False,
        low_vram: bool = False,
        *,
        tagger: str | os.PathLike[str] | None = None,
        parameterization: str | None = None,
        vae: str | os.PathLike[str] | None = None,
        vae_precision: str | torch.dtype = "fp32",
    ) -> "Colorizer":
        """Load a released (or tiny) checkpoint and its reference encoder file(s).

        SD2.1 families: ``clip`` = the OpenCLIP ViT-H/14 file; ``with_text`` keeps its text tower (needed only for
        text manipulation; 1.4 GB for ViT-H); without ``clip`` the CLIP weights must be inside the checkpoint.
        XL: ``clip`` = CLIP ViT-bigG-14 (e.g. ComfyUI's ``clip_vision_g.safetensors``) and ``tagger`` = the WD
        v1.4 SwinV2 tagger. ``parameterization`` (``eps``/``v``) overrides the file's (XL: "eps" in the file
        name, else v). ``vae``: a VAE file replacing the checkpoint's (original LDM keys, e.g. a fixed fp16 SDXL
        VAE from ComfyUI's models/vae), run in ``vae_precision``. ``low_vram``: see the class."""
        from colorize.families import detect_family
        from colorize.loader import load_checkpoint_modules, read_header

        family = detect_family(read_header(checkpoint), source=os.path.basename(os.fspath(checkpoint)))
        family.check_reference_files(clip, tagger)  # before the checkpoint is read
        mods = load_checkpoint_modules(checkpoint, include_clip=clip is None, parameterization=parameterization)
        if vae is not None:
            from colorize.loader import load_vae_file

            mods.vae = load_vae_file(vae, mods.config)
        ref = family.load_reference_encoder(clip, tagger, with_text, mods.extras) if clip is not None \
            else mods.reference_encoder
        if ref is None:
            raise InputError("no CLIP weights: pass the OpenCLIP ViT-H-14 file (open_clip or clip_vision format)")
        return cls(mods.config, mods.unet, mods.sketch_encoder, mods.vae, ref, device, precision, mods.alphas_cumprod,
                   mods.extras, low_vram=low_vram, vae_precision=vae_precision)

    # ------------------------------------------------------------------ encoders
    @offloaded("reference_encoder")
    def encode_reference(self, reference: Tensor) -> Tensor:
        """Reference image(s) in [-1, 1] → the context tokens (SD2.1: (b, 256, C) CLIP patch tokens, CLS dropped,
        as the released models use; XL: (b, 196, 2048) ClusterConcat tokens)."""
        return self.family.encode_reference(self.reference_encoder, self.extras, reference)

    @offloaded("sketch_encoder")
    def encode_sketch(self, sketch: Tensor, strength: float = 1.0, hint_strengths: Sequence[float] | None = None
                      ) -> tuple[list[Tensor], list[Tensor]]:
        """Prepared sketch(es) (lines +1) → (hints, hints of the blank sketch), both × ``strength`` (and each
        hint × its ``hint_strengths`` value when given)."""
        return sketch_hints(self.sketch_encoder, sketch, strength, hint_strengths)

    @offloaded("vae", "sketch_encoder", extras=True)  # the v2/XL VAE encodes and encoders, the injection hints
    def conditioning(
        self,
        sketch: Tensor,
        reference: Tensor,
        settings: GenerationSettings,
        *,
        enhance: EnhanceSettings | None = None,
        sketch_hw: tuple[int, int] | None = None,
        sketch_mask: Tensor | None = None,
        reference_mask: Tensor | None = None,
        background: Tensor | None = None,
        background_mask: Tensor | None = None,
    ) -> Conditioning:
        """Prepared sketch (lines +1) and reference / background in [-1, 1] → the generation's conditioning.

        v1.5/v2 (``enhance``): masks as in :func:`colorize.generate.separation_inputs` (``sketch_hw`` = the
        frame of ``sketch_mask``, default the prepared sketch's); the v2 VAE latents are posterior samples
        seeded from ``settings.seed``."""
        tokens = self.encode_reference(reference)
        hints, hints_uncond = self.encode_sketch(sketch, settings.sketch_strength, settings.hint_strengths)
        inputs = separation_inputs(
            self.config, self.extras, enhance, tokens=tokens, reference=reference, sketch=sketch,
            sketch_hw=sketch_hw or (int(sketch.shape[-2]), int(sketch.shape[-1])),
            encode_tokens=self.encode_reference,
            encode_latent=SeededLatentEncoder(self.vae, (int(settings.seed) + 2) % (MAX_SEED + 1)),
            sketch_mask=sketch_mask, reference_mask=reference_mask, background=background,
            background_mask=background_mask)
        cond = make_conditioning(inputs, hints, hints_uncond, self.dtype)
        cond.injection = generation_injection(reference, (int(sketch.shape[-2]), int(sketch.shape[-1])), self.vae,
                                              self.sketch_encoder, settings)
        return cond

    # ------------------------------------------------------------------ sampling
    def initial_noise(self, batch: int, size: tuple[int, int], seed: int) -> Tensor:
        """Seeded standard-normal latent, drawn on the CPU so a seed gives the same image on any device."""
        return initial_noise(self.config, batch, size, seed, self.device)

    @offloaded("unet")
    def sample(
        self, cond: Conditioning, size: tuple[int, int], settings: GenerationSettings, callback: StepCallback | None = None
    ) -> Tensor:
        """Run the sampler; returns the final latent (b, 4, H/8, W/8) in diffusion space (VAE latent × 0.18215)."""
        return sample_latent(self.unet, self.schedule, self.config, cond, size, settings, callback)

    @offloaded("vae")
    def decode(self, latent: Tensor, check_finite: bool = True) -> Tensor:
        """Latent (VAE space × 0.18215, as :meth:`sample` returns) → image in [-1, 1]; a NaN or infinite result
        is a :class:`~colorize.errors.NonFiniteResultError` unless ``check_finite`` is off."""
        return vae_decode(self.vae, latent.float() / self.config.vae.scale_factor, self.vae_tiling, check_finite)

    # ------------------------------------------------------------------ all at once
    def colorize(
        self,
        sketch01: Tensor,
        reference01: Tensor,
        settings: GenerationSettings | None = None,
        callback: StepCallback | None = None,
        *,
        enhance: EnhanceSettings | None = None,
        sketch_mask: Tensor | None = None,
        reference_mask: Tensor | None = None,
        background: Tensor | None = None,
        background_mask: Tensor | None = None,
    ) -> Tensor:
        """Sketch and reference images in [0, 1] (B, C, H, W) → colorized image **in [-1, 1]**
        (``(x + 1) / 2`` for [0, 1]; :func:`colorize.preprocess.tensor_to_pil` takes it as is).

        v1.5/v2/XL only: ``enhance`` turns on BG/FG (and v2 style) enhance (XL: background enhance); masks are (B, H, W) in [0, 1],
        1 = foreground, each in its image's frame; ``background`` is an optional separate background image
        in [0, 1]. Without ``sketch_mask`` it is computed from the line art (no weights); background enhance
        without ``reference_mask`` or ``background`` warns and uses an all-foreground reference mask (a
        real one needs a segmenter, e.g. :func:`colorize.masks.sam_foreground_mask` with SAM weights).
        Without a size, v2 outputs are about 768² in area (its training level), v1/v1.5 about 512², XL the
        official autofit (the sketch's aspect at 1024², sides multiples of 32 within [768, 1536]); XL sizes given
        must be multiples of 32.
        ``settings.reference_pad_scale`` pads the reference/background (and their masks, with 0) in width;
        ``settings.crop_result`` returns only the un-padded sketch area (:func:`colorize.preprocess.content_box`)."""
        settings = settings or GenerationSettings()
        sketch01 = check_image(sketch01, "sketch")
        sketch_hw = (int(sketch01.shape[-2]), int(sketch01.shape[-1]))
        settings.validate(self.family, sketch_hw)  # the size that will run, against this family's limits
        size = self.family.output_size(sketch_hw, settings.width, settings.height)
        sketch = prepare_sketch(sketch01, size, settings.polarity)  # type: ignore[arg-type]
        pad = settings.reference_pad_scale
        if pad != 1.0:  # official reference padding (backend/functool.py:120-128): white padding of the reference and background; their masks get "no foreground"
            reference01 = pad_reference(reference01, pad)
            background = pad_reference(background, pad) if background is not None else None
            reference_mask = pad_width(reference_mask, pad, 0.0) if reference_mask is not None else None
            background_mask = pad_width(background_mask, pad, 0.0) if background_mask is not None else None
        bg = to_signed(check_image(background, "background")) if background is not None else None
        cond = self.conditioning(sketch, prepare_reference(reference01), settings, enhance=enhance,
                                 sketch_hw=sketch_hw, sketch_mask=sketch_mask, reference_mask=reference_mask,
                                 background=bg, background_mask=background_mask)
        image = self.decode(self.sample(cond, size, settings, callback))
        return crop_to_box(image, content_box(sketch_hw, size)) if settings.crop_result else image
