"""Text manipulation of reference tokens: PWV breakpoints, local/global edits, sequencing, heatmap, quirk fixes."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from colorize.manipulation import (
    EVERYTHING,
    Edit,
    compute_pwv,
    control_heatmap,
    global_manipulate,
    jet_colormap,
    levels_to_uint8,
    local_manipulate,
    parse_bool,
    pwv_from_normalized,
    stratify,
)
from colorize.parity.core import load_fixture, run_fixture

D = 24  # token / text width of the synthetic tests
PROMPTS = ("hair", "blonde hair", "brown hair", "sky", "red eyes")


def _unit(seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(D, generator=torch.Generator().manual_seed(seed)), dim=0)


TEXT = {p: _unit(100 + i) for i, p in enumerate(PROMPTS)}


class Recorder:
    """Fixed-vector text encoder that remembers every prompt it was asked for."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        self.seen += prompts
        return torch.stack([TEXT[p] for p in prompts])[:, None]


def _tokens(b: int = 2, n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 1 + n, D, generator=torch.Generator().manual_seed(seed))


def _proj(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    return x @ u[:, None]


# ----------------------------------------------------------------------------- parity
def test_parity_manipulation_fixture(fixture_dir: Path) -> None:
    res = run_fixture(load_fixture(fixture_dir / "manipulation.json"))
    assert res.passed, (res.error, {k: v for k, v in res.per_output.items() if not v[2]})


# ----------------------------------------------------------------------------- PWV (Eq. 5.11)
TS = (0.3, 0.45, 0.6, 0.85)


@pytest.mark.parametrize("d,r", [(2.0, 2.0), (-1.5, 2.0), (3.0, 3.5), (0.7, 1.0)])
def test_pwv_breakpoints_left_right_values(d: float, r: float) -> None:
    t0, t1, t2, t3 = TS
    eps = 1e-4
    m = torch.tensor([0.0, t0, t0 + eps, t1, t1 + eps, t2, t2 + eps, t3, t3 + eps, 1.0], dtype=torch.float64)
    w = pwv_from_normalized(m, d, TS, r)
    slope01, slope12, slope23 = d / (t1 - t0), 0.5 * d / (t2 - t1), 0.5 * d / (t3 - t2)
    expected = [
        -r * d,  # m = 0: most related region
        -r * d,  # m = ts0 belongs to the left piece (m <= ts0)
        -d + slope01 * eps,  # right of ts0: the official ramp starts at -d (jump of (r-1)·d)
        0.0,  # ts1 (left piece end: -d + d = 0)
        slope12 * eps,  # right of ts1: continuous
        0.5 * d,  # ts2
        0.5 * d + slope23 * eps,  # right of ts2: continuous
        d,  # ts3
        d,  # right of ts3: constant d
        d,
    ]
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    jump = (w[2] - w[1]).item()
    assert abs(jump - (r - 1) * d) < 2 * abs(slope01) * eps  # the documented jump at ts0 (none when r = 1)


def test_pwv_piece_midpoints_and_monotonic() -> None:
    t0, t1, t2, t3 = TS
    d = 4.0
    mids = torch.tensor([(t0 + t1) / 2, (t1 + t2) / 2, (t2 + t3) / 2], dtype=torch.float64)
    torch.testing.assert_close(pwv_from_normalized(mids, d, TS), torch.tensor([-0.5 * d, 0.25 * d, 0.75 * d],
                                                                               dtype=torch.float64))
    m = torch.linspace(t0 + 1e-9, 1, 1001, dtype=torch.float64)
    w = pwv_from_normalized(m, d, TS)
    assert (w.diff() >= -1e-12).all()  # non-decreasing after ts0 for d > 0


def test_compute_pwv_normalises_per_sample_and_is_affine_invariant() -> None:
    s = torch.randn(3, 50, 1, generator=torch.Generator().manual_seed(3))
    d = torch.tensor([1.0, -2.0, 0.5]).view(3, 1, 1)
    w = compute_pwv(s, d, TS, 2.0)
    assert w.shape == (3, 50, 1)
    scaled = s * torch.tensor([3.0, 0.1, 7.0]).view(3, 1, 1) + torch.tensor([5.0, -1.0, 0.0]).view(3, 1, 1)
    torch.testing.assert_close(compute_pwv(scaled, d, TS, 2.0), w, rtol=0, atol=1e-5)
    for i in range(3):  # min token → -r·d, max token → d
        assert w[i, s[i].argmin(), 0] == pytest.approx(-2.0 * d[i].item())
        assert w[i, s[i].argmax(), 0] == pytest.approx(d[i].item())


def test_compute_pwv_degenerate_inputs_stay_finite() -> None:
    w = compute_pwv(torch.full((1, 10, 1), 0.3), 1.5)  # constant map: treated as "everything" (ω = d)
    torch.testing.assert_close(w, torch.full((1, 10, 1), 1.5))
    m = torch.linspace(0, 1, 101)
    w = pwv_from_normalized(m, 1.0, (0.4, 0.4, 0.7, 0.7))  # empty intervals: steps, no NaN
    assert torch.isfinite(w).all()
    assert w[m <= 0.4].eq(-2.0).all() and w[m > 0.7].eq(1.0).all()


# ----------------------------------------------------------------------------- local (Alg. 2)
def test_local_everything_no_anchor_is_uniform_shift_and_extrapolates() -> None:
    v = _tokens()
    e = TEXT["blonde hair"]
    for scale in (0.0, 3.0, 20.0, -7.5):
        out = local_manipulate(v, [Edit("blonde hair", scale, control="everything")], Recorder())
        d = scale - _proj(v[:, :1], e)  # (b,1,1): the CLS strength gap of Eq. 5.12
        torch.testing.assert_close(out[:, 1:], v[:, 1:] + d * e, rtol=0, atol=1e-5)
        torch.testing.assert_close(out[:, :1], v[:, :1], rtol=0, atol=0)  # CLS never changes


def test_local_anchor_enhance_matches_eq_5_13() -> None:
    v = _tokens(seed=1)
    e, a = TEXT["blonde hair"], TEXT["brown hair"]
    out = local_manipulate(v, [Edit("blonde hair", 5.0, anchor="brown hair", enhance=True)], Recorder())
    d = 5.0 - _proj(v[:, :1], a)  # enhanced: gap measured on the anchor
    loc = v[:, 1:]
    torch.testing.assert_close(out[:, 1:], loc + (d + _proj(loc, a)) * (e - a), rtol=0, atol=1e-5)
    out = local_manipulate(v, [Edit("blonde hair", 5.0, anchor="brown hair")], Recorder())
    d = 5.0 - _proj(v[:, :1], e)  # not enhanced: gap measured on the target, β = 0
    torch.testing.assert_close(out[:, 1:], loc + d * (e - a), rtol=0, atol=1e-5)


def test_local_control_weights_follow_pwv_and_are_affine_in_target_scale() -> None:
    v = _tokens(seed=2)
    e, c = TEXT["blonde hair"], TEXT["hair"]
    enc = Recorder()

    def run(scale: float, **kw) -> torch.Tensor:
        return local_manipulate(v, [Edit("blonde hair", scale, control="hair", thresholds=TS, **kw)], enc)

    for scale in (20.0, -4.0):
        out = run(scale)
        d = scale - _proj(v[:, :1], e)
        w = compute_pwv(_proj(v[:, 1:], c), d, TS, 2.0)
        torch.testing.assert_close(out[:, 1:], v[:, 1:] + w * e, rtol=0, atol=1e-5)
        s = _proj(v[:, 1:], c)[..., 0]
        for i in range(v.shape[0]):  # the most / least control-related tokens get -r·d and +d
            lo, hi = s[i].argmin(), s[i].argmax()
            torch.testing.assert_close(out[i, 1 + lo] - v[i, 1 + lo], -2.0 * d[i, 0, 0] * e, rtol=0, atol=1e-4)
            torch.testing.assert_close(out[i, 1 + hi] - v[i, 1 + hi], d[i, 0, 0] * e, rtol=0, atol=1e-4)
    for kw in ({}, {"anchor": "brown hair"}, {"anchor": "brown hair", "enhance": True}):
        f0, f1, f20 = run(0.0, **kw), run(1.0, **kw), run(20.0, **kw)
        torch.testing.assert_close(f20 - f0, 20.0 * (f1 - f0), rtol=0, atol=2e-4)


def test_local_enhance_without_anchor_has_no_effect() -> None:
    v = _tokens(seed=3)
    plain = local_manipulate(v, [Edit("sky", 2.0, control="hair")], Recorder())
    enhanced = local_manipulate(v, [Edit("sky", 2.0, control="hair", enhance=True)], Recorder())
    torch.testing.assert_close(plain, enhanced, rtol=0, atol=0)


def test_local_sequential_equals_one_by_one() -> None:
    v = _tokens(b=3, seed=4)
    e1 = Edit("blonde hair", 4.0, anchor="brown hair", control="hair", enhance=True, thresholds=TS)
    e2 = Edit("sky", -1.5, control="red eyes", thresholds=(0.2, 0.5, 0.6, 0.9), ratio=3.0)
    e3 = Edit("red eyes", 20.0, anchor="sky")
    both = local_manipulate(v, [e1, e2, e3], Recorder())
    step = v
    for ed in (e1, e2, e3):
        step = local_manipulate(step, [ed], Recorder())
    torch.testing.assert_close(both, step, rtol=0, atol=1e-5)
    assert not torch.allclose(both, local_manipulate(v, [e1], Recorder()))  # later edits matter
    assert not torch.allclose(both, local_manipulate(v, [e3, e2, e1], Recorder()))  # order matters


def test_local_keeps_dtype_and_empty_list() -> None:
    v = _tokens(b=1, seed=5)
    assert torch.equal(local_manipulate(v, [], Recorder()), v)
    out = local_manipulate(v.half(), [Edit("sky", 1.0, control="hair")], Recorder())
    assert out.dtype == torch.float16 and out.shape == v.shape


# ----------------------------------------------------------------------------- global (Alg. 1)
def test_global_cases_and_extrapolation() -> None:
    cls = _tokens(b=2, n=1, seed=6)[:, :1]
    e, a = TEXT["blonde hair"], TEXT["brown hair"]
    for s in (2.0, 20.0, -6.0):
        out = global_manipulate(cls, [Edit("blonde hair", s)], Recorder())  # Eq. 5.6, not enhanced
        torch.testing.assert_close(_proj(out, e), torch.full((2, 1, 1), s), rtol=0, atol=1e-5)
        out = global_manipulate(cls, [Edit("blonde hair", s, enhance=True)], Recorder())  # Eq. 5.6, enhanced
        torch.testing.assert_close(out, cls + s * e, rtol=0, atol=1e-5)
        out = global_manipulate(cls, [Edit("blonde hair", s, anchor="brown hair")], Recorder())  # Eq. 5.7
        torch.testing.assert_close(out, cls + s * (e - a), rtol=0, atol=1e-5)
        out = global_manipulate(cls, [Edit("blonde hair", s, anchor="brown hair", enhance="true")], Recorder())
        no_anchor = cls - _proj(cls, a) * a  # anchor removed, then s·e added (official form)
        torch.testing.assert_close(out, no_anchor + s * e, rtol=0, atol=1e-5)


def test_global_sequential_equals_one_by_one() -> None:
    cls = _tokens(b=2, n=1, seed=7)[:, :1]
    edits = [Edit("blonde hair", 2.0, anchor="red eyes", enhance=True), Edit("sky", 3.0), Edit("hair", -1.0)]
    step = cls
    for ed in edits:
        step = global_manipulate(step, [ed], Recorder())
    torch.testing.assert_close(global_manipulate(cls, edits, Recorder()), step, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- official quirks, fixed
def test_string_booleans_are_parsed() -> None:
    assert parse_bool("False") is False and parse_bool(" off ") is False and parse_bool("0") is False
    assert parse_bool("True") is True and parse_bool("yes") is True and parse_bool(1) is True
    assert Edit("sky", 1.0, enhance="False").enhance is False
    assert Edit("sky", 1.0, enhance="TRUE").enhance is True
    with pytest.raises(ValueError, match="enhance"):
        Edit("sky", 1.0, enhance="maybe")


def test_everything_control_fires_and_differs_from_a_prompt() -> None:
    v = _tokens(seed=8)
    assert Edit("sky", 1.0, control=" Everything ").control == EVERYTHING
    enc = Recorder()
    every = local_manipulate(v, [Edit("sky", 2.0, control="everything")], enc)
    assert "everything" not in enc.seen  # never encoded as a prompt
    shift = every[:, 1:] - v[:, 1:]
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift), rtol=0, atol=1e-5)  # uniform
    assert not torch.allclose(every, local_manipulate(v, [Edit("sky", 2.0, control="hair")], Recorder()))


def test_empty_prompts_are_not_encoded_as_none() -> None:
    enc = Recorder()
    ed = Edit("sky", 1.0, anchor="", control="")
    assert ed.anchor is None and ed.control == EVERYTHING
    assert Edit("sky", 1.0, anchor="None").anchor is None
    v = _tokens(seed=9)
    local_manipulate(v, [ed], enc)
    global_manipulate(v[:, :1], [ed], enc)
    assert "none" not in [p.lower() for p in enc.seen] and "" not in enc.seen
    with pytest.raises(ValueError, match="target"):
        Edit("  ", 1.0)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"thresholds": (0.5, 0.4, 0.6, 0.9)}, "non-decreasing"),
        ({"thresholds": (0.1, 0.2, 0.3)}, "four"),
        ({"thresholds": (0.1, 0.2, 0.3, 1.5)}, r"\[0, 1\]"),
        ({"thresholds": (0.1, float("nan"), 0.3, 0.4)}, "finite"),
        ({"target_scale": float("inf")}, "target_scale"),
        ({"ratio": "x"}, "ratio"),
    ],
)
def test_edit_validation(kw: dict, match: str) -> None:
    args = {"target": "sky", "target_scale": 1.0, **kw}
    with pytest.raises(ValueError, match=match):
        Edit(**args)


def test_from_dict_and_encoder_shape_errors() -> None:
    ed = Edit.from_dict({"target": "sky", "anchor": "none", "control": "hair", "target_scale": 3,
                         "enhance": "False", "thresholds": [0.3, 0.45, 0.6, 0.85]})
    assert ed == Edit("sky", 3.0, control="hair", thresholds=(0.3, 0.45, 0.6, 0.85))
    with pytest.raises(ValueError, match="unknown"):
        Edit.from_dict({"target": "sky", "target_scale": 1.0, "colour": "red"})
    with pytest.raises(ValueError, match="width"):
        local_manipulate(_tokens(), [Edit("sky", 1.0)], lambda p: torch.zeros(len(p), 1, D + 1))


# ----------------------------------------------------------------------------- heatmap
def test_heatmap_size_levels_and_overlay() -> None:
    v = _tokens(b=1, n=64, seed=10)
    ref = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(11))
    ts = (0.2, 0.4, 0.6, 0.8)
    heat = control_heatmap(v, ref, "hair", Recorder(), ts)
    assert heat.image.shape == ref.shape and heat.levels.shape == heat.scores.shape == (1, 37, 53)
    assert set(heat.levels.unique().tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    assert heat.levels.unique().numel() == 5  # every threshold band is present on a random map
    m = (heat.scores - heat.scores.min()) / (heat.scores.max() - heat.scores.min())
    torch.testing.assert_close(heat.levels, sum(0.25 * (m >= t).float() for t in ts))
    assert set(levels_to_uint8(heat.levels).unique().tolist()) <= {0, 63, 126, 189, 252}
    # grid lines every 1/8 (8×8 tokens) are black; elsewhere 0.3·reference + 0.7·JET(level)
    assert heat.image[..., 37 // 8, :].eq(0).all() and heat.image[..., :, 53 // 8].eq(0).all()
    colour = jet_colormap(levels_to_uint8(heat.levels).float() / 255).permute(0, 3, 1, 2)
    torch.testing.assert_close(heat.image[..., 1, 1], (0.3 * ref + 0.7 * colour)[..., 1, 1])


def test_heatmap_applies_queued_edits_and_everything() -> None:
    v = _tokens(b=1, n=64, seed=12)
    ref = torch.zeros(1, 3, 16, 16)
    edit = Edit("hair", 30.0, control="sky", thresholds=(0.1, 0.2, 0.3, 0.4))
    before = control_heatmap(v, ref, "hair", Recorder())
    after = control_heatmap(v, ref, "hair", Recorder(), edits=[edit])
    assert not torch.allclose(before.scores, after.scores)
    every = control_heatmap(v, ref, "", Recorder())
    assert every.levels.eq(1.0).all()


def test_stratify_and_jet() -> None:
    levels = stratify(torch.arange(12.0).view(1, 3, 4), (0.0, 0.5, 0.5, 1.0))  # m = k/11
    assert levels[0, 0, 0] == 0.25 and levels[0, -1, -1] == 1.0 and levels[0, 1, 1] == 0.25
    lut = jet_colormap(torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(lut, torch.tensor([[0.0, 0.0, 0.5], [0.5, 1.0, 0.5], [0.5, 0.0, 0.0]]))


def test_with_real_tiny_text_encoder() -> None:
    """The injected encoder is ``ReferenceEncoder.encode_text`` in the pipeline."""
    from colorize.config import TINY_CLIP
    from colorize.models.clip import ReferenceEncoder

    torch.manual_seed(0)
    enc = ReferenceEncoder(TINY_CLIP).eval()
    with torch.no_grad():
        tokens = enc.encode_image(torch.rand(1, 3, 64, 48) * 2 - 1, "full")
        out = local_manipulate(tokens, [Edit("blonde hair", 3.0, anchor="brown hair", control="hair")],
                               enc.encode_text)
        heat = control_heatmap(out, torch.rand(1, 3, 64, 48), "hair", enc.encode_text)
    assert out.shape == tokens.shape and torch.isfinite(out).all()
    assert heat.image.shape == (1, 3, 64, 48)
