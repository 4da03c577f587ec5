"""The trained examples in examples/ work from a fresh clone: each loads and solves inputs far
larger than any it was trained on."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from attractor.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("bits", [16, 128, 512])
def test_the_parity_example_solves_strings_longer_than_it_trained_on(capsys, bits):
    string = "".join(random.Random(bits + 1).choice("01") for _ in range(bits))  # trained on 16 bits
    code = main(["solve", "parity", string, "--checkpoint", str(EXAMPLES / "parity"), "--set", "solver=picard"])
    out = capsys.readouterr().out
    expected, parity = [], 0
    for bit in string:
        parity ^= int(bit)
        expected.append(str(parity))
    assert code == 0, out
    assert f"parities: {''.join(expected)}" in out and f"right: all {bits} prefix parities" in out, out


def test_the_parity_example_is_small_and_says_how_it_was_made():
    files = [p for p in (EXAMPLES / "parity").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2 * 1024 * 1024
    assert "attractor train parity-local" in (EXAMPLES / "parity" / "README.md").read_text()


@pytest.mark.parametrize("side", [17, 33])
def test_the_maze_example_solves_mazes_larger_than_it_trained_on(capsys, tmp_path, side):
    from attractor.data import maze

    (m,) = maze.generate(1, side, None, rng=1)  # trained on 9x9
    path = tmp_path / "maze.txt"
    path.write_text(maze.show(m.question, side) + "\n")
    code = main(["solve", "maze", str(path), "--checkpoint", str(EXAMPLES / "maze")])
    out = capsys.readouterr().out
    assert code == 0 and "a shortest path" in out, out
    assert sum(p.stat().st_size for p in (EXAMPLES / "maze").rglob("*") if p.is_file()) < 2 * 1024 * 1024
