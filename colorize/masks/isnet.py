"""ISNetDIS, the anime segmentation network behind the apps' "ISNet" reference mask and "ISNet-sketch" sketch mask.

Written from the published description of the official ``preprocessor/anime_segment.py`` of
tellurion-kanata/colorizeDiffusion at commit c9bd9fb (which names SkyTNT's anime-segmentation as the source of
the network and of its released ``isnetis`` weights). Module and attribute names follow that file, so the
state-dict keys of :class:`ISNetDIS` with the default :class:`ISNetConfig` are exactly the released ones
(798 entries, 44,046,790 parameters):

* ``conv_in``: a 3x3 conv with stride 2 (no BatchNorm, no ReLU): everything after it runs at half size.
* encoder ``stage1``..``stage6`` = RSU7, RSU6, RSU5, RSU4, RSU4F, RSU4F with 2x2 ceil-mode max pools between
  them; ``pool_in`` exists in the official module (and is computed there) but its result is never used.
* decoder ``stage5d``..``stage1d`` = RSU4F, RSU4, RSU5, RSU6, RSU7, each on ``cat([upsampled deeper, skip])``.
* ``side1``..``side6``: 3x3 convs to ``out_ch``; only ``side1`` is used. There is no ``outconv``.
* the output is ``sigmoid(upsample(side1(stage1d), input size))``; every upsample is bilinear,
  ``align_corners=False``, to the target's exact H x W.

:func:`load_isnet` reads a weights file (``isnetis.safetensors`` or ``sketch-segment.safetensors``), strips a
leading ``module.`` prefix as the apps do, fills absent ``num_batches_tracked`` buffers and assigns the
weights strictly on a meta-device build. Pre- and post-processing (the apps' ``proceed``) live in
:mod:`colorize.masks.anime_segment`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colorize.checkpoint import load_state_dict_file, materialize, shape_of
from colorize.errors import CheckpointError

#: Encoder stages (name, RSU depth; 0 = RSU4F) and decoder stages, in the official registration order.
ENCODER_STAGES: tuple[tuple[str, int], ...] = (
    ("stage1", 7), ("stage2", 6), ("stage3", 5), ("stage4", 4), ("stage5", 0), ("stage6", 0))
DECODER_STAGES: tuple[tuple[str, int], ...] = (
    ("stage5d", 0), ("stage4d", 4), ("stage3d", 5), ("stage2d", 6), ("stage1d", 7))
#: Keys that identify an ISNetDIS state dict (after prefix stripping).
_SIGNATURE_KEYS = (
    "conv_in.weight",
    "stage1.rebnconvin.conv_s1.weight",
    "stage6.rebnconv4.conv_s1.weight",
    "stage1d.rebnconv1d.conv_s1.weight",
    "side1.weight",
)


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def upsample_like(src: Tensor, tar: Tensor) -> Tensor:
    """Bilinear resize (``align_corners=False``) of ``src`` to ``tar``'s H x W (the official ``_upsample_like``)."""
    return F.interpolate(src, size=tar.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3x3 conv with padding = dilation = ``dirate`` (and an optional stride), BatchNorm, ReLU."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, dirate: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate, stride=stride)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class myrebnconv(nn.Module):  # noqa: N801 - the official name (its keys are conv.* and bn.*)
    """Generic conv (kernel, stride, padding, dilation, groups), BatchNorm, ReLU. ISNetDIS does not use it."""

    def __init__(self, in_ch: int = 3, out_ch: int = 1, kernel_size: int = 3, stride: int = 1, padding: int = 1,
                 dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride=stride, padding=padding, dilation=dilation,
                              groups=groups)
        self.bn = nn.BatchNorm2d(out_ch)
        self.rl = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.rl(self.bn(self.conv(x)))


def _pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 2, stride=2, ceil_mode=True)


class RSU(nn.Module):
    """A residual U-block of depth ``L`` (4..7; RSU7 = ``RSU(7, ...)``).

    ``rebnconvin`` (in -> out), then ``rebnconv1``..``rebnconv{L-1}`` (mid) with 2x2 ceil-mode max pools between
    them, a dilation-2 ``rebnconv{L}`` at the bottom without a pool, a decoder ``rebnconv{L-1}d``..``rebnconv2d``
    (2*mid -> mid) on ``cat([deeper upsampled to the skip, skip])`` and ``rebnconv1d`` (2*mid -> out), whose
    result is added to ``rebnconvin``'s.
    """

    def __init__(self, depth: int, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__()
        if not 3 <= depth <= 8:
            raise ValueError(f"RSU depth must be 3..8, got {depth}")
        self.depth = depth
        self.rebnconvin = REBNCONV(in_ch, out_ch, dirate=1)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        for i in range(2, depth):
            setattr(self, f"rebnconv{i}", REBNCONV(mid_ch, mid_ch, dirate=1))
        setattr(self, f"rebnconv{depth}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for i in range(depth - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(mid_ch * 2, mid_ch, dirate=1))
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: Tensor) -> Tensor:
        hxin = self.rebnconvin(x)
        skips = [self.rebnconv1(hxin)]
        for i in range(2, self.depth):
            skips.append(getattr(self, f"rebnconv{i}")(_pool(skips[-1])))
        hx = getattr(self, f"rebnconv{self.depth}")(skips[-1])
        for i in range(self.depth - 1, 0, -1):
            skip = skips[i - 1]
            if hx.shape[2:] != skip.shape[2:]:
                hx = upsample_like(hx, skip)
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, skip), 1))
        return hx + hxin


class RSU7(RSU):
    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3, img_size: int = 512) -> None:
        super().__init__(7, in_ch, mid_ch, out_ch)  # img_size is accepted and ignored, as in the official block


class RSU6(RSU):
    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__(6, in_ch, mid_ch, out_ch)


class RSU5(RSU):
    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__(5, in_ch, mid_ch, out_ch)


class RSU4(RSU):
    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__(4, in_ch, mid_ch, out_ch)


class RSU4F(nn.Module):
    """The flat residual U-block: no pooling, dilations 1, 2, 4, 8 down and 4, 2, 1 up."""

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3) -> None:
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch, dirate=1)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: Tensor) -> Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        hx1d = self.rebnconv1d(torch.cat((hx2d, hx1), 1))
        return hx1d + hxin


def _rsu(depth: int, in_ch: int, mid_ch: int, out_ch: int) -> nn.Module:
    return RSU4F(in_ch, mid_ch, out_ch) if depth == 0 else RSU(depth, in_ch, mid_ch, out_ch)


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ISNetConfig:
    """Widths of an ISNetDIS; the defaults are the released network (``ISNetDIS(in_ch=3, out_ch=1)``).

    Stage input widths follow from these: stage1 takes ``stem``, each later encoder stage the previous stage's
    output, ``stage5d`` takes ``stage6 + stage5`` outputs and each later decoder stage the previous decoder
    output plus its skip. ``side{k}`` reads ``stage1d`` (k=1), the decoder stage ``stage{k}d`` (k=2..5) or
    ``stage6`` (k=6).
    """

    in_ch: int = 3
    out_ch: int = 1
    stem: int = 64
    encoder_mid: tuple[int, ...] = (32, 32, 64, 128, 256, 256)
    encoder_out: tuple[int, ...] = (64, 128, 256, 512, 512, 512)
    decoder_mid: tuple[int, ...] = (256, 128, 64, 32, 16)  # stage5d .. stage1d
    decoder_out: tuple[int, ...] = (512, 256, 128, 64, 64)

    def __post_init__(self) -> None:
        if len(self.encoder_mid) != 6 or len(self.encoder_out) != 6:
            raise ValueError("ISNetConfig: encoder_mid and encoder_out need 6 widths (stage1..stage6)")
        if len(self.decoder_mid) != 5 or len(self.decoder_out) != 5:
            raise ValueError("ISNetConfig: decoder_mid and decoder_out need 5 widths (stage5d..stage1d)")
        widths = (self.in_ch, self.out_ch, self.stem, *self.encoder_mid, *self.encoder_out, *self.decoder_mid,
                  *self.decoder_out)
        if any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"ISNetConfig: every width must be a positive integer, got {widths}")

    @classmethod
    def tiny(cls) -> ISNetConfig:
        """Every width of the released network divided by 8 (3 input channels, 1 output): for tests."""
        return TINY_ISNET

    def encoder(self) -> list[tuple[str, int, int, int, int]]:
        """``(name, depth, in, mid, out)`` of each encoder stage (depth 0 = RSU4F)."""
        ins = (self.stem, *self.encoder_out[:-1])
        return [(n, d, i, m, o) for (n, d), i, m, o in zip(ENCODER_STAGES, ins, self.encoder_mid, self.encoder_out)]

    def decoder(self) -> list[tuple[str, int, int, int, int]]:
        """``(name, depth, in, mid, out)`` of each decoder stage, deepest first."""
        deeper = (self.encoder_out[5], *self.decoder_out[:-1])
        skips = self.encoder_out[4::-1]
        return [(n, d, a + s, m, o) for (n, d), a, s, m, o in
                zip(DECODER_STAGES, deeper, skips, self.decoder_mid, self.decoder_out)]

    def side_inputs(self) -> tuple[int, ...]:
        """Input widths of side1..side6."""
        d = self.decoder_out  # stage5d, stage4d, stage3d, stage2d, stage1d
        return (d[4], d[3], d[2], d[1], d[0], self.encoder_out[5])


#: The test-sized network: every width of the released one divided by 8.
TINY_ISNET = ISNetConfig(
    stem=8, encoder_mid=(4, 4, 8, 16, 32, 32), encoder_out=(8, 16, 32, 64, 64, 64),
    decoder_mid=(32, 16, 8, 4, 2), decoder_out=(64, 32, 16, 8, 8))


class ISNetDIS(nn.Module):
    """The official ISNetDIS; :meth:`forward` returns the mask ``(B, out_ch, H, W)`` in (0, 1).

    :meth:`forward_features` returns every stage's output as well (no state is kept on the module).
    """

    def __init__(self, config: ISNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or ISNetConfig()
        self.config = cfg
        self.conv_in = nn.Conv2d(cfg.in_ch, cfg.stem, 3, stride=2, padding=1)
        self.pool_in = nn.MaxPool2d(2, stride=2, ceil_mode=True)  # in the official module; its result is unused
        for name, depth, i, m, o in cfg.encoder():
            setattr(self, name, _rsu(depth, i, m, o))
            if name != "stage6":
                setattr(self, f"pool{name[-1]}{int(name[-1]) + 1}", nn.MaxPool2d(2, stride=2, ceil_mode=True))
        for name, depth, i, m, o in cfg.decoder():
            setattr(self, name, _rsu(depth, i, m, o))
        for k, width in enumerate(cfg.side_inputs(), 1):
            setattr(self, f"side{k}", nn.Conv2d(width, cfg.out_ch, 3, padding=1))

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``conv_in``, ``stage1``..``stage6``, ``stage5d``..``stage1d``, ``side1`` (raw logits at half size) and
        ``mask`` (the forward's result) for ``x`` ``(B, in_ch, H, W)``."""
        out: dict[str, Tensor] = {}
        hx = out["conv_in"] = self.conv_in(x)
        for k, (name, _) in enumerate(ENCODER_STAGES):
            if k:
                hx = _pool(hx)
            hx = out[name] = getattr(self, name)(hx)
        for (name, _), (skip, _) in zip(DECODER_STAGES, ENCODER_STAGES[4::-1]):
            hx = out[name] = getattr(self, name)(torch.cat((upsample_like(hx, out[skip]), out[skip]), 1))
        d1 = out["side1"] = self.side1(hx)
        out["mask"] = torch.sigmoid(upsample_like(d1, x))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)["mask"]


# ---------------------------------------------------------------------------------------------
# Layouts, detection, loading
# ---------------------------------------------------------------------------------------------


def isnet_layout(config: ISNetConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``ISNetDIS(config)`` with its shape, in ``state_dict()`` order (built on meta)."""
    with torch.device("meta"):
        model = ISNetDIS(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def expected_keys(config: ISNetConfig | None = None) -> list[str]:
    """The state-dict keys of ``ISNetDIS(config)``, in order."""
    return list(isnet_layout(config))


def strip_isnet_prefix(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys without a leading ``module.`` (as the apps strip it); a training checkpoint whose network sits
    under ``net.`` (SkyTNT's anime-segmentation Lightning files) gives its ``net.*`` entries, unprefixed."""
    sd = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    if "conv_in.weight" not in sd and "net.conv_in.weight" in sd:
        sd = {k[len("net."):]: v for k, v in sd.items() if k.startswith("net.")}
    return sd


def is_isnet_state_dict(keys: Iterable[str]) -> bool:
    """Whether these keys (``module.``/``net.`` prefixes allowed) are an ISNetDIS state dict."""
    names = set(strip_isnet_prefix(dict.fromkeys(keys)))  # type: ignore[arg-type]
    return all(k in names for k in _SIGNATURE_KEYS)


def _width(shapes: Mapping[str, object], key: str, dim: int, what: str) -> int:
    if key not in shapes:
        raise CheckpointError(f"{what} is not an ISNetDIS (anime segmentation) state dict: it has no {key}. "
                              "Use isnetis.safetensors or sketch-segment.safetensors from "
                              "https://huggingface.co/tellurion/line_extractor.")
    shape = shape_of(shapes[key])
    if len(shape) != 4:
        raise CheckpointError(f"{what}: {key} has shape {list(shape)}, expected a 4-D conv weight")
    return int(shape[dim])


def infer_isnet_config(shapes: Mapping[str, object], what: str = "ISNet weights") -> ISNetConfig:
    """The widths of an ISNetDIS from its state dict's shapes (tensors or shapes; prefixes allowed)."""
    s = strip_isnet_prefix(shapes)  # type: ignore[arg-type]

    def conv(key: str, dim: int = 0) -> int:
        return _width(s, f"{key}.weight", dim, what)

    try:
        return ISNetConfig(
            in_ch=conv("conv_in", 1), out_ch=conv("side1"), stem=conv("conv_in"),
            encoder_mid=tuple(conv(f"{n}.rebnconv1.conv_s1") for n, _ in ENCODER_STAGES),
            encoder_out=tuple(conv(f"{n}.rebnconvin.conv_s1") for n, _ in ENCODER_STAGES),
            decoder_mid=tuple(conv(f"{n}.rebnconv1.conv_s1") for n, _ in DECODER_STAGES),
            decoder_out=tuple(conv(f"{n}.rebnconvin.conv_s1") for n, _ in DECODER_STAGES),
        )
    except ValueError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{what}: {e}") from None


def isnet_from_state_dict(state_dict: Mapping[str, Tensor], what: str = "ISNet weights",
                          config: ISNetConfig | None = None) -> ISNetDIS:
    """An eval-mode float32 :class:`ISNetDIS` holding these weights (strict: every key, every shape).

    Prefixes are stripped (:func:`strip_isnet_prefix`), floating tensors become float32 and absent
    ``num_batches_tracked`` buffers are filled with 0. The widths come from the shapes unless ``config`` is given.
    """
    sd = strip_isnet_prefix(state_dict)
    cfg = config or infer_isnet_config(sd, what)
    for key in list(sd):
        if key.endswith(".running_var"):
            sd.setdefault(key[: -len("running_var")] + "num_batches_tracked", torch.zeros((), dtype=torch.long))
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    return materialize(lambda: ISNetDIS(cfg), sd, what).eval()


def load_isnet(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> ISNetDIS:
    """An ISNetDIS weights file (safetensors, or a ``torch.load(weights_only=True)`` file) as an eval-mode
    float32 :class:`ISNetDIS` on ``device``; :class:`CheckpointError` for files that are not one."""
    sd = load_state_dict_file(path)
    if not is_isnet_state_dict(sd):
        sample = ", ".join(list(sd)[:4])
        raise CheckpointError(
            f"{os.fspath(path)} is not an ISNetDIS (anime segmentation) weights file (its first keys: "
            f"{sample or 'none'}). Use isnetis.safetensors (reference masks) or sketch-segment.safetensors "
            "(sketch masks) from https://huggingface.co/tellurion/line_extractor.")
    return isnet_from_state_dict(sd, what=os.path.basename(os.fspath(path))).to(device)


__all__ = [
    "DECODER_STAGES",
    "ENCODER_STAGES",
    "ISNetConfig",
    "ISNetDIS",
    "REBNCONV",
    "RSU",
    "RSU4",
    "RSU4F",
    "RSU5",
    "RSU6",
    "RSU7",
    "TINY_ISNET",
    "expected_keys",
    "infer_isnet_config",
    "is_isnet_state_dict",
    "isnet_from_state_dict",
    "isnet_layout",
    "load_isnet",
    "myrebnconv",
    "strip_isnet_prefix",
    "upsample_like",
]


#: What each released ISNet file is for, by manifest name (the two share one layout; their weights differ).
ROLES = {
    "isnet-anime": "the anime segmenter: foreground masks of colour images (the reference, a background)",
    "isnet-sketch": "the sketch segmenter (ISNet-sketch): foreground masks of line art",
}

