"""The solve and depth defaults of every family, as docs/models.md tabulates them, checked
against the code: the table between the markers below is rendered here from the config
dataclasses, `fixed_point`'s signature, `Implicit` and the presets, so it cannot drift. After
changing a default or a preset, regenerate it:
    .venv/bin/python tests/models/test_defaults.py --write
Run: .venv/bin/python -m pytest -q tests/models/test_defaults.py
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import sys
from pathlib import Path

from attractor.fixedpoint import Implicit, fixed_point, loop
from attractor.models.registry import FAMILIES, PRESETS

ROOT = Path(__file__).resolve().parents[2]
MODELS_DOC = ROOT / "docs" / "models.md"
FIXED_POINT_DOC = ROOT / "docs" / "fixed-point.md"
BEGIN = "<!-- generated: tests/models/test_defaults.py -->"
END = "<!-- end -->"

SOLVE = ("solve.solver", "solve.grad", "solve.tol", "solve.min_iter", "solve.max_iter", "solve.stop")
# family -> the config fields that set its solve or its depth (dotted: inside a nested config)
PARAMETERS = {
    "attractor": SOLVE,
    "deq": SOLVE,
    "looped": ("mean_loops", "max_loops", "backprop_loops"),
    "transformer": ("n_layer",),
    "puzzle-transformer": ("n_layer",),
    "trm": ("h_cycles", "l_cycles", "halt_max_steps"),
    "attractor-reasoner": (*SOLVE, "h_cycles", "halt_max_steps", "joint"),
    "local": (*SOLVE, "max_iter_per_position", "start", "loops_per_position"),
    "local-grid": (*SOLVE, "max_iter_per_position", "start", "loops_per_position", "layers"),
    "grid-transformer": ("n_layer",),
    "grid-trm": ("h_cycles", "l_cycles", "halt_max_steps"),
    "attention-map": (*SOLVE, "max_iter_per_position", "start", "loops_per_position"),
}
CORE = {fixed_point: ("solver", "grad", "tol", "min_iter", "max_iter"), Implicit: ("solver", "tol", "max_iter")}


def value_at(cfg, path: str):
    return functools.reduce(getattr, path.split("."), cfg)


def where(obj) -> str:
    """`Name` (path/of/its/module.py); a function is written with its call parentheses."""
    name = obj.__name__ + ("" if isinstance(obj, type) else "()")
    return f"`{name}` ({Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT)})"


def defined_in(cls: type, path: str) -> str:
    """Where the default of `path` in a `cls()` comes from: the class that declares the field,
    or, inside a nested config, what the field's default_factory is (a class or a function)."""
    head, _, rest = path.partition(".")
    if rest:
        return where(next(f for f in dataclasses.fields(cls) if f.name == head).default_factory)
    return where(next(c for c in cls.__mro__ if head in vars(c).get("__annotations__", {})))


def show(value) -> str:
    return f"`{value!r}`"


def family_rows() -> list[list[str]]:
    rows = []
    for family, paths in PARAMETERS.items():
        cls = FAMILIES[family]
        default = cls()
        for path in paths:
            changed = [f"`{name}` {show(value_at(cfg, path))}" for name, make in PRESETS.items()
                       if type(cfg := make()) is cls and value_at(cfg, path) != value_at(default, path)]
            rows.append([family, f"`{path}`", show(value_at(default, path)), defined_in(cls, path),
                         ", ".join(changed) or "-"])
    return rows


def core_rows() -> list[list[str]]:
    """fixed_point's and Implicit's defaults; where one is a named constant of the core's loop
    module (TOL, MAX_ITER), the constant is where it is defined."""
    rows = []
    for owner, names in CORE.items():
        if isinstance(owner, type):
            defaults = {f.name: value_at(owner(), f.name) for f in dataclasses.fields(owner)}
        else:
            defaults = {n: p.default for n, p in inspect.signature(owner).parameters.items()}
        for name in names:
            constant = getattr(loop, name.upper(), None)
            source = (f"`{name.upper()}` ({Path(loop.__file__).resolve().relative_to(ROOT)})"
                      if constant is not None and constant == defaults[name] else where(owner))
            rows.append([where(owner).split(" ")[0], f"`{name}`", show(defaults[name]), source])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def render() -> str:
    """The generated block of docs/models.md, markers included."""
    families = table(["family", "parameter", "default", "defined in", "presets that change it"], family_rows())
    core = table(["used by", "parameter", "default", "defined in"], core_rows())
    return (f"{BEGIN}\n{families}\n\nThe fixed-point core's own defaults, for a direct call of `fixed_point` "
            f"and for the implicit gradient's adjoint solve (not a model's):\n\n{core}\n{END}")


def documented() -> str:
    text = MODELS_DOC.read_text()
    start, stop = text.find(BEGIN), text.find(END, text.find(BEGIN))
    assert start >= 0 and stop >= 0, f"{MODELS_DOC} has no block {BEGIN} ... {END}"
    return text[start:stop + len(END)]


def test_every_family_is_tabulated():
    assert set(PARAMETERS) == set(FAMILIES)


def test_models_doc_table_matches_the_code():
    assert documented() == render(), "docs/models.md is stale: run .venv/bin/python tests/models/test_defaults.py --write"


def test_fixed_point_doc_states_the_core_defaults():
    text = FIXED_POINT_DOC.read_text()
    call = re.search(r"fixed_point\(f, z0, \*,(.*?)\)\n", text, re.S).group(1)
    stated = {k: ast.literal_eval(v) for k, v in re.findall(r"(\w+)=([^,\s]+)", call)}
    signature = inspect.signature(fixed_point).parameters
    assert stated == {k: signature[k].default for k in stated} and set(CORE[fixed_point]) <= set(stated)
    row = re.search(r"`Implicit\((.*?)\)`", text).group(1)
    stated = {k: ast.literal_eval(v) for k, v in re.findall(r"(\w+)=([\d.e+-]+)", row)}
    assert stated == {"tol": Implicit().tol, "max_iter": Implicit().max_iter}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    text = MODELS_DOC.read_text()
    MODELS_DOC.write_text(text.replace(documented(), render()))
    print(f"wrote the defaults table of {MODELS_DOC}")
