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

from attractor import Implicit, Neumann, NonFiniteWarning, OneStep, Phantom, Status, fixed_point

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


ALL_MODES = [Implicit(tol=1e-12, max_iter=300), OneStep(), Neumann(k=2), Phantom(k=2, damping=0.5), "unroll"]
ATTACHED_MODES = ALL_MODES[:-1]


@pytest.mark.parametrize("z0_dtype,f_dtype", [(torch.float32, torch.float64), (torch.float64, torch.float32)])
@pytest.mark.parametrize("mode", ALL_MODES, ids=repr)
def test_value_has_z0_dtype_whatever_f_returns(mode, z0_dtype, f_dtype):
    module, x, _ = build("tanh", 2, 2, 4)

    def f(z):
        return module(z.double(), x).to(f_dtype)

    z0 = torch.zeros(x.shape, dtype=z0_dtype)
    for grad_on in (False, True):
        with torch.set_grad_enabled(grad_on):
            z, _ = fixed_point(f, z0, grad=mode, tol=1e-5, max_iter=100)
        assert z.dtype == z0_dtype and z.requires_grad == grad_on
    (g,) = torch.autograd.grad(z.sum(), module.w)
    assert g.dtype == torch.float64 and torch.isfinite(g).all()


@pytest.mark.parametrize("mode", ALL_MODES, ids=repr)
def test_inplace_f_gives_the_same_answer_and_gradient(mode):
    module, x, weights = build("tanh", 4, 2, 5)
    b = module.b

    def f_inplace(z):  # z <- z + x in place, then tanh(W z + b); valid under autograd
        return torch.tanh(z.add_(x) @ module.w.T + b)

    z0 = torch.zeros_like(x)
    kw = dict(grad=mode, solver="anderson", tol=1e-12, max_iter=300)
    z, _ = fixed_point(f_inplace, z0, **kw)
    assert not z0.any()
    z_ref, _ = fixed_point(lambda z: torch.tanh((z + x) @ module.w.T + b), z0, **kw)
    torch.testing.assert_close(z, z_ref, rtol=0, atol=1e-12)
    loss, loss_ref = [(weights * v).sum() + 0.25 * v.pow(2).sum() for v in (z, z_ref)]
    got = torch.autograd.grad(loss, [module.w, x])
    ref = torch.autograd.grad(loss_ref, [module.w, x])
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-12)


# ---- samples where f is not finite ------------------------------------------------------------

def overflow_problem(constant: bool):
    """f(z) = tanh(W z + x) + 0.01 exp(.) on 3 samples, where sample 1 overflows.

    constant=False: exp(z), and sample 1 starts at z0 = 1000, so f is infinite at its start but
    finite at 0. constant=True: exp(x) with x = 1000 at sample 1, infinite at every z.
    """
    gen = torch.Generator().manual_seed(3)
    w = torch.nn.Parameter(spectral_normalised(5, 5, 0.5, gen))
    x = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    z0 = torch.zeros_like(x)
    if constant:
        x[1] = 1000.0
    else:
        z0[1] = 1000.0
    x.requires_grad_()

    def f(z, x=x):
        return torch.tanh(z @ w.T + x) + 0.01 * torch.exp(x if constant else z)

    return w, x, z0, f


def loss_of(z):
    c = torch.linspace(-1, 1, z.shape[-1], dtype=z.dtype)  # the same for every sample
    return (c * z).sum() + 0.25 * z.pow(2).sum()


@pytest.mark.parametrize("mode", ATTACHED_MODES, ids=repr)
def test_overflowing_sample_leaves_the_others_gradient_exact(mode):
    w, x, z0, f = overflow_problem(constant=False)
    kw = dict(grad=mode, tol=1e-12, max_iter=300)
    z, info = fixed_point(f, z0, on_fail="ignore", **kw)
    assert info.status.tolist() == [Status.CONVERGED, Status.NONFINITE_START, Status.CONVERGED]
    gw, gx = torch.autograd.grad(loss_of(z), [w, x])  # the loss includes sample 1's finite z0
    keep = [0, 2]
    z_ref, _ = fixed_point(lambda z: f(z, x[keep]), z0[keep], **kw)  # without sample 1
    gw_ref, gx_ref = torch.autograd.grad(loss_of(z_ref), [w, x])
    # the same solves sample by sample: only summation order differs
    torch.testing.assert_close(gw, gw_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)
    assert (gx[1] == 0).all()


@pytest.mark.parametrize("mode", ALL_MODES, ids=repr)
def test_sample_infinite_everywhere_is_named_at_backward(mode):
    w, x, z0, f = overflow_problem(constant=True)
    z, info = fixed_point(f, z0, grad=mode, tol=1e-12, max_iter=300, on_fail="ignore")
    assert info.status[1] == Status.NONFINITE_START
    with pytest.warns(NonFiniteWarning, match=r"samples \[1\]"):
        gw, gx = torch.autograd.grad(loss_of(z), [w, x])
    if not isinstance(mode, (Phantom, str)):
        # One evaluation at 0, where W sees sample 1 only through a finite tanh: W's gradient
        # stays finite (Phantom's second step and unroll's iterates put inf into W's product).
        assert torch.isfinite(gw).all() and torch.isfinite(gx[[0, 2]]).all()


def test_unroll_names_samples_that_blew_up_at_backward():
    w, x, z0, f = overflow_problem(constant=False)
    z, _ = fixed_point(f, z0, grad="unroll", tol=1e-12, max_iter=300, on_fail="ignore")
    with pytest.warns(NonFiniteWarning, match=r"samples \[1\]"):
        z.sum().backward()


# ---- higher derivatives -----------------------------------------------------------------------

@pytest.mark.parametrize("mode", [Implicit(tol=1e-12), Neumann(k=2)], ids=repr)
def test_first_order_modes_refuse_create_graph(mode):
    module, x, weights = build("tanh", 5, 2, 4)
    z, _ = fixed_point(lambda z: module(z, x), torch.zeros_like(x), grad=mode, **TIGHT)
    with pytest.raises(NotImplementedError, match="first derivatives only"):
        torch.autograd.grad(loss_of(z), module.w, create_graph=True)


def test_unroll_second_derivatives_match_finite_differences():
    module, x, weights = build("tanh", 5, 2, 4)
    d = torch.randn(module.w.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    picard = dict(solver="picard", tol=1e-14, max_iter=2000)

    def grad_w(**kw):
        z, info = fixed_point(lambda z: module(z, x), torch.zeros_like(x), **kw)
        assert info.converged.all()
        return torch.autograd.grad(loss_of(z), module.w, create_graph=kw["grad"] == "unroll")[0]

    (hvp,) = torch.autograd.grad((grad_w(grad="unroll", **picard) * d).sum(), module.w)
    eps = 1e-5  # central differences of exact first derivatives: error ~eps^2 + 1e-13 / eps
    with torch.no_grad():
        module.w.add_(eps * d)
    plus = grad_w(grad=Implicit(tol=1e-13, max_iter=500), **TIGHT)
    with torch.no_grad():
        module.w.sub_(2 * eps * d)
    minus = grad_w(grad=Implicit(tol=1e-13, max_iter=500), **TIGHT)
    with torch.no_grad():
        module.w.add_(eps * d)
    numeric = (plus - minus) / (2 * eps)
    assert (hvp - numeric).norm() / numeric.norm() < 1e-6


@pytest.mark.parametrize("k,damping", [(1, 1.0), (2, 0.5)])
def test_phantom_and_onestep_second_derivatives_are_their_surrogates(k, damping):
    # OneStep is Phantom(k=1, damping=1). Their graphs start at z* held fixed, so create_graph
    # differentiates the surrogate W -> L(k damped steps from z*), written out here by hand.
    module, x, z_star, _ = hand_setup()
    d = torch.randn(module.w.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    shift = (x @ module.u.T + module.b).detach()

    def surrogate(w):
        z = z_star
        for _ in range(k):
            z = (1 - damping) * z + damping * torch.tanh(z @ w.T + shift)
        return loss_of(z)

    _, expected = torch.autograd.functional.hvp(surrogate, module.w.detach(), d)
    mode = OneStep() if k == 1 else Phantom(k=k, damping=damping)
    z, _ = fixed_point(lambda z: module(z, x), torch.zeros_like(x), grad=mode, **TIGHT)
    (g,) = torch.autograd.grad(loss_of(z), module.w, create_graph=True)
    (hvp,) = torch.autograd.grad((g * d).sum(), module.w)
    # z* and the surrogate's end point differ by the solve's 1e-13: so do the two products
    torch.testing.assert_close(hvp, expected, rtol=1e-9, atol=1e-11)


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
    # min_iter=max_iter: every sample takes all max_iter steps (tol=0 would stop an exact fixed point)
    z, info = fixed_point(f, torch.zeros_like(x), grad=mode, tol=0.0, max_iter=max_iter, min_iter=max_iter,
                          on_fail="ignore")
    z.square().sum().backward()
    assert int(info.depth.min()) == max_iter
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
