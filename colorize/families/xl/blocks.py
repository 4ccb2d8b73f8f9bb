"""The XL U-Net's transformer blocks as the official wrappers group them, and the per-level reference strengths.

Official facts (tellurion-kanata/ColorizeDiffusionXL at commit ``ec78784``): ``retrieve_attn_modules``
(``refnet/models/colorizerXL.py:42-65``, ``refnet/models/basemodel.py:188-212``) hard-codes the 70
BasicTransformerBlocks of the full-size U-Net (depth first through input, middle and output blocks): "high" =
0–3 and 64–69 (the level at downsample factor 2, mask scale factor 0.5), "low" = 4–23 and 34–63 (factor 4),
"bottom" = 24–33 (the middle block), "encoder" = 0–23, "decoder" = 34–69; low and bottom use mask scale 0.25.
The reference strength of a block multiplies its cross-attention result before ``to_out``
(``refnet/modules/attention.py:147``).

Here the groups are derived from the U-Net config (:func:`block_groups`), so tiny configs get theirs; at full
size (and for every config with the official topology) they equal the hard-coded lists. Reference-strength
rules (each returns one value per transformer block, for ``AttentionPatches.reference_scales``):

* :func:`sdxl_reference_scales`: the sdxl override (``colorizerXL.py:67-69``) gives **every** block
  ``scales["encoder"]`` (the app passes encoder slider × strength); the "middle" and "low" sliders do nothing.
  ``rule="levels"`` is a per-level rule that uses all three sliders (not official): high blocks ← encoder,
  bottom ← middle, low ← low.
* :func:`xlv2_reference_scales`: the base rule the xlv2 wrapper keeps (``basemodel.py:281-294``): encoder blocks
  ← encoder, then low blocks ← low (overwriting encoder blocks of the low level); "middle" is skipped, so the
  bottom and decoder-high blocks keep their previous values (official: 1 on a fresh model, stale afterwards;
  here ``previous``, default all 1).
* With ``level_control=False`` the official wrappers take one value per block as given (:func:`per_block_scales`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from colorize.config import UNetConfig

Section = Literal["input", "middle", "output"]
SdxlRule = Literal["official", "levels"]


@dataclass(frozen=True)
class TransformerBlockInfo:
    """One transformer block of the U-Net: its index in the per-block order, the U-Net section, the level
    (``-1`` for the middle block) and the downsample factor of its token grid relative to the latent."""

    index: int
    section: Section
    level: int
    ds: int

    @property
    def mask_scale_factor(self) -> float:
        """Token-grid size relative to the latent (the official blocks' ``scale_factor``)."""
        return 1.0 / self.ds


@dataclass(frozen=True)
class BlockGroups:
    """The official named groups of transformer-block indices, and each block's mask scale factor."""

    blocks: tuple[TransformerBlockInfo, ...]
    high: tuple[int, ...]
    low: tuple[int, ...]
    bottom: tuple[int, ...]
    encoder: tuple[int, ...]
    decoder: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.blocks)

    @property
    def scale_factors(self) -> tuple[float, ...]:
        return tuple(b.mask_scale_factor for b in self.blocks)

    def as_dict(self) -> dict[str, list[int]]:
        return {name: list(getattr(self, name)) for name in ("high", "low", "bottom", "encoder", "decoder")}


def transformer_blocks(cfg: UNetConfig) -> tuple[TransformerBlockInfo, ...]:
    """Every transformer block of a ``DualCondUNet`` built from ``cfg``, in the per-block order."""
    out: list[TransformerBlockInfo] = []

    def add(section: Section, level: int, ds: int, depth: int) -> None:
        out.extend(TransformerBlockInfo(len(out), section, level, ds) for _ in range(depth))

    levels = len(cfg.channel_mult)
    for level in range(levels):
        if 2**level in cfg.attention_resolutions:
            for _ in range(cfg.num_res_blocks):
                add("input", level, 2**level, cfg.level_depth(level))
    add("middle", -1, 2 ** (levels - 1), cfg.level_depth(-1))
    for level in reversed(range(levels)):
        if 2**level in cfg.attention_resolutions:
            for _ in range(cfg.num_res_blocks + 1):
                add("output", level, 2**level, cfg.level_depth(level))
    return tuple(out)


def block_groups(cfg: UNetConfig) -> BlockGroups:
    """The groups of the module docstring derived from ``cfg``: "high" = the blocks of the finest attention
    level, "low" = those of the other levels, "bottom" = the middle block's, "encoder"/"decoder" = the input /
    output blocks'."""
    blocks = transformer_blocks(cfg)
    levels = [b.level for b in blocks if b.section != "middle"]
    finest = min(levels) if levels else None
    pick = lambda keep: tuple(b.index for b in blocks if keep(b))  # noqa: E731
    return BlockGroups(
        blocks=blocks,
        high=pick(lambda b: b.section != "middle" and b.level == finest),
        low=pick(lambda b: b.section != "middle" and b.level != finest),
        bottom=pick(lambda b: b.section == "middle"),
        encoder=pick(lambda b: b.section == "input"),
        decoder=pick(lambda b: b.section == "output"),
    )


def per_block_scales(groups: BlockGroups, values: Sequence[float]) -> list[float]:
    """One strength per block, as given (the official ``level_control=False``)."""
    if len(values) != groups.count:
        raise ValueError(f"expected {groups.count} per-block reference strengths, got {len(values)}")
    return [float(v) for v in values]


def _slider(scales: Mapping[str, float], name: str) -> float:
    if name not in scales:
        raise ValueError(f"reference-strength dict needs {name!r} (got {sorted(scales)})")
    return float(scales[name])


def sdxl_reference_scales(groups: BlockGroups, scales: Mapping[str, float] | Sequence[float], *,
                          level_control: bool = True, strength: float = 1.0,
                          rule: SdxlRule = "official") -> list[float]:
    """The sdxl wrapper's strengths: ``rule="official"`` gives every block ``scales["encoder"] × strength``;
    ``rule="levels"`` high ← encoder, bottom ← middle, low ← low (each × strength). With ``level_control=False``
    ``scales`` is one value per block (× strength)."""
    if not level_control:
        return [v * strength for v in per_block_scales(groups, scales)]  # type: ignore[arg-type]
    assert isinstance(scales, Mapping)
    if rule == "official":
        return [_slider(scales, "encoder") * strength] * groups.count
    if rule != "levels":
        raise ValueError(f"unknown sdxl reference-strength rule {rule!r} (official, levels)")
    out = [1.0] * groups.count
    for name, slider in (("high", "encoder"), ("bottom", "middle"), ("low", "low")):
        value = _slider(scales, slider) * strength
        for i in getattr(groups, name):
            out[i] = value
    return out


def xlv2_reference_scales(groups: BlockGroups, scales: Mapping[str, float] | Sequence[float], *,
                          level_control: bool = True, strength: float = 1.0,
                          previous: Sequence[float] | None = None) -> list[float]:
    """The xlv2 (base) rule: encoder blocks ← ``scales["encoder"]``, then low blocks ← ``scales["low"]`` (each ×
    strength); the other blocks keep ``previous`` (default all 1). ``level_control=False``: one value per block."""
    if not level_control:
        return [v * strength for v in per_block_scales(groups, scales)]  # type: ignore[arg-type]
    assert isinstance(scales, Mapping)
    out = [1.0] * groups.count if previous is None else per_block_scales(groups, previous)
    for name, slider in (("encoder", "encoder"), ("low", "low")):
        value = _slider(scales, slider) * strength
        for i in getattr(groups, name):
            out[i] = value
    return out


__all__ = [
    "BlockGroups",
    "TransformerBlockInfo",
    "block_groups",
    "per_block_scales",
    "sdxl_reference_scales",
    "transformer_blocks",
    "xlv2_reference_scales",
]
