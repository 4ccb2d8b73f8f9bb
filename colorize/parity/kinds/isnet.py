"""Parity kinds ``isnet`` (the full ISNetDIS and the apps' ``proceed`` calls) and ``rsu_blocks`` (each block alone).

The ``isnet`` fixture stores no weights: they come from the hash rule its JSON describes under
``weights_rule`` (implemented here in torch int64 / float64 arithmetic; the JSON's per-tensor sha256 values
are checked, so a wrong key order or rule is reported as such). Every size, threshold, canvas and kernel comes
from the fixture's inputs and ``scalar_args``.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import torch

from colorize.masks import anime_segment as seg
from colorize.masks import isnet
from colorize.parity.core import Fixture, register

_P = 2147483647  # 2**31 - 1


def rule_tensor(k: int, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixture's weights rule for the k-th state-dict entry ``key`` of ``shape``."""
    n = math.prod(shape)
    if key.endswith("num_batches_tracked"):
        return torch.zeros(n, dtype=torch.int64).reshape(shape)
    i = torch.arange(n, dtype=torch.int64)
    h = (i * 48271 + (k + 1) * 69621) % _P
    h = (h * h) % _P
    h = (h * 16807 + 12345) % _P
    u = h.to(torch.float64) * (2.0 / _P) - 1.0
    if key.endswith("running_var"):
        v = 1.0 + 0.5 * u.abs()
    elif key.endswith(("running_mean", ".bias")):
        v = 0.1 * u
    elif len(shape) == 4:
        v = math.sqrt(6.0 / math.prod(shape[1:])) * u
    else:  # 1-D BatchNorm scale
        v = 1.0 + 0.1 * u
    return v.to(torch.float32).reshape(shape)


def rule_weights(layout: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {key: rule_tensor(k, key, tuple(shape)) for k, (key, shape) in enumerate(layout.items())}


def _check_hashes(weights: Mapping[str, torch.Tensor], expected: Mapping[str, str]) -> None:
    if set(expected) != set(weights):
        raise AssertionError(f"weights rule: the fixture lists {len(expected)} tensors, the model has {len(weights)}")
    bad = [k for k, digest in expected.items()
           if hashlib.sha256(weights[k].contiguous().numpy().tobytes()).hexdigest() != digest]
    if bad:
        raise AssertionError(f"weights rule: {len(bad)} tensors differ from the fixture's sha256, first {bad[:3]}")


def _kernel(spec: object) -> int:
    return int(spec["kernel_size"]) if isinstance(spec, Mapping) else int(spec)  # type: ignore[arg-type]


@register("isnet")
def run_isnet(fx: Fixture) -> dict[str, torch.Tensor]:
    params = fx.config.get("params", {})
    layout = isnet.isnet_layout(isnet.ISNetConfig(in_ch=int(params.get("in_ch", 3)),
                                                  out_ch=int(params.get("out_ch", 1))))
    weights = rule_weights(layout)
    rule = fx.meta.get("weights_rule", {})
    if rule.get("per_tensor_sha256"):
        _check_hashes(weights, rule["per_tensor_sha256"])
    net = isnet.isnet_from_state_dict(weights, what="isnet rule weights")
    sc = fx.scalars
    s = int(sc["s"])
    mask_ss, mask_ts = float(sc["mask_ss"]), float(sc["mask_ts"])
    k_sd, k_xl = _kernel(sc["dilation_sd"]), _kernel(sc["dilation_xl"])

    out: dict[str, torch.Tensor] = {}
    feats = net.forward_features(fx.inputs["x"])
    out["mask"], out["side1"] = feats["mask"], feats["side1"]
    for name in ("conv_in", *(n for n, _ in isnet.ENCODER_STAGES), *(n for n, _ in isnet.DECODER_STAGES)):
        out[f"inter.{name}"] = feats[name]
    odd = net.forward_features(fx.inputs["x_odd"])
    out["mask_odd"], out["side1_odd"] = odd["mask"], odd["side1"]

    th, tw = (int(v) for v in sc["sketch_th_tw"])
    sk = seg.proceed_steps(net, fx.inputs["white_sketch"], th, tw, canvas=s, crop=False)
    out["sketch.net_input"], out["sketch.net_output"], out["sketch.mask"] = sk.net_input, sk.net_output, sk.mask
    out["sketch.mask_latent_sd"] = seg.latent_mask(sk.mask)
    out["sketch.mask_shown"] = seg.threshold_mask(sk.mask, mask_ss)

    reference = fx.inputs["reference"]
    ref = seg.proceed_steps(net, reference, canvas=s, dilate=k_sd)
    geometry = sc.get("reference_crop_geometry")
    if geometry and list(ref.window[2:]) != list(geometry["resized_hw"]):
        raise AssertionError(f"reference crop window {ref.window} differs from the fixture's {geometry}")
    out["ref.net_input"], out["ref.net_output"], out["ref.mask_sd"] = ref.net_input, ref.net_output, ref.mask
    out["ref.mask_nodilate"] = seg.proceed(net, reference, canvas=s)
    out["ref.mask_xl"] = seg.proceed(net, reference, canvas=s, dilate=k_xl)
    out["ref.mask_shown_sd"] = seg.threshold_mask(ref.mask, mask_ts)
    out["ref.background_sd"] = seg.background_reference(reference, ref.mask, mask_ts)
    return out


_BLOCKS = {
    "REBNCONV": isnet.REBNCONV, "RSU7": isnet.RSU7, "RSU6": isnet.RSU6, "RSU5": isnet.RSU5, "RSU4": isnet.RSU4,
    "RSU4F": isnet.RSU4F, "myrebnconv": isnet.myrebnconv,
}


@register("rsu_blocks")
def run_rsu_blocks(fx: Fixture) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for case, spec in fx.meta["cases"].items():
        if "class" not in spec:  # the upsample helper
            out[case] = isnet.upsample_like(fx.inputs[f"{case}.src"], fx.inputs[f"{case}.tar"])
            continue
        block = _BLOCKS[spec["class"]](**spec["constructor"])
        block.load_state_dict(fx.weights(f"{case}."), strict=True)
        out[case] = block.eval()(fx.inputs[case])
    return out
