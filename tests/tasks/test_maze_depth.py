"""The maze baselines reach the maze-sizes task, and bench.maze_depth (iteration budgets, path
independence across random starts, solver cost) runs on the shipped checkpoint, examples/maze.

Run: .venv/bin/python -m pytest -q tests/tasks/test_maze_depth.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attractor.config import run_config
from attractor.data.maze_sizes import build_maze_sizes
from attractor.tasks import MAZE_SIZES
from bench import maze_depth

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "maze"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_maze_sizes(tmp_path_factory.mktemp("data") / "mazes", train_size=5, test_sizes=(5, 7),
                            n_train=2, n_test=2, seed=0)


@pytest.mark.parametrize("preset", ["maze-feedforward", "maze-transformer", "maze-trm"])
def test_the_baselines_train_on_maze_sizes(preset, dataset):
    run = run_config(preset, data=str(dataset))
    assert run.task is MAZE_SIZES and run.model.vocab_size == 6 and run.model.seq_len == 25


def test_the_depth_bench_runs_on_the_shipped_checkpoint(dataset, capsys):
    result = maze_depth.run(str(EXAMPLE), str(dataset), [5, 7], mazes=2, budgets=[1, 40], starts=1)
    assert {(r["side"], r["solver"], r["budget"]) for r in result["budget"]} == {
        (s, solver, k) for s in (5, 7) for solver in ("anderson", "picard") for k in (1, 40)}
    assert all(r["steps"] <= r["budget"] for r in result["budget"])  # the budget caps the steps
    assert all(r["exact"] == 0.0 for r in result["budget"] if r["budget"] == 1)  # one step solves nothing
    for row in result["starts"]:
        assert row["starts"] == 2 and len(row["exact_by_start"]) == 2
        assert 0.0 <= row["same_answers"] <= 1.0 and 0.0 <= row["dist_mean"] <= row["dist_max"]
    assert [(r["side"], r["solver"]) for r in result["cost"]] == [(5, "anderson"), (5, "picard"),
                                                                   (7, "anderson"), (7, "picard")]
    assert [r["cap"] for r in result["cost"]] == [32, 32, 49, 49]  # max(32, s*s)
    assert all(r["seconds"] > 0 for r in result["cost"])
    maze_depth.report(result)
    assert "Path independence" in capsys.readouterr().out
