"""The foreground/background separation controls of v1.5 and v2, named as in the official app (§2.6, §2.9)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from colorize.errors import InputError
from colorize.switch import EnhanceMode
from colorize.v2 import V2Settings


@dataclass(frozen=True)
class EnhanceSettings(V2Settings):
    """"BG enhance", "FG enhance", "Style enhance" and their sliders (defaults = the app's; all off).

    The controls of :class:`colorize.v2.V2Settings` (which documents each field) plus ``lora_scale``, the
    multiplier of the fg/bg LoRA deltas (1 = as trained, 0 = LoRA off); valid for v1.5 and v2.
    background_enhance / foreground_enhance need the sketch foreground mask (computed from the line art
    when not given); background enhance without a separate background image also needs the reference
    foreground mask. style_enhance is v2 only (no mask needed).
    """

    lora_scale: float = 1.0

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
        """These settings as the v2 conditioning takes them (``lora_scale`` is applied separately)."""
        return self


__all__ = ["EnhanceSettings"]
