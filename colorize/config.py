"""Model configurations as data (open_clip style): the shared SD2.1 sub-module configs, full-size and tiny presets.

Every number here is either the released SD2.1-based ColorizeDiffusion configuration (thesis ch. 5; official
``configs/inference/*.yaml`` at commit ``c9bd9fb``) or a tiny variant that keeps the same topology for tests and
fixtures. What only one model family has is configured in the family's folder (``colorize/families/``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

#: The name of a model family in the registry (``colorize.families.FAMILIES``): ``mult``, ``switch``, ``v2``.
Version = str
Parameterization = Literal["eps", "v"]


@dataclass(frozen=True)
class UNetConfig:
    """The denoising U-Net (``DualCondUNet``): SD2.1 with the defaults, SDXL with the fields after ``context_dim``.

    ``transformer_depth``: transformer blocks per SpatialTransformer, one int for every level (SD2.1) or one per
    level (SDXL ``(1, 2, 10)``; levels without attention ignore theirs). ``transformer_depth_middle``: the middle
    block's depth (``None`` = the last level's). ``use_linear_in_transformer``: ``proj_in/proj_out`` are Linear
    layers (SDXL) instead of 1×1 convolutions. ``adm_in_channels``: width of the "sequential" class/adm input
    ``y`` (``label_emb`` = Linear, SiLU, Linear, added to the time embedding; ``None`` = no ``label_emb``).
    ``hint_blocks``: the input blocks after which the sketch hints are added (``None`` = after block 0, after
    every Downsample and after the last input block: 0, 3, 6, 9, 11 for SD2.1, 0, 3, 6, 8 for SDXL).
    """

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int | tuple[int, ...] = 1
    context_dim: int = 1024
    transformer_depth_middle: int | None = None
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None
    hint_blocks: tuple[int, ...] | None = None

    def level_depth(self, level: int) -> int:
        """Transformer blocks per SpatialTransformer at ``level`` (``-1``: the middle block)."""
        if level == -1 and self.transformer_depth_middle is not None:
            return self.transformer_depth_middle
        depth = self.transformer_depth
        return depth if isinstance(depth, int) else depth[level]


@dataclass(frozen=True)
class SketchEncoderConfig:
    """Sketch encoder (``MultiEncoder``): five hints added after input blocks 0, 3, 6, 9, 11."""

    in_ch: int = 3
    model_channels: int = 320
    ch_mults: tuple[int, ...] = (1, 2, 4, 4)


@dataclass(frozen=True)
class VAEConfig:
    """kl-f8 autoencoder (SD ``AutoencoderKL``)."""

    embed_dim: int = 4
    z_channels: int = 4
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    scale_factor: float = 0.18215

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class ClipConfig:
    """OpenCLIP reference/text encoder, given as an open_clip model config (name + dict)."""

    name: str = "ViT-H-14"
    embed_dim: int = 1024
    vision: dict[str, Any] = field(
        default_factory=lambda: {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14}
    )
    text: dict[str, Any] = field(
        default_factory=lambda: {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}
    )

    @property
    def tokens(self) -> int:
        """Patch tokens of the vision tower (256 for ViT-H/14 at 224²): the reference context length."""
        return (int(self.vision.get("image_size", 224)) // int(self.vision.get("patch_size", 14))) ** 2

    def open_clip_config(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "vision_cfg": dict(self.vision), "text_cfg": dict(self.text)}


@dataclass(frozen=True)
class ScheduleConfig:
    """Scaled-linear DDPM schedule shared by all versions."""

    linear_start: float = 0.00085
    linear_end: float = 0.012
    timesteps: int = 1000


@dataclass(frozen=True)
class ColorizerConfig:
    """A whole colorizer: its family (``version``: the registry name, as the official file prefixes),
    parameterisation and sub-module sizes.

    ``extras`` holds family-specific settings that tensor shapes cannot show, recorded by our own exports (absent
    = the released value): ``transformer_dim_head`` (v1.5 recovery-transformer attention head width, 64) and
    ``warp_dim_head`` (v2 warp-module head width, 64). Everything else about a family's modules is read from
    shapes.
    """

    version: Version = "mult"
    parameterization: Parameterization = "eps"
    unet: UNetConfig = UNetConfig()
    sketch: SketchEncoderConfig = SketchEncoderConfig()
    vae: VAEConfig = VAEConfig()
    clip: ClipConfig = ClipConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def tiny(self) -> bool:
        return self.unet.model_channels < 320

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ColorizerConfig":
        """Inverse of :meth:`to_dict` (lists become tuples); unknown keys are an error."""

        def sub(klass: type, v: dict[str, Any]) -> Any:
            return klass(**{k: tuple(x) if isinstance(x, list) else x for k, x in v.items()})

        return cls(
            version=d.get("version", "mult"),
            parameterization=d.get("parameterization", "eps"),
            unet=sub(UNetConfig, d["unet"]),
            sketch=sub(SketchEncoderConfig, d["sketch"]),
            vae=sub(VAEConfig, d["vae"]),
            clip=ClipConfig(**d["clip"]) if "clip" in d else ClipConfig(),
            schedule=sub(ScheduleConfig, d["schedule"]) if "schedule" in d else ScheduleConfig(),
            extras=dict(d.get("extras") or {}),
        )


FULL_MULT = ColorizerConfig()

TINY_CLIP = ClipConfig(
    name="colorize-tiny-clip",
    embed_dim=64,
    vision={"image_size": 224, "layers": 2, "width": 64, "head_width": 16, "patch_size": 14},
    text={"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 3},
)

TINY_MULT = ColorizerConfig(
    unet=UNetConfig(model_channels=32, channel_mult=(1, 1, 1, 2), num_head_channels=16, context_dim=64),
    sketch=SketchEncoderConfig(model_channels=32, ch_mults=(1, 1, 1, 2)),
    vae=VAEConfig(ch=32, ch_mult=(1, 1, 1, 1), num_res_blocks=1),
    clip=TINY_CLIP,
)

PRESETS: dict[str, ColorizerConfig] = {"full": FULL_MULT, "tiny": TINY_MULT}

__all__ = [
    "ClipConfig",
    "ColorizerConfig",
    "FULL_MULT",
    "PRESETS",
    "ScheduleConfig",
    "SketchEncoderConfig",
    "TINY_CLIP",
    "TINY_MULT",
    "UNetConfig",
    "VAEConfig",
    "replace",
]
