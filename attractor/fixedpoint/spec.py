"""Configured solvers and gradient modes as JSON-safe dicts, and back (configs and checkpoints).

    solver_to_dict(Anderson(m=3))  == {"name": "anderson", "m": 3, "beta": 1.0, "ridge": 1e-4}
    grad_to_dict(Implicit())       == {"name": "implicit", "solver": {"name": "anderson", ...},
                                       "tol": 1e-6, "max_iter": 50, "on_fail": "warn"}

The dict holds the registry name and every dataclass field (Implicit nests its solver), so
`solver_from_dict(solver_to_dict(s)) == s` exactly, through json.dumps/json.loads too. Missing
keys take the field's default; unknown names and keys raise ConfigError with suggestions.
Only the registered classes serialise: a custom solver object has no name to be rebuilt from.
"""

from __future__ import annotations

import dataclasses

from attractor.errors import ConfigError, check_name
from attractor.fixedpoint.api import resolve_grad
from attractor.fixedpoint.grads import GRADS
from attractor.fixedpoint.loop import resolve_solver
from attractor.fixedpoint.solvers import SOLVERS


def solver_to_dict(solver) -> dict:
    """{"name": ..., **fields} for a solver object or name ('anderson' gives its defaults)."""
    return _to_dict(resolve_solver(solver), SOLVERS, "solver")


def solver_from_dict(spec: dict | str):
    """The solver a `solver_to_dict` dict describes (a bare name gives the defaults)."""
    return _from_dict(spec, SOLVERS, "solver")


def grad_to_dict(grad) -> dict:
    """{"name": ..., **fields} for a gradient-mode object or name; Implicit's solver is nested."""
    return _to_dict(resolve_grad(grad), GRADS, "gradient mode")


def grad_from_dict(spec: dict | str):
    """The gradient mode a `grad_to_dict` dict describes (a bare name gives the defaults)."""
    return _from_dict(spec, GRADS, "gradient mode")


def _to_dict(obj, registry: dict[str, type], what: str) -> dict:
    name = next((key for key, cls in registry.items() if type(obj) is cls), None)
    if name is None:
        raise ConfigError(f"{what} {obj!r} is not one of the registered classes "
                          f"({', '.join(registry)}), so it has no dict form")
    out = {"name": name}
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        out[field.name] = solver_to_dict(value) if field.name == "solver" else value
    return out


def _from_dict(spec, registry: dict[str, type], what: str):
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"a {what} spec must be a name or a dict with a 'name' key, got {spec!r}")
    name = spec["name"]
    check_name(name, registry, what)
    cls = registry[name]
    known = [field.name for field in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in spec.items():
        if key != "name":
            check_name(key, known, f"{name} option")
            kwargs[key] = solver_from_dict(value) if key == "solver" else value
    return cls(**kwargs)
