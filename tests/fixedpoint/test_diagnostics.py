"""Contraction diagnostics against exact Jacobians."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import contractive_linear, spectral_normalised

from attractor import ConfigError, jacobian_penalty, spectral_radius


def test_jacobian_penalty_estimates_frobenius_norm(gen64):
    w = torch.nn.Parameter(spectral_normalised(16, 16, 0.9, gen64))
    z = torch.randn(3, 16, generator=gen64, dtype=torch.float64)

    def f(z):
        return torch.tanh(z @ w.T)

    torch.manual_seed(0)
    estimate = jacobian_penalty(f, z, n_samples=4000)
    exact = torch.stack([torch.autograd.functional.jacobian(lambda zi: f(zi[None])[0], zi).pow(2).sum()
                         for zi in z]) / 16
    # Hutchinson with N probes: relative standard error about sqrt(2 / N) = 2%.
    torch.testing.assert_close(estimate, exact.detach(), rtol=0.08, atol=0)
    (grad,) = torch.autograd.grad(estimate.mean(), w)
    assert grad.abs().max() > 0  # differentiable, reaches the parameters


@pytest.mark.parametrize("spectrum", ["symmetric", "positive"])
def test_spectral_radius_matches_eigenvalues(spectrum, gen64):
    a, _ = contractive_linear(n=24, radius=0.9, batch=1, generator=gen64, spectrum=spectrum)
    z = torch.zeros(2, 24, dtype=torch.float64)
    est = spectral_radius(lambda z: z @ a.T, z, n_iter=400, generator=gen64)
    # a symmetric spectrum has +-0.9 both dominant: the growth rate still converges to 0.9
    torch.testing.assert_close(est, torch.full((2,), 0.9, dtype=torch.float64), rtol=1e-2, atol=0)


def test_spectral_radius_of_rotation_is_exact(gen64):
    c, s = math.cos(0.3), math.sin(0.3)  # a complex pair 0.7 e^{+-0.3i}: power iteration cycles
    rot = 0.7 * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    est = spectral_radius(lambda z: z @ rot.T, torch.zeros(1, 2, dtype=torch.float64), n_iter=10)
    torch.testing.assert_close(est, torch.tensor([0.7], dtype=torch.float64), rtol=1e-10, atol=0)


@pytest.mark.parametrize("name", ["zero", "nilpotent"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spectral_radius_of_a_nilpotent_jacobian_is_zero(name, dtype):
    n = torch.diag(torch.ones(3, dtype=dtype), 1)  # shift: N^4 = 0, every eigenvalue 0
    a = torch.zeros(4, 4, dtype=dtype) if name == "zero" else n
    est = spectral_radius(lambda z: z @ a.T, torch.ones(2, 4, dtype=dtype), n_iter=10)
    assert est.dtype == dtype
    assert torch.equal(est, torch.zeros(2, dtype=dtype))


@pytest.mark.parametrize("measure", [jacobian_penalty, spectral_radius])
def test_diagnostics_refuse_maps_they_cannot_measure(measure):
    z = torch.ones(2, 3)
    w = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"shape of z \(2, 3\)"):
        measure(lambda z: (z * w).sum(0), z)  # broadcasting closure: (3,), not (2, 3)
    with pytest.raises(ValueError, match="does not depend on z"):
        measure(lambda z: w.expand(2, 3) * 1.0, z)  # a graph, but not to z
    with pytest.raises(ValueError, match="does not depend on z"):
        measure(lambda z: z.detach() * 0.5, z)  # no graph at all
    with pytest.raises(ConfigError, match="batch dimension"):
        measure(lambda z: 0.5 * z, torch.ones(3))
