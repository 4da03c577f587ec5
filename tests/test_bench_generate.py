"""bench.generate's quick path on two models and one short length."""

from __future__ import annotations

from bench import generate


def test_quick_path_runs_for_one_model_and_length(capsys):
    generate.main(["--quick", "--models", "transformer,attractor-converged", "--lengths", "48", "--no-startup"])
    out = capsys.readouterr().out
    assert "40 prompt + 8 generated" in out
    row = next(line for line in out.splitlines() if line.startswith("| transformer-1m"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4].endswith("x") and cells[5] == "1.00"  # cached/uncached, and vs itself
    assert float(cells[8]) >= 0 and float(cells[9]) >= 0  # peak MB from the fresh subprocesses
    light = next(line for line in out.splitlines() if line.startswith("| attractor-1m, adaptive, converged cache"))
    assert float(light.split("|")[2]) >= 0  # its mean depth
