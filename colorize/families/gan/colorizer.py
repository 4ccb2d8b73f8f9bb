"""The chapter-4 GAN as a colorizer: sketch + reference → image in one forward pass, and tag edits (thesis §4).

::

    from colorize.families.gan.colorizer import GANColorizer

    gan = GANColorizer.from_file("my-gan.safetensors")
    code = gan.encode_reference(reference)                 # φ(r) and the reference's tag probabilities
    print(gan.predicted_tags(code)[:10])                   # what can be edited
    image = gan.colorize(sketch, gan.edit(code, {"red_hair": 2.0}))

Images are ``(B, 3, H, W)`` in [0, 1], as everywhere in the library. The sketch goes through the same
preparation as the diffusion models' (``colorize.preprocess.prepare_sketch``: lines +1 in [-1, 1], aspect kept,
centre-padded); the reference is resized to the square the tag encoder was trained on
(:attr:`GANConfig.reference_size`).
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from colorize.errors import InputError
from colorize.families.gan.checkpoint import GANModules, load_gan_checkpoint
from colorize.families.gan.manipulation import apply_tag_edits
from colorize.preprocess import check_image, prepare_sketch, target_size

PathLike = str | os.PathLike[str]
#: output area (a square of this side) when no size is given; sides are rounded to multiples of 64
GAN_BASE_RESOLUTION = 512


@dataclass(frozen=True)
class ReferenceCode:
    """A reference as the generator reads it: its feature map φ(r_a) ``(B, C, h, w)``, its tag probabilities
    cls_a ``(B, num_tags)`` and the tag edits to apply (tag index → value). Edits accumulate
    (:meth:`GANColorizer.edit`); the edited features δ_b (Eq. 4.15) are computed from φ(r_a) and cls_a when
    the code is used, so chained edits equal one edit with all of them."""

    features: Tensor
    probabilities: Tensor
    edits: Mapping[int, float] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return int(self.features.shape[0])


class GANColorizer:
    """A loaded GAN file (tag encoder, generator, optional tag mapper) on one device."""

    def __init__(self, modules: GANModules, device: str | torch.device = "cpu") -> None:
        self.modules = modules
        self.device = torch.device(device)
        for module in (modules.tag_encoder, modules.generator, modules.tag_mapper):
            if module is not None:
                module.to(self.device)

    @classmethod
    def from_file(cls, path: PathLike, device: str | torch.device = "auto") -> GANColorizer:
        """Load a GAN file written by ``training/`` (stage ``gan_stage1`` or later)."""
        from colorize.device import resolve_device

        dev = resolve_device(device)
        modules = load_gan_checkpoint(path)
        if modules.generator is None:
            raise InputError(f"{os.path.basename(os.fspath(path))} holds only the tag encoder (stage gan_tagger): "
                             "train the generator with `python -m training.train --config "
                             "training/configs/gan_stage1.json` and load its export")
        return cls(modules, dev)

    # ------------------------------------------------------------------ tags
    @property
    def tags(self) -> tuple[str, ...]:
        """The tag names in head order."""
        return self.modules.config.tags

    @property
    def can_edit(self) -> bool:
        """Whether the file has the stage-2 tag mapper (φ, ω of §4.3)."""
        return self.modules.tag_mapper is not None

    def tag_index(self, tag: str | int) -> int:
        """A tag's head index from its name (or an index), with a named error listing close names."""
        if isinstance(tag, int) and not isinstance(tag, bool):
            if not 0 <= tag < len(self.tags):
                raise InputError(f"tag index {tag} is not in [0, {len(self.tags)})")
            return tag
        name = str(tag).strip()
        try:
            return self.tags.index(name)
        except ValueError:
            pass
        spaced = name.replace(" ", "_")
        if spaced in self.tags:
            return self.tags.index(spaced)
        close = [t for t in self.tags if name.lower() in t.lower()][:8]
        hint = f"; close: {', '.join(close)}" if close else f"; e.g. {', '.join(self.tags[:5])}"
        raise InputError(f"unknown tag {name!r}: this model knows {len(self.tags)} tags{hint}")

    # ------------------------------------------------------------------ reference
    @torch.no_grad()
    def encode_reference(self, reference01: Tensor) -> ReferenceCode:
        """φ(r) and the tag probabilities of reference image(s) ``(B, 3, H, W)`` in [0, 1]."""
        reference01 = check_image(reference01, "reference")
        side = self.modules.config.generator.reference_size
        ref = F.interpolate(reference01.to(self.device, torch.float32), size=(side, side), mode="bicubic",
                            align_corners=False, antialias=True).clamp(0, 1)
        encoder = self.modules.tag_encoder
        features = encoder.features(ref)
        return ReferenceCode(features, torch.sigmoid(encoder.logits_from_features(features)))

    def predicted_tags(self, code: ReferenceCode, top_k: int = 20, min_probability: float = 0.0
                       ) -> list[tuple[str, float]]:
        """The reference's most probable tags (first sample), ``(name, probability)`` highest first."""
        probs = code.probabilities[0].float().cpu()
        order = torch.argsort(probs, descending=True)[: max(int(top_k), 0)]
        return [(self.tags[i], float(probs[i])) for i in order.tolist() if float(probs[i]) >= min_probability]

    def edit(self, code: ReferenceCode, edits: Mapping[str | int, float]) -> ReferenceCode:
        """The code with tags set to new values (thesis §4.3.3; values beyond [0, 1] extrapolate). Needs a file
        from stage ``gan_stage2``; later edits of the same tag replace earlier ones."""
        if not edits:
            return code
        return ReferenceCode(code.features, code.probabilities, {**code.edits, **self.check_edits(edits)})

    def check_edits(self, edits: Mapping[str | int, float]) -> dict[int, float]:
        """Tag edits by head index, checked (known tags, finite values, a file that can edit) before any work."""
        if edits and not self.can_edit:
            raise InputError("this GAN file has no tag mapper (stage gan_stage2): train it with `python -m "
                             "training.train --config training/configs/gan_stage2.json`, or remove the tag edits")
        out: dict[int, float] = {}
        for tag, value in edits.items():
            value = float(value)
            if not math.isfinite(value):
                raise InputError(f"tag {tag!r}: value {value} is not a finite number")
            out[self.tag_index(tag)] = value
        return out

    @torch.no_grad()
    def reference_features(self, code: ReferenceCode) -> Tensor:
        """What the generator reads: φ(r_a), or δ_b (Eq. 4.15) when the code carries edits."""
        if not code.edits:
            return code.features
        mapper = self.modules.tag_mapper
        if mapper is None:
            raise InputError("tag edits need a GAN file with the tag mapper (stage gan_stage2)")
        target = apply_tag_edits(code.probabilities, dict(code.edits))
        return mapper(code.features, code.probabilities, target)

    # ------------------------------------------------------------------ colorize
    def output_size(self, sketch_hw: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
        """``(height, width)``: the sketch's aspect at :data:`GAN_BASE_RESOLUTION`² (or the given sides), rounded
        to multiples of 64 (the generator needs 32)."""
        return target_size(sketch_hw, width, height, GAN_BASE_RESOLUTION)

    @torch.no_grad()
    def colorize(self, sketch01: Tensor, reference: Tensor | ReferenceCode, width: int | None = None,
                 height: int | None = None, polarity: str = "auto",
                 tags: Mapping[str | int, float] | None = None) -> Tensor:
        """Colorize sketch(es) ``(B, 3, H, W)`` in [0, 1] from a reference image or a :class:`ReferenceCode`;
        ``tags`` are edits applied on top. Returns ``(B, 3, h, w)`` in [0, 1] (CPU, float32)."""
        sketch01 = check_image(sketch01, "sketch")
        code = reference if isinstance(reference, ReferenceCode) else self.encode_reference(reference)
        code = self.edit(code, tags or {})
        if code.batch not in (1, sketch01.shape[0]):
            raise InputError(f"{code.batch} references for {sketch01.shape[0]} sketches: give one reference, or "
                             "one per sketch")
        size = self.output_size(tuple(sketch01.shape[-2:]), width, height)
        sketch = prepare_sketch(sketch01.float(), size, polarity).to(self.device)  # type: ignore[arg-type]
        features = self.reference_features(code)
        if features.shape[0] != sketch.shape[0]:
            features = features.expand(sketch.shape[0], -1, -1, -1)
        image = self.modules.generator(sketch, features)  # type: ignore[misc]
        return ((image.float() + 1) / 2).clamp(0, 1).cpu()

    def describe(self) -> dict[str, Any]:
        """One line of facts for logs and nodes: stage, tags, sizes."""
        cfg = self.modules.config
        return {"stage": cfg.stage, "tags": len(cfg.tags), "reference_size": cfg.generator.reference_size,
                "can_edit": self.can_edit}


__all__ = ["GAN_BASE_RESOLUTION", "GANColorizer", "ReferenceCode"]
