"""Gradients through the fixed point, each checked against a ground truth computed another way.

- implicit vs central finite differences of the solved loss, and vs `unroll` run to convergence;
- onestep / neumann / phantom / implicit vs their definitions written out with explicit Jacobians;
- constant memory in the number of forward iterations.
All comparisons in float64.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import PEAK_RSS_ENV, PEAK_RSS_PRELUDE, GatedAttentionMap, needs_peak_rss, spectral_normalised
from hypothesis import given, settings
from hypothesis import strategies as st

from attractor import Implicit, Neumann, OneStep, Phantom, fixed_point

TIGHT = dict(solver="anderson", tol=1e-13, max_iter=500)


class LinearMap(torch.nn.Module):
    """f(z; x) = W z + U x + b with ||W||_2 = 0.8."""

    def __init__(self, n, gen, nonlinear=False):
        super().__init__()
        self.nonlinear = nonlinear
        self.w = torch.nn.Parameter(spectral_normalised(n, n, 0.8, gen))
        self.u = torch.nn.Parameter(torch.randn(n, n, generator=gen, dtype=torch.float64) / n**0.5)
        self.b = torch.nn.Parameter(torch.randn(n, generator=gen, dtype=torch.float64))

    def forward(self, z, x):
        pre = z @ self.w.T + x @ self.u.T + self.b
        return torch.tanh(pre) if self.nonlinear else pre


def build(kind: str, seed: int, batch: int, size: int):
    """A contractive map module and an input x; `size` is n (vector maps) or T (attention)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "attention":
        module = GatedAttentionMap(d=8, n_head=2, generator=gen)
        x = torch.randn(batch, size, 8, generator=gen, dtype=torch.float64)
    else:
        module = LinearMap(size, gen, nonlinear=(kind == "tanh"))
        x = torch.randn(batch, size, generator=gen, dtype=torch.float64)
    weights = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    return module, x.requires_grad_(), weights


def solved_loss(module, x, weights, **kw):
    """L(z*) with a nonlinear loss so that dL/dz* depends on z*."""
    z, info = fixed_point(lambda z: module(z, x), torch.zeros_like(x), **kw)
    assert info.converged.all()
    return (weights * z).sum() + 0.25 * z.pow(2).sum()


def flat_grads(module, x, weights, **kw):
    leaves = [*module.parameters(), x]
    grads = torch.autograd.grad(solved_loss(module, x, weights, **kw), leaves)
    return torch.cat([g.flatten() for g in grads])


MAPS = st.sampled_from(["linear", "tanh", "attention"])


@settings(max_examples=12, deadline=None)
@given(kind=MAPS, seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), size=st.integers(2, 7))
def test_implicit_matches_finite_differences(kind, seed, batch, size):
    module, x, weights = build(kind, seed, batch, size)
    leaves = [*module.parameters(), x]
    grads = torch.autograd.grad(solved_loss(module, x, weights, grad=Implicit(tol=1e-13, max_iter=500), **TIGHT), leaves)
    gen = torch.Generator().manual_seed(seed + 1)
    directions = [[torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in leaves] for _ in range(3)]
    eps = 1e-6  # central differences: truncation ~eps^2, solve noise ~1e-13/eps, both << 1e-5
    analytic, numeric = [], []
    with torch.no_grad():
        for d in directions:
            analytic.append(sum((g * di).sum() for g, di in zip(grads, d)))
            values = []
            for sign in (1.0, -1.0):
                for p, di in zip(leaves, d):
                    p.add_(sign * eps * di)
                values.append(solved_loss(module, x, weights, **TIGHT))
                for p, di in zip(leaves, d):
                    p.sub_(sign * eps * di)
            numeric.append((values[0] - values[1]) / (2 * eps))
    analytic, numeric = torch.stack(analytic), torch.stack(numeric)
    assert (analytic - numeric).norm() / analytic.norm() < 1e-5


@settings(max_examples=12, deadline=None)
@given(kind=MAPS, seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 3), size=st.integers(2, 7))
def test_implicit_matches_unroll(kind, seed, batch, size):
    module, x, weights = build(kind, seed, batch, size)
    implicit = flat_grads(module, x, weights, grad=Implicit(tol=1e-13, max_iter=500), **TIGHT)
    # Unrolled Picard to a 1e-14 residual: the unrolled derivative is exact up to 0.8^k.
    unrolled = flat_grads(module, x, weights, grad="unroll", solver="picard", tol=1e-14, max_iter=2000)
    assert (implicit - unrolled).norm() / unrolled.norm() < 1e-6


@pytest.mark.parametrize("solver", ["picard", "broyden"])
def test_implicit_with_other_adjoint_solvers(solver):
    module, x, weights = build("tanh", 7, 2, 5)
    ref = flat_grads(module, x, weights, grad="unroll", solver="picard", tol=1e-14, max_iter=2000)
    got = flat_grads(module, x, weights, grad=Implicit(solver=solver, tol=1e-13, max_iter=2000), **TIGHT)
    assert (got - ref).norm() / ref.norm() < 1e-6


def test_implicit_backward_reports_its_solve():
    module, x, weights = build("tanh", 3, 2, 5)
    z, info = fixed_point(lambda z: module(z, x), torch.zeros_like(x), grad=Implicit(tol=1e-10), tol=1e-12)
    assert info.backward is None
    z.sum().backward()
    assert info.backward is not None and info.backward.converged.all()
    assert info.backward.residual.max() < 1e-10


# ---- definitions by hand: f(z) = tanh(W z + U x + b) at n = 6, explicit Jacobians ----------

def hand_setup():
    module, x, _ = build("tanh", 11, 2, 6)
    with torch.no_grad():
        z, _ = fixed_point(lambda z: module(z, x), torch.zeros_like(x), **TIGHT)
    c = torch.randn(z.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    return module, x, z, c  # the loss is L = sum(c * z*), so v = dL/dz* = c


def hand_grad_w(module, z, x, u):
    """sum_b (u_b * s_b) z_b^T: the W-gradient of u^T f at z, with s = 1 - tanh^2."""
    s = 1 - module(z, x).pow(2)
    return torch.einsum("bi,bj->ij", u * s, z)


def jac_t(module, z, x, u):
    """J^T u per sample with J = diag(s) W."""
    s = 1 - module(z, x).pow(2)
    return (u * s) @ module.w


def grad_w_of(mode, module, x, c):
    z, _ = fixed_point(lambda z: module(z, x), torch.zeros_like(x), grad=mode, **TIGHT)
    (g,) = torch.autograd.grad((c * z).sum(), module.w)
    return g


def test_onestep_is_u_equals_v():
    module, x, z, c = hand_setup()
    with torch.no_grad():
        expected = hand_grad_w(module, z, x, c)
    torch.testing.assert_close(grad_w_of(OneStep(), module, x, c), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_neumann_is_truncated_series(k):
    module, x, z, c = hand_setup()
    with torch.no_grad():
        u, term = c.clone(), c.clone()
        for _ in range(k):
            term = jac_t(module, z, x, term)
            u = u + term
        expected = hand_grad_w(module, z, x, u)
    torch.testing.assert_close(grad_w_of(Neumann(k=k), module, x, c), expected, rtol=1e-10, atol=1e-12)


def test_implicit_is_linear_solve_with_explicit_jacobian():
    module, x, z, c = hand_setup()
    with torch.no_grad():
        s = 1 - module(z, x).pow(2)
        u = torch.stack([torch.linalg.solve(torch.eye(6, dtype=z.dtype) - (s[i, :, None] * module.w).T, c[i])
                         for i in range(z.shape[0])])
        expected = hand_grad_w(module, z, x, u)
    got = grad_w_of(Implicit(tol=1e-13, max_iter=500), module, x, c)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("k,damping", [(1, 1.0), (2, 0.5), (3, 0.8)])
def test_phantom_is_backprop_through_k_damped_steps(k, damping):
    module, x, z, c = hand_setup()
    with torch.no_grad():
        states = [z]
        for _ in range(k):  # forward: z_{i+1} = (1 - a) z_i + a f(z_i), from z_0 = z*
            states.append((1 - damping) * states[-1] + damping * module(states[-1], x))
        adj, expected = c.clone(), torch.zeros_like(module.w)
        for zi in reversed(states[:-1]):  # reverse sweep, by hand
            expected += damping * hand_grad_w(module, zi, x, adj)
            adj = (1 - damping) * adj + damping * jac_t(module, zi, x, adj)
    got = grad_w_of(Phantom(k=k, damping=damping), module, x, c)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_value_is_the_solver_answer_in_every_mode():
    module, x, z_ref, _ = hand_setup()
    for mode in ["implicit", "onestep", "neumann", "phantom", "unroll"]:
        z, _ = fixed_point(lambda z: module(z, x), torch.zeros_like(x), grad=mode, **TIGHT)
        torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-12)


# ---- memory -----------------------------------------------------------------------------------

PROBE = PEAK_RSS_PRELUDE + textwrap.dedent("""
    import json, sys, torch
    from attractor import fixed_point
    mode, max_iter = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    n, batch = 1024, 256
    w = (torch.randn(n, n) * 0.9 / (2 * n**0.5)).requires_grad_()
    x = torch.randn(batch, n)
    f = lambda z: torch.tanh(z @ w.T + x)
    f(x).sum().backward(); w.grad = None                  # warm up allocator and autograd
    before = reset_peak()
    # tol=0: every sample takes all max_iter steps
    z, info = fixed_point(f, torch.zeros_like(x), grad=mode, tol=0.0, max_iter=max_iter, on_fail="ignore")
    z.square().sum().backward()
    assert int(info.iters.min()) == max_iter
    print(json.dumps(peak_growth_mb(before)))
""")


def peak_growth_mb(mode: str, max_iter: int) -> float:
    """Peak RSS of forward + backward above the warmed-up process, in a fresh interpreter."""
    out = subprocess.run([sys.executable, "-c", PROBE, mode, str(max_iter)], capture_output=True,
                         text=True, check=True, env=PEAK_RSS_ENV).stdout
    return json.loads(out)


@needs_peak_rss
def test_implicit_memory_is_constant_in_iterations():
    # Each iterate is 1 MB; unroll keeps several tensors per iteration, implicit none.
    implicit_4, implicit_64 = peak_growth_mb("implicit", 4), peak_growth_mb("implicit", 64)
    assert implicit_64 <= 1.2 * implicit_4, (implicit_4, implicit_64)
    unroll_4, unroll_16 = peak_growth_mb("unroll", 4), peak_growth_mb("unroll", 16)
    assert unroll_16 > 2 * unroll_4, (unroll_4, unroll_16)  # the probe does see growth
