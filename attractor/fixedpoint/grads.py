"""Gradient modes: what the backward pass through a fixed point z* = f(z*) computes.

Each mode has one method, `attach(f, z_star, info) -> Tensor`. Given the solver's answer (no
graph), it returns a tensor with exactly z_star's value whose backward is the mode's. With
v = dL/dz* and J = df/dz at z*, the exact gradient to anything f closes over (call it theta) is
u^T df/dtheta where u solves u = J^T u + v (implicit function theorem). The modes differ in u:

    Implicit   u solved by a root solver to a tolerance (exact up to tol)
    OneStep    u = v                     (Jacobian-free; Fung et al. 2022, arXiv 2103.12803)
    Neumann    u = sum_{i=0..k} (J^T)^i v (truncated Neumann series; k=1 is the published code's)
    Phantom    backprop through k damped steps z <- (1-a) z + a f(z) from z* (Geng et al. 2021,
               arXiv 2111.05177), with the incoming v taken at z*
    Unroll     backprop through every solver iteration: the reference; memory grows with iters

Only Unroll's memory grows with the number of forward iterations; the others build the graph of
one (Phantom: k) evaluations of f. Parameters are never listed: the graph of f(z*) reaches them.
Under DistributedDataParallel the inner vector-Jacobian products differentiate only with respect
to z*, so no parameter gradient is accumulated (and no reducer hook fires) more than once.

What every mode shares (`_finite_forward`, `_Attach`): the value returned is z* in z*'s dtype,
whatever dtype f returns; f is given a copy of its argument, so it may write into it; samples
where f is not finite get no gradient and are re-evaluated at 0 so that the others' gradient
stays finite (NonFiniteWarning at backward, naming them, where f is not finite there either).
Higher derivatives: Implicit and Neumann raise at a backward with create_graph=True (their
adjoint is computed outside autograd); OneStep and Phantom are ordinary graphs whose higher
derivatives are those of their surrogate (z* held fixed); Unroll's are exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attractor.errors import check_int, check_name, check_real
from attractor.fixedpoint.loop import (
    MAX_ITER,
    ON_FAIL,
    NonFiniteWarning,
    check_image,
    nonfinite_message,
    report_failure,
    resolve_solver,
    solve,
)
from attractor.fixedpoint.solvers import Anderson, _set, _unit_interval


FIRST_ORDER_ONLY = (
    "{mode} gives first derivatives only: its backward solves (or sums) the adjoint outside "
    "autograd, so create_graph=True would give wrong higher derivatives. Use grad='unroll' for "
    "exact higher derivatives, or 'onestep' / 'phantom' (their surrogate's derivatives)."
)


def _nonfinite_samples(y: Tensor) -> Tensor:
    """(B,) bool: samples (along dim 0) with any non-finite entry."""
    return ~torch.isfinite(y).reshape(y.shape[0], -1).all(1)


def _finite_forward(
    run: Callable[[Tensor], Tensor], z_star: Tensor
) -> tuple[Tensor, Tensor, Tensor | None, str | None]:
    """The mode's differentiable evaluation `run(z) -> y` from z*, kept finite where possible.

    Samples whose y is not finite get no gradient (their incoming gradient is zeroed), but that
    zero still runs through f's graph, where 0 * inf = NaN would spoil every parameter gradient.
    Samples are independent, so such samples are moved to 0 and everything is run once more (only
    then: one extra evaluation, and only when some sample is not finite): where f is finite at 0,
    the gradient of the other samples is then exactly what it is without them.

    Returns:
        z: (B, *S) the detached start point used; y: run(z); zero: (B,) bool of the samples whose
        gradient is zeroed, or None; warning: the NonFiniteWarning text if f stayed non-finite.
    """
    z = z_star.detach()
    y = run(z)
    check_image(y, z, "f(z*)", "z*")
    zero = _nonfinite_samples(y)
    if not bool(zero.any()):
        return z, y, None, None
    z = z.detach().masked_fill(zero.view(-1, *[1] * (z.dim() - 1)), 0)
    y = run(z)
    still = _nonfinite_samples(y)
    warning = nonfinite_message(still, "at the answer and at 0") if bool(still.any()) else None
    return z, y, zero, warning


class _Attach(torch.autograd.Function):
    """Forward: z* itself. Backward: the incoming v, zeroed at non-finite samples and mapped by
    `fn` (None: unchanged), flows into y's graph (y = f(z*), or Phantom's k steps).

    The vector-Jacobian products inside `fn` start at y, upstream of this node, so they never
    re-enter it (a tensor hook on y would fire again for each of them).
    """

    @staticmethod
    def forward(ctx, y: Tensor, z_star: Tensor, fn, zero: Tensor | None, warning: str | None,
                mode: str) -> Tensor:
        ctx.fn, ctx.zero, ctx.warning, ctx.mode, ctx.dtype = fn, zero, warning, mode, y.dtype
        return z_star.view_as(z_star)

    @staticmethod
    def backward(ctx, v: Tensor):
        if ctx.fn is not None and torch.is_grad_enabled():  # backward runs with grad on iff create_graph
            raise NotImplementedError(FIRST_ORDER_ONLY.format(mode=ctx.mode))
        if ctx.warning is not None:
            warnings.warn(ctx.warning, NonFiniteWarning, stacklevel=2)
        if ctx.zero is not None:
            v = v.masked_fill(ctx.zero.view(-1, *[1] * (v.dim() - 1)), 0)
        u = v.to(ctx.dtype) if ctx.fn is None else ctx.fn(v.to(ctx.dtype))
        return u, None, None, None, None, None


def _attach(y: Tensor, z_star: Tensor, zero, warning, fn=None, mode: str = "") -> Tensor:
    """z_star's value (and dtype) with the backward of `_Attach`."""
    return _Attach.apply(y, z_star.detach(), fn, zero, warning, mode)


def _vjp_through(y: Tensor, z: Tensor) -> Callable[[Tensor], Tensor]:
    """u -> J^T u for y = f(z), reusing y's graph (retained for repeated products)."""

    def vjp(u: Tensor) -> Tensor:
        (out,) = torch.autograd.grad(y, z, u.to(y.dtype), retain_graph=True)
        return out

    return vjp


def _leaf_image(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """z -> f(z) with z made a leaf that VJPs differentiate against. f gets a copy: it may write
    into its argument, and an in-place write on a leaf that requires grad is an error."""

    def run(z: Tensor) -> Tensor:
        z.requires_grad_()
        with torch.enable_grad():
            return f(z.clone())

    return run


@dataclass(frozen=True)
class Implicit:
    """Exact implicit gradient: solve u = J^T u + v with a root solver, warm-started at v.

    The adjoint solve's per-sample statistics land in `info.backward` once backward has run.
    """

    solver: object = field(default_factory=Anderson)  # a configured solver (a name is resolved)
    # Relative residual of the adjoint equation: two digits tighter than fixed_point's 1e-4. The
    # adjoint is linear, so its residual falls at the steady rate of the forward's and the two
    # digits cost about half again the forward's steps; they buy a gradient whose own error is
    # well below the forward's, which is what choosing the implicit mode over the cheap ones is for.
    tol: float = 1e-6
    max_iter: int = MAX_ITER  # 50, the core's one step budget (loop.py)
    on_fail: str = "warn"  # a non-converged adjoint is warned about, or raised ("raise")

    def __post_init__(self) -> None:
        # A name becomes its object, so Implicit("picard") == Implicit(Picard()) and serialises alike.
        _set(self, "solver", resolve_solver(self.solver, "Implicit solver"))
        _set(self, "tol", check_real(self.tol, "Implicit tol", lambda t: t >= 0, ">= 0"))
        _set(self, "max_iter", check_int(self.max_iter, "Implicit max_iter", 1))
        check_name(self.on_fail, ON_FAIL, "Implicit on_fail")

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, info=None) -> Tensor:
        z, y, zero, warning = _finite_forward(_leaf_image(f), z_star)
        vjp = _vjp_through(y, z)
        solver = self.solver

        def adjoint(v: Tensor) -> Tensor:
            with torch.no_grad():
                u, binfo = solve(lambda u: vjp(u).to(v.dtype) + v, v, solver,
                                 tol=self.tol, max_iter=self.max_iter)
            if info is not None:
                info.backward = binfo
            if not bool(binfo.converged.all()):
                report_failure(binfo, self.on_fail, "implicit backward (adjoint solve)")
            return u.to(v.dtype)

        return _attach(y, z_star, zero, warning, adjoint, "grad='implicit'")


@dataclass(frozen=True)
class OneStep:
    """Jacobian-free gradient, u = v: one differentiable evaluation of f at z*."""

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, info=None) -> Tensor:
        def run(z: Tensor) -> Tensor:
            with torch.enable_grad():
                return f(z.clone())  # a copy: f may write into its argument

        _, y, zero, warning = _finite_forward(run, z_star)
        return _attach(y, z_star, zero, warning)


@dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series, u = v + J^T v + ... + (J^T)^k v; k=0 is OneStep."""

    k: int = 1

    def __post_init__(self) -> None:
        _set(self, "k", check_int(self.k, "Neumann k", 0))

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, info=None) -> Tensor:
        if self.k == 0:
            return OneStep().attach(f, z_star, info)
        z, y, zero, warning = _finite_forward(_leaf_image(f), z_star)
        vjp = _vjp_through(y, z)

        def series(v: Tensor) -> Tensor:
            u, term = v, v
            for _ in range(self.k):
                term = vjp(term).to(v.dtype)
                u = u + term
            return u

        return _attach(y, z_star, zero, warning, series, f"grad=Neumann(k={self.k})")


@dataclass(frozen=True)
class Phantom:
    """Phantom gradient: backprop through k damped steps of f started at (detached) z*."""

    k: int = 2  # differentiable steps; the paper uses 2 on puzzles
    damping: float = 0.5  # step z <- (1 - damping) z + damping f(z)

    def __post_init__(self) -> None:
        _set(self, "k", check_int(self.k, "Phantom k", 1))
        _set(self, "damping", check_real(self.damping, "Phantom damping", _unit_interval, "in (0, 1]"))

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, info=None) -> Tensor:
        def run(z: Tensor) -> Tensor:
            with torch.enable_grad():
                for _ in range(self.k):
                    z = (1.0 - self.damping) * z + self.damping * f(z.clone())  # f may write into z
            return z

        _, y, zero, warning = _finite_forward(run, z_star)
        return _attach(y, z_star, zero, warning)


@dataclass(frozen=True)
class Unroll:
    """Backprop through every iteration of the solver (the loop records the graph itself)."""

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, info=None) -> Tensor:
        return z_star


GRADS: dict[str, type] = {
    "implicit": Implicit,
    "onestep": OneStep,
    "neumann": Neumann,
    "phantom": Phantom,
    "unroll": Unroll,
}
