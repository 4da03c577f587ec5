"""How contractive is f near its fixed point? Penalties and estimates users can train on or log.

A fixed point is only trustworthy (unique, reached by Picard, with an invertible I - J) when f
contracts near it. Gates encourage that; these two functions measure it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def jacobian_penalty(f: Callable[[Tensor], Tensor], z: Tensor, n_samples: int = 1) -> Tensor:
    """Differentiable Hutchinson estimate of ||J||_F^2 / dim at z, per sample.

    Uses E ||e^T J||^2 = ||J||_F^2 for e ~ N(0, I) (Bai et al. 2021, arXiv 2106.14342), with
    n_samples probes. The result carries a graph to everything f closes over, so adding
    `lam * jacobian_penalty(f, z_star).mean()` to a loss pushes f towards contraction.

    Args:
        f: maps (B, *S) -> (B, *S).
        z: (B, *S) point at which to measure, usually the (detached) fixed point.
        n_samples: number of random probes averaged.
    Returns:
        (B,) estimate of ||J||_F^2 / prod(S), float32 or better.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples} must be >= 1")
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        y = f(z)
        total = z.new_zeros(z.shape[0], dtype=torch.float64 if z.dtype == torch.float64 else torch.float32)
        for i in range(n_samples):
            probe = torch.randn_like(y)
            (vjp,) = torch.autograd.grad(y, z, probe, create_graph=True, retain_graph=True)
            total = total + vjp.flatten(1).to(total.dtype).pow(2).sum(1)
    return total / (n_samples * z[0].numel())


@torch.no_grad()
def spectral_radius(
    f: Callable[[Tensor], Tensor], z: Tensor, n_iter: int = 30, generator: torch.Generator | None = None
) -> Tensor:
    """Power-iteration estimate of the spectral radius of J = df/dz at z, per sample.

    Iterates v <- J^T v / ||J^T v|| (J^T has J's eigenvalues) and returns the geometric mean of
    the growth factors over the second half of the run, which also settles when the dominant
    eigenvalues are a complex pair (plain power iteration would oscillate there). Below 1 means
    f contracts near z; near or above 1 means iterations will be slow or diverge.

    Args:
        f: maps (B, *S) -> (B, *S).
        z: (B, *S) point at which to measure, usually the fixed point.
        n_iter: vector-Jacobian products (each one backward pass through f).
    Returns:
        (B,) estimate, float32 or better.
    """
    if n_iter < 2:
        raise ValueError(f"n_iter={n_iter} must be >= 2")
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        y = f(z)
    v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    v = v / v.flatten(1).norm(dim=1).view(-1, *[1] * (z.dim() - 1))
    log_growth = []
    for _ in range(n_iter):
        with torch.enable_grad():
            (w,) = torch.autograd.grad(y, z, v.to(y.dtype), retain_graph=True)
        norm = w.flatten(1).double().norm(dim=1)
        log_growth.append(norm.clamp_min(1e-300).log())
        v = w / norm.clamp_min(1e-300).to(w.dtype).view(-1, *[1] * (z.dim() - 1))
    tail = torch.stack(log_growth[n_iter // 2 :], 1)
    out = tail.mean(1).exp()
    return out if z.dtype == torch.float64 else out.float()
