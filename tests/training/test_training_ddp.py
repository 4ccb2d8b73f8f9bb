"""One global batch, three ways: one process with batch 4; batch 2 × 2 accumulation steps; ``torchrun`` with two
gloo processes of batch 2 (DDP). All three see the same samples with the same noise (randomness is keyed by
(seed, step, slot in the global batch)), so they must agree up to floating-point summation order.

What "agree" means, and why not bitwise: the per-process batches go through the convolutions with a different
batch size (other blocking, other rounding), and DDP averages the two processes' gradients in another order than
one backward pass sums them; gradients thus differ at rounding level (~1e-7 relative). AdamW's first step is
``lr · g / (|g| + eps)`` ≈ ``lr · sign(g)``, so a parameter whose true gradient is 0 (e.g. a bias followed by a
GroupNorm, which removes it) moves by up to ``lr`` in a direction set by rounding noise. So the test checks:
the losses of both steps (relative 1e-5), the (clipped) gradients of both steps recovered from AdamW's first moment
(relative L2 1e-5 / 1e-4), and the parameters after step 1: equal within a few float32 ulps wherever
``|g| > 1e-6``, and within ``2·lr`` where the gradient is rounding noise. Images are 128² so that the tiny U-Net's 2×2 bottleneck
gives its GroupNorms 8 values each (at 64² it is 1×1 and a 2-value GroupNorm magnifies rounding errors).

One colour image of the data is corrupt, and it falls to the second process in step 1: every run replaces it by
the next readable record; the DDP run must share what its second process found, so that the first one logs it
(once) and checkpoints it as the single-process run does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _helpers import torchrun_training

from colorize.config import TINY_MULT
from training.batches import BatchPlan
from training.config import config_from_dict
from training.logs import read_log, step_lines
from training.synthetic import make_synthetic_dataset

LR, BETA1 = 1e-3, 0.9


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from colorize.tiny import write_tiny_weights

    base = tmp_path_factory.mktemp("ddp")
    files = write_tiny_weights(base / "models", TINY_MULT, seed=0)
    data = make_synthetic_dataset(base / "data", 10, (112, 144), "folders", seed=3)
    bad = data / "color" / CORRUPT
    bad.write_bytes(bad.read_bytes()[:300])
    return {"ckpt": files["mult-eps-ft"], "clip": files["clip-vit-h-14"], "data": data, "base": base}


# the first sample of the second process (slots 2-3 of the global batch 4) in step 1
CORRUPT = f"{BatchPlan(10, 2, 1, 2, 0, ((128, 128),)).micro_batch(0, 0, 1)[0].index:05d}.png"


def run_config(assets: dict[str, Path], out: Path, batch: int, accum: int, checkpointing: bool = False) -> dict[str, Any]:
    """Recomputation (gradient checkpointing) does not change the numbers, so only the DDP run pays for it."""
    return {
        "stage": "stage1_noisy",
        "model": {"init": str(assets["ckpt"]), "clip": str(assets["clip"]), "gradient_checkpointing": checkpointing},
        "data": {"root": str(assets["data"])},
        "augment": {"buckets": [[128, 128]], "load_size": None},
        "optim": {"lr": LR, "betas": [BETA1, 0.999]},
        "run": {"out_dir": str(out), "max_steps": 2, "batch_size": batch, "grad_accum": accum, "precision": "fp32",
                "device": "cpu", "save_every": 1, "keep_checkpoints": 0, "log_every": 1, "export": False},
    }


def train_in_process(cfg: dict[str, Any]) -> list[str]:
    """Run; returns the trainable parameter names in optimiser order."""
    from training.engine import Trainer

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tr = Trainer(config_from_dict(cfg))
        tr.train()
    finally:
        torch.set_num_threads(n)
    names = {id(p): k for k, p in tr.mods.denoiser.named_parameters()}
    return [names[id(p)] for p in tr.params]


def states(out: Path) -> list[dict[str, Any]]:
    return [torch.load(out / "checkpoints" / f"step_{s:08d}.pt", weights_only=True) for s in (1, 2)]


def gradients(s1: dict[str, Any], s2: dict[str, Any], names: list[str]) -> tuple[dict, dict]:
    """Clipped gradients of steps 1 and 2 from AdamW's first moment: m1 = (1-β1) g1, m2 = β1 m1 + (1-β1) g2."""
    m1 = {n: s1["optimizer"]["state"][i]["exp_avg"] for i, n in enumerate(names)}
    m2 = {n: s2["optimizer"]["state"][i]["exp_avg"] for i, n in enumerate(names)}
    g1 = {n: m1[n] / (1 - BETA1) for n in names}
    g2 = {n: (m2[n] - BETA1 * m1[n]) / (1 - BETA1) for n in names}
    return g1, g2


def rel_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a)
    den = sum(float(a[k].double().pow(2).sum()) for k in a)
    return (num / den) ** 0.5


def skip_events(out: Path) -> list[tuple[int, str]]:
    return [(r["step"], r["key"]) for r in read_log(out) if r.get("event") == "skipped_sample"]


def assert_same_training(ref: Path, other: Path, names: list[str]) -> None:
    la, lb = [r["loss"] for r in step_lines(read_log(ref))], [r["loss"] for r in step_lines(read_log(other))]
    assert len(la) == len(lb) == 2
    assert la == pytest.approx(lb, rel=1e-5)
    assert skip_events(ref) == skip_events(other) == [(1, CORRUPT)]
    (a1, a2), (b1, b2) = states(ref), states(other)
    assert [b["key"] for b in a2["bad_samples"]] == [b["key"] for b in b2["bad_samples"]] == [CORRUPT]
    ga1, ga2 = gradients(a1, a2, names)
    gb1, gb2 = gradients(b1, b2, names)
    assert rel_l2(ga1, gb1) < 1e-5
    assert rel_l2(ga2, gb2) < 1e-4
    noise_params = 0
    for n in names:
        signal = ga1[n].abs() > 1e-6
        d = (a1["model"][n] - b1["model"][n]).abs()
        ulps = 1e-7 + 1e-6 * a1["model"][n].abs()  # a few float32 ulps
        assert bool((torch.where(signal, d, 0) <= ulps).all()), n
        assert float(torch.where(signal, 0, d).max()) <= 2 * LR, n
        noise_params += int((~signal).sum())
    assert noise_params < 0.5 * sum(a1["model"][n].numel() for n in names)


@pytest.fixture(scope="module")
def reference_run(assets: dict[str, Path]) -> tuple[Path, list[str]]:
    out = assets["base"] / "single"
    return out, train_in_process(run_config(assets, out, batch=4, accum=1))


def test_gradient_accumulation_matches_one_batch(assets: dict[str, Path], reference_run: tuple[Path, list[str]]) -> None:
    ref, names = reference_run
    out = assets["base"] / "accum"
    assert train_in_process(run_config(assets, out, batch=2, accum=2)) == names
    assert_same_training(ref, out, names)


def test_two_process_ddp_matches_single_process(assets: dict[str, Path], reference_run: tuple[Path, list[str]],
                                                tmp_path: Path) -> None:
    ref, names = reference_run
    out = assets["base"] / "ddp"
    cfg = run_config(assets, out, batch=2, accum=1, checkpointing=True)
    cfg["run"]["export"] = True
    assert "done: step 2" in torchrun_training(cfg, tmp_path / "ddp.json", timeout=300)
    assert_same_training(ref, out, names)
    assert len(list((out / "export").glob("*.safetensors"))) == 1  # written once, by rank 0
