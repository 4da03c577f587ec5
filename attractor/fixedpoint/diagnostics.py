"""How contractive is f near its fixed point? Penalties and estimates users can train on or log.

A fixed point is only trustworthy (unique, reached by Picard, with an invertible I - J) when f
contracts near it. Gates encourage that; these two functions measure it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from attractor.errors import check_int
from attractor.fixedpoint.loop import check_batched, check_image


def _image(f: Callable[[Tensor], Tensor], z: Tensor) -> tuple[Tensor, Tensor]:
    """(z as a leaf, f(z) with its graph), after the checks both diagnostics need.

    f gets a copy, since it may write into its argument (not allowed on a leaf requiring grad).
    """
    check_batched(z, "z")
    z = z.detach().requires_grad_()
    with torch.enable_grad():
        y = f(z.clone())
    check_image(y, z, name="z")
    if not y.requires_grad or y.grad_fn is None:
        raise ValueError("f(z) does not depend on z through autograd (f detaches z, runs under "
                         "torch.no_grad(), or ignores it): there is no Jacobian to measure")
    return z, y


def _vjp(y: Tensor, z: Tensor, v: Tensor, create_graph: bool = False) -> Tensor:
    """v^T J for y = f(z); a ValueError if y's graph does not reach z."""
    (out,) = torch.autograd.grad(y, z, v.to(y.dtype), retain_graph=True, create_graph=create_graph,
                                 allow_unused=True)
    if out is None:
        raise ValueError("f(z) does not depend on z (its graph reaches other tensors only): "
                         "there is no Jacobian to measure")
    return out


def jacobian_penalty(f: Callable[[Tensor], Tensor], z: Tensor, n_samples: int = 1) -> Tensor:
    """Differentiable Hutchinson estimate of ||J||_F^2 / dim at z, per sample.

    Uses E ||e^T J||^2 = ||J||_F^2 for e ~ N(0, I) (Bai et al. 2021, arXiv 2106.14342), with
    n_samples probes. The result carries a graph to everything f closes over, so adding
    `lam * jacobian_penalty(f, z_star).mean()` to a loss pushes f towards contraction.

    Args:
        f: maps (B, *S) -> (B, *S), through autograd.
        z: (B, *S) point at which to measure, usually the (detached) fixed point.
        n_samples: number of random probes averaged.
    Returns:
        (B,) estimate of ||J||_F^2 / prod(S), float32 or better.
    """
    n_samples = check_int(n_samples, "n_samples", 1)
    z, y = _image(f, z)
    with torch.enable_grad():
        total = z.new_zeros(z.shape[0], dtype=torch.float64 if z.dtype == torch.float64 else torch.float32)
        for _ in range(n_samples):
            vjp = _vjp(y, z, torch.randn_like(y), create_graph=True)
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
    f contracts near z; near or above 1 means iterations will be slow or diverge. A zero or
    nilpotent Jacobian maps v to exactly 0 within a few products: the estimate is then exactly 0.

    Args:
        f: maps (B, *S) -> (B, *S), through autograd.
        z: (B, *S) point at which to measure, usually the fixed point.
        n_iter: vector-Jacobian products (each one backward pass through f).
    Returns:
        (B,) estimate, float32 or better.
    """
    n_iter = check_int(n_iter, "n_iter", 2)
    z, y = _image(f, z)
    per_sample = (-1, *[1] * (z.dim() - 1))
    v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    v = v / v.flatten(1).norm(dim=1).view(per_sample)
    log_growth = []
    for _ in range(n_iter):
        w = _vjp(y, z, v).double()
        norm = w.flatten(1).norm(dim=1)
        log_growth.append(norm.log())  # log 0 = -inf: the mean is -inf, the estimate exactly 0
        # Normalise in float64 (a float32 norm may underflow to 0 and make 0 / 0). A zero w
        # stays zero, and so does every later product: growth factor 0 from there on.
        v = (w / torch.where(norm > 0, norm, 1.0).view(per_sample)).to(z.dtype)
    tail = torch.stack(log_growth[n_iter // 2 :], 1)
    out = tail.mean(1).exp()
    return out if z.dtype == torch.float64 else out.float()
