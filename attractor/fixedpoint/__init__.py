"""The fixed-point core: solvers, gradient modes and diagnostics. Knows nothing of models."""

from attractor.fixedpoint.api import fixed_point, resolve_grad
from attractor.fixedpoint.diagnostics import jacobian_penalty, spectral_radius
from attractor.fixedpoint.grads import GRADS, Implicit, Neumann, OneStep, Phantom, Unroll
from attractor.fixedpoint.loop import (
    FixedPointError,
    FixedPointInfo,
    FixedPointWarning,
    NonFiniteWarning,
    Status,
    relative_residual,
    resolve_solver,
    solve,
)
from attractor.fixedpoint.solvers import SOLVERS, Anderson, Broyden, Picard
from attractor.fixedpoint.spec import grad_from_dict, grad_to_dict, solver_from_dict, solver_to_dict

__all__ = [
    "fixed_point", "solve", "relative_residual", "resolve_solver", "resolve_grad",
    "FixedPointInfo", "FixedPointError", "FixedPointWarning", "NonFiniteWarning", "Status",
    "Picard", "Anderson", "Broyden", "SOLVERS",
    "Implicit", "OneStep", "Neumann", "Phantom", "Unroll", "GRADS",
    "jacobian_penalty", "spectral_radius",
    "solver_to_dict", "solver_from_dict", "grad_to_dict", "grad_from_dict",
]
