"""ColorizeDiffusion: reference-based anime line-art colorization, in plain PyTorch (no ComfyUI import anywhere).

The thesis' method (chapter 5): an SD2.1 U-Net reads the reference image's CLIP tokens and the sketch's hints;
the model families v1 (``mult``), v1.5 (``switch``) and v2 load the released checkpoints unchanged
(:mod:`colorize.families`). The public API::

    import colorize

    model = colorize.Colorizer.from_files("mult-eps-ft.safetensors",
                                          "open_clip_model.safetensors")
    sketch = colorize.load_image("sketch.png")        # (1, 3, H, W) in [0, 1]
    reference = colorize.load_image("reference.png")
    image = model.colorize(sketch, reference, colorize.GenerationSettings(steps=20, seed=1))
    colorize.tensor_to_pil(image)[0].save("colorized.png")

    # the chapter-4 GAN (thesis §4; a file trained with training/): one forward pass, tag edits
    # gan = colorize.GANColorizer.from_file("my-gan.safetensors")
    # image = gan.colorize(sketch, reference, tags={"red_hair": 2.0})

    # v1.5 / v2 foreground/background separation:
    # model.colorize(sketch, reference, settings, enhance=colorize.EnhanceSettings(background_enhance=True),
    #                reference_mask=mask)

Names are imported on first use, so ``import colorize`` itself loads neither torch's heavy parts nor open_clip.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "Colorizer": "colorize.pipeline",
    "GANColorizer": "colorize.families.gan.colorizer",
    "GenerationSettings": "colorize.settings",
    "EnhanceSettings": "colorize.settings",
    "ColorizerConfig": "colorize.config",
    "load_checkpoint_modules": "colorize.loader",
    "load_reference_encoder": "colorize.loader",
    "read_checkpoint_info": "colorize.loader",
    "FAMILIES": "colorize.families",
    "get_family": "colorize.families",
    "load_image": "colorize.preprocess",
    "tensor_to_pil": "colorize.preprocess",
    "InputError": "colorize.errors",
    "CheckpointError": "colorize.errors",
    "WeightsMissingError": "colorize.errors",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from colorize.config import ColorizerConfig
    from colorize.errors import CheckpointError, InputError, WeightsMissingError
    from colorize.families import FAMILIES, get_family
    from colorize.families.gan.colorizer import GANColorizer
    from colorize.loader import load_checkpoint_modules, load_reference_encoder, read_checkpoint_info
    from colorize.pipeline import Colorizer
    from colorize.preprocess import load_image, tensor_to_pil
    from colorize.settings import EnhanceSettings, GenerationSettings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'colorize' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = [
    "FAMILIES",
    "CheckpointError",
    "Colorizer",
    "ColorizerConfig",
    "EnhanceSettings",
    "GANColorizer",
    "GenerationSettings",
    "InputError",
    "WeightsMissingError",
    "get_family",
    "load_checkpoint_modules",
    "load_image",
    "load_reference_encoder",
    "read_checkpoint_info",
    "tensor_to_pil",
]
