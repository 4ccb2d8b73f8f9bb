"""Checkpoint-format conversion for the OpenCLIP reference/text encoder.

Canonical format = open_clip ``CLIP.state_dict()`` names: the vision tower under ``visual.*``, the
text parts at the top level (``token_embedding.weight``, ``positional_embedding``,
``transformer.resblocks.*``, ``ln_final.*``, ``text_projection``, ``logit_scale``).

Accepted inputs (detected from the keys, any outer prefix):

* open_clip / official: ``<p>class_embedding`` next to ``<p>conv1.weight`` (``p`` e.g. ``visual.``,
  ``visual.model.``, ``cond_stage_model.visual.model.``), text under ``<q>token_embedding.weight``
  (``q`` e.g. ``""``, ``transformer.model.``, ``cond_stage_model.transformer.model.``);
* HF / ComfyUI ``clip_vision`` (``vision_model.*`` + ``visual_projection.weight``), optionally with an
  HF ``text_model.*`` + ``text_projection.weight``.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

TEXT_ROOTS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection", "logit_scale")
OFFICIAL_VISUAL = "cond_stage_model.visual.model."
OFFICIAL_TEXT = "cond_stage_model.transformer.model."

# HF per-layer names ↔ open_clip residual-block names (q/k/v handled separately).
_LAYER_MAP = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_HF_VISION = {  # HF name under ``vision_model.`` → open_clip name under ``visual.``
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.class_embedding": "class_embedding",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",  # (sic) HF spelling
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}
_HF_TEXT = {  # HF name under ``text_model.`` → open_clip top-level name
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_IGNORED = ("position_ids",)  # buffers some transformers versions store


def _unique_prefix(sd: dict[str, Tensor], suffix: str, sibling: str | None = None) -> str | None:
    """The prefix ``p`` of the only key ``p + suffix`` (with ``p + sibling`` present, if given)."""
    found = [k[: -len(suffix)] for k in sd if k.endswith(suffix)]
    found = [p for p in found if sibling is None or p + sibling in sd]
    if len(found) > 1:
        raise ValueError(f"ambiguous CLIP checkpoint: several candidates for '*{suffix}': {sorted(found)}")
    return found[0] if found else None


def _hf_layers_to_open_clip(sd: dict[str, Tensor], hf: str, oc: str, out: dict[str, Tensor]) -> set[str]:
    """Convert ``{hf}encoder.layers.N.*`` into ``{oc}transformer.resblocks.N.*``; returns the keys used."""
    used: set[str] = set()
    pat = re.compile(re.escape(hf) + r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for k, v in sd.items():
        m = pat.match(k)
        if m is None:
            continue
        n, name, kind = m.groups()
        blk = f"{oc}transformer.resblocks.{n}."
        if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((blk, kind), {})[name[10]] = v
        elif name in _LAYER_MAP:
            out[f"{blk}{_LAYER_MAP[name]}.{kind}"] = v
        else:
            continue
        used.add(k)
    for (blk, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"incomplete q/k/v projections for {blk} ({kind}): found {sorted(parts)}")
        out[f"{blk}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return used


def _check_all_used(sd: dict[str, Tensor], prefix: str, used: set[str], what: str) -> None:
    left = [k for k in sd if k.startswith(prefix) and k not in used and not k.endswith(_IGNORED)]
    if left:
        raise ValueError(f"unrecognised keys in the {what} part of an HF CLIP checkpoint: {sorted(left)[:8]}")


def _from_hf(sd: dict[str, Tensor], vm: str) -> dict[str, Tensor]:
    outer = vm[: -len("vision_model.")]
    proj_key = outer + "visual_projection.weight"
    if proj_key not in sd:
        raise ValueError(f"HF clip_vision checkpoint without '{proj_key}' (the 1280→1024 projection is required)")
    out = {"visual." + oc: sd[vm + hf] for hf, oc in _HF_VISION.items() if vm + hf in sd}
    out["visual.proj"] = sd[proj_key].t().contiguous()
    used = {vm + hf for hf in _HF_VISION} | {proj_key}
    used |= _hf_layers_to_open_clip(sd, vm, "visual.", out)
    _check_all_used(sd, vm, used, "vision")
    tm = outer + "text_model."
    if tm + "embeddings.token_embedding.weight" in sd:
        out.update({oc: sd[tm + hf] for hf, oc in _HF_TEXT.items() if tm + hf in sd})
        used = {tm + hf for hf in _HF_TEXT}
        used |= _hf_layers_to_open_clip(sd, tm, "", out)
        _check_all_used(sd, tm, used, "text")
        if outer + "text_projection.weight" in sd:
            out["text_projection"] = sd[outer + "text_projection.weight"].t().contiguous()
        if outer + "logit_scale" in sd:
            out["logit_scale"] = sd[outer + "logit_scale"]
    return out


def to_open_clip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Any supported CLIP checkpoint (or a whole colorizer checkpoint) → open_clip ``CLIP`` names.

    The text part is present in the result only if the input has one. Raises ``ValueError`` for
    an unknown or ambiguous format.
    """
    vis = _unique_prefix(sd, "class_embedding", sibling="conv1.weight")
    if vis is not None:
        out = {"visual." + k[len(vis):]: v for k, v in sd.items() if k.startswith(vis)}
        txt = _unique_prefix(sd, "token_embedding.weight")
        if txt is not None:
            for k, v in sd.items():
                rest = k[len(txt):]
                if k.startswith(txt) and rest.startswith(TEXT_ROOTS) and not k.startswith(vis):
                    out[rest] = v
        return out
    vm = _unique_prefix(sd, "vision_model.embeddings.patch_embedding.weight")
    if vm is not None:
        return _from_hf(sd, vm + "vision_model.")
    sample = sorted(sd)[:6]
    raise ValueError(
        "unknown CLIP checkpoint format: expected open_clip keys ('[prefix]class_embedding' with "
        "'[prefix]conv1.weight', e.g. 'visual.class_embedding' or 'cond_stage_model.visual.model.class_embedding') "
        "or HF/ComfyUI clip_vision keys ('vision_model.embeddings.patch_embedding.weight' + "
        f"'visual_projection.weight'); found {len(sd)} keys, e.g. {sample}"
    )


def _open_clip_layers_to_hf(sd: dict[str, Tensor], oc: str, hf: str, out: dict[str, Tensor]) -> None:
    inv = {v: k for k, v in _LAYER_MAP.items()}
    pat = re.compile(re.escape(oc) + r"transformer\.resblocks\.(\d+)\.(.+)$")
    for k, v in sd.items():
        m = pat.match(k)
        if m is None:
            continue
        n, rest = m.groups()
        layer = f"{hf}encoder.layers.{n}."
        if rest.startswith("attn.in_proj_"):
            kind = rest[len("attn.in_proj_"):]
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                out[f"{layer}self_attn.{name}_proj.{kind}"] = part.contiguous()
        else:
            mod, kind = rest.rsplit(".", 1)
            if mod not in inv:
                raise ValueError(f"open_clip key {k!r} has no HF clip_vision equivalent")
            out[f"{layer}{inv[mod]}.{kind}"] = v


def open_clip_to_hf(sd: dict[str, Tensor], with_text: bool = False) -> dict[str, Tensor]:
    """open_clip ``CLIP`` names → HF / ComfyUI ``clip_vision`` names (plus HF text names if asked).

    Only plain ViT towers (no layer scale, no custom blocks) have an HF equivalent.
    """
    out: dict[str, Tensor] = {}
    for hf, oc in _HF_VISION.items():
        out["vision_model." + hf] = sd["visual." + oc]
    out["visual_projection.weight"] = sd["visual.proj"].t().contiguous()
    _open_clip_layers_to_hf(sd, "visual.", "vision_model.", out)
    if with_text:
        if "token_embedding.weight" not in sd:
            raise ValueError("with_text=True but the state dict has no text tower")
        for hf, oc in _HF_TEXT.items():
            out["text_model." + hf] = sd[oc]
        out["text_projection.weight"] = sd["text_projection"].t().contiguous()
        if "logit_scale" in sd:
            out["logit_scale"] = sd["logit_scale"]
        _open_clip_layers_to_hf({k: v for k, v in sd.items() if not k.startswith("visual.")}, "", "text_model.", out)
    return out


def to_official(key: str) -> str:
    """open_clip ``CLIP`` key → key in the released colorizer checkpoints (``cond_stage_model.*``)."""
    if key.startswith("visual."):
        return OFFICIAL_VISUAL + key[len("visual."):]
    if key.startswith(TEXT_ROOTS):
        return OFFICIAL_TEXT + key
    raise ValueError(f"{key!r} is not an open_clip CLIP key")


def from_official(key: str) -> str:
    """Inverse of :func:`to_official`."""
    if key.startswith(OFFICIAL_VISUAL):
        return "visual." + key[len(OFFICIAL_VISUAL):]
    if key.startswith(OFFICIAL_TEXT):
        return key[len(OFFICIAL_TEXT):]
    raise ValueError(f"{key!r} is not a cond_stage_model CLIP key")


__all__ = ["from_official", "open_clip_to_hf", "to_official", "to_open_clip"]
