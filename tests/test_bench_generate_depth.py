"""bench.generate_depth's quick path on tiny trained runs, with a second solver's rows."""

from __future__ import annotations

import pytest
from conftest import tiny_settings

from attractor.cli import main
from bench import generate_depth


@pytest.fixture(scope="module")
def runs(tmp_path_factory, corpus):
    """Tiny transformer and Attractor runs of 2 steps (bytes, context 32)."""
    root = tmp_path_factory.mktemp("depth")
    for preset in ("transformer-1m", "attractor-1m"):
        settings = tiny_settings(preset, root / "cache")
        assert main(["train", preset, "--out", str(root / preset), "--data", str(corpus), "--steps", "2", "--quiet",
                     *[a for s in settings for a in ("--set", s)]]) == 0
    return root


def test_quick_path_times_both_caches_and_another_solver(runs, capsys):
    generate_depth.main(["--quick", "--new", "6", "--attractor", str(runs / "attractor-1m"),
                         "--transformer", str(runs / "transformer-1m"), "--solver", "picard"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in out.splitlines() if line.startswith("| ")}
    assert rows["transformer, cached"][2] == "1.00"
    for name in ("attractor adaptive, exact cache", "attractor adaptive, converged cache",
                 "attractor adaptive, exact cache, picard", "attractor adaptive, converged cache, picard"):
        assert float(rows[name][1].replace(",", "")) > 0 and float(rows[name][3]) >= 0  # tok/s, mean steps
