"""Network modules: SD2.1 U-Net (``DualCondUNet``), sketch encoder, attention blocks, reference strength."""
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.unet import DualCondUNet

__all__ = ["DualCondUNet", "SketchEncoder"]
