"""Evaluation: FID / PSNR / (MS-)SSIM / CLIP similarity against closed forms, TPS, the sketch extractor,
the FID Inception loader, and the whole protocol end to end on tiny weights (nothing is downloaded)."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from colorize.config import TINY_CLIP
from colorize.errors import WeightsMissingError
from colorize.evaluate import inception as inc
from colorize.evaluate.metrics import (
    MS_SSIM_WEIGHTS,
    clip_similarity,
    fid_from_features,
    ms_ssim,
    psnr,
    ssim,
)
from colorize.evaluate.protocol import EvalSettings, derangement, evaluate, load_square
from colorize.evaluate.report import write_report
from colorize.evaluate.tps import identity_grid, random_tps, tps_warp
from colorize.extractors.classic import high_pass

C1, C2 = 0.01**2, 0.03**2


# ------------------------------------------------------------------------------------------ FID


def exact_gaussian(n: int, mu: torch.Tensor, a: torch.Tensor, seed: int) -> torch.Tensor:
    """n samples whose *sample* mean is mu and *sample* covariance (N − 1) is exactly a·aᵀ."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, mu.numel(), generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    chol = torch.linalg.cholesky(z.T @ z / (n - 1))
    z = z @ torch.linalg.inv(chol).T  # sample covariance now the identity
    return z @ a.T + mu


def test_fid_matches_closed_form_for_commuting_gaussians() -> None:
    d = 6
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    s1, s2 = torch.rand(d, generator=g, dtype=torch.float64) + 0.2, torch.rand(d, generator=g, dtype=torch.float64) * 3
    rot, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))  # shared eigenbasis
    f1 = exact_gaussian(300, mu1, rot @ torch.diag(s1), 1)
    f2 = exact_gaussian(200, mu2, rot @ torch.diag(s2), 2)
    # N(mu1, R S1² Rᵀ) vs N(mu2, R S2² Rᵀ): ‖Δμ‖² + Σ (s1_i − s2_i)²
    expected = float(((mu1 - mu2) ** 2).sum() + ((s1 - s2) ** 2).sum())
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_fid_matches_closed_form_for_non_commuting_2x2() -> None:
    # for 2×2 PSD matrices Tr((S1 S2)^½) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2))
    a1 = torch.tensor([[1.0, 0.0], [0.8, 0.6]], dtype=torch.float64)
    a2 = torch.tensor([[0.3, -1.1], [0.0, 2.0]], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([2.0, 0.25], dtype=torch.float64)
    s1, s2 = a1 @ a1.T, a2 @ a2.T
    assert not torch.allclose(s1 @ s2, s2 @ s1)
    tr_sqrt = math.sqrt(float(torch.trace(s1 @ s2)) + 2 * math.sqrt(float(torch.det(s1) * torch.det(s2))))
    expected = float(((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2)) - 2 * tr_sqrt
    f1, f2 = exact_gaussian(50, mu1, a1, 3), exact_gaussian(70, mu2, a2, 4)
    assert fid_from_features(f1, f2) == pytest.approx(expected, rel=1e-9)


def test_fid_is_invariant_to_order_symmetric_and_zero_on_itself() -> None:
    g = torch.Generator().manual_seed(5)
    f1, f2 = torch.randn(64, 10, generator=g), torch.randn(48, 10, generator=g) * 1.5 + 0.3
    base = fid_from_features(f1, f2)
    assert base > 0.1
    assert fid_from_features(f1[torch.randperm(64, generator=g)], f2[torch.randperm(48, generator=g)]) == pytest.approx(base, rel=1e-10)
    assert fid_from_features(f2, f1) == pytest.approx(base, rel=1e-9)
    assert fid_from_features(f1, f1) == pytest.approx(0.0, abs=1e-8)
    # fewer samples than dimensions (singular covariances) still gives a finite, non-negative value
    assert 0 <= fid_from_features(f1[:5], f2[:7]) < math.inf


# ------------------------------------------------------------------------------------------ PSNR / SSIM


def test_psnr_known_cases() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 20, 24, generator=g) * 0.4 + 0.3
    assert torch.isinf(psnr(a, a)).all()
    for d in (0.01, 0.1, 0.25):
        assert torch.allclose(psnr(a, a + d), torch.full((3,), 20 * math.log10(1 / d), dtype=torch.float64), atol=1e-6)
    b = a + torch.rand(a.shape, generator=g) * 0.1
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(psnr(a, b), 10 * torch.log10(1 / mse))
    assert torch.allclose(psnr(a * 255, b * 255, data_range=255.0), psnr(a, b))
    assert torch.allclose(psnr(a, b), psnr(b, a))


def test_ms_ssim_identity_symmetry_and_noise() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 96, 80, generator=g)
    assert torch.equal(ms_ssim(x, x), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    z = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(ms_ssim(x, y), ms_ssim(y, x), atol=1e-12)
    assert (ms_ssim(x, z) < ms_ssim(x, y)).all() and (ms_ssim(x, y) < 1).all()


def test_ms_ssim_of_constant_images_is_the_luminance_term() -> None:
    # flat images: σ = 0 so cs = C2/C2 = 1 at every scale; only the coarsest luminance remains:
    # MS-SSIM = l^{w_5}, l = (2ab + C1)/(a² + b² + C1); single-scale SSIM = l
    a, b = 0.2, 0.7
    x, y = torch.full((1, 3, 64, 64), a), torch.full((1, 3, 64, 64), b)
    lum = (2 * a * b + C1) / (a * a + b * b + C1)
    assert float(ssim(x, y)) == pytest.approx(lum, rel=1e-6)
    assert float(ms_ssim(x, y)) == pytest.approx(lum ** MS_SSIM_WEIGHTS[-1], rel=1e-6)


def test_clip_similarity_identity_symmetry_range() -> None:
    from colorize.models.clip import ReferenceEncoder

    torch.manual_seed(0)
    enc = ReferenceEncoder(TINY_CLIP, with_text=False)
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(2, 3, 48, 48, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    assert torch.allclose(clip_similarity(enc, a, a), torch.ones(2, dtype=torch.float64), atol=1e-6)
    s = clip_similarity(enc, a, b)
    assert torch.allclose(s, clip_similarity(enc, b, a), atol=1e-9)
    assert ((s >= -1) & (s <= 1) & (s < 0.999999)).all()


# ------------------------------------------------------------------------------------------ TPS


def test_tps_zero_displacement_is_identity_and_keeps_size() -> None:
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 3, 37, 53, generator=g)
    control = torch.rand(3, 10, 2, generator=g) * 2 - 1
    out = tps_warp(img, control, torch.zeros(3, 10, 2))
    assert out.shape == img.shape and out.dtype == img.dtype
    assert torch.allclose(out, img, atol=1e-6)


def test_tps_uniform_displacement_is_a_translation() -> None:
    # equal displacements d → f(p) = p + d exactly (affine part); bilinear sampling reproduces a linear ramp
    h, w = 33, 41
    ramp = torch.linspace(-1, 1, w, dtype=torch.float64).view(1, 1, 1, w).expand(1, 1, h, w)
    control = torch.tensor([[[-0.5, -0.5], [0.6, -0.4], [0.0, 0.7], [-0.7, 0.3], [0.4, 0.5]]], dtype=torch.float64)
    d = torch.tensor([0.1, -0.05], dtype=torch.float64).expand(1, 5, 2)
    out = tps_warp(ramp, control, d)
    inner = out[..., :, : w - 6]  # away from the right border, where the source runs out
    assert torch.allclose(inner, (ramp + 0.1)[..., :, : w - 6], atol=1e-9)


def test_random_tps_deforms_deterministically_and_keeps_size() -> None:
    img = torch.zeros(1, 3, 64, 48)
    img[..., 20:44, 14:34] = 1.0
    a = random_tps(img, generator=torch.Generator().manual_seed(7))
    b = random_tps(img, generator=torch.Generator().manual_seed(7))
    assert a.shape == img.shape and torch.equal(a, b)
    assert (a - img).abs().mean() > 1e-3


def test_random_tps_shifts_stay_within_a_few_sigma() -> None:
    # warping the coordinate ramps themselves gives the displacement field (bilinear is exact on ramps)
    size, sigma = 112, 10 / 224
    coords = identity_grid(1, (size, size)).permute(0, 3, 1, 2).contiguous()  # (1, 2, H, W): x, y
    worst = []
    for seed in range(20):
        warped = random_tps(coords, sigma=sigma, generator=torch.Generator().manual_seed(seed))
        shift_px = (warped - coords).norm(dim=1) * (size - 1) / 2
        worst.append(float(shift_px.max()))
        assert float(shift_px[0, 0, 0]) < 1e-6 and float(shift_px[0, -1, -1]) < 1e-6  # pinned corners
    assert max(worst) < 5 * sigma * size and sum(worst) / len(worst) > 0.5 * sigma * size


# ------------------------------------------------------------------------------------------ sketches, pairing


def test_high_pass_draws_dark_lines_on_white() -> None:
    img = torch.full((1, 3, 96, 96), 0.9)
    img[..., 10:12, 5:90] = 0.1  # a dark horizontal stroke
    img[..., 30:90, 30:90] = torch.tensor([0.9, 0.2, 0.2]).view(1, 3, 1, 1)  # a flat red patch
    s = high_pass(img)
    assert s.shape == (1, 3, 96, 96) and s.min() >= 0 and s.max() <= 1
    assert s[0, 0, 10, 40] < 0.2 and s[0, 0, 50, 10] == 1.0  # the stroke is a line, the paper stays white
    assert s[0, 0, 31, 60] < 0.9 and s[0, 0, 60, 60] == 1.0  # the patch gets an outline, its inside no lines
    assert torch.equal(high_pass(torch.full((2, 3, 16, 16), 0.4)), torch.ones(2, 3, 16, 16))


def test_derangement_has_no_fixed_point() -> None:
    for n in (2, 3, 8, 31):
        p = derangement(n, seed=n)
        assert sorted(p) == list(range(n)) and all(i != j for i, j in enumerate(p))
        assert p == derangement(n, seed=n)


# ------------------------------------------------------------------------------------------ Inception


def random_inception_state_dict(num_classes: int) -> dict[str, torch.Tensor]:
    """Quick random weights in the torchvision layout (meta build, then filled: BN identity, convs He-like)."""
    with torch.device("meta"):
        net = inc.build_inception(num_classes)
    g = torch.Generator().manual_seed(0)
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.zeros((), dtype=torch.long)
        elif k.endswith(("running_var", ".bn.weight")):
            sd[k] = torch.ones(v.shape)
        elif k.endswith(("running_mean", ".bias")):
            sd[k] = torch.zeros(v.shape)
        else:
            sd[k] = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
    return sd


def test_inception_loader_round_trip_and_fid_pooling(tmp_path: Path) -> None:
    sd = random_inception_state_dict(inc.FID_NUM_CLASSES)
    sd["AuxLogits.fc.weight"] = torch.zeros(3, 768)  # aux head keys are ignored
    torch.save(sd, tmp_path / "fid.pth")
    model = inc.load_inception(tmp_path / "fid.pth")
    assert model.fid_graph
    assert all(torch.equal(v, sd[k]) for k, v in model.net.state_dict().items())
    x = torch.rand(1, 3, 80, 96, generator=torch.Generator().manual_seed(1))
    f = model(x)
    assert f.shape == (1, inc.FEATURE_DIM) and torch.isfinite(f).all()
    # the FID graph's pooling differs from torchvision's (border pixels of the average pools)
    h = torch.rand(1, 192, 9, 9, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(inc._block_a(model.net.Mixed_5b, h, True), inc._block_a(model.net.Mixed_5b, h, False))
    assert not inc.inception_from_state_dict(random_inception_state_dict(1000)).fid_graph
    with pytest.raises(ValueError, match="Inception"):
        inc.inception_from_state_dict({"fc.weight": torch.zeros(10, 7)})


def test_missing_inception_names_file_and_source(tmp_path: Path) -> None:
    with pytest.raises(WeightsMissingError) as e:
        inc.resolve_inception("fid-inception", tmp_path, download=False)
    msg = str(e.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in msg and "https://github.com/mseitzer/pytorch-fid" in msg
    assert str(tmp_path) in msg


def test_inception_download_checks_the_hash_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   fake_hub: object) -> None:
    from colorize import download

    fake_hub.add("github", "pt_inception.pth", b"not the weights")  # type: ignore[attr-defined]
    url = f"{fake_hub.url}/github/resolve/main/pt_inception.pth"  # type: ignore[attr-defined]
    monkeypatch.setattr(download, "resolve_url", lambda entry: url)
    with pytest.raises(WeightsMissingError, match="sha256"):
        inc.resolve_inception("fid-inception", tmp_path, download=True)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing partial left behind


# ------------------------------------------------------------------------------------------ end to end


class TinyFeatures(torch.nn.Module):
    """A tiny random feature extractor standing in for Inception (injected; no download)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 12, 5, stride=4)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x * 2 - 1)).mean(dim=(2, 3))


def write_image_folder(folder: Path, n: int = 8) -> list[Path]:
    """n non-square colour images: flat background, a filled shape with a dark outline."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        im = Image.new("RGB", (96, 80), tuple(int(v) for v in rng.integers(150, 255, 3)))
        d = ImageDraw.Draw(im)
        box = [int(v) for v in (rng.integers(5, 30), rng.integers(5, 25), rng.integers(55, 90), rng.integers(45, 75))]
        d.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 255, 3)), outline=(10, 10, 10), width=2)
        paths.append(folder / f"img{i}.png")
        im.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from colorize.pipeline import Colorizer
    from colorize.tiny import write_tiny_weights

    files = write_tiny_weights(tmp_path_factory.mktemp("models"))
    return Colorizer.from_files(*files.values(), device="cpu")


def test_evaluation_end_to_end_on_tiny_weights(tiny_model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    images = write_image_folder(tmp_path / "gt")
    feats = TinyFeatures()
    samples: dict[tuple[str, str], torch.Tensor] = {}
    settings = EvalSettings(size=64, steps=1, sampler="euler", scheduler="karras", batch_size=5, sheet_rows=3)
    result = evaluate(tiny_model, images, settings, fid_features=feats,
                      on_sample=lambda proto, name, img: samples.__setitem__((proto, name), img))
    paths = write_report(result, tmp_path / "out")

    summary = json.loads(paths["summary.json"].read_text())["summary"]
    assert summary["images"] == 8 and summary["size"] == 64
    # FID recomputed independently from the saved results and the ground truths
    gt = torch.cat([load_square(p, 64) for p in images])
    fake = torch.cat([samples[("random", p.stem)] for p in images])
    assert summary["fid"] == pytest.approx(fid_from_features(feats(fake), feats(gt)), rel=1e-6)
    # per-image PSNR against a plain numpy MSE
    with open(paths["per_image.csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [p.name for p in images]
    assert all(r["random_reference"] != r["name"] for r in rows)
    for p, r in zip(images, rows):
        mse = np.mean((samples[("tps", p.stem)].double().numpy() - load_square(p, 64).double().numpy()) ** 2)
        assert float(r["psnr"]) == pytest.approx(10 * math.log10(1 / mse), rel=1e-6)
        assert 0 <= float(r["ms_ssim"]) <= 1 and -1 <= float(r["clip_similarity"]) <= 1
    assert summary["psnr"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]))
    with open(paths["summary.csv"], newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["fid"]) == pytest.approx(summary["fid"])
    with Image.open(paths["contact_sheet.png"]) as sheet:
        # 6 columns (gt, sketch, 2 × (reference, result)) of 64 px thumbnails, 3 rows, 4 px padding, 16 px header
        assert sheet.size == (4 + 6 * 68, 16 + 4 + 3 * 68)
    with pytest.raises(FileExistsError):
        write_report(result, tmp_path / "out")


def test_evaluate_cli_with_injected_extractor(tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import colorize.evaluate.cli as ecli
    from colorize.cli import main

    write_image_folder(tmp_path / "gt", n=3)
    monkeypatch.setattr(ecli, "load_models", lambda args: (tiny_model, TinyFeatures()))
    argv = ["evaluate", "--images", str(tmp_path / "gt"), "--out", str(tmp_path / "out"), "--size", "64",
            "--steps", "1", "--sampler", "euler", "--scheduler", "karras", "--save-images"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "FID" in out and "MS-SSIM" in out
    assert len(list((tmp_path / "out" / "samples" / "tps").glob("*.png"))) == 3
    assert main(argv) == 2  # never overwrites without --overwrite
    assert "exist" in capsys.readouterr().err


def test_evaluate_cli_names_missing_inception(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from colorize.cli import main
    from colorize.tiny import write_tiny_weights

    write_tiny_weights(tmp_path / "models")
    write_image_folder(tmp_path / "gt", n=2)
    code = main(["evaluate", "--images", str(tmp_path / "gt"), "--out", str(tmp_path / "out"),
                 "--models-dir", str(tmp_path / "models"), "--no-download", "--size", "64"])
    assert code == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
