"""Thin-plate-spline (TPS) deformation: the "deformed ground truth" references of Tab. 5.4 (‡).

A TPS maps every output pixel ``p`` (normalised coordinates in [−1, 1]) to the source position

    f(p) = A·[1, p] + Σ_i w_i U(‖p − c_i‖),   U(r) = r² log r²,

interpolating ``f(c_i) = c_i + d_i`` at the control points ``c_i`` with the least bending energy. The
output pixel at ``c_i`` therefore shows the input content found at ``c_i + d_i``. With all displacements
zero the solution is ``w = 0``, ``A = identity``: the warp is the identity and the size never changes.

Random warps use the numbers of the official training-time reference warp (official ``refnet/sampling/tps_transformation.py:16-22`` at commit ``c9bd9fb``: 10 control
points, σ = 10 px on the 224 px CLIP input), with σ given as a fraction of the image side so the
deformation looks the same at any resolution; control points are kept apart and the frame is pinned
(see :func:`random_tps`), choices of this project.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_POINTS = 10
DEFAULT_SIGMA = 10.0 / 224.0  # displacement std as a fraction of the image side


def _radial(d2: Tensor) -> Tensor:
    """U as a function of the squared distance: r² log r² (0 at r = 0)."""
    return torch.where(d2 > 0, d2 * torch.log(d2.clamp_min(1e-30)), torch.zeros_like(d2))


def tps_coefficients(control: Tensor, targets: Tensor, regularization: float = 0.0) -> tuple[Tensor, Tensor]:
    """Solve for the spline through ``control`` (B, K, 2) → ``targets`` (B, K, 2).

    Returns ``(w, a)``: radial weights (B, K, 2) and affine part (B, 3, 2), in float64.
    """
    c, v = control.double(), targets.double()
    b, k, _ = c.shape
    kmat = _radial(torch.cdist(c, c).pow(2))
    if regularization:
        kmat = kmat + regularization * torch.eye(k, dtype=c.dtype, device=c.device)
    p = torch.cat([torch.ones(b, k, 1, dtype=c.dtype, device=c.device), c], dim=2)
    top = torch.cat([kmat, p], dim=2)
    bottom = torch.cat([p.transpose(1, 2), torch.zeros(b, 3, 3, dtype=c.dtype, device=c.device)], dim=2)
    rhs = torch.cat([v, torch.zeros(b, 3, 2, dtype=c.dtype, device=c.device)], dim=1)
    sol = torch.linalg.solve(torch.cat([top, bottom], dim=1), rhs)
    return sol[:, :k], sol[:, k:]


def identity_grid(batch: int, size: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """``grid_sample`` grid (B, H, W, 2) of the pixel centres, ``align_corners=True`` convention, float64."""
    h, w = size
    ys = torch.linspace(-1.0, 1.0, h, dtype=torch.float64, device=device)
    xs = torch.linspace(-1.0, 1.0, w, dtype=torch.float64, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).expand(batch, h, w, 2)


def tps_grid(control: Tensor, displacement: Tensor, size: tuple[int, int]) -> Tensor:
    """Sampling grid (B, H, W, 2) of the TPS with ``f(c_i) = c_i + d_i`` (normalised (x, y) coordinates)."""
    w, a = tps_coefficients(control, control + displacement)
    b = control.shape[0]
    pts = identity_grid(b, size, control.device).reshape(b, -1, 2)
    radial = _radial(torch.cdist(pts, control.double()).pow(2))
    ones = torch.ones(b, pts.shape[1], 1, dtype=torch.float64, device=control.device)
    mapped = torch.cat([ones, pts], dim=2) @ a + radial @ w
    return mapped.reshape(b, size[0], size[1], 2)


def tps_warp(image: Tensor, control: Tensor, displacement: Tensor) -> Tensor:
    """Warp (B, C, H, W) images with control points (B, K, 2) moved by ``displacement`` (B, K, 2), both in
    normalised [−1, 1] (x, y) coordinates. Bilinear, border padding; output has the input's size and dtype."""
    if image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got {tuple(image.shape)}")
    grid = tps_grid(control.to(image.device), displacement.to(image.device), tuple(image.shape[-2:]))
    out = F.grid_sample(image.double(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(image.dtype)


FRAME = ((-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0), (0.0, -1.0), (0.0, 1.0), (-1.0, 0.0), (1.0, 0.0))


def spaced_points(num: int, min_distance: float, generator: torch.Generator | None = None,
                  avoid: Tensor | None = None, extent: float = 0.8, tries: int = 10_000) -> Tensor:
    """``num`` uniform random points in [−extent, extent]² (normalised coordinates), at least
    ``min_distance`` from each other and from ``avoid`` (rejection sampling; the spacing relaxes if crowded)."""
    pts: list[Tensor] = []
    taken = [p for p in avoid] if avoid is not None else []
    for attempt in range(tries):
        p = (torch.rand(2, generator=generator, dtype=torch.float64) * 2 - 1) * extent
        limit = min_distance * (1 - attempt / tries)
        if all(float((p - q).norm()) >= limit for q in taken):
            pts.append(p)
            taken.append(p)
            if len(pts) == num:
                break
    return torch.stack(pts)


def random_tps(
    image: Tensor,
    num_points: int = DEFAULT_POINTS,
    sigma: float = DEFAULT_SIGMA,
    generator: torch.Generator | None = None,
    min_distance: float = 0.2,
) -> Tensor:
    """A random TPS deformation of each image: ``num_points`` control points spread over the inner 80 % of
    the frame (at least ``min_distance`` apart, in normalised units: 0.2 = a tenth of the side), moved by
    Gaussian displacements with std ``sigma`` × the image side; the corners and edge midpoints stay pinned.

    Spacing and pinning keep the spline well conditioned, so the largest pixel shift stays a few σ (free,
    clustered points can bend the image many times further than σ)."""
    frame = torch.tensor(FRAME, dtype=torch.float64)
    controls, moves = [], []
    for _ in range(image.shape[0]):
        c = spaced_points(num_points, min_distance, generator, avoid=frame)
        # sigma is a fraction of the side; the normalised frame is 2 units wide
        d = torch.randn(num_points, 2, generator=generator, dtype=torch.float64) * (2.0 * sigma)
        controls.append(torch.cat([c, frame]))
        moves.append(torch.cat([d, torch.zeros_like(frame)]))
    return tps_warp(image, torch.stack(controls), torch.stack(moves))


__all__ = ["DEFAULT_POINTS", "DEFAULT_SIGMA", "identity_grid", "random_tps", "spaced_points", "tps_coefficients", "tps_grid",
           "tps_warp"]
