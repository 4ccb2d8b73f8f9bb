"""Loader nodes: the ColorizeDiffusion checkpoint, the OpenCLIP ViT-H/14 reference encoder (v1, v1.5, v2) and
ColorizeDiffusion XL's reference encoder (CLIP-bigG + WD tagger, fused by the checkpoint's ClusterConcat)."""
from __future__ import annotations

from functools import partial
from inspect import cleandoc
from pathlib import Path
from typing import Any

import torch
from torch import nn

from colorize.checkpoint import load_state_dict_file, read_header
from colorize.device import PRECISIONS
from colorize.errors import InputError
from colorize.families import FAMILIES, get_family
from colorize.families.xl.encoders import XLReferenceEncoder, check_encoder_fits, tagger_from_state_dict
from colorize.generate import cast_for_inference, noise_schedule
from colorize.loader import load_checkpoint_modules, load_reference_encoder, read_checkpoint_info
from colorize.weights import DEFAULT_CHECKPOINT, DEFAULT_CLIP, manifest_entry

from .host import ManagedModule, load_device, offload_device, unet_dtype
from .models import CHECKPOINT_FOLDER, CLIP_FOLDER, TAGGER_FOLDER, list_files, resolve_file
from .reference import ClipVisionBigG, ClipVisionReference, OpenClipReference, XLReference
from .schema import io, output, ui
from .sockets import ColorizeModel, ModelSocket, ReferenceEncoderSocket

#: the diffusion checkpoint families these loaders read (v1, v1.5, v2, XL, XL v2); a standalone family (the chapter-4
#: GAN) has its own loader (``nodes/gan.py``)
SUPPORTED_VERSIONS = tuple(name for name, family in FAMILIES.items() if not family.standalone)
#: The loader's prediction-type choices: auto = what the file or its family says; eps / v override it.
PARAMETERIZATION_CHOICES = ("auto", "eps", "v")
#: XL's default reference-encoder files (manifest names): CLIP ViT-bigG/14 vision tower, WD v1.4 SwinV2 tagger.
XL_CLIP, XL_TAGGER = "clip-vit-bigg-14-vision", "wd-v1-4-swinv2-tagger-v2"


def default_file(name: str) -> str:
    return str(manifest_entry(name)["filename"])


class CheckpointLoader(io.ComfyNode):
    """models/colorizediffusion file → COLORIZE_MODEL (+ a line describing it)."""

    HELP = cleandoc("""
        A checkpoint holds the colorizer's U-Net, sketch encoder and VAE. The version is detected from the file's
        keys, not from its name, and shown in the `info` output:

        - `mult-eps-ft`: ColorizeDiffusion v1 ("mult");
        - `switch-eps`: v1.5 ("switch");
        - `v2-full`: v2;
        - `sdxl`: ColorizeDiffusion XL; `xlv2`: XL v2 (with the ReferenceNet background encoder).

        v1.5 and v2 checkpoints also load their separation modules (v1.5: threshold embedder and background
        transformer; v2: background and style encoders), which **Background Encode** and **Style Encode (v2)** use.

        **XL** checkpoints carry no reference encoder: load CLIP-bigG and the WD tagger with **XL Reference
        Encoder Loader**, connected to this model. XL files do not record their prediction type: the official
        rule (`eps` when the file name contains "eps", else `v`) decides unless `parameterization` says otherwise;
        the `info` output names what decided.

        A file listed in the picker that is not on disk yet is downloaded from Hugging Face when the node first
        runs. The weights are CC-BY-NC-SA-4.0: non-commercial use only.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionCheckpointLoader", display_name="Colorize Loader",
            category="ColorizeDiffusion/loaders", description=(
                "Loads a ColorizeDiffusion checkpoint from models/colorizediffusion; the version (v1, v1.5, v2, XL or "
                "XL v2) is read from the file. A listed file that is missing is downloaded on first use. The weights "
                "are for non-commercial use only."
            ),
            inputs=[
                io.Combo.Input("ckpt_name", options=list_files(CHECKPOINT_FOLDER, SUPPORTED_VERSIONS),
                               default=default_file(DEFAULT_CHECKPOINT),
                               tooltip="Checkpoint in models/colorizediffusion (mult-eps-ft = ColorizeDiffusion v1, "
                                       "switch-eps = v1.5, v2-full = v2, sdxl = XL, xlv2 = XL v2). "
                                       "A missing listed file is downloaded (3.9-9.4 GB) when the node first runs."),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto",
                               tooltip="U-Net and sketch-encoder precision. auto = ComfyUI's choice for the device "
                                       "(fp16 on most GPUs, fp32 on CPU). The VAE always runs in fp32."),
                io.Combo.Input("parameterization", options=list(PARAMETERIZATION_CHOICES), default="auto",
                               optional=True,
                               tooltip="Prediction type. auto = what the file says, else its family's: XL files "
                                       "do not record it, so the official rule decides (eps when the file name "
                                       "contains 'eps', else v). eps / v override it (for a renamed XL file). The "
                                       "info output says which rule decided."),
            ],
            outputs=[
                output(ModelSocket, "model", "The colorizer: feed it to Sketch Hints, Sampler and Decode."),
                output(io.String, "info",
                       "File, detected version (v1 'mult', v1.5 'switch', v2, XL 'sdxl', XL v2 'xlv2'), prediction "
                       "type (and what decided it) and precision."),
            ],
        )

    @classmethod
    def execute(cls, ckpt_name: str, precision: str, parameterization: str = "auto") -> io.NodeOutput:
        if parameterization not in PARAMETERIZATION_CHOICES:
            raise InputError(f"parameterization must be one of {', '.join(PARAMETERIZATION_CHOICES)}, "
                             f"got {parameterization!r}")
        override = None if parameterization == "auto" else parameterization
        path = resolve_file(CHECKPOINT_FOLDER, ckpt_name)
        rule = read_checkpoint_info(path, parameterization=override).parameterization_rule  # header only
        mods = load_checkpoint_modules(path, parameterization=override)  # the family from the keys
        params = sum(p.numel() for p in mods.unet.parameters())
        dtype = unet_dtype(precision, load_device("unet"), params)
        cast_for_inference(mods.unet, mods.sketch_encoder, mods.vae, offload_device("unet"), dtype)
        get_family(mods.config.version).cast_extras(mods.extras, offload_device("unet"), dtype)
        model = ColorizeModel(
            name=ckpt_name,
            config=mods.config,
            unet=ManagedModule(mods.unet, "unet"),
            sketch_encoder=ManagedModule(mods.sketch_encoder, "unet"),
            vae=ManagedModule(mods.vae, "vae"),
            schedule=noise_schedule(mods.config, mods.alphas_cumprod),
            dtype=dtype,
            extras={k: ManagedModule(m, "unet") for k, m in mods.extras.items()},
            parameterization_rule=rule,
        )
        info = model.describe()
        return io.NodeOutput(model, info, ui=ui.PreviewText(info))


def encoder_outputs() -> list[Any]:
    """The output of the nodes that make a COLORIZE_REFERENCE_ENCODER."""
    return [output(ReferenceEncoderSocket, "encoder", "The reference encoder: feed it to Reference Embed.")]


class ReferenceEncoderLoader(io.ComfyNode):
    """models/clip_vision file → COLORIZE_REFERENCE_ENCODER."""

    HELP = cleandoc("""
        The encoder is OpenCLIP ViT-H/14 (laion2b_s32b_b79k). Two files work:

        - the open_clip file (`open_clip_model.safetensors`): vision and text tower;
        - the vision-only `CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors` that IPAdapter users already have.

        A listed file that is not on disk yet is downloaded when the node first runs. Only the vision tower is kept
        in memory. Text edits (**Text Edit**, **Control Heatmap**) need the open_clip file: its text tower (1.4 GB
        in fp32) is read from it when an edit or heatmap node first encodes a prompt.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionReferenceEncoderLoader", display_name="Reference Encoder Loader",
            category="ColorizeDiffusion/loaders", description=(
                "Loads the OpenCLIP ViT-H/14 reference encoder from models/clip_vision (a listed file that is missing "
                "is downloaded on first use). Text edits need the open_clip file, not the vision-only CLIP-ViT-H-14 "
                "one."
            ),
            inputs=[
                io.Combo.Input("clip_name", options=list_files(CLIP_FOLDER), default=default_file(DEFAULT_CLIP),
                               tooltip="OpenCLIP ViT-H-14 laion2b_s32b_b79k weights in models/clip_vision (open_clip "
                                       "or Hugging Face CLIPVisionModel format). Other CLIP models do not fit the "
                                       "colorizer."),
            ],
            outputs=encoder_outputs(),
        )

    @classmethod
    def execute(cls, clip_name: str) -> io.NodeOutput:
        path = resolve_file(CLIP_FOLDER, clip_name)
        # colorization reads image tokens only: the text tower (1.4 GB for ViT-H) is loaded on the first text edit
        encoder = load_reference_encoder(path, with_text=False)
        has_text = any(k.endswith("token_embedding.weight") for k in read_header(path))
        load_text = partial(load_text_tower, path) if has_text else None
        encoder.to(offload_device("clip"), torch.float32)
        return io.NodeOutput(OpenClipReference(encoder, load_text, clip_name))


class XLReferenceEncoderLoader(io.ComfyNode):
    """COLORIZE_MODEL (XL) + models/clip_vision CLIP-bigG + models/wd_tagger tagger → COLORIZE_REFERENCE_ENCODER."""

    HELP = cleandoc("""
        ColorizeDiffusion XL (`sdxl`, `xlv2`) reads the reference through two networks that its checkpoints do not
        contain, fused by the checkpoint's ClusterConcat into 196 context tokens of width 2048:

        - **CLIP ViT-bigG/14** vision tower in the Hugging Face format, `clip_vision_g.safetensors` in
          models/clip_vision (the file SDXL users already have for core **Load CLIP Vision**);
        - the **WD v1.4 SwinV2 tagger v2**, `wd-v1-4-swinv2-tagger-v2.safetensors` in models/wd_tagger.

        Connect the XL checkpoint from **Colorize Loader**: the encoder belongs to it (sdxl and xlv2 have their own
        ClusterConcat). A listed file that is not on disk yet is downloaded when the node first runs. XL has no
        text edits.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionXLReferenceEncoderLoader", display_name="XL Reference Encoder Loader",
            category="ColorizeDiffusion/loaders", description=(
                "Loads ColorizeDiffusion XL's reference encoder: CLIP ViT-bigG/14 from models/clip_vision and the WD "
                "v1.4 SwinV2 tagger from models/wd_tagger, fused by the connected XL checkpoint. A listed file that "
                "is missing is downloaded on first use."
            ),
            inputs=[
                ModelSocket.Input("model", tooltip="The XL checkpoint (sdxl or xlv2) from Colorize Loader: its "
                                                   "ClusterConcat fuses the two encoders' tokens."),
                io.Combo.Input("clip_name", options=list_files(CLIP_FOLDER), default=default_file(XL_CLIP),
                               tooltip="CLIP ViT-bigG/14 vision tower in models/clip_vision, Hugging Face format "
                                       "(clip_vision_g.safetensors, 3.7 GB). The ViT-H/14 files of v1-v2 do not "
                                       "fit XL."),
                io.Combo.Input("tagger_name", options=list_files(TAGGER_FOLDER), default=default_file(XL_TAGGER),
                               tooltip="WD v1.4 SwinV2 tagger v2 in models/wd_tagger (timm format, 0.4 GB): the "
                                       "tagger the XL models were trained with."),
            ],
            outputs=[output(ReferenceEncoderSocket, "encoder",
                            "The XL reference encoder: feed it to Reference Embed (and Background Encode).")],
        )

    @classmethod
    def execute(cls, model: ColorizeModel, clip_name: str, tagger_name: str) -> io.NodeOutput:
        proj = xl_projection(model)
        clip, tagger = resolve_file(CLIP_FOLDER, clip_name), resolve_file(TAGGER_FOLDER, tagger_name)
        encoder = get_family(model.config.version).load_reference_encoder(clip, tagger, extras={"proj": proj})
        encoder.to(offload_device("clip"), torch.float32)
        return io.NodeOutput(XLReference(encoder, model, f"{clip_name} + {tagger_name}"))


class XLReferenceEncoderFromCLIPVision(io.ComfyNode):
    """COLORIZE_MODEL (XL) + CLIP_VISION (CLIP-bigG) + models/wd_tagger tagger → COLORIZE_REFERENCE_ENCODER."""

    HELP = cleandoc("""
        Loading `clip_vision_g.safetensors` once with ComfyUI's **Load CLIP Vision** lets SDXL nodes (unCLIP,
        IPAdapter) and the XL colorizer share it. The XL tokens are its 257 hidden states after the final layer
        norm and the visual projection, from the reference squashed to 224×224 (bicubic, antialiased), fused by
        the checkpoint's ClusterConcat with the WD tagger's 14×14 features.

        The tagger is read from models/wd_tagger (downloaded on first use if missing).
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionXLReferenceEncoderFromCLIPVision", display_name="XL Encoder from CLIP Vision",
            category="ColorizeDiffusion/loaders", description=(
                "Uses CLIP ViT-bigG/14 from the core Load CLIP Vision node (clip_vision_g.safetensors) with the WD "
                "v1.4 SwinV2 tagger from models/wd_tagger as ColorizeDiffusion XL's reference encoder."
            ),
            inputs=[
                ModelSocket.Input("model", tooltip="The XL checkpoint (sdxl or xlv2) from Colorize Loader: its "
                                                   "ClusterConcat fuses the two encoders' tokens."),
                io.ClipVision.Input("clip_vision", tooltip="Output of Load CLIP Vision with "
                                                           "clip_vision_g.safetensors (CLIP ViT-bigG/14)."),
                io.Combo.Input("tagger_name", options=list_files(TAGGER_FOLDER), default=default_file(XL_TAGGER),
                               tooltip="WD v1.4 SwinV2 tagger v2 in models/wd_tagger (timm format, 0.4 GB)."),
            ],
            outputs=[output(ReferenceEncoderSocket, "encoder",
                            "The XL reference encoder: feed it to Reference Embed (and Background Encode).")],
        )

    @classmethod
    def execute(cls, model: ColorizeModel, clip_vision: Any, tagger_name: str) -> io.NodeOutput:
        proj = xl_projection(model)
        clip = ClipVisionBigG(clip_vision)
        path = resolve_file(TAGGER_FOLDER, tagger_name)
        tagger = tagger_from_state_dict(load_state_dict_file(path), tagger_name)
        encoder = XLReferenceEncoder(clip, tagger.float().eval())  # type: ignore[arg-type]
        check_encoder_fits(encoder, proj, f"{model.name}'s ClusterConcat")
        encoder.to(offload_device("clip"), torch.float32)
        return io.NodeOutput(XLReference(encoder, model, f"CLIP_VISION + {tagger_name}"))


def xl_projection(model: ColorizeModel) -> nn.Module:
    """The XL checkpoint's ClusterConcat, or the named error for a checkpoint of another family."""
    family = get_family(model.config.version)
    if "proj" not in model.extras or not family.reference_files:
        raise InputError(f"{model.name} is a {family.label} checkpoint, not ColorizeDiffusion XL: load its "
                         "OpenCLIP ViT-H/14 encoder with Reference Encoder Loader instead")
    return model.extras["proj"].module


def load_text_tower(path: Path) -> nn.Module:
    """The CLIP text tower of an open_clip file (a ReferenceEncoder whose vision tower is dropped: the
    loader already holds one), fp32 on ComfyUI's text-encoder offload device."""
    encoder = load_reference_encoder(path, with_text=True)
    del encoder.visual  # encode_text does not use it
    return encoder.to(offload_device("clip"), torch.float32)


class ReferenceEncoderFromCLIPVision(io.ComfyNode):
    """CLIP_VISION (ComfyUI's own loader) → COLORIZE_REFERENCE_ENCODER."""

    HELP = cleandoc("""
        Loading the ViT-H/14 file once with ComfyUI's **Load CLIP Vision** node lets IPAdapter and the colorizer
        share it. The model must be CLIP-ViT-H-14-laion2B-s32B-b79K (ViT-H/14, 1024-dim projection); the
        colorizer's tokens are its 257 projected hidden states.

        It has no text tower: for text edits load the open_clip file with **Reference Encoder Loader** instead.
    """)

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ColorizeDiffusionReferenceEncoderFromCLIPVision", display_name="Encoder from CLIP Vision",
            category="ColorizeDiffusion/loaders", description=(
                "Uses a CLIP vision model from the core Load CLIP Vision node as the reference encoder, shared with "
                "IPAdapter. It must be CLIP-ViT-H-14-laion2B-s32B-b79K, and it has no text tower: text edits do not "
                "work with it."
            ),
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="Output of Load CLIP Vision with "
                                                           "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors."),
            ],
            outputs=encoder_outputs(),
        )

    @classmethod
    def execute(cls, clip_vision: Any) -> io.NodeOutput:
        return io.NodeOutput(ClipVisionReference(clip_vision))


__all__ = ["PARAMETERIZATION_CHOICES", "SUPPORTED_VERSIONS", "CheckpointLoader", "ReferenceEncoderFromCLIPVision",
           "ReferenceEncoderLoader", "XLReferenceEncoderFromCLIPVision", "XLReferenceEncoderLoader", "encoder_outputs",
           "load_text_tower", "xl_projection"]
