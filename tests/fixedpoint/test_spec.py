"""Solver and gradient-mode objects: typed fields, and an exact round trip through JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from attractor import (
    Anderson,
    Broyden,
    ConfigError,
    Implicit,
    Neumann,
    OneStep,
    Phantom,
    Picard,
    Unroll,
    grad_from_dict,
    grad_to_dict,
    solver_from_dict,
    solver_to_dict,
)

# Non-default values everywhere, so a field dropped by to_dict cannot round-trip by accident.
SOLVER_OBJECTS = [Picard(damping=0.3), Anderson(m=7, beta=0.6, ridge=3e-3), Broyden(m=11)]
GRAD_OBJECTS = [
    Implicit(solver=Broyden(m=9), tol=3e-7, max_iter=77, on_fail="raise"),
    Implicit(solver=Picard(damping=0.9)),
    OneStep(),
    Neumann(k=4),
    Phantom(k=3, damping=0.25),
    Unroll(),
]


def through_json(d: dict) -> dict:
    return json.loads(json.dumps(d))


@pytest.mark.parametrize("solver", SOLVER_OBJECTS, ids=repr)
def test_solver_round_trips_through_json(solver):
    d = through_json(solver_to_dict(solver))
    assert d["name"] == type(solver).__name__.lower()
    back = solver_from_dict(d)
    assert back == solver and type(back) is type(solver)


@pytest.mark.parametrize("grad", GRAD_OBJECTS, ids=repr)
def test_grad_round_trips_through_json(grad):
    d = through_json(grad_to_dict(grad))
    assert d["name"] == type(grad).__name__.lower()
    back = grad_from_dict(d)
    assert back == grad and type(back) is type(grad)


def test_implicit_nests_its_solver():
    d = grad_to_dict(Implicit(solver=Anderson(m=3)))
    assert d["solver"] == {"name": "anderson", "m": 3, "beta": 1.0, "ridge": 1e-4}


def test_names_resolve_and_missing_keys_take_defaults():
    assert solver_to_dict("broyden") == {"name": "broyden", "m": 20}
    assert solver_from_dict({"name": "anderson", "m": 2}) == Anderson(m=2)
    assert grad_from_dict({"name": "implicit", "solver": {"name": "picard"}}) == Implicit(solver=Picard())


def test_bad_dicts_fail_loudly():
    with pytest.raises(ConfigError, match="did you mean 'anderson'"):
        solver_from_dict({"name": "andersen"})
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        solver_from_dict({"name": "anderson", "betta": 0.5})
    with pytest.raises(ConfigError, match="name"):
        grad_from_dict({"k": 2})
    with pytest.raises(ConfigError, match="did you mean 'phantom'"):
        grad_from_dict({"name": "phantm"})
    with pytest.raises(ConfigError, match="Phantom damping"):
        grad_from_dict({"name": "phantom", "damping": "0.5"})
    with pytest.raises(ConfigError, match="solver"):
        solver_to_dict(object())
    with pytest.raises(ConfigError, match="solver"):
        solver_from_dict([("name", "picard")])


# ---- typed fields ----------------------------------------------------------------------------

BAD_FIELDS = [
    (Picard, "damping", "0.5", "a number"),
    (Picard, "damping", None, "a number"),
    (Picard, "damping", True, "a number"),
    (Anderson, "m", "5", "an int >= 1"),
    (Anderson, "m", 5.0, "an int >= 1"),
    (Anderson, "m", True, "an int >= 1"),
    (Anderson, "m", None, "an int >= 1"),
    (Anderson, "beta", "1", "a number"),
    (Anderson, "ridge", None, "a number"),
    (Broyden, "m", 2.5, "an int >= 1"),
    (Implicit, "tol", "1e-6", "a number"),
    (Implicit, "max_iter", 50.0, "an int >= 1"),
    (Implicit, "on_fail", None, "a name"),
    (Implicit, "solver", Anderson, "instance"),
    (Neumann, "k", "2", "an int >= 0"),
    (Neumann, "k", False, "an int >= 0"),
    (Phantom, "k", 2.0, "an int >= 1"),
    (Phantom, "damping", "0.5", "a number"),
]


@pytest.mark.parametrize("cls,field,value,expect", BAD_FIELDS)
def test_fields_are_type_checked(cls, field, value, expect):
    with pytest.raises(ConfigError, match=f"{cls.__name__} {field}.*{expect}"):
        cls(**{field: value})


@pytest.mark.parametrize("cls,field", [(Anderson, "m"), (Broyden, "m"), (Neumann, "k"), (Phantom, "k"),
                                       (Implicit, "max_iter")])
def test_numpy_integers_are_ints(cls, field):
    obj = cls(**{field: np.int64(3)})
    assert type(getattr(obj, field)) is int and getattr(obj, field) == 3
    assert json.dumps(grad_to_dict(obj) if cls in (Neumann, Phantom, Implicit) else solver_to_dict(obj))
