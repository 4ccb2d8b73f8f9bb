"""The modules of the v1.5 ("switch") training stage (thesis §5.5; reference §4.2 ``DualMaskTrainer``, §1.9).

:class:`SwitchDenoiser` holds the split-attention U-Net (:class:`~colorize.models.split_attention.SwitchUNet`, fg/bg
LoRA on every ``attn2.to_{q,k,v}``), the sketch encoder, the threshold embedder and the background "recovery"
transformer. Its training forward follows the official trainer:

* background tokens ``e_b = φ(CLIP_local(where(rmask < th_r, ref, white)) + thresh_emb(th_r))``;
* context ``[CLIP_local(ref) | e_b]`` (training adds no ``th_s`` token to the foreground half; inference does,
  reference §7.15, see ``colorize.switch``);
* split cross-attention (Eq. 5.4) with both LoRA pairs on, the latent mask ``bicubic(smask, ×1/8)`` and the
  per-sample attention threshold ``th_s``.

Weights: a v1.5 file (released, exported or tiny) continues training; a v1 ``mult`` file (or SD2.1 layout)
starts v1.5 training from v1 weights with fresh LoRA (``up = 0``, so the untrained split model equals v1 inside
each half), a fresh threshold embedder (zero output layer) and a fresh recovery transformer.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor, nn

from colorize.checkpoint import split_by_prefix
from colorize.config import ColorizerConfig
from colorize.models.lora import SplitLoraLinear
from colorize.models.recovery import ClusterTransformer, ScalarEmbedder
from colorize.models.sketch_encoder import SketchEncoder
from colorize.models.split_attention import SplitOptions, SwitchUNet
from colorize.models.switch_config import FULL_SWITCH, SplitLoraConfig, SwitchConfig
from colorize.models.vae import AutoencoderKL
from training.config import ModelConfig


class SwitchDenoiser(nn.Module):
    """Trainable/frozen parts of v1.5: U-Net (+LoRA), sketch encoder, threshold embedder, recovery transformer.

    Attribute names are the checkpoint component names, so ``state_dict()`` keys map to the released layout.
    """

    def __init__(self, unet: SwitchUNet, sketch_encoder: SketchEncoder, thresh_embedder: ScalarEmbedder,
                 transformer: ClusterTransformer) -> None:
        super().__init__()
        self.unet = unet
        self.sketch_encoder = sketch_encoder
        self.thresh_embedder = thresh_embedder
        self.transformer = transformer

    def lora(self) -> nn.ModuleList:
        """The fg/bg LoRA pairs of every split layer (their parameters only; the base weights are not in it)."""
        pairs = nn.ModuleList()
        for m in self.unet.modules():
            if isinstance(m, SplitLoraLinear):
                pairs.extend([m.lora_down_fg, m.lora_up_fg, m.lora_down_bg, m.lora_up_bg])
        return pairs

    def groups(self) -> dict[str, nn.Module]:
        """Module groups by the names stages use (``unet.lora`` shares its parameters with ``unet``)."""
        return {"unet": self.unet, "unet.lora": self.lora(), "sketch_encoder": self.sketch_encoder,
                "thresh_embedder": self.thresh_embedder, "recovery_transformer": self.transformer}

    def background_tokens(self, bg_reference_tokens: Tensor, th_r: Tensor) -> Tensor:
        """``φ(tokens + thresh_emb(th_r))`` with one threshold per sample ``(b,)`` → ``(b, N, c)``."""
        th = self.thresh_embedder(th_r.float()).to(bg_reference_tokens.dtype)
        return self.transformer(bg_reference_tokens + th)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        context: Tensor,
        sketch: Tensor,
        *,
        bg_reference_tokens: Tensor | None = None,
        th_r: Tensor | None = None,
        th_s: Tensor | None = None,
        mask: Tensor | None = None,
        ref_keep: Tensor | None = None,
    ) -> Tensor:
        """Without ``mask``: the v1 computation (LoRA off). With ``mask`` (b, 1, h, w) at latent resolution: the
        v1.5 training forward; ``ref_keep`` (b,) zeroes the whole 2N-token context of dropped samples (the
        unconditional input at inference is an all-zero context)."""
        hints = self.sketch_encoder(sketch)
        if mask is None:
            return self.unet(x_t, t, context, hints)
        if bg_reference_tokens is None or th_r is None or th_s is None:
            raise ValueError("the split forward needs bg_reference_tokens, th_r and th_s")
        bg = self.background_tokens(bg_reference_tokens, th_r).to(context.dtype)
        ctx = torch.cat([context, bg], dim=1)
        if ref_keep is not None:
            ctx = ctx * ref_keep.to(ctx.dtype).view(-1, 1, 1)
        # one attention threshold per sample: (b, 1, 1) broadcasts against the (b, hw, 1) block masks
        split = SplitOptions(mask=mask, threshold=th_s.float().view(-1, 1, 1),  # type: ignore[arg-type]
                             use_fg_lora=True, use_bg_lora=True)
        return self.unet(x_t, t, ctx, hints, split=split)


def _clip_tokens(config: ColorizerConfig) -> int:
    v = config.clip.vision
    return (int(v.get("image_size", 224)) // int(v.get("patch_size", 14))) ** 2


def fresh_switch_config(config: ColorizerConfig) -> tuple[SwitchConfig, int]:
    """The released v1.5 extras (reference §1.9) resized to this model's context width and token count, and the
    recovery transformer's head width (64 when it divides the width, as released)."""
    dim = config.unet.context_dim
    head = int(config.extras.get("transformer_dim_head", 64 if dim % 64 == 0 else math.gcd(dim, 32)))
    transformer = replace(FULL_SWITCH.transformer, dim=dim, token_length=_clip_tokens(config), dim_head=head)
    return SwitchConfig(lora=SplitLoraConfig(), thresh_embedder=replace(FULL_SWITCH.thresh_embedder, out_dim=dim),
                        transformer=transformer), head


def _assign(module: nn.Module, sd: dict[str, Tensor], what: str, allow_missing: str = "") -> None:
    missing, unexpected = module.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (allow_missing and allow_missing in k)]
    if missing or unexpected:
        raise ValueError(f"{what}: weights do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})")


def build_switch_denoiser(cfg: ModelConfig, prediction: str = "eps") -> tuple[ColorizerConfig, SwitchDenoiser,
                                                                              AutoencoderKL, dict[str, dict[str, Tensor]]]:
    """``(export config, denoiser, VAE, remaining checkpoint parts)`` in float32 on the CPU."""
    from training.model import initial_weights, linear_proj_to_conv

    sd, config, has_sketch = initial_weights(cfg)
    if config.version == "v2":
        raise NotImplementedError(f"{cfg.init} is a v2 checkpoint; the v1.5 stage starts from a v1.5 or v1 model")
    parts = split_by_prefix(sd)
    torch.manual_seed(cfg.init_seed)
    if config.version == "switch" and parts.get("transformer"):
        from colorize.variants.switch import switch_config

        scfg = switch_config(config, parts)
        head = scfg.transformer.dim_head
    else:
        scfg, head = fresh_switch_config(config)
    unet = SwitchUNet(config.unet, scfg.lora, use_checkpoint=cfg.gradient_checkpointing)
    embedder, transformer = ScalarEmbedder(scfg.thresh_embedder), ClusterTransformer(scfg.transformer)
    sketch, vae = SketchEncoder(config.sketch), AutoencoderKL(config.vae)
    if parts.get("unet"):  # a v1 U-Net has no LoRA keys: they keep their fresh init (up = 0)
        _assign(unet, linear_proj_to_conv(parts["unet"]), "U-Net", "" if config.version == "switch" else ".lora_")
    if parts.get("vae"):
        _assign(vae, parts["vae"], "VAE")
    if has_sketch:
        _assign(sketch, parts["sketch_encoder"], "sketch encoder")
    if parts.get("thresh_embedder"):
        _assign(embedder, parts["thresh_embedder"], "threshold embedder")
        _assign(transformer, parts["transformer"], "recovery transformer")
    config = replace(config, version="switch", parameterization=prediction,  # type: ignore[arg-type]
                     extras={**config.extras, "transformer_dim_head": head})
    den = SwitchDenoiser(unet, sketch, embedder, transformer).to(torch.float32)
    return config, den, vae.to(torch.float32), parts


__all__ = ["SwitchDenoiser", "build_switch_denoiser", "fresh_switch_config"]
