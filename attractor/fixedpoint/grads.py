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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from attractor.errors import check_int, check_name, check_real
from attractor.fixedpoint.loop import ON_FAIL, report_failure, resolve_solver, solve
from attractor.fixedpoint.solvers import Anderson, _set, _unit_interval


def _graft(z_star: Tensor, y: Tensor) -> Tensor:
    """z_star's value with y's backward: gradients arriving here flow into y unchanged.

    Where y is not finite (a sample whose f blew up) the value stays z_star and no gradient flows.
    """
    delta = y - y.detach()
    return z_star + torch.where(torch.isfinite(y), delta, torch.zeros_like(delta))


class _MapGradient(torch.autograd.Function):
    """Identity forward; backward applies `fn` to the incoming gradient.

    Placed after y = f(z*), it turns v into u before u flows into f's graph. The vector-Jacobian
    products inside `fn` start at y, upstream of this node, so they never re-enter it (a tensor
    hook on y would fire again for each of them).
    """

    @staticmethod
    def forward(ctx, y: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        ctx.fn = fn
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.fn(grad), None


def _vjp_through(y: Tensor, z: Tensor) -> Callable[[Tensor], Tensor]:
    """u -> J^T u for y = f(z), reusing y's graph (retained for repeated products)."""

    def vjp(u: Tensor) -> Tensor:
        (out,) = torch.autograd.grad(y, z, u.to(y.dtype), retain_graph=True)
        return out

    return vjp


@dataclass(frozen=True)
class Implicit:
    """Exact implicit gradient: solve u = J^T u + v with a root solver, warm-started at v.

    The adjoint solve's per-sample statistics land in `info.backward` once backward has run.
    """

    solver: object = field(default_factory=Anderson)  # a configured solver (a name is resolved)
    tol: float = 1e-6  # relative residual of the adjoint equation
    max_iter: int = 50
    on_fail: str = "warn"  # a non-converged adjoint is warned about, or raised ("raise")

    def __post_init__(self) -> None:
        # A name becomes its object, so Implicit("picard") == Implicit(Picard()) and serialises alike.
        _set(self, "solver", resolve_solver(self.solver, "Implicit solver"))
        _set(self, "tol", check_real(self.tol, "Implicit tol", lambda t: t >= 0, ">= 0"))
        _set(self, "max_iter", check_int(self.max_iter, "Implicit max_iter", 1))
        check_name(self.on_fail, ON_FAIL, "Implicit on_fail")

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, info=None) -> Tensor:
        z = z_star.detach().requires_grad_()
        with torch.enable_grad():
            y = f(z)
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

        return _graft(z_star, _MapGradient.apply(y, adjoint))


@dataclass(frozen=True)
class OneStep:
    """Jacobian-free gradient, u = v: one differentiable evaluation of f at z*."""

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, info=None) -> Tensor:
        with torch.enable_grad():
            y = f(z_star.detach())
        return _graft(z_star, y)


@dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series, u = v + J^T v + ... + (J^T)^k v; k=0 is OneStep."""

    k: int = 1

    def __post_init__(self) -> None:
        _set(self, "k", check_int(self.k, "Neumann k", 0))

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, info=None) -> Tensor:
        z = z_star.detach().requires_grad_()
        with torch.enable_grad():
            y = f(z)
        vjp = _vjp_through(y, z)

        def series(v: Tensor) -> Tensor:
            u, term = v, v
            for _ in range(self.k):
                term = vjp(term).to(v.dtype)
                u = u + term
            return u

        return _graft(z_star, _MapGradient.apply(y, series) if self.k > 0 else y)


@dataclass(frozen=True)
class Phantom:
    """Phantom gradient: backprop through k damped steps of f started at (detached) z*."""

    k: int = 2  # differentiable steps; the paper uses 2 on puzzles
    damping: float = 0.5  # step z <- (1 - damping) z + damping f(z)

    def __post_init__(self) -> None:
        _set(self, "k", check_int(self.k, "Phantom k", 1))
        _set(self, "damping", check_real(self.damping, "Phantom damping", _unit_interval, "in (0, 1]"))

    def attach(self, f: Callable[[Tensor], Tensor], z_star: Tensor, info=None) -> Tensor:
        z = z_star.detach()
        with torch.enable_grad():
            for _ in range(self.k):
                z = (1.0 - self.damping) * z + self.damping * f(z)
        return _graft(z_star, z)


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
