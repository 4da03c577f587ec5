"""`fixed_point`: solve z = f(z) per sample, report how it went, attach a gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from attractor.errors import ConfigError, check_bool, check_int, check_name, check_real
from attractor.fixedpoint.grads import GRADS, Unroll
from attractor.fixedpoint.loop import (
    MAX_ITER,
    ON_FAIL,
    TOL,
    FixedPointInfo,
    check_batched,
    report_failure,
    resolve_solver,
    solve,
)


def resolve_grad(grad):
    """A gradient mode from a name ('implicit') or a configured instance (Phantom(k=2))."""
    if isinstance(grad, str):
        check_name(grad, GRADS, "gradient mode")
        return GRADS[grad]()
    if isinstance(grad, type):  # Phantom.attach exists too, as an unbound function
        name = grad.__name__
        raise ConfigError(f"gradient mode {name} is a class; pass an instance, e.g. {name}()")
    if not hasattr(grad, "attach"):
        raise ConfigError(f"gradient mode {grad!r} is neither a name nor an object with attach()")
    return grad


def fixed_point(
    f: Callable[[Tensor], Tensor],
    z0: Tensor,
    *,
    solver="anderson",
    grad="implicit",
    tol: float = TOL,  # 1e-4: the generic core's default (loop.py says why), not a model's
    max_iter: int = MAX_ITER,  # 50
    min_iter: int = 0,
    on_fail: Literal["warn", "raise", "ignore"] = "warn",
    trace: bool = False,
    batch_dims: int = 1,
    prefix_stop: bool = False,
    prefix_depth: Tensor | None = None,
) -> tuple[Tensor, FixedPointInfo]:
    """Solve z = f(z) for each sample and attach the chosen gradient.

    Args:
        f: maps (B, *S) -> (B, *S); samples must not interact. Every tensor it closes over
            (parameters, inputs) receives gradients, without being listed. It may return another
            dtype than z's (autocast) and may write into its argument; z0 is never changed.
        z0: (B, *S) starting point, e.g. the backbone's proposal; the answer has its dtype. A
            batch dimension is required: (N,) is a ConfigError, not N scalar problems.
        solver: 'picard', 'anderson', 'broyden' or a configured object (`Anderson(m=5)`).
        grad: 'implicit', 'onestep', 'neumann', 'phantom', 'unroll' or a configured object
            (`Phantom(k=2, damping=0.5)`). Ignored when autograd is off.
        tol: a sample stops once ||f(z) - z|| / ||f(z)|| < tol, or == 0 (which tol=0 needs),
            and it has taken min_iter steps.
        max_iter: most solver steps per sample (0: return z0, reporting its residual).
        min_iter: fewest steps before a sample may stop.
        on_fail: what to do when a sample does not converge: warn (once per call site),
            raise FixedPointError, or ignore. The result is the same in every case.
        trace: record every iterate's residual in `info.trace`.
        batch_dims: how many leading dims index separate problems ("units"), each with its own
            residual, stopping and solver state (2 for one unit per token of a (B, T, D) state).
            f may couple units; the solver never does.
        prefix_stop: with batch_dims=2, unit (b, t) stops only once units (b, 0..t) have all
            converged. If unit t of f(z) depends only on units <= t (causal attention), every
            unit's trajectory is then independent of later units: adaptive depth stays causal.
        prefix_depth: (B,) int, with prefix_stop: continue a prefix-stopped solve whose earlier
            units (a KV cache's tokens) were solved before and stopped after prefix_depth[b]
            steps; no unit of sample b stops before that, as in one solve over the whole sequence.
    Returns:
        z: (B, *S) in z0's dtype, per sample the iterate with the lowest absolute residual
            ||f(z) - z|| among those meeting tol (among all if none does); finite whenever z0
            and f(z0) are;
        info: per-sample depth (solver steps taken), residuals, convergence and status
            (FixedPointInfo).
    """
    solver = resolve_solver(solver)
    grad = resolve_grad(grad)
    check_name(on_fail, ON_FAIL, "on_fail value")
    tol = check_real(tol, "tol", lambda t: t >= 0, ">= 0")
    max_iter = check_int(max_iter, "max_iter", 0)
    min_iter = check_int(min_iter, "min_iter", 0)
    if min_iter > max_iter:
        raise ConfigError(f"min_iter={min_iter} must be <= max_iter={max_iter}")
    trace, prefix_stop = check_bool(trace, "trace"), check_bool(prefix_stop, "prefix_stop")
    check_batched(z0)
    unroll = isinstance(grad, Unroll)
    if max_iter == 0:  # nothing to solve: z0 itself, graph included, with its residual reported
        with torch.no_grad():
            _, info = solve(f, z0, solver, tol=tol, max_iter=0, batch_dims=batch_dims)
        z = z0
    else:
        with torch.set_grad_enabled(unroll and torch.is_grad_enabled()):
            z, info = solve(f, z0 if unroll else z0.detach(), solver, tol=tol, max_iter=max_iter,
                            min_iter=min_iter, trace=trace, batch_dims=batch_dims, prefix_stop=prefix_stop,
                            prefix_depth=prefix_depth)
    if not bool(info.converged.all()):
        report_failure(info, on_fail, "fixed_point")
    if max_iter > 0 and torch.is_grad_enabled() and not unroll:
        z = grad.attach(f, z, info)
    return z, info
