"""Each layer imports only what it may (STYLE.md section 2), checked in a fresh interpreter."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

FORBIDDEN = {
    "fixedpoint": ["layers", "models", "tasks", "data", "train", "config", "cli"],
    "models": ["tasks", "data", "train", "config", "cli"],
    "data": ["models", "tasks", "train", "config", "cli"],
    "tasks": ["models", "train", "config", "cli"],
}


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_layer_imports_only_what_it_may(pkg):
    if importlib.util.find_spec(f"attractor.{pkg}") is None:
        pytest.skip(f"attractor.{pkg} does not exist yet")
    code = f"import sys, attractor.{pkg}; print(*sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    bad = [m for m in loaded if m.startswith(tuple(f"attractor.{x}" for x in FORBIDDEN[pkg]))]
    assert not bad, f"attractor.{pkg} pulls in {bad}"


def test_core_import_stays_light():
    code = "import sys, attractor; print(*sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not [m for m in loaded if m.startswith(("attractor.models", "attractor.layers", "matplotlib"))]
