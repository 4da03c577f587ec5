"""Mazes of any side end to end: seeded data, the task's validation and evaluator on hand-made
cases, `attractor data maze-sizes`, a tiny run through `attractor train maze-local`, `attractor
eval` and `attractor solve maze` on its checkpoint with a maze of a side never trained on.

Run: .venv/bin/python -m pytest -q tests/tasks/test_maze_sizes.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from attractor.cli import main
from attractor.config import run_config
from attractor.data import maze
from attractor.data.maze_sizes import build_maze_sizes, generate, load_maze_sizes
from attractor.evaluate import evaluate_grids
from attractor.models.base import ModelOutput
from attractor.tasks import MAZE_SIZES, PARITY, PUZZLES, TASKS
from attractor.tasks.parity import LengthBatches

TINY = ["--set", "train.batch_size=4", "--set", "train.eval_batches=1", "--set", "train.eval_every=2",
        "--set", "data.val_max_size=9", "--set", "model.d=4"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_maze_sizes(tmp_path_factory.mktemp("data") / "mazes", train_size=5, test_sizes=(5, 9, 13),
                            n_train=16, n_test=3, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("run") / "m"
    assert main(["train", "maze-local", "--data", str(dataset), "--out", str(out), "--steps", "3", "--quiet",
                 *TINY]) == 0
    return out


class Oracle(nn.Module):
    """A stub maze model that answers each question with the given answers (by question row)."""

    def __init__(self, spoil: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.spoil = spoil

    def forward(self, idx, targets=None, *, iters=None):
        answer = targets.clone()
        if self.spoil:  # the first open-or-path cell of the first maze of the batch turned wrong
            first = int(((answer[0] == maze.TOKEN[maze.OPEN]) | (answer[0] == maze.TOKEN[maze.PATH])).nonzero()[0])
            answer[0, first] = maze.TOKEN[maze.PATH] + maze.TOKEN[maze.OPEN] - answer[0, first]
        logits = nn.functional.one_hot(answer, 6).float() * 10
        return ModelOutput(logits, nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten()))


def test_seeded_data_is_deterministic(tmp_path, dataset):
    again = build_maze_sizes(tmp_path / "again", train_size=5, test_sizes=(13, 9, 5, 9), n_train=16, n_test=3, seed=0)
    a, b = load_maze_sizes(dataset), load_maze_sizes(again)
    assert a["meta"]["test_sizes"] == [5, 9, 13] == b["meta"]["test_sizes"]
    for split in ("train", 5, 9, 13):
        x = a["train"] if split == "train" else a["test"][split]
        y = b["train"] if split == "train" else b["test"][split]
        assert np.array_equal(x.inputs, y.inputs) and np.array_equal(x.labels, y.labels)
    assert a["test"][13].inputs.shape == (3, 169) and a["train"].inputs.shape == (16, 25)
    assert not np.array_equal(generate(3, 9, seed=1, split=1).inputs, a["test"][9].inputs)
    questions = maze.from_tokens(a["test"][9].inputs)
    answers = maze.from_tokens(a["test"][9].labels)
    assert [maze.solve(q, 9)[0] for q in questions] == answers  # the label is BFS's shortest path
    assert list(a["test"][9].path) == [maze.solve(q, 9)[1] for q in questions]


def test_the_data_command_writes_a_dataset_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "maze-sizes", "--out", str(out), "--train-size", "5", "--test-sizes", "5,7",
                 "--train", "4", "--test", "2"]) == 0
    assert "train 4 mazes of side 5, test-5 2 mazes of side 5, test-7 2 mazes of side 7" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["kind"] == "maze"
    assert main(["data", "maze-sizes", "--out", str(out)]) == 2
    assert main(["data", "maze-sizes", "--out", str(tmp_path / "e"), "--test-sizes", "2,5"]) == 2
    assert "at least 3" in capsys.readouterr().err


def test_the_evaluator_reports_each_side_on_hand_made_cases(dataset):
    batches = LengthBatches(load_maze_sizes(dataset)["test"], batch_size=2)
    right = evaluate_grids(Oracle(), batches)
    assert right["val_exact"] == 1.0 and right["val_strings"] == 9
    assert all(right[f"val_exact_{s}"] == 1.0 and right[f"val_bits_{s}"] == 1.0 for s in (5, 9, 13))
    wrong = evaluate_grids(Oracle(spoil=True), batches)  # one cell of the first maze of each batch (2 per side)
    assert wrong["val_exact_13"] == pytest.approx(1 / 3) and wrong["val_bits_13"] == pytest.approx(1 - 2 / (3 * 169))
    line = MAZE_SIZES.eval_line({"step": 3, **right})
    assert "exact by side 5: 1.000, 9: 1.000, 13: 1.000" in line


def test_the_preset_follows_the_dataset_and_other_tasks_refuse_it(dataset, capsys):
    run = run_config("maze-local", data=str(dataset))
    assert run.task is TASKS["maze-sizes"] and run.model.seq_len == 25 and run.model.vocab_size == 6
    assert MAZE_SIZES.recognise(str(dataset)) == "a maze-sizes dataset"
    assert PUZZLES.recognise(str(dataset)) is None and PARITY.recognise(str(dataset)) is None
    assert main(["train", "parity-local", "--data", str(dataset), "--out", str(dataset.parent / "x"), "--steps", "1"]) == 2
    assert "maze-sizes dataset" in capsys.readouterr().err


def test_a_tiny_run_trains_evaluates_and_solves_a_larger_maze(trained, tmp_path, capsys):
    evals = [json.loads(line) for line in (trained / "eval.jsonl").read_text().splitlines()]
    assert {"val_exact_5", "val_exact_9", "val_depth_9"} <= set(evals[-1]) and "val_exact_13" not in evals[-1]
    capsys.readouterr()
    assert main(["eval", str(trained), "--iters", "2,adaptive", "--puzzles", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["iters", "side", "mazes"]
    assert [line.split()[:3] for line in table[2:]] == [["2", "5", "2"], ["2", "9", "2"], ["2", "13", "2"],
                                                        ["adaptive", "5", "2"], ["adaptive", "9", "2"],
                                                        ["adaptive", "13", "2"]]
    path = tmp_path / "m.txt"
    assert main(["maze", "generate", "--count", "1", "--size", "15", "--out", str(path)]) == 0
    code = main(["solve", "maze", str(path), "--checkpoint", str(trained), "--trace", "--html", str(tmp_path / "p.html")])
    out = capsys.readouterr().out
    assert code in (0, 1) and "on a 15x15 maze" in out and "(Picard)" in out and (tmp_path / "p.html").exists()
