"""Prefix-sum parity end to end: seeded data, the task's batches and validation, the evaluator on
hand-made cases, `attractor data parity`, a tiny run through `attractor train`, `attractor eval`
and `attractor solve parity` on its checkpoint.

Run: .venv/bin/python -m pytest -q tests/tasks/test_parity.py
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from attractor.cli import main
from attractor.config import run_config
from attractor.data.parity import build_parity, generate, load_parity, prefix_parity
from attractor.evaluate import evaluate_parity
from attractor.models.base import ModelOutput
from attractor.parity_solve import read_bits, solve_bits
from attractor.tasks import PARITY, PUZZLES, TASKS, parity_metrics
from attractor.tasks.parity import LengthBatches, ParityBatches

TINY = ["--set", "train.batch_size=8", "--set", "train.eval_batches=1", "--set", "train.log_every=1",
        "--set", "train.eval_every=2", "--set", "data.val_max_bits=32", "--set", "model.d=8"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build_parity(tmp_path_factory.mktemp("data") / "parity", train_bits=8, test_bits=(8, 32, 100),
                        n_train=64, n_test=10, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset):
    out = tmp_path_factory.mktemp("run") / "p"
    assert main(["train", "parity-local", "--data", str(dataset), "--out", str(out), "--steps", "3", "--quiet",
                 *TINY]) == 0
    return out


class Perfect(nn.Module):
    """A stub parity model: the true prefix parities, or with the last bit flipped."""

    def __init__(self, flip_last: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.flip_last = flip_last

    def forward(self, idx, targets=None, *, iters=None):
        y = idx.cumsum(-1) % 2
        if self.flip_last:
            y[:, -1] = 1 - y[:, -1]
        logits = nn.functional.one_hot(y, 2).float() * 10
        loss = None if targets is None else nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return ModelOutput(logits, loss)


# ---------------------------------------------------------------- data


def test_prefix_parity_by_hand():
    assert prefix_parity([1, 0, 1, 1]).tolist() == [1, 1, 0, 1]
    assert prefix_parity([[0, 0], [1, 1]]).tolist() == [[0, 0], [1, 0]]
    assert prefix_parity(np.ones(5, np.uint8)).tolist() == [1, 0, 1, 0, 1]


def test_seeded_data_is_deterministic(tmp_path, dataset):
    a, b = generate(20, 33, seed=5), generate(20, 33, seed=5)
    assert np.array_equal(a.inputs, b.inputs) and np.array_equal(a.labels, prefix_parity(a.inputs))
    assert not np.array_equal(a.inputs, generate(20, 33, seed=6).inputs)
    assert not np.array_equal(generate(20, 33, 5, split=0).inputs, generate(20, 33, 5, split=1).inputs)
    again = load_parity(build_parity(tmp_path / "again", train_bits=8, test_bits=(8, 32, 100), n_train=64, n_test=10,
                                     seed=0))
    first = load_parity(dataset)
    assert np.array_equal(first["train"].inputs, again["train"].inputs)
    for n in (8, 32, 100):
        assert first["test"][n].inputs.shape == (10, n) and np.array_equal(first["test"][n].labels, again["test"][n].labels)
    assert first["meta"]["train_bits"] == 8 and first["meta"]["test_bits"] == [8, 32, 100]


def test_the_data_command_writes_a_dataset_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "parity", "--out", str(out), "--train-bits", "4", "--test-bits", "8,4", "--train", "5",
                 "--test", "3"]) == 0
    assert "train 5 strings of 4 bits" in capsys.readouterr().out
    assert load_parity(out)["meta"]["test_bits"] == [4, 8]
    assert main(["data", "parity", "--out", str(out)]) == 2
    assert main(["data", "parity", "--out", str(tmp_path / "e"), "--test-bits", "8,x"]) == 2
    assert "--test-bits" in capsys.readouterr().err


# ---------------------------------------------------------------- batches and metrics


def test_batches_are_a_function_of_seed_and_step(dataset):
    train = load_parity(dataset)["train"]
    a, b = ParityBatches(train, 8, seed=1), ParityBatches(train, 8, seed=1)
    first = [next(a) for _ in range(3)]
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, [next(b) for _ in range(3)]))
    resumed = ParityBatches(train, 8, seed=1)
    resumed.load_state_dict({"seed": 1, "step": 2})
    assert torch.equal(next(resumed)[0], first[2][0])
    idx, labels = first[0]
    assert idx.shape == (8, 8) and idx.dtype == torch.int64 and torch.equal(labels, idx.cumsum(-1) % 2)


def test_validation_cut_keeps_every_length(dataset):
    test = load_parity(dataset)["test"]
    batches = LengthBatches(test, batch_size=4)
    assert batches.lengths == [8, 32, 100] and len(batches) == 9  # 3 batches of 4, 4, 2 strings per length
    cut = batches[:1]
    assert [x.shape for x, _ in cut] == [(4, 8), (4, 32), (4, 100)]
    run = run_config("parity-local", ["data.val_max_bits=32", "train.eval_batches=2", "batch_size=4"],
                     data=str(dataset))
    assert [x.shape[1] for x, _ in PARITY.validation(run, load_parity(dataset))] == [8, 8, 32, 32]


def test_metrics_on_hand_made_cases():
    labels = torch.tensor([[1, 1, 0], [0, 1, 1]])
    logits = nn.functional.one_hot(torch.tensor([[1, 1, 0], [0, 0, 1]]), 2).float()
    exact, bits = parity_metrics(logits, labels)
    assert exact.tolist() == [True, False] and bits.tolist() == pytest.approx([1.0, 2 / 3])
    exact, bits = parity_metrics(logits, torch.tensor([[1, 1, 0], [0, -100, 1]]))  # an ignored bit
    assert exact.tolist() == [True, True] and bits.tolist() == [1.0, 1.0]


def test_the_evaluator_reports_each_length(dataset):
    batches = LengthBatches(load_parity(dataset)["test"], batch_size=4)
    right = evaluate_parity(Perfect(), batches)
    assert right["val_exact"] == 1.0 and right["val_strings"] == 30
    assert all(right[f"val_exact_{n}"] == 1.0 and right[f"val_bits_{n}"] == 1.0 for n in (8, 32, 100))
    wrong = evaluate_parity(Perfect(flip_last=True), batches)
    assert wrong["val_exact"] == 0.0
    assert wrong["val_bits_8"] == pytest.approx(7 / 8) and wrong["val_bits_100"] == pytest.approx(0.99)
    line = PARITY.eval_line({"step": 3, **right})
    assert line.startswith("step 3: val loss") and "exact by bits 8: 1.000, 32: 1.000, 100: 1.000" in line


# ---------------------------------------------------------------- the run and the commands


def test_the_preset_follows_the_dataset_and_other_tasks_refuse_it(dataset, capsys):
    run = run_config("parity-local", data=str(dataset))
    assert run.task is TASKS["parity"] and run.model.seq_len == 8 and run.model.vocab_size == 2
    assert (run.train.batch_size, run.train.lr, run.train.kernels) == (64, 2e-3, "eager")
    assert PARITY.recognise(str(dataset)) == "a parity dataset" and PUZZLES.recognise(str(dataset)) is None
    assert main(["train", "trm-cpu", "--data", str(dataset), "--out", str(dataset.parent / "x"), "--steps", "1"]) == 2
    assert "is a parity dataset" in capsys.readouterr().err


def test_a_tiny_run_trains_evaluates_and_solves(trained, dataset, capsys):
    evals = [json.loads(line) for line in (trained / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 3]
    assert {"val_exact_8", "val_exact_32", "val_depth_8"} <= set(evals[-1]) and "val_exact_100" not in evals[-1]
    capsys.readouterr()
    assert main(["eval", str(trained), "--iters", "2,adaptive", "--puzzles", "4"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in table[2:]] == [["2", "8", "4"], ["2", "32", "4"], ["2", "100", "4"],
                                                        ["adaptive", "8", "4"], ["adaptive", "32", "4"],
                                                        ["adaptive", "100", "4"]]
    code = main(["solve", "parity", "0110" * 25, "--checkpoint", str(trained)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("on 100 bits") and out[1] == "bits:     " + "0110" * 25 and len(out[2]) == len("parities: ") + 100
    assert (code == 0) == out[3].startswith("right") and out[4].startswith("iterations: ")
    assert main(["solve", "parity", "0110", "--checkpoint", str(trained), "--set", "solver=picard"]) in (0, 1)


def test_solve_reads_bits_and_checks_them(tmp_path, trained, capsys):
    (tmp_path / "bits.txt").write_text("0110\n1001\n")
    assert read_bits(str(tmp_path / "bits.txt")) == "01101001" and read_bits("1 0 1") == "101"
    result = solve_bits(Perfect(), "1011")
    assert result.answer == "1101" == result.expected and result.right
    flipped = solve_bits(Perfect(flip_last=True), "1011")
    assert flipped.wrong == [3] and not flipped.right
    for bad, message in (("0120", "bad character '2' at bit 3"), ("  ", "no bits")):
        assert main(["solve", "parity", bad, "--checkpoint", str(trained)]) == 2
        assert message in capsys.readouterr().err
    assert main(["solve", "parity", "01", "--checkpoint", str(trained), "--trace"]) == 2
    assert main(["solve", "sudoku", "1" * 81, "--checkpoint", str(trained)]) == 2
    assert "not a puzzle model" in capsys.readouterr().err
