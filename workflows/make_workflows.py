"""Writes the shipped workflows: UI format (``<name>.json``, for the ComfyUI frontend and its template
browser), the API-format twin (``api/<name>.json``, what tests post to ``/prompt``) and a thumbnail.

    python workflows/make_workflows.py          # rewrite the files
    python workflows/make_workflows.py --check  # exit 1 if a file is out of date

Each workflow is described once below as an API-style graph; the UI file is derived from it with the
nodes' V3 schemas (widget order), so the two formats cannot drift apart, and laid out by ``layout.py``.
The frontend's template browser titles a pack's workflow by its file name, so the names are titles
("v1 - Text edits"); files of renamed or removed workflows are deleted.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from layout import Graph, layout, load_sizes

from colorize.families.gan import TINY_GAN_FILE
from nodes import NODE_CLASSES
from nodes.models import CHECKPOINT_FOLDER, CLIP_FOLDER, ISNET_FOLDER, TAGGER_FOLDER, model_links
from nodes.schema import WIDGET_TYPES

SKETCH, REFERENCE = "colorizediffusion_sketch.png", "colorizediffusion_reference.png"
Link = tuple[str, int]

# Core node widgets in frontend order ("upload" is LoadImage's upload button, serialised as "image"),
# their socket inputs and outputs. Only the core nodes the workflows use.
CORE_NODES: dict[str, dict[str, Any]] = {
    "LoadImage": {"widgets": ["image", "upload"], "inputs": {}, "outputs": [("IMAGE", "IMAGE"), ("MASK", "MASK")]},
    "SaveImage": {"widgets": ["filename_prefix"], "inputs": {"images": "IMAGE"}, "outputs": []},
    "PreviewImage": {"widgets": [], "inputs": {"images": "IMAGE"}, "outputs": []},
    "PreviewAny": {"widgets": [], "inputs": {"source": "*"}, "outputs": []},
    "KSampler": {"widgets": ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
                 "inputs": {"model": "MODEL", "positive": "CONDITIONING", "negative": "CONDITIONING",
                            "latent_image": "LATENT"}, "outputs": [("LATENT", "LATENT")]},
    "VAEDecode": {"widgets": [], "inputs": {"samples": "LATENT", "vae": "VAE"}, "outputs": [("IMAGE", "IMAGE")]},
    "SamplerCustomAdvanced": {"widgets": [], "inputs": {"noise": "NOISE", "guider": "GUIDER", "sampler": "SAMPLER",
                                                        "sigmas": "SIGMAS", "latent_image": "LATENT"},
                              "outputs": [("output", "LATENT"), ("denoised_output", "LATENT")]},
    "KSamplerSelect": {"widgets": ["sampler_name"], "inputs": {}, "outputs": [("SAMPLER", "SAMPLER")]},
    "RandomNoise": {"widgets": ["noise_seed", "control_after_generate"], "inputs": {}, "outputs": [("NOISE", "NOISE")]},
}
FRONTEND_ONLY = ("MarkdownNote", "Note")  # UI-only nodes, absent from API graphs

NOTE_V1 = """## ColorizeDiffusion v1: reference-based line-art colorization

1. **Models** (downloaded on first run if missing, or by the frontend's missing-model dialog):
   `models/colorizediffusion/mult-eps-ft.safetensors` (3.9 GB, CC-BY-NC-SA-4.0, non-commercial) and
   `models/clip_vision/open_clip_model.safetensors` (or pick the
   `CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors` you already have for IPAdapter).
2. **Images**: copy `colorizediffusion_sketch.png` and `colorizediffusion_reference.png` from the pack's
   `workflows/` folder into ComfyUI's `input/` folder, or load your own line art and reference.
3. Queue. Output size follows the sketch (about 512x512); set width/height on Sketch Preprocess to change it.
"""


def input_nodes() -> dict[str, dict[str, Any]]:
    """Nodes 2–5 of the v1 graphs: the reference encoder, the two images and the sketch preparation."""
    return {
        "2": {"class_type": "ColorizeDiffusionReferenceEncoderLoader", "_meta": {"title": "Reference encoder"},
              "inputs": {"clip_name": "open_clip_model.safetensors"}},
        "3": {"class_type": "LoadImage", "_meta": {"title": "Sketch (line art)"}, "inputs": {"image": SKETCH}},
        "4": {"class_type": "LoadImage", "_meta": {"title": "Colour reference"}, "inputs": {"image": REFERENCE}},
        "5": {"class_type": "ColorizeDiffusionSketchPreprocess", "_meta": {"title": "Sketch Preprocess"},
              "inputs": {"image": ["3", 0], "polarity": "auto", "width": 0, "height": 0}},
    }


def mask_nodes() -> dict[str, dict[str, Any]]:
    """Nodes 13–15 of the separation graphs: the sketch and reference masks of the official apps (ISNet-sketch on the
    line art, the ISNet anime segmenter on the reference) and Background Encode."""
    return {
        "13": {"class_type": "ColorizeDiffusionSketchMaskISNet", "_meta": {"title": "Sketch Mask (ISNet-sketch)"},
               "inputs": {"model_name": "sketch-segment.safetensors", "image": ["3", 0], "threshold": 0.0,
                          "polarity": "dark_lines", "canvas_size": 1024}},
        "14": {"class_type": "ColorizeDiffusionAnimeMask", "_meta": {"title": "Reference Mask (ISNet)"},
               "inputs": {"model_name": "isnetis.safetensors", "image": ["4", 0], "threshold": 0.0, "dilation": 5,
                          "canvas_size": 1024}},
        "15": {"class_type": "ColorizeDiffusionBackgroundEncode", "_meta": {"title": "Background Encode"},
               "inputs": {"encoder": ["2", 0], "reference": ["4", 0], "background_enhance": True,
                          "foreground_enhance": False, "fg_strength": 1.0, "bg_strength": 1.0, "merge_scale": 0.0,
                          "background_factor": 1.0, "sketch_threshold": 0.05, "reference_threshold": 0.5,
                          "remove_background_foreground": False, "sketch_mask": ["13", 0],
                          "reference_mask": ["14", 0]}},
    }


def v1_graph() -> Graph:
    """The v1 colorization graph (API format)."""
    graph: dict[str, dict[str, Any]] = {
        "1": {"class_type": "ColorizeDiffusionCheckpointLoader", "_meta": {"title": "Checkpoint"},
              "inputs": {"ckpt_name": "mult-eps-ft.safetensors", "precision": "auto"}},
        **input_nodes(),
        "6": {"class_type": "ColorizeDiffusionSketchHints", "_meta": {"title": "Sketch Hints"},
              "inputs": {"model": ["1", 0], "sketch": ["5", 0], "strength": 1.0}},
        "7": {"class_type": "ColorizeDiffusionReferenceEmbed", "_meta": {"title": "Reference Embed"},
              "inputs": {"encoder": ["2", 0], "image": ["4", 0]}},
        "8": {"class_type": "ColorizeDiffusionSampler", "_meta": {"title": "Sampler"},
              "inputs": {"model": ["1", 0], "reference": ["7", 0], "hints": ["6", 0], "seed": 0, "steps": 20,
                         "sampler": "dpm_solver", "scheduler": "auto", "reference_cfg": 4.0, "sketch_cfg": 1.0,
                         "reference_strength": 1.0, "encoder_strength": 1.0, "middle_strength": 1.0,
                         "low_strength": 1.0, "width": 0, "height": 0}},
        "9": {"class_type": "ColorizeDiffusionDecode", "_meta": {"title": "Decode"},
              "inputs": {"model": ["1", 0], "samples": ["8", 0]}},
        "10": {"class_type": "SaveImage", "_meta": {"title": "Save colorized"},
               "inputs": {"images": ["9", 0], "filename_prefix": "ColorizeDiffusion/v1"}},
        "11": {"class_type": "PreviewImage", "_meta": {"title": "Prepared sketch"}, "inputs": {"images": ["5", 0]}},
        "12": {"class_type": "PreviewAny", "_meta": {"title": "Checkpoint info"}, "inputs": {"source": ["1", 1]}},
    }
    return graph


NOTE_TEXT_EDITS = """## ColorizeDiffusion v1 with text edits of the reference (thesis §5.8)

The v1 workflow (same models and images), with the reference tokens edited by two chained **Text Edit** nodes:
1. hair: purple → blonde (control `hair`); 2. dress: red → green (control `dress`). Each edit moves the region its
control prompt selects from the anchor towards the target; add more edits in a chain, or switch one off (`enabled`).
**Control Heatmap** shows what the second edit's control prompt selects once the first edit is applied (blue = most
related, strongest change): tune ts0..ts3 there, then set the same values on the edit.
Text edits need the CLIP text tower: load `open_clip_model.safetensors` (the vision-only
`CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors` cannot encode prompts). It is read on first use (1.4 GB more memory).
"""


def edit_inputs(reference: Link, target: str, anchor: str, control: str) -> dict[str, Any]:
    """A Text Edit's inputs with the default scale, thresholds and ratio."""
    return {"reference": list(reference), "enabled": True, "target": target, "anchor": anchor, "control": control,
            "target_scale": 10.0, "enhance": False, "ts0": 0.5, "ts1": 0.55, "ts2": 0.65, "ts3": 0.95,
            "strength_ratio": 2.0}


def text_edits_graph() -> Graph:
    """v1 colorization with two sequential text edits of the reference and the control heatmap of the second."""
    graph = v1_graph()
    graph["8"]["inputs"]["reference"] = ["14", 0]
    graph["10"]["inputs"]["filename_prefix"] = "ColorizeDiffusion/v1_text_edits"
    graph.update({
        "13": {"class_type": "ColorizeDiffusionTextEdit", "_meta": {"title": "Edit 1: hair"},
               "inputs": edit_inputs(("7", 0), "the girl's blonde hair", "the girl's purple hair", "hair")},
        "14": {"class_type": "ColorizeDiffusionTextEdit", "_meta": {"title": "Edit 2: dress"},
               "inputs": edit_inputs(("13", 0), "the girl's green dress", "the girl's red dress", "dress")},
        "15": {"class_type": "ColorizeDiffusionControlHeatmap", "_meta": {"title": "Control Heatmap (edit 2)"},
               "inputs": {"reference": ["13", 0], "image": ["4", 0], "control": "dress",
                          "ts0": 0.5, "ts1": 0.55, "ts2": 0.65, "ts3": 0.95}},
        "16": {"class_type": "SaveImage", "_meta": {"title": "Save heatmap"},
               "inputs": {"images": ["15", 0], "filename_prefix": "ColorizeDiffusion/v1_text_edits_heatmap"}},
    })
    return graph


NOTE_LINEART = """## ColorizeDiffusion v1 from a colour illustration: line extraction, then colorization

**Line Extract** turns a colour illustration (here the example reference itself) into black-on-white line art, which
then goes through the v1 chain with the colour reference: a way to re-colour an existing picture.
1. **Models**: the two v1 files (see the v1 workflow). `lineart_standard` (the official "invert-webui", used here) and
   `high_pass` need no weights; `sketch_keras` (the official default), `anime2sketch` and `manga_line` read
   `models/lineart/` (`sketchkeras.pth`, `netG.pth`, `erika.pth`), downloaded on first run if missing.
2. **Images**: copy `colorizediffusion_reference.png` from the pack's `workflows/` folder into ComfyUI's `input/`
   folder, or load your own illustration (or pencil drawing) and reference.
3. Check **Extracted lines**; raise sigma for thicker, fewer lines, or try another method. Then queue.
"""


def lineart_graph() -> Graph:
    """v1 colorization of line art extracted (no weights) from a colour illustration."""
    graph = v1_graph()
    graph["3"] = {"class_type": "LoadImage", "_meta": {"title": "Colour illustration"},
                  "inputs": {"image": REFERENCE}}
    graph["5"]["inputs"]["image"] = ["13", 0]
    graph["10"]["inputs"]["filename_prefix"] = "ColorizeDiffusion/v1_lineart"
    graph.update({
        "13": {"class_type": "ColorizeDiffusionLineExtract", "_meta": {"title": "Line Extract"},
               "inputs": {"image": ["3", 0], "method": "lineart_standard", "model_file": "auto",
                          "input_polarity": "auto", "resolution": 0, "sigma": 0.0, "threshold": 0.1}},
        "14": {"class_type": "PreviewImage", "_meta": {"title": "Extracted lines"}, "inputs": {"images": ["13", 0]}},
    })
    return graph


NOTE_V15 = """## ColorizeDiffusion v1.5: foreground/background separation (BG enhance) with masks

`switch-eps.safetensors` (3.9 GB, downloaded on first run if missing) with the v1 CLIP file. As in the official apps,
**Sketch Mask (ISNet-sketch)** finds the figure in the line art and **Reference Mask (ISNet)**, the anime segmenter, the
character in the reference (models/isnet, 0.18 GB each, downloaded on first run); check both in the **Mask Preview**s.
**Background Encode** splits the cross-attention with them so that the reference colours the figure and the background
comes from the background-only reference. Without weights, **Sketch Mask** (closed outlines, plain backgrounds) can
replace either; **SAM Mask** or any MASK works for reference_mask.
"""

NOTE_V2 = """## ColorizeDiffusion v2: background encoder and style encoder

`v2-full.safetensors` (v-prediction, trained at 768x768: sizes near 768 in area work best) with the v1 CLIP file.
**Background Encode** (BG enhance, with the sketch and reference masks) and **Style Encode** feed the sampler's
`enhance` input: bypass or unlink either to switch that enhancement off.
"""


def v15_graph() -> Graph:
    """v1.5: sketch + reference + masks → colorization with BG enhance."""
    graph = v1_graph()
    graph["1"]["inputs"]["ckpt_name"] = "switch-eps.safetensors"
    graph["8"]["inputs"]["enhance"] = ["15", 0]
    graph["10"]["inputs"]["filename_prefix"] = "ColorizeDiffusion/v15"
    graph.update({
        **mask_nodes(),
        "16": {"class_type": "ColorizeDiffusionMaskPreview", "_meta": {"title": "Mask Preview (sketch)"},
               "inputs": {"image": ["3", 0], "mask": ["13", 0], "alpha": 0.5, "outline": 2, "dim_background": 0.3}},
        "17": {"class_type": "ColorizeDiffusionMaskPreview", "_meta": {"title": "Mask Preview (reference)"},
               "inputs": {"image": ["4", 0], "mask": ["14", 0], "alpha": 0.5, "outline": 2, "dim_background": 0.3}},
        "18": {"class_type": "PreviewImage", "_meta": {"title": "Sketch mask"}, "inputs": {"images": ["16", 0]}},
        "19": {"class_type": "PreviewImage", "_meta": {"title": "Reference mask"}, "inputs": {"images": ["17", 0]}},
    })
    return graph


def v2_graph() -> Graph:
    """v2: the v1.5 graph on v2-full with Style Encode chained after Background Encode, 768-level output."""
    graph = v15_graph()
    graph["1"]["inputs"]["ckpt_name"] = "v2-full.safetensors"
    graph["5"]["inputs"].update({"width": 768, "height": 768})
    graph["8"]["inputs"]["enhance"] = ["20", 0]
    graph["10"]["inputs"]["filename_prefix"] = "ColorizeDiffusion/v2"
    graph["20"] = {"class_type": "ColorizeDiffusionStyleEncode", "_meta": {"title": "Style Encode"},
                   "inputs": {"encoder": ["2", 0], "reference": ["4", 0], "enhance": ["15", 0]}}
    return graph


NOTE_XL = """## ColorizeDiffusion XL: reference-based line-art colorization at 1024 px

1. **Models** (downloaded on first run if missing, or by the frontend's missing-model dialog):
   `models/colorizediffusion/sdxl.safetensors` (5.4 GB, CC-BY-NC-SA-4.0, non-commercial),
   `models/clip_vision/clip_vision_g.safetensors` (CLIP ViT-bigG/14, 3.7 GB: the file SDXL users already have) and
   `models/wd_tagger/wd-v1-4-swinv2-tagger-v2.safetensors` (0.4 GB). **XL Reference Encoder Loader** fuses the two
   encoders with the checkpoint's own ClusterConcat, so it takes the loaded model.
2. **Images**: copy `colorizediffusion_sketch.png` and `colorizediffusion_reference.png` from the pack's
   `workflows/` folder into ComfyUI's `input/` folder, or load your own line art and reference.
3. Queue. **Sketch Preprocess** gets the model, so width/height 0 follow the XL app's autofit (the sketch's aspect at
   about 1024x1024, sides multiples of 32). The sampler runs the XL app's DPM++ 3M SDE on its exponential schedule.
   XL files do not record their prediction type: the loader's `info` says what decided it (the file name rule).
"""

NOTE_XL_V2 = """## ColorizeDiffusion XL v2: background separation with the ReferenceNet

`xlv2.safetensors` (9.4 GB, downloaded on first run if missing) with the XL reference encoder files (see the XL
workflow). As in the official app, **Sketch Mask (ISNet-sketch)** finds the figure in the line art and **Reference Mask
(ISNet)** the character in the reference (models/isnet, 0.18 GB each); check both in the **Mask Preview**s.
**Background Encode** (XL: background enhance only) makes the ReferenceNet encode the background-only reference;
the decoder's self-attention reads it outside the figure. Bypass Background Encode for plain colorization.
"""


def xl_graph() -> Graph:
    """XL (sdxl): the v1 chain with the XL reference encoder, XL autofit sizes and the XL app's sampler."""
    graph = v1_graph()
    graph["1"]["inputs"]["ckpt_name"] = "sdxl.safetensors"
    graph["2"] = {"class_type": "ColorizeDiffusionXLReferenceEncoderLoader", "_meta": {"title": "XL reference encoder"},
                  "inputs": {"model": ["1", 0], "clip_name": "clip_vision_g.safetensors",
                             "tagger_name": "wd-v1-4-swinv2-tagger-v2.safetensors"}}
    graph["5"]["inputs"]["model"] = ["1", 0]
    graph["8"]["inputs"].update({"sampler": "dpmpp_3m_sde", "scheduler": "auto"})
    graph["10"]["inputs"]["filename_prefix"] = "ColorizeDiffusion/xl"
    return graph


def xl_v2_graph() -> Graph:
    """XL v2 (xlv2): the XL graph with the ISNet masks and Background Encode (the ReferenceNet background)."""
    graph = xl_graph()
    graph["1"]["inputs"]["ckpt_name"] = "xlv2.safetensors"
    graph["8"]["inputs"]["enhance"] = ["15", 0]
    graph["10"]["inputs"]["filename_prefix"] = "ColorizeDiffusion/xlv2"
    v15 = v15_graph()
    graph.update({nid: v15[nid] for nid in ("13", "14", "15", "16", "17", "18", "19")})
    return graph


NOTE_ADVANCED = """## ColorizeDiffusion v1 with the official app's advanced controls

The v1 workflow (same models and images) with:
- **Reference Pad** (official "Reference padding scale"): the reference is padded to 1.2x its width with white.
- **Guidance Window**: the reference guides steps with tr = 1 - t/999 in [0, 0.9] (the last steps run without it).
- **Attention Injection** (about 2x sampling time): the U-Net also reads the reference's own features; fidelity 0.5
  as the official default. Bypass it or unlink `advanced` to switch it off.
- **Crop To Sketch** (official "Crop result") and **Remove Background** with a **Sketch Mask** of the line art
  (official "Remove background in result", threshold 0.5).
"""


def advanced_graph() -> Graph:
    """v1 with reference padding, guidance window, attention injection, crop and background removal."""
    graph = v1_graph()
    graph["7"]["inputs"]["image"] = ["13", 0]
    graph["8"]["inputs"]["advanced"] = ["15", 0]
    graph["10"]["inputs"]["images"] = ["17", 0]
    graph["10"]["inputs"]["filename_prefix"] = "ColorizeDiffusion/v1_advanced"
    graph.update({
        "13": {"class_type": "ColorizeDiffusionReferencePad", "_meta": {"title": "Reference Pad"},
               "inputs": {"reference": ["4", 0], "scale": 1.2}},
        "14": {"class_type": "ColorizeDiffusionGuidanceWindow", "_meta": {"title": "Guidance Window"},
               "inputs": {"start": 0.0, "end": 0.9, "no_guidance_start": -0.05, "no_guidance_end": -0.05}},
        "15": {"class_type": "ColorizeDiffusionAttentionInjection", "_meta": {"title": "Attention Injection"},
               "inputs": {"reference": ["4", 0], "fidelity": 0.5, "sketch_fidelity": 0.0, "start": 0.0,
                          "advanced": ["14", 0]}},
        "16": {"class_type": "ColorizeDiffusionCropToSketch", "_meta": {"title": "Crop To Sketch"},
               "inputs": {"image": ["9", 0], "sketch": ["3", 0]}},
        "17": {"class_type": "ColorizeDiffusionRemoveBackground", "_meta": {"title": "Remove Background"},
               "inputs": {"image": ["16", 0], "mask": ["18", 0], "threshold": 0.5}},
        "18": {"class_type": "ColorizeDiffusionSketchMask", "_meta": {"title": "Sketch Mask (figure)"},
               "inputs": {"image": ["3", 0], "threshold": 0.5, "gap": 4, "dilation": 2, "polarity": "auto"}},
    })
    return graph


NOTE_NATIVE_KSAMPLER = """## ColorizeDiffusion v1 as a native MODEL with the core KSampler

**Native Loader** loads `mult-eps-ft.safetensors` as ComfyUI's own SD2.x MODEL and VAE (LoRA loaders, model merging,
core samplers and schedulers work on it) plus the colorizer's own parts. **Native Sketch** patches the MODEL with the
sketch hints and gives an empty latent of the sketch's size; **Native Reference Strength** sets the per-level reference
strength; **Native Conditioning** turns the reference tokens into positive / negative (the empty reference). KSampler's
cfg is the reference guidance scale (official default 4). For sketch CFG use the Native Guider workflow.
"""

NOTE_NATIVE_CUSTOM = """## ColorizeDiffusion v2 as a native MODEL with SamplerCustomAdvanced and dual CFG

`v2-full.safetensors` (v-prediction, best near 768x768) loaded by **Native Loader**. **Background Encode** + **Style
Encode** feed **Native Enhance**, which patches the MODEL (split cross-attention, background warping, style modulation)
and builds its positive / negative. **Native Guider** is the official dual CFG (reference 4, sketch 1.5); **Native
Sigmas** gives the official "leading" timesteps. Keep Native Enhance's seed equal to the noise seed: then the result is
the ColorizeDiffusion Sampler's for the same sampler, steps and seed.
"""


def native_ksampler_graph() -> Graph:
    """v1 through the native bridge: Native Loader → Native Sketch → Reference Strength → core KSampler."""
    graph: dict[str, dict[str, Any]] = {
        "1": {"class_type": "ColorizeDiffusionNativeLoader", "_meta": {"title": "Native Loader"},
              "inputs": {"ckpt_name": "mult-eps-ft.safetensors", "precision": "auto"}},
        **input_nodes(),
        "6": {"class_type": "ColorizeDiffusionReferenceEmbed", "_meta": {"title": "Reference Embed"},
              "inputs": {"encoder": ["2", 0], "image": ["4", 0]}},
        "7": {"class_type": "ColorizeDiffusionNativeSketch", "_meta": {"title": "Native Sketch"},
              "inputs": {"model": ["1", 0], "colorizer": ["1", 2], "sketch": ["5", 0], "strength": 1.0}},
        "8": {"class_type": "ColorizeDiffusionNativeReferenceStrength", "_meta": {"title": "Native Reference Strength"},
              "inputs": {"model": ["7", 0], "colorizer": ["1", 2], "reference_strength": 1.0,
                         "encoder_strength": 1.0, "middle_strength": 1.0, "low_strength": 1.0}},
        "9": {"class_type": "ColorizeDiffusionNativeConditioning", "_meta": {"title": "Native Conditioning"},
              "inputs": {"reference": ["6", 0]}},
        "10": {"class_type": "KSampler", "_meta": {"title": "KSampler"},
               "inputs": {"model": ["8", 0], "positive": ["9", 0], "negative": ["9", 1], "latent_image": ["7", 1],
                          "seed": 0, "steps": 20, "cfg": 4.0, "sampler_name": "dpmpp_2m", "scheduler": "karras",
                          "denoise": 1.0}},
        "11": {"class_type": "VAEDecode", "_meta": {"title": "VAE Decode"}, "inputs": {"samples": ["10", 0], "vae": ["1", 1]}},
        "12": {"class_type": "SaveImage", "_meta": {"title": "Save colorized"},
               "inputs": {"images": ["11", 0], "filename_prefix": "ColorizeDiffusion/v1_native_ksampler"}},
        "13": {"class_type": "PreviewAny", "_meta": {"title": "Checkpoint info"}, "inputs": {"source": ["1", 3]}},
    }
    return graph


def native_custom_graph() -> Graph:
    """v2 through the native bridge: Native Enhance (BG + style) and the dual-CFG Native Guider in SamplerCustomAdvanced."""
    graph = native_ksampler_graph()
    for nid in ("9", "10", "12", "13"):
        del graph[nid]
    graph["1"]["inputs"]["ckpt_name"] = "v2-full.safetensors"
    graph["5"]["inputs"].update({"width": 768, "height": 768})
    graph["11"]["inputs"]["samples"] = ["19", 0]
    graph.update({
        "12": {"class_type": "SaveImage", "_meta": {"title": "Save colorized"},
               "inputs": {"images": ["11", 0], "filename_prefix": "ColorizeDiffusion/v2_native_custom"}},
        **mask_nodes(),
        "16": {"class_type": "ColorizeDiffusionStyleEncode", "_meta": {"title": "Style Encode"},
               "inputs": {"encoder": ["2", 0], "reference": ["4", 0], "enhance": ["15", 0]}},
        "17": {"class_type": "ColorizeDiffusionNativeEnhance", "_meta": {"title": "Native Enhance"},
               "inputs": {"model": ["8", 0], "colorizer": ["1", 2], "reference": ["6", 0], "sketch": ["5", 0],
                          "enhance": ["16", 0], "seed": 0}},
        "18": {"class_type": "ColorizeDiffusionNativeGuider", "_meta": {"title": "Native Guider (dual CFG)"},
               "inputs": {"model": ["17", 0], "positive": ["17", 1], "negative": ["17", 2], "reference_cfg": 4.0,
                          "sketch_cfg": 1.5}},
        "19": {"class_type": "SamplerCustomAdvanced", "_meta": {"title": "SamplerCustomAdvanced"},
               "inputs": {"noise": ["20", 0], "guider": ["18", 0], "sampler": ["21", 0], "sigmas": ["22", 0],
                          "latent_image": ["7", 1]}},
        "20": {"class_type": "RandomNoise", "_meta": {"title": "Noise"}, "inputs": {"noise_seed": 0}},
        "21": {"class_type": "KSamplerSelect", "_meta": {"title": "Sampler"}, "inputs": {"sampler_name": "dpmpp_2m"}},
        "22": {"class_type": "ColorizeDiffusionNativeSigmas", "_meta": {"title": "Native Sigmas"},
               "inputs": {"model": ["17", 0], "scheduler": "leading", "steps": 20}},
        "23": {"class_type": "PreviewAny", "_meta": {"title": "Checkpoint info"}, "inputs": {"source": ["1", 3]}},
    })
    return graph


NOTE_GAN = """## Chapter-4 GAN: one-pass colorization with tag edits (thesis §4)

The GAN of the thesis' chapter 4: no CLIP, no VAE, no sampling steps, one forward pass. **GAN Reference** encodes the
colour reference with the GAN's tag encoder and lists the tags it predicts (**Predicted tags**); **GAN Tag Edit** sets
tags to new values (thesis §4.3.3: 1 = present, 0 = absent, beyond [0, 1] extrapolates); **GAN Colorize** paints the
sketch. The second GAN Colorize uses the reference without the edit, for comparison.
1. **Model**: no GAN weights were released. Put a GAN file exported by the pack's `training/` into
   `models/colorizediffusion_gan/` and pick it in the loader, or try the nodes with the tiny random test file:
   `python -m colorize make-tiny-weights DIR --versions gan` writes `colorizediffusion_gan/colorize-gan-tiny.safetensors`
   (random weights: the picture is a flat colour).
2. **Images**: copy `colorizediffusion_sketch.png` and `colorizediffusion_reference.png` from the pack's
   `workflows/` folder into ComfyUI's `input/` folder, or load your own line art and reference.
3. **Tags**: `red_shape` is a tag of the tiny file. With your own model use the names Predicted tags lists (such as
   `red_hair`), one per node or several in one as `red_hair=1, blue_eyes=0`; tag edits need a stage-2 file.
"""


def gan_graph() -> Graph:
    """The chapter-4 GAN: reference → predicted tags and one tag edit → colorization, and one without the edit."""
    return {
        "1": {"class_type": "ColorizeDiffusionGANLoader", "_meta": {"title": "GAN"},
              "inputs": {"gan_name": TINY_GAN_FILE, "precision": "auto"}},
        "2": {"class_type": "LoadImage", "_meta": {"title": "Sketch (line art)"}, "inputs": {"image": SKETCH}},
        "3": {"class_type": "LoadImage", "_meta": {"title": "Colour reference"}, "inputs": {"image": REFERENCE}},
        "4": {"class_type": "ColorizeDiffusionGANReference", "_meta": {"title": "GAN Reference"},
              "inputs": {"gan": ["1", 0], "image": ["3", 0], "top_k": 20}},
        "5": {"class_type": "ColorizeDiffusionGANTagEdit", "_meta": {"title": "GAN Tag Edit"},
              "inputs": {"gan": ["1", 0], "reference": ["4", 0], "tag": "red_shape", "value": 1.0}},
        "6": {"class_type": "ColorizeDiffusionGANColorize", "_meta": {"title": "GAN Colorize (edited)"},
              "inputs": {"gan": ["1", 0], "sketch": ["2", 0], "width": 0, "height": 0, "polarity": "auto",
                         "reference": ["5", 0]}},
        "7": {"class_type": "SaveImage", "_meta": {"title": "Save colorized"},
              "inputs": {"images": ["6", 0], "filename_prefix": "ColorizeDiffusion/gan"}},
        "8": {"class_type": "PreviewAny", "_meta": {"title": "Predicted tags"}, "inputs": {"source": ["4", 1]}},
        "9": {"class_type": "PreviewAny", "_meta": {"title": "GAN info"}, "inputs": {"source": ["1", 1]}},
        "10": {"class_type": "ColorizeDiffusionGANColorize", "_meta": {"title": "GAN Colorize (no edit)"},
               "inputs": {"gan": ["1", 0], "sketch": ["2", 0], "width": 0, "height": 0, "polarity": "auto",
                          "reference": ["4", 0]}},
        "11": {"class_type": "PreviewImage", "_meta": {"title": "Without the edit"}, "inputs": {"images": ["10", 0]}},
    }


WORKFLOWS = {
    "v1 - Colorize line art": (v1_graph, NOTE_V1),
    "v1 - Text edits": (text_edits_graph, NOTE_TEXT_EDITS),
    "v1 - From an illustration": (lineart_graph, NOTE_LINEART),
    "v1.5 - Figure and background": (v15_graph, NOTE_V15),
    "v2 - Background and style": (v2_graph, NOTE_V2),
    "v1 - Advanced controls": (advanced_graph, NOTE_ADVANCED),
    "v1 - Native KSampler": (native_ksampler_graph, NOTE_NATIVE_KSAMPLER),
    "v2 - Native dual CFG": (native_custom_graph, NOTE_NATIVE_CUSTOM),
    "XL - Colorize line art": (xl_graph, NOTE_XL),
    "XL v2 - Background separation": (xl_v2_graph, NOTE_XL_V2),
    "GAN - Colorize and edit tags": (gan_graph, NOTE_GAN),
}


# ------------------------------------------------------------------------------------- node specs


def node_spec(class_type: str) -> dict[str, Any]:
    """Widget names (frontend order, incl. seed's control widget), socket inputs and outputs of a node."""
    if class_type in CORE_NODES:
        return CORE_NODES[class_type]
    schema = NODE_CLASSES[class_type].define_schema()
    widgets, inputs, defaults = [], {}, {}
    for inp in sorted(schema.inputs, key=lambda i: bool(i.optional)):  # /object_info: required, then optional
        if inp.io_type in WIDGET_TYPES:
            widgets.append(inp.id)
            if inp.optional:
                defaults[inp.id] = inp.default
            if inp.io_type == "INT" and (inp.control_after_generate or inp.id in ("seed", "noise_seed")):
                widgets.append("control_after_generate")
        else:
            inputs[inp.id] = inp.io_type
    return {"widgets": widgets, "inputs": inputs, "outputs": [(o.display_name, o.io_type) for o in schema.outputs],
            "defaults": defaults}


def widget_value(api_inputs: dict[str, Any], widget: str) -> Any:
    if widget == "control_after_generate":
        return "fixed"
    if widget == "upload":
        return "image"
    return api_inputs[widget]


def with_optional_defaults(graph: Graph) -> Graph:
    """The graph with every optional widget it leaves out set to its default (the frontend saves them all)."""
    for node in graph.values():
        if node["class_type"] not in CORE_NODES:
            for widget, default in node_spec(node["class_type"])["defaults"].items():
                node["inputs"].setdefault(widget, default)
    return graph


# ------------------------------------------------------------------------------------- UI format


def to_ui(graph: Graph, note: str) -> dict[str, Any]:
    """API graph → UI-format workflow (what the frontend saves and loads), laid out by :mod:`layout`."""
    lay = layout(graph, note, *load_sizes())
    order = topological(graph)
    links: list[list[Any]] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    nodes = []
    for nid in order:
        node = graph[nid]
        spec = node_spec(node["class_type"])
        ui_inputs = []
        connected = [(name, typ) for name, typ in spec["inputs"].items() if name in node["inputs"]]  # optional sockets may be absent
        for slot, (name, typ) in enumerate(connected):
            src = node["inputs"][name]
            link_id = len(links) + 1
            src_type = node_spec(graph[src[0]]["class_type"])["outputs"][src[1]][1]
            links.append([link_id, int(src[0]), src[1], int(nid), slot, src_type if typ == "*" else typ])
            out_links.setdefault((src[0], src[1]), []).append(link_id)
            ui_inputs.append({"name": name, "type": typ, "link": link_id})
        props: dict[str, Any] = {"Node name for S&R": node["class_type"]}
        for widget, folder in (("ckpt_name", CHECKPOINT_FOLDER), ("clip_name", CLIP_FOLDER),
                               ("model_name", ISNET_FOLDER), ("tagger_name", TAGGER_FOLDER)):
            if widget in node["inputs"] and node["class_type"].startswith("ColorizeDiffusion"):
                props["models"] = [*props.get("models", []), *model_links(folder, node["inputs"][widget])]
        entry: dict[str, Any] = {
            "id": int(nid), "type": node["class_type"], "title": node["_meta"]["title"],
            "pos": list(lay.pos[nid]), "size": list(lay.size[nid]),
            "flags": {}, "order": order.index(nid), "mode": 0, "inputs": ui_inputs, "outputs": [],
            "properties": props, "widgets_values": [widget_value(node["inputs"], w) for w in spec["widgets"]],
        }
        nodes.append(entry)
    for entry in nodes:
        spec = node_spec(entry["type"])
        entry["outputs"] = [{"name": name, "type": typ, "links": out_links.get((str(entry["id"]), i), []),
                             "slot_index": i} for i, (name, typ) in enumerate(spec["outputs"])]
    note_id = max(int(k) for k in graph) + 1
    nodes.append({"id": note_id, "type": "MarkdownNote", "title": "Read me", "pos": list(lay.note_pos),
                  "size": list(lay.note_size),
                  "flags": {}, "order": len(nodes), "mode": 0, "inputs": [], "outputs": [],
                  "properties": {}, "widgets_values": [note], "color": "#432", "bgcolor": "#653"})
    return {"last_node_id": note_id, "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [{"id": i + 1, **g} for i, g in enumerate(lay.groups)], "config": {},
            "extra": {"ds": lay.view}, "version": 0.4}


def topological(graph: dict[str, dict[str, Any]]) -> list[str]:
    done: list[str] = []

    def visit(nid: str) -> None:
        if nid in done:
            return
        for v in graph[nid]["inputs"].values():
            if isinstance(v, list):
                visit(v[0])
        done.append(nid)

    for nid in sorted(graph, key=int):
        visit(nid)
    return done


# ------------------------------------------------------------------------------------- files


def _image(name: str) -> Any:
    from PIL import Image

    return Image.open(HERE / name).convert("RGB")


def _tensor(image: Any) -> Any:
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def _pil(x: Any) -> Any:
    from PIL import Image

    return Image.fromarray((x[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8"))


def extracted_lines() -> Any:
    """The lines the lineart workflow's extractor (lineart_standard, no weights) finds in the reference."""
    from colorize.extractors import extract_lines

    return _pil(extract_lines(_tensor(_image(REFERENCE)), "lineart_standard"))


def padded_reference() -> Any:
    """The reference padded to 1.2x its width with white (the advanced workflow's Reference Pad)."""
    from PIL import Image

    ref = _image(REFERENCE)
    out = Image.new("RGB", (round(ref.width * 1.2), ref.height), (255, 255, 255))
    out.paste(ref, ((out.width - ref.width) // 2, 0))
    return out


def thumbnail_content(name: str) -> tuple[str, str, list[tuple[Any, str]]]:
    """(title, what it does, labelled tiles) of a workflow's template-browser thumbnail. Real results need the
    real weights, so the tiles are the inputs and what the graph computes from them without weights."""
    sketch, reference = (_image(SKETCH), "line art"), (_image(REFERENCE), "colour reference")
    return {
        "v1 - Colorize line art": ("v1: colorize line art", "line art + colour reference -> coloured picture",
                                 [sketch, reference]),
        "v1 - Text edits": ("v1 + text edits", "hair purple -> blonde, dress red -> green, heatmap",
                                            [sketch, reference]),
        "v1 - From an illustration": ("v1 from an illustration", "extract the lines, then colorize them",
                                         [reference, (extracted_lines(), "extracted lines")]),
        "v1.5 - Figure and background": ("v1.5: figure / background",
                                         "ISNet masks split the reference: figure vs background", [sketch, reference]),
        "v2 - Background and style": ("v2: background + style", "background encoder and style encoder, 768 px",
                                      [reference, sketch]),
        "v1 - Advanced controls": ("v1 advanced controls", "reference pad, guidance window, injection, crop",
                                          [sketch, (padded_reference(), "padded reference")]),
        "v1 - Native KSampler": ("v1 as a native MODEL", "core KSampler, LoRA loaders, merges",
                                                 [sketch, reference]),
        "v2 - Native dual CFG": ("v2 native, dual CFG", "SamplerCustomAdvanced + Native Guider",
                                 [sketch, reference]),
        "XL - Colorize line art": ("XL: colorize line art", "SDXL colorizer, CLIP-bigG + WD tagger, 1024 px",
                                   [sketch, reference]),
        "XL v2 - Background separation": ("XL v2: background separation",
                                          "ISNet masks + ReferenceNet background, 1024 px", [sketch, reference]),
        "GAN - Colorize and edit tags": ("GAN (thesis ch. 4): colorize, edit tags",
                                         "one forward pass; predicted tags, tag edits", [sketch, reference]),
    }[name]


def thumbnail(path: Path, title: str, subtitle: str, tiles: list[tuple[Any, str]]) -> None:
    """A title banner over labelled tiles (the template browser shows ``<name>.jpg`` as the card's picture)."""
    from PIL import Image, ImageDraw, ImageFont

    h, pad, banner = 256, 32, 84
    images = [t.resize((round(t.width * h / t.height), h), Image.Resampling.LANCZOS) for t, _ in tiles]
    w = max(sum(t.width for t in images) + pad * (len(images) + 1), 640)
    canvas = Image.new("RGB", (w, banner + h + 56), (34, 34, 40))
    d = ImageDraw.Draw(canvas)
    d.text((pad, 16), title, fill=(255, 255, 255), font=ImageFont.load_default(30))
    d.text((pad, 54), subtitle, fill=(190, 200, 230), font=ImageFont.load_default(18))
    x = pad
    for image, (_, label) in zip(images, tiles):
        canvas.paste(image, (x, banner))
        d.text((x, banner + h + 14), label, fill=(230, 230, 230), font=ImageFont.load_default(18))
        x += image.width + pad
    canvas.save(path, quality=88)


def build() -> dict[str, Any]:
    """Relative path → JSON content of every workflow file."""
    files: dict[str, Any] = {}
    for name, (make, note) in WORKFLOWS.items():
        graph = with_optional_defaults(make())
        files[f"api/{name}.json"] = graph
        files[f"{name}.json"] = to_ui(graph, note)
    return files


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only check that the files are up to date")
    args = ap.parse_args(argv)
    stale = []
    files = build()
    for rel, content in files.items():
        path = HERE / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != dumps(content):
            stale.append(rel)
            if not args.check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(dumps(content), encoding="utf-8")
    if not args.check:
        for name in WORKFLOWS:
            thumbnail(HERE / f"{name}.jpg", *thumbnail_content(name))
    wanted = {HERE / rel for rel in files} | {HERE / f"{name}.jpg" for name in WORKFLOWS}
    for old in [*HERE.glob("*.json"), *HERE.glob("api/*.json"), *HERE.glob("*.jpg")]:
        if old not in wanted:  # a renamed or removed workflow
            stale.append(old.relative_to(HERE).as_posix())
            if not args.check:
                old.unlink()
    print(("out of date: " if args.check else "wrote: ") + (", ".join(stale) or "nothing"))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
