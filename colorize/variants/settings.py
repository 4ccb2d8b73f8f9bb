"""The foreground/background separation controls of v1.5 and v2, named as in the official app (§2.6, §2.9)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from colorize.preprocess import InputError
from colorize.switch import DEFAULT_REFERENCE_THRESHOLD, DEFAULT_SKETCH_THRESHOLD, EnhanceMode
from colorize.v2 import V2Settings


@dataclass(frozen=True)
class EnhanceSettings:
    """"BG enhance", "FG enhance", "Style enhance" and their sliders (defaults = the app's; all off).

    background_enhance / foreground_enhance need the sketch foreground mask (computed from the line art
    when not given); background enhance without a separate background image also needs the reference
    foreground mask. style_enhance is v2 only (no mask needed). fg_scale / bg_scale: "Foreground/Background
    strength"; merge_scale: "Merging scale"; background_factor: v2 "Background factor"; sketch_threshold /
    reference_threshold: the sketch- and reference-mask thresholds; remove_background_foreground: whiten the
    foreground of a separate background image (needs its mask); lora_scale: multiplier of the fg/bg LoRA
    deltas (1 = as trained, 0 = LoRA off).
    """

    background_enhance: bool = False
    foreground_enhance: bool = False
    style_enhance: bool = False
    fg_scale: float = 1.0
    bg_scale: float = 1.0
    merge_scale: float = 0.0
    background_factor: float = 1.0
    sketch_threshold: float = DEFAULT_SKETCH_THRESHOLD
    reference_threshold: float = DEFAULT_REFERENCE_THRESHOLD
    remove_background_foreground: bool = False
    lora_scale: float = 1.0

    @property
    def masked(self) -> bool:
        """Split cross-attention with the sketch mask (foreground and/or background enhance)."""
        return self.background_enhance or self.foreground_enhance

    @property
    def active(self) -> bool:
        return self.masked or self.style_enhance

    @property
    def switch_mode(self) -> EnhanceMode | None:
        """The v1.5 enhance mode (``None``: neither, i.e. the plain v1 computation)."""
        if self.background_enhance and self.foreground_enhance:
            return "both"
        return "background" if self.background_enhance else "foreground" if self.foreground_enhance else None

    def validate(self, version: str) -> None:
        """Clear errors for settings the loaded version cannot use."""
        numbers = {"fg_scale": self.fg_scale, "bg_scale": self.bg_scale, "merge_scale": self.merge_scale,
                   "background_factor": self.background_factor, "sketch_threshold": self.sketch_threshold,
                   "reference_threshold": self.reference_threshold, "lora_scale": self.lora_scale}
        for name, value in numbers.items():
            if not math.isfinite(float(value)):
                raise InputError(f"{name} must be a finite number, got {value!r}")
        if version == "mult" and (self.active or self.remove_background_foreground):
            raise InputError("v1 ('mult') checkpoints have no foreground/background separation: load "
                             "switch-eps (BG/FG enhance) or v2-full (BG/FG/style enhance)")
        if version == "switch":
            if self.style_enhance:
                raise InputError("style enhance needs a v2 checkpoint (v2-full); v1.5 has BG and FG enhance")
            if self.background_factor != 1.0:
                raise InputError("the background factor is a v2 control; leave it at 1 for v1.5")

    def v2_settings(self) -> V2Settings:
        """The same controls as :class:`colorize.v2.V2Settings` (``lora_scale`` is applied separately)."""
        return V2Settings(
            background_enhance=self.background_enhance, style_enhance=self.style_enhance,
            foreground_enhance=self.foreground_enhance, background_factor=self.background_factor,
            merge_scale=self.merge_scale, fg_scale=self.fg_scale, bg_scale=self.bg_scale,
            sketch_threshold=self.sketch_threshold, reference_threshold=self.reference_threshold,
            remove_background_foreground=self.remove_background_foreground,
        )


__all__ = ["EnhanceSettings"]
