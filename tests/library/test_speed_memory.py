"""Speed and memory on the CPU: VAE tiling, sequential offload, the optional U-Net speed-ups, the bench's
speed/memory flags and the half-precision tolerance check. The timings themselves need the GPU
(colorize/benchmark/gpu_speed_memory.sh)."""
from __future__ import annotations

import json
import warnings
from itertools import pairwise
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from colorize.benchmark.cli import build_parser
from colorize.benchmark.models import random_colorizer
from colorize.benchmark.options import check
from colorize.benchmark.tolerance import generate, precision_tolerance
from colorize.cli import main
from colorize.config import TINY_MULT
from colorize.errors import InputError
from colorize.models.vae import AutoencoderKL
from colorize.models.vae_tiling import (
    VaeTiling,
    decode,
    tile_starts,
    tiled_apply,
    tiled_decode,
    tiled_encode,
    use_tiling,
)
from colorize.offload import SequentialOffload, enable_low_vram
from colorize.settings import GenerationSettings
from colorize.speedups import (
    compile_module,
    eager,
    install_cuda_graphs,
    installed,
    remove,
    to_channels_last,
)

pytestmark = pytest.mark.usefixtures("single_thread")
SETTINGS = GenerationSettings(steps=2, sampler="dpmpp_2m", scheduler="karras", reference_cfg=4.0, sketch_cfg=1.0)


def _vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(TINY_MULT.vae).eval()


def _inputs(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    from colorize.benchmark.measure import synthetic_inputs

    return synthetic_inputs((size, size), 1, 0)


# ------------------------------------------------------------------------------------------ VAE tiling


def test_tile_starts_cover_with_overlap_and_alignment() -> None:
    assert tile_starts(10, 16, 4) == [0]
    for length, tile, overlap in ((128, 64, 16), (37, 16, 5), (100, 30, 0)):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in pairwise(starts))  # overlap at least as asked
    assert all(s % 8 == 0 for s in tile_starts(320, 128, 32, align=8))
    with pytest.raises(ValueError):
        tile_starts(64, 16, 16)


def test_feathered_blend_is_exact_for_a_pointwise_map_at_odd_sizes() -> None:
    """Blending weights sum to one everywhere and tiles land where they belong: a map without spatial context
    (nearest ×8 upsampling of an affine function) gives the untiled result on odd sizes."""
    x = torch.randn(2, 4, 37, 23)
    fn = lambda t: F.interpolate(2 * t + 1, scale_factor=8.0, mode="nearest")
    torch.testing.assert_close(tiled_apply(fn, x, 16, 5, 8.0), fn(x), rtol=0, atol=1e-5)


def test_tiled_decode_exact_with_one_tile_and_closer_with_larger_tiles() -> None:
    """Not exact in general (each tile's GroupNorm statistics and mid-block attention see only that tile):
    on this random tiny VAE (1 channel per GroupNorm group, the worst case) the mean |difference| is ~0.25 of the
    image's standard deviation with 16-latent tiles and shrinks as the tiles grow; one tile is the plain decode."""
    vae, z = _vae(), torch.randn(1, 4, 27, 37)
    with torch.no_grad():
        full = vae.decode(z)
        assert torch.equal(tiled_decode(vae, z, tile=40, overlap=8), full)  # one tile covers 27×37
        assert torch.equal(decode(vae, z, "auto"), full)  # 216×296 pixels: below the auto threshold
        errors = [(tiled_decode(vae, z, tile=t, overlap=6) - full).abs().mean().item() for t in (12, 20, 30)]
    assert tiled_decode(vae, z, 16, 6).shape == full.shape == (1, 3, 216, 296)
    assert errors[0] > errors[1] > errors[2] > 0 and errors[0] < 0.4 * full.std().item()


def test_tiled_encode_shapes_and_tiling_rule() -> None:
    vae, x = _vae(), torch.rand(1, 3, 160, 224) * 2 - 1
    with torch.no_grad():
        full, tiled = vae.encode(x), tiled_encode(vae, x, tile=96, overlap=32)
        single = tiled_encode(vae, x, tile=256, overlap=32)
    assert tiled.mean.shape == full.mean.shape == (1, 4, 20, 28) and torch.isfinite(tiled.std).all()
    assert torch.equal(single.mean, full.mean)
    assert (tiled.mean - full.mean).abs().mean() < 0.4 * full.mean.std()
    with pytest.raises(ValueError, match="multiples of 8"):
        tiled_encode(vae, x, tile=100, overlap=32)
    assert use_tiling("on", (64, 64)) and not use_tiling("off", (4096, 4096)) and not use_tiling(False, (8, 8))
    assert use_tiling("auto", (1024, 1032)) and not use_tiling("auto", (1024, 1024))
    assert use_tiling(VaeTiling("auto", auto_pixels=100), (16, 16))
    with pytest.raises(ValueError):
        VaeTiling("sometimes")


# ------------------------------------------------------------------------------------------ offload


class _CopyingOffload(SequentialOffload):
    """A second device on a CPU-only machine: every move to the "device" is a real copy (a new CPU tensor)."""

    def copy_to_device(self, master: torch.Tensor) -> torch.Tensor:
        return master.clone()


def test_offload_moves_to_the_device_and_back_without_copying_back() -> None:
    """Inside the block the weights are device copies, afterwards they are the very CPU masters again (no
    device→host copy), nested uses move once, modules under ``keep_below_bytes`` stay where they are."""
    big, small = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64)), nn.Linear(2, 2)
    masters = [p.data_ptr() for p in big.parameters()]
    off = _CopyingOffload(torch.device("cpu"), keep_below_bytes=1024)
    x = torch.randn(3, 64)
    want = big(x)
    with off.on_device(big=big, small=small):
        inside = [p.data_ptr() for p in big.parameters()]
        assert not set(inside) & set(masters) and off.active() == {"big"} and torch.equal(big(x), want)
        with off.on_device(big=big):
            pass
        assert [p.data_ptr() for p in big.parameters()] == inside
    assert off.resident() == {"small"}  # 24 bytes < 1 KiB
    assert [p.data_ptr() for p in big.parameters()] == masters and not off.active()
    assert off.log == [("big", "device"), ("big", "home")]
    assert off.bytes_moved == sum(p.numel() * 4 for p in big.parameters())
    with pytest.raises(RuntimeError, match="replaced while"), off.on_device(big=big):
        off.manage("big", nn.Linear(1, 1))


def test_offload_adopts_weights_replaced_while_home() -> None:
    """A weight swapped while the module is home (e.g. by channels-last) becomes the new master."""
    lin = nn.Linear(4, 4)
    off = _CopyingOffload(torch.device("cpu"), keep_below_bytes=0)
    off.manage("lin", lin)
    lin.weight.data = torch.ones(4, 4)
    with off.on_device(lin=lin):
        assert torch.equal(lin.weight, torch.ones(4, 4))
    assert torch.equal(lin.weight, torch.ones(4, 4))


def test_low_vram_colorizer_is_bit_identical_and_moves_one_module_at_a_time() -> None:
    model, _ = random_colorizer(TINY_MULT, "cpu", "fp32", seed=0)
    sketch, reference = _inputs()
    before, _ = generate(model, sketch, reference, (64, 64), SETTINGS)
    off = enable_low_vram(model, keep_below_bytes=0)
    assert model.offload is off and model.vae_tiling == "auto"
    seen: list[set[str]] = []
    hooks = [m.register_forward_pre_hook(lambda *_: seen.append(off.active()))
             for m in (model.reference_encoder.visual.conv1, model.sketch_encoder, model.unet, model.vae.decoder)]
    after, _ = generate(model, sketch, reference, (64, 64), SETTINGS)
    for h in hooks:
        h.remove()
    assert torch.equal(before, after)
    names = ("reference_encoder", "sketch_encoder", "unet", "vae")
    assert {frozenset(s) for s in seen} == {frozenset({n}) for n in names}  # each module alone on the device
    assert [n for n, where in off.log if where == "device"] == list(names)
    assert not off.active()

    built, _ = random_colorizer(TINY_MULT, "cpu", "fp32", seed=0, low_vram=True)  # the Colorizer(low_vram=True) path
    assert built.offload is not None and built.offload.resident() == {"reference_encoder", "sketch_encoder", "unet",
                                                                      "vae"}  # tiny: all under 512 MiB
    assert torch.equal(generate(built, sketch, reference, (64, 64), SETTINGS)[0], before)


# ------------------------------------------------------------------------------------------ speed-ups


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    net, x = nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(3, 4)
    want = net(x)

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **_k: broken)
    state = compile_module(net)
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        assert torch.equal(net(x), want)
    assert not state.active and "RuntimeError" in state.fallback
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(net(x), want)  # warned once, eager from then on
    remove(net)
    assert "forward" not in vars(net) and not installed(net)


def test_compile_eager_backend_and_eager_override() -> None:
    net, x = nn.Sequential(nn.Linear(4, 4), nn.ReLU()), torch.randn(3, 4)
    want = net(x)
    state = compile_module(net, backend="eager")
    assert torch.equal(net(x), want) and state.active and installed(net) == [state]
    with eager():
        assert torch.equal(net(x), want)


def test_cuda_graphs_run_eager_off_cuda_and_channels_last_keeps_results() -> None:
    model, _ = random_colorizer(TINY_MULT, "cpu", "fp32", seed=0)
    x, t = torch.randn(2, 4, 8, 8), torch.full((2,), 500.0)
    ctx = torch.randn(2, 256, TINY_MULT.unet.context_dim)
    with torch.no_grad():
        want = model.unet(x, t, ctx)
        state = install_cuda_graphs(model.unet)
        assert torch.equal(model.unet(x, t, ctx), want) and state.details["graphs"] == 0 and state.active
        remove(model.unet)
        assert to_channels_last(model.unet) > 0 and to_channels_last(model.unet) == 0
        # other convolution kernels, other rounding: close, not bit-identical
        assert (model.unet(x, t, ctx) - want).abs().max() < 1e-3 * (1 + want.abs().max())


# ------------------------------------------------------------------------------------------ bench flags


def test_bench_flags_parse_and_cuda_only_options_are_refused_on_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    a = build_parser().parse_args(["--low-vram", "--memory-cap-gib", "8", "--compile", "--compile-mode",
                                   "max-autotune", "--channels-last", "--vae-tiling", "on", "--cuda-graphs",
                                   "--tolerance", "--tolerance-res", "512"])
    assert (a.low_vram, a.memory_cap_gib, a.compile, a.compile_mode, a.channels_last, a.vae_tiling, a.cuda_graphs,
            a.tolerance, a.tolerance_res) == (True, 8.0, True, "max-autotune", True, "on", True, True, 512)
    d = build_parser().parse_args([])
    assert not (d.low_vram or d.compile or d.cuda_graphs or d.channels_last or d.tolerance)
    assert d.vae_tiling is None and d.memory_cap_gib is None
    base = ["bench", "--device", "cpu", "--config", "tiny", "--res", "64", "--steps", "1", "--runs", "1"]
    for flags, message in ((["--memory-cap-gib", "8"], "--memory-cap-gib need a CUDA device"),
                           (["--cuda-graphs"], "--cuda-graphs need a CUDA device"),
                           (["--vae-tile", "8", "--vae-overlap", "8"], "--vae-overlap must be"),
                           (["--tolerance", "--checkpoint", "x"], "--tolerance compares precisions")):
        assert main(base + flags) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(InputError, match="cannot be combined with --low-vram"):  # checked before any CUDA use
        check(build_parser().parse_args(["--low-vram", "--cuda-graphs"]), torch.device("cuda"))


def test_bench_low_vram_tiled_channels_last_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--config", "tiny", "--res", "64", "--steps", "1", "--runs", "1",
                 "--warmup", "0", "--unet-iters", "1", "--no-flops", "--low-vram", "--vae-tiling", "on",
                 "--vae-tile", "4", "--vae-overlap", "1", "--channels-last", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    opts, (r,) = doc["options"], doc["results"]
    assert opts["low_vram"] and opts["vae_tiling"] == {"mode": "on", "tile": 4, "overlap": 1, "auto_pixels": 1 << 20}
    assert opts["channels_last_tensors"] > 0 and opts["unet_speedups"] == [] and doc["tolerance"] is None
    assert r["vae_tiled"] and r["tiling_mean_abs_vs_untiled"] > 0 and r["output_finite"]
    assert r["offload_gb_moved_per_generation"] == 0.0  # CPU "device": every move is a no-op


def test_precision_tolerance_against_fp32() -> None:
    """fp32 through the half-precision code path (copied modules) is exact; bf16 stays finite and close."""
    s = GenerationSettings(steps=1, sampler="euler", scheduler="karras", reference_cfg=4.0, sketch_cfg=1.0)
    tol = precision_tolerance(TINY_MULT, "cpu", (64, 64), s, precisions=("fp32", "bf16"))
    assert tol["res"] == "64x64" and tol["fp32"]["image"]["max_abs"] == 0.0
    bf16 = tol["bf16"]
    assert bf16["finite"] and 0 < bf16["image"]["mean_abs"] < 0.1 and bf16["image"]["psnr_db"] > 20
