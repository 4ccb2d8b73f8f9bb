"""v1.5 ("switch") integration: building its modules from a checkpoint and its per-generation U-Net inputs.

Loading (reference notes §1.9): ``SwitchUNet`` with the split LoRA read from the shapes, the threshold
embedder and the recovery transformer (head width from ``config.extras["transformer_dim_head"]``, 64 released).
Generation (§2.4, :mod:`colorize.switch`): the context ``[fg | bg]`` of the enhance mode and
:class:`~colorize.models.split_attention.SplitOptions` with the latent sketch mask and the LoRA flags.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from colorize.config import ColorizerConfig
from colorize.errors import InputError
from colorize.loader import materialize, require_components
from colorize.models.recovery import ClusterTransformer, ScalarEmbedder
from colorize.models.split_attention import SwitchUNet
from colorize.models.switch_config import FULL_SWITCH, SwitchConfig, infer_switch_config
from colorize.switch import background_only_reference, switch_context
from colorize.variants.settings import EnhanceSettings

#: Checkpoint components (``colorize.checkpoint.COMPONENT_PREFIXES`` names) besides U-Net, sketch encoder, VAE.
COMPONENTS: tuple[str, ...] = ("thresh_embedder", "transformer")
TokenEncoder = Callable[[Tensor], Tensor]


def switch_config(config: ColorizerConfig, parts: Mapping[str, Mapping[str, Any]]) -> SwitchConfig:
    """The v1.5 extras' config from the checkpoint's shapes (prefixes stripped) and ``config.extras``."""
    dim_head = int(config.extras.get("transformer_dim_head", FULL_SWITCH.transformer.dim_head))
    return infer_switch_config(parts["thresh_embedder"], parts["transformer"], parts["unet"], dim_head=dim_head)


def build_modules(config: ColorizerConfig, parts: dict[str, dict[str, Tensor]],
                  name: str) -> tuple[nn.Module, dict[str, nn.Module]]:
    """``(SwitchUNet, {"thresh_embedder", "transformer"})`` filled from the checkpoint's tensors (consumed)."""
    require_components(parts, COMPONENTS, name)
    scfg = switch_config(config, parts)
    unet = materialize(lambda: SwitchUNet(config.unet, scfg.lora), parts.pop("unet"), f"{name} (U-Net)")
    embedder = materialize(lambda: ScalarEmbedder(scfg.thresh_embedder), parts.pop("thresh_embedder"),
                           f"{name} (threshold embedder)")
    transformer = materialize(lambda: ClusterTransformer(scfg.transformer), parts.pop("transformer"),
                              f"{name} (recovery transformer)")
    return unet, {"thresh_embedder": embedder, "transformer": transformer}


def cast_extras(extras: Mapping[str, nn.Module], device: torch.device, dtype: torch.dtype) -> None:
    """Threshold embedder and recovery transformer stay fp32 (run once per generation, as the official app)."""
    for module in extras.values():
        module.to(device, torch.float32).eval().requires_grad_(False)


@torch.no_grad()
def unet_inputs(
    extras: Mapping[str, nn.Module],
    enhance: EnhanceSettings,
    tokens: Tensor,
    reference: Tensor,
    latent_mask: Tensor,
    encode_tokens: TokenEncoder,
    *,
    reference_mask: Tensor | None = None,
    background: Tensor | None = None,
    background_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """``(context (b, 2N, c), {"split": SplitOptions})`` of one v1.5 generation (reference notes §1.9, §2.4).

    tokens: CLIP local tokens of the reference (after any manipulation); reference / background: images in
    [-1, 1]; latent_mask: sketch foreground mask ``(b, 1, h, w)`` at latent resolution; reference_mask: pixel
    mask of the reference (needed for background enhance without a background image); background_mask:
    needed to whiten the background image's foreground (``remove_background_foreground``).
    """
    mode = enhance.switch_mode
    if mode is None:
        raise ValueError("unet_inputs needs background or foreground enhance")
    tau = enhance.reference_threshold
    bg_tokens = bg_ref_tokens = None
    if mode != "foreground":
        if background is not None:
            if enhance.remove_background_foreground:
                if background_mask is None:
                    raise InputError("removing the foreground from the background image needs its mask")
                background = background_only_reference(background, background_mask, tau)
            bg_tokens = encode_tokens(background)
        else:
            if reference_mask is None:
                raise InputError("background enhance needs the reference mask or a background image")
            bg_ref_tokens = encode_tokens(background_only_reference(reference, reference_mask, tau))
    cond = switch_context(mode, tokens, thresh_embedder=extras.get("thresh_embedder"),  # type: ignore[arg-type]
                          transformer=extras.get("transformer"),  # type: ignore[arg-type]
                          bg_reference_tokens=bg_ref_tokens, background_tokens=bg_tokens,
                          reference_threshold=tau, sketch_threshold=enhance.sketch_threshold)
    split = cond.split_options(latent_mask, threshold=enhance.sketch_threshold,
                               fg_scale=enhance.fg_scale, bg_scale=enhance.bg_scale,
                               merge_scale=enhance.merge_scale, lora_scale=enhance.lora_scale)
    return cond.context, {"split": split}


__all__ = ["COMPONENTS", "build_modules", "cast_extras", "switch_config", "unet_inputs"]
