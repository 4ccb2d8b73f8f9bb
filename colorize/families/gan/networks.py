"""Networks of the thesis' chapter-4 GAN colorization framework (thesis §4.2.1-§4.2.2, Table 4.1, Fig. 4.3-4.7).

Written from the thesis alone (no official code exists). Pure PyTorch: nothing here imports ComfyUI.

* :class:`ReferenceTagEncoder` -- the frozen ResNet-34 reference embedder φ with a C-way multi-label head
  (thesis §4.2.1, Fig. 4.3).
* :class:`ColorizationGenerator` -- the U-Net generator G(x, φ(r)) of Table 4.1: five encoder levels, an
  intermediate conv, the receiving block (spatial cross-attention, Fig. 4.7 left), a pixel-shuffle decoder
  (Fig. 4.6) with one self-attention block and three RBCA blocks (Fig. 4.7 right), conv + tanh.
* :class:`PatchDiscriminator` -- the sketch-conditioned patch discriminator D(x, y) ("outputs patch-wise
  feature maps instead of a single scalar", thesis §4.2.2 following pix2pix [37]).

How Table 4.1's widths fit together (our reading; the table lists no skips and no spatial sizes). With input
H x W, encoder level k (k = 1..5) is ``conv s1 -> conv s2`` and halves the size, so the bottleneck is H/32 x W/32,
the same grid as φ(r) (patch_num = 32, thesis §4.3.1) -- the receiving block attends between two 512-channel
maps of equal size. Each decoder level is ``conv(c_in -> 4 c_out) -> PixelShuffle(2) -> attention`` and doubles
the size. The decoder input widths 512 / 1024 / 1024 / 512 / 256 are only reached when the skip joined *after*
decoder level j (j = 1..4) is the **stride-1 conv output of encoder level 6 - j** (512 @ H/16, 512 @ H/8,
256 @ H/4, 128 @ H/2): the stride-2 outputs would give 768 instead of 1024 before level 3. Level 1's stride-1
output (64 @ H) is not used as a skip (the last level's input is listed as 256 = 128 + 128). The table's input
width "512" for the fourth encoder row contradicts the third row's output 256; we read it as a typo and use 256.

Choices where the thesis is silent (each one a :class:`GANConfig` field):

* normalisation: BatchNorm after every conv except the first and the last, conv bias only when the norm has no
  affine shift (pix2pix [37]); alternative ``"instance"`` (pix2pix's InstanceNorm variant, affine off) or
  ``"none"``.
* activations: LeakyReLU(0.2) in the encoder, the intermediate layers and the discriminator; ReLU in the decoder
  (pix2pix). The norm and activation of an upsampling step come after the pixel shuffle.
* attention (self-attention and the receiving block): SAGAN-style -- 1x1-conv projections, query/key width
  C/8, value width C, a learnable residual gain γ initialised to 0, one head, no 1/sqrt(d) scaling; the
  alternatives (several heads, transformer scaling) are ``attention_heads`` / ``attention_scaled``.
* receiving block: ``conv(sketch + γ·attn(sketch -> φ(r)))``, i.e. the attention output is *added* to the
  sketch queries (the thesis' "Add" ablation adds GAP(φ(r)) to the queries, so the attention variant replaces
  that summand); ``reference_fusion="add"`` builds that ablation.
* RBCA: SENet-style excitation computed from the reference, ``x * sigmoid(W2 ReLU(W1 GAP(φ(r))))``, reduction 16
  over the reference width; no residual (SENet). ``use_rbca=False`` builds the "w/o RBCA" ablation.
* discriminator: the pix2pix 70x70 PatchGAN (4x4 convs, widths 64/128/256/512, strides 2/2/2/1, then a 1-channel
  4x4 conv; raw logits), fed ``cat(sketch, image)``; spectral norm (SAGAN) is optional.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NormKind = Literal["batch", "instance", "none"]

#: torchvision ResNet-34: stage widths and BasicBlock counts (He et al. 2016, Table 1)
RESNET34_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
RESNET34_DEPTHS: tuple[int, int, int, int] = (3, 4, 6, 3)
#: the ImageNet statistics torchvision's ResNet weights were trained with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class GANConfig:
    """Sizes and the open choices of the chapter-4 GAN (thesis §4.2.2, Table 4.1); defaults = the full model.

    ``encoder_widths`` are the five encoder levels' widths (Table 4.1: 64/128/256/512/512); every decoder width
    follows from them (level j outputs ``encoder_widths[5 - j]`` channels after a ``x4`` pixel-shuffle conv).
    """

    sketch_channels: int = 3
    image_channels: int = 3
    encoder_widths: tuple[int, int, int, int, int] = (64, 128, 256, 512, 512)
    reference_channels: int = 512
    num_tags: int = 6000
    norm: NormKind = "batch"
    leaky_slope: float = 0.2
    attention_heads: int = 1
    attention_key_ratio: int = 8
    attention_scaled: bool = False
    attention_gamma_init: float = 0.0
    reference_fusion: Literal["attention", "add"] = "attention"
    use_rbca: bool = True
    rbca_reduction: int = 16
    discriminator_widths: tuple[int, ...] = (64, 128, 256, 512)
    discriminator_spectral_norm: bool = False
    tag_encoder_widths: tuple[int, int, int, int] = RESNET34_WIDTHS
    tag_encoder_depths: tuple[int, int, int, int] = RESNET34_DEPTHS
    #: side of the square the reference is resized to before the tag encoder (φ(r) is then reference_size / 32
    #: positions on a side; 256 gives the 8 x 8 grid of the generator's bottleneck at 256 px)
    reference_size: int = 256

    def __post_init__(self) -> None:
        if len(self.encoder_widths) != 5:
            raise ValueError(f"Table 4.1 has five encoder levels, got widths {self.encoder_widths}")
        if self.norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {self.norm!r}")
        if self.reference_fusion not in ("attention", "add"):
            raise ValueError(f"reference_fusion must be 'attention' or 'add', got {self.reference_fusion!r}")
        if self.reference_size < 32 or self.reference_size % 32:
            raise ValueError(f"reference_size must be a positive multiple of 32, got {self.reference_size}")
        if self.reference_channels != self.tag_encoder_widths[-1]:
            raise ValueError(f"reference_channels ({self.reference_channels}) must be the tag encoder's last width "
                             f"({self.tag_encoder_widths[-1]}): φ(r) is its last stage")

    @classmethod
    def tiny(cls) -> GANConfig:
        """A small model (a few tens of thousands of parameters) with every block of the full one, for CPU tests."""
        return cls(
            encoder_widths=(4, 8, 8, 16, 16),
            reference_channels=16,
            num_tags=5,
            attention_key_ratio=4,
            rbca_reduction=4,
            discriminator_widths=(4, 8, 8, 16),
            tag_encoder_widths=(8, 8, 16, 16),
            tag_encoder_depths=(1, 1, 1, 1),
            reference_size=64,
        )


TINY_GAN = GANConfig.tiny()


def make_norm(kind: NormKind, channels: int) -> nn.Module:
    """The feature normalisation of a conv layer (pix2pix: BatchNorm, or InstanceNorm without affine)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    return nn.Identity()


class ConvNormAct(nn.Sequential):
    """3x3 conv (padding 1) -> norm -> activation; the conv has a bias only when the norm has no shift (pix2pix)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: NormKind, activation: nn.Module) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=norm != "batch"),
            make_norm(norm, c_out),
            activation,
        )


class EncoderLevel(nn.Module):
    """One encoder row of Table 4.1: conv stride 1, then conv stride 2 (thesis §4.2.2, Table 4.1).

    ``forward`` returns ``(skip, down)``: the stride-1 output (the U-Net skip) and the halved stride-2 output.
    """

    def __init__(self, c_in: int, c_out: int, config: GANConfig, first: bool = False) -> None:
        super().__init__()
        act = nn.LeakyReLU(config.leaky_slope)
        # pix2pix leaves the first layer of the generator unnormalised.
        self.conv = ConvNormAct(c_in, c_out, 1, "none" if first else config.norm, act)
        self.down = ConvNormAct(c_out, c_out, 2, config.norm, act)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.conv(x)
        return skip, self.down(skip)


class PixelShuffleUpsample(nn.Module):
    """Sub-pixel upsampling (thesis §4.2.2, Fig. 4.6, Shi et al. [78]): conv ``c_in -> 4 c_out``, PixelShuffle(2).

    Table 4.1's "Conv + Upsample" columns: e.g. 512 -> 2048 -> 512 channels at twice the size.
    """

    def __init__(self, c_in: int, c_out: int, norm: NormKind, activation: nn.Module | None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1, bias=norm != "batch")
        self.shuffle = nn.PixelShuffle(2)
        self.norm = make_norm(norm, c_out)
        self.act = activation if activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.shuffle(self.conv(x))))


class SpatialAttention(nn.Module):
    """SAGAN-style attention between two feature maps: ``out = x + γ · softmax(Q Kᵀ) V`` (thesis Fig. 4.7).

    Queries come from ``x`` (B, C, H, W); keys and values from ``context`` (B, C_ctx, h, w), which is ``x`` itself
    for self-attention and φ(r) for the receiving block. Q, K, V are 1x1 convs (query/key width
    ``C // key_ratio``, value width C), split into ``heads`` heads; the softmax runs over the context positions
    and is scaled by 1/sqrt(d_head) only when ``scaled`` (SAGAN does not scale). γ is a learnable scalar.
    """

    def __init__(
        self, channels: int, context_channels: int, heads: int, key_ratio: int, scaled: bool, gamma_init: float
    ) -> None:
        super().__init__()
        key_width = max(channels // key_ratio, heads)
        if key_width % heads or channels % heads:
            raise ValueError(f"{heads} heads do not divide widths {key_width}/{channels}")
        self.heads = heads
        self.scaled = scaled
        self.query = nn.Conv2d(channels, key_width, 1)
        self.key = nn.Conv2d(context_channels, key_width, 1)
        self.value = nn.Conv2d(context_channels, channels, 1)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))

    def attend(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The attention output ``softmax(Q Kᵀ) V`` alone, shaped like ``x``."""
        b, c, h, w = x.shape
        heads = self.heads
        q = self.query(x).flatten(2).reshape(b, heads, -1, h * w).transpose(2, 3)  # B, heads, HW, d
        k = self.key(context).flatten(2).reshape(b, heads, q.shape[-1], -1)  # B, heads, d, hw
        v = self.value(context).flatten(2).reshape(b, heads, c // heads, -1).transpose(2, 3)  # B, heads, hw, c/h
        logits = q @ k
        if self.scaled:
            logits = logits / math.sqrt(q.shape[-1])
        out = logits.softmax(dim=-1) @ v  # B, heads, HW, c/heads
        return out.transpose(2, 3).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return x + self.gamma * self.attend(x, x if context is None else context)


class ReferenceChannelAttention(nn.Module):
    """RBCA, reference-based channel-wise attention (thesis §4.2.2, Fig. 4.7 right).

    Re-weights the generator's channels with weights computed from the global statistics of the reference
    features, SENet-style [32]: ``s = sigmoid(W2 ReLU(W1 GAP(φ(r)) + b1) + b2)``, ``out = x * s`` per channel.
    W1 maps the reference width to ``reference_channels // reduction``, W2 to the generator width.
    """

    def __init__(self, channels: int, reference_channels: int, reduction: int) -> None:
        super().__init__()
        hidden = max(reference_channels // reduction, 1)
        self.squeeze = nn.Linear(reference_channels, hidden)
        self.excite = nn.Linear(hidden, channels)

    def channel_weights(self, reference: torch.Tensor) -> torch.Tensor:
        """(B, C) weights in (0, 1) from the reference map (B, C_ref, h, w) or its pooled vector (B, C_ref)."""
        pooled = reference.mean(dim=(2, 3)) if reference.dim() == 4 else reference
        return torch.sigmoid(self.excite(F.relu(self.squeeze(pooled))))

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(reference)[:, :, None, None]


class ReceivingBlock(nn.Module):
    """The receiving block (thesis §4.2.2, red block in Fig. 4.5; Table 4.1 "Attention + Conv").

    Spatial cross-attention with the sketch features z' as queries and the reference map φ(r) as keys/values,
    added to the queries, then a 3x3 conv: ``z = conv(z' + γ·attn(z', φ(r)))`` (512 + 512 -> 512 in Table 4.1).
    With ``reference_fusion="add"`` it is the thesis' "Add" ablation, ``conv(z' + P·GAP(φ(r)))`` (P the identity
    when the widths match, else a linear map).
    """

    def __init__(self, channels: int, config: GANConfig) -> None:
        super().__init__()
        self.fusion = config.reference_fusion
        ref = config.reference_channels
        if self.fusion == "attention":
            self.attention = SpatialAttention(
                channels, ref, config.attention_heads, config.attention_key_ratio, config.attention_scaled,
                config.attention_gamma_init,
            )
        else:
            self.project = nn.Identity() if ref == channels else nn.Linear(ref, channels)
        self.conv = ConvNormAct(channels, channels, 1, config.norm, nn.LeakyReLU(config.leaky_slope))

    def forward(self, sketch_features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if self.fusion == "attention":
            fused = self.attention(sketch_features, reference)
        else:
            fused = sketch_features + self.project(reference.mean(dim=(2, 3)))[:, :, None, None]
        return self.conv(fused)


class DecoderLevel(nn.Module):
    """One decoder row of Table 4.1: conv + pixel-shuffle upsample, then self-attention or RBCA (or nothing).

    ``kind`` is ``"self_attention"`` (first row), ``"rbca"`` (rows 2-4) or ``"plain"`` (RBCA ablated).
    """

    def __init__(self, c_in: int, c_out: int, kind: str, config: GANConfig) -> None:
        super().__init__()
        self.kind = kind
        self.upsample = PixelShuffleUpsample(c_in, c_out, config.norm, nn.ReLU())
        if kind == "self_attention":
            self.attention = SpatialAttention(
                c_out, c_out, config.attention_heads, config.attention_key_ratio, config.attention_scaled,
                config.attention_gamma_init,
            )
        elif kind == "rbca":
            self.attention = ReferenceChannelAttention(c_out, config.reference_channels, config.rbca_reduction)
        elif kind != "plain":
            raise ValueError(f"unknown decoder level kind {kind!r}")

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        if self.kind == "self_attention":
            return self.attention(x)
        if self.kind == "rbca":
            return self.attention(x, reference)
        return x


class ColorizationGenerator(nn.Module):
    """The U-Net generator G(x, φ(r)) of thesis §4.2.2, Fig. 4.5 and Table 4.1 (see the module docstring).

    ``forward(sketch, reference)`` takes the sketch (B, sketch_channels, H, W), H and W multiples of 32, and the
    reference map φ(r) (B, reference_channels, h, w) -- :meth:`ReferenceTagEncoder.features` gives h = H/32 for
    a reference of the sketch's size, but any h x w works -- and returns the image in [-1, 1]. With
    ``return_features=True`` it also returns ψ, the intermediate maps (``"received"``: the receiving block's output
    z; ``"decoder1"``..``"decoder4"``) that thesis Eq. 4.17's feature-level loss compares.
    """

    def __init__(self, config: GANConfig = GANConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.encoder_widths
        ins = (config.sketch_channels, *w[:-1])
        self.encoder = nn.ModuleList(EncoderLevel(ins[i], w[i], config, first=i == 0) for i in range(5))
        self.intermediate = ConvNormAct(w[4], w[4], 1, config.norm, nn.LeakyReLU(config.leaky_slope))
        self.receiving = ReceivingBlock(w[4], config)
        later = "rbca" if config.use_rbca else "plain"
        # Level j (1-based) outputs w[5 - j]; its input is the previous output (+ the skip w[6 - j] for j > 1).
        self.decoder = nn.ModuleList([DecoderLevel(w[4], w[4], "self_attention", config)])
        for j in range(2, 5):
            self.decoder.append(DecoderLevel(2 * w[6 - j], w[5 - j], later, config))
        self.head_upsample = PixelShuffleUpsample(2 * w[1], w[0], config.norm, nn.ReLU())
        self.to_image = nn.Conv2d(w[0], config.image_channels, 3, padding=1)

    def forward(
        self, sketch: torch.Tensor, reference: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if sketch.shape[-1] % 32 or sketch.shape[-2] % 32:
            raise ValueError(f"sketch height and width must be multiples of 32, got {tuple(sketch.shape[-2:])}")
        skips = []
        x = sketch
        for level in self.encoder:
            skip, x = level(x)
            skips.append(skip)
        x = self.receiving(self.intermediate(x), reference)
        features = {"received": x}
        for j, level in enumerate(self.decoder, start=1):
            x = level(x, reference)
            features[f"decoder{j}"] = x
            x = torch.cat([x, skips[5 - j]], dim=1)  # the stride-1 output of encoder level 6 - j
        image = torch.tanh(self.to_image(self.head_upsample(x)))
        return (image, features) if return_features else image


class PatchDiscriminator(nn.Module):
    """Sketch-conditioned patch discriminator D(x, y) (thesis §4.2.2 following pix2pix [37]).

    The pix2pix PatchGAN: ``cat(sketch, image)`` -> 4x4 convs of widths ``discriminator_widths`` (strides 2 except
    the last, which is 1; no norm on the first; LeakyReLU 0.2) -> a 1-channel 4x4 conv. Returns raw logits, one per
    patch: (B, 1, H/8 - 2, W/8 - 2) for the default four widths (30 x 30 at 256 px, each seeing 70 x 70 pixels).
    """

    def __init__(self, config: GANConfig = GANConfig()) -> None:
        super().__init__()
        wrap = nn.utils.spectral_norm if config.discriminator_spectral_norm else (lambda m: m)
        widths = config.discriminator_widths
        layers: list[nn.Module] = []
        c_in = config.sketch_channels + config.image_channels
        for i, c_out in enumerate(widths):
            stride = 1 if i == len(widths) - 1 else 2
            norm = "none" if i == 0 else config.norm
            layers += [
                wrap(nn.Conv2d(c_in, c_out, 4, stride=stride, padding=1, bias=norm != "batch")),
                make_norm(norm, c_out),
                nn.LeakyReLU(config.leaky_slope),
            ]
            c_in = c_out
        layers.append(wrap(nn.Conv2d(c_in, 1, 4, stride=1, padding=1)))
        self.layers = nn.Sequential(*layers)

    def forward(self, sketch: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([sketch, image], dim=1))


def resnet_backbone(widths: Sequence[int], depths: Sequence[int], num_classes: int) -> nn.Module:
    """A BasicBlock ResNet with torchvision's module names (``conv1 bn1 relu maxpool layer1..4 avgpool fc``).

    At ``RESNET34_WIDTHS`` / ``RESNET34_DEPTHS`` it is ``torchvision.models.resnet34(num_classes=...)`` (built by
    torchvision itself); other widths build the same structure narrower, from torchvision's ``BasicBlock``.
    """
    from torchvision.models import resnet34
    from torchvision.models.resnet import BasicBlock

    if len(widths) != 4 or len(depths) != 4:
        raise ValueError(f"a ResNet has four stages, got widths {tuple(widths)} and depths {tuple(depths)}")
    if tuple(widths) == RESNET34_WIDTHS and tuple(depths) == RESNET34_DEPTHS:
        return resnet34(weights=None, num_classes=num_classes)
    net = nn.Module()
    net.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
    net.bn1 = nn.BatchNorm2d(widths[0])
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    c_in = widths[0]
    for i, (width, depth) in enumerate(zip(widths, depths)):
        stride = 1 if i == 0 else 2
        blocks = []
        for j in range(depth):
            down = None
            if j == 0 and (stride != 1 or c_in != width):
                down = nn.Sequential(nn.Conv2d(c_in, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
            blocks.append(BasicBlock(c_in, width, stride if j == 0 else 1, down))
            c_in = width
        setattr(net, f"layer{i + 1}", nn.Sequential(*blocks))
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.fc = nn.Linear(c_in, num_classes)
    return net


class ReferenceTagEncoder(nn.Module):
    """The reference embedder φ: ResNet-34 with a C-way multi-label head (thesis §4.2.1, Fig. 4.3; C = 6000).

    Built as torchvision's ResNet-34 (:func:`resnet_backbone`: the same modules and key names as
    ``torchvision.models.resnet34``) with ``fc`` = ``Linear(512, num_tags)``; ``forward(image)`` returns the tag
    logits (sigmoid -> cls, the probabilities of §4.3.1). ``widths`` / ``depths`` build a narrower ResNet of
    the same structure for tests (:attr:`GANConfig.tag_encoder_widths`).

    ``features(image)`` is φ(r). Our reading of the thesis: φ(r) is the output of ResNet-34's last convolutional
    stage (``layer4``, 512 channels -- Table 4.1's "reference: 512"), taken *before* the global average pooling,
    because the thesis pools it itself (GAP(φ(r)), Eq. 4.11) and calls it a map of (H/patch_num, W/patch_num)
    latent codes with patch_num = 32, the backbone's total stride -- so a 256 x 256 reference gives 8 x 8 = 64
    positions of 512 channels, each a 32 x 32-pixel patch, the same grid as the generator's bottleneck. The last
    op of ``layer4`` is the BasicBlock's ReLU, hence φ(r) >= 0 (thesis §4.3.1). ``fc(GAP(φ(r)))`` are the logits.
    Inputs are images in [0, 1]; they are normalised with the ImageNet mean and std inside (as torchvision's
    ResNet weights expect), so no caller can forget it.

    ``state_dict`` (optional) is loaded with :meth:`load_weights`: a full state dict of this module, or a plain
    torchvision ResNet-34 one whose ``fc`` (e.g. ImageNet's 1000 classes) has another size -- then ``fc`` stays new.
    """

    def __init__(self, num_tags: int = 6000, state_dict: Mapping[str, torch.Tensor] | None = None,
                 widths: Sequence[int] = RESNET34_WIDTHS, depths: Sequence[int] = RESNET34_DEPTHS) -> None:
        super().__init__()
        self.backbone = resnet_backbone(widths, depths, num_tags)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if state_dict is not None:
            self.load_weights(state_dict)

    @property
    def fc(self) -> nn.Linear:
        return self.backbone.fc

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load a torchvision-ResNet-34-keyed state dict (with or without a ``backbone.`` prefix).

        Every backbone key must be present; ``fc.*`` is loaded only when its shape matches ``num_tags``.
        """
        sd = {k.removeprefix("backbone."): v for k, v in state_dict.items()}
        if "fc.weight" in sd and sd["fc.weight"].shape != self.fc.weight.shape:
            sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        missing, unexpected = self.backbone.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise KeyError(f"ResNet-34 state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """φ(r): the (B, 512, H/32, W/32) non-negative ``layer4`` map of images in [0, 1] (see the class
        docstring)."""
        net = self.backbone
        image = (image - self.mean.to(image.dtype)) / self.std.to(image.dtype)
        x = net.maxpool(net.relu(net.bn1(net.conv1(image))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The tag logits ``fc(GAP(φ(r)))``."""
        return self.fc(features.mean(dim=(2, 3)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.features(image))
