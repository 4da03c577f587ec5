"""Puzzle runs through the one trainer: the CLI end to end (train, eval, exit codes), the model
following the dataset, checkpoints that serve the averaged weights and the dataset's description,
an exact resume of a recursive model (its carry in the state_dict), and two processes = one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import losses

from attractor.cli import main
from attractor.config import run_config
from attractor.data.puzzles import build_maze, build_sudoku
from attractor.evaluate import by_rating
from attractor.run import load_run, train
from attractor.train import Trainer


class Killed(Exception):
    pass

TINY = {  # about 10k parameters: a few steps take a second
    "puzzle-transformer-cpu": ["model.n_layer=2"],
    "trm-cpu": ["model.n_layer=1", "model.h_cycles=2", "model.l_cycles=2", "model.halt_max_steps=4",
                "model.prefix_len=1"],
}
COMMON = ["model.d=32", "model.n_head=2", "train.batch_size=4", "train.log_every=1", "train.warmup=2",
          "train.eval_every=3", "train.eval_batches=2", "train.checkpoint_every=3", "train.lr=3e-3", "train.ema=0.5"]


def sets(preset: str, *extra: str) -> list[str]:
    return [a for s in [*COMMON, *TINY[preset], *extra] for a in ("--set", s)]


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory):
    """A 4x4 Sudoku dataset: 12 puzzles x (1 + 3 augmentations) to train on, 6 to test."""
    return build_sudoku(tmp_path_factory.mktemp("data") / "sudoku4", n_train=12, n_test=6, n_aug=3, seed=0, box=(2, 2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sudoku4):
    out = tmp_path_factory.mktemp("run") / "pt"
    assert main(["train", "puzzle-transformer-cpu", "--data", str(sudoku4), "--out", str(out), "--steps", "6",
                 "--quiet", *sets("puzzle-transformer-cpu")]) == 0
    return out


@pytest.fixture(scope="module")
def trained_trm(tmp_path_factory, sudoku4):
    out = tmp_path_factory.mktemp("run") / "trm"
    assert main(["train", "trm-cpu", "--data", str(sudoku4), "--out", str(out), "--steps", "4", "--quiet",
                 *sets("trm-cpu")]) == 0
    return out


def one_line_error(capsys, argv: list[str], match: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("attractor: error:") and match in err, err


def test_the_model_follows_the_dataset_and_gets_the_puzzle_defaults(sudoku4):
    run = run_config("trm-7m", data=str(sudoku4))
    assert (run.model.seq_len, run.model.vocab_size) == (16, 6)  # 4x4 Sudoku: 16 cells, pad + blank + 4 digits
    assert (run.train.lr, run.train.weight_decay, run.train.ema, run.train.cooldown, run.train.matrix_optimizer) == (
        1e-4, 1.0, 0.999, 0.0, "adamw")  # TRM's recipe
    assert run_config("trm-7m", ["lr=1e-3"], data=str(sudoku4)).train.lr == 1e-3
    for preset in ("puzzle-transformer-cpu", "trm-cpu", "attractor-reasoner-cpu"):  # short CPU runs
        cpu = run_config(preset, data=str(sudoku4)).train
        assert (cpu.batch_size, cpu.lr, cpu.weight_decay, cpu.ema, cpu.warmup, cpu.cooldown, cpu.matrix_optimizer) == (
            64, 1e-3, 0.1, 0.99, 50, 0.0, "adamw")
        assert run_config(preset, ["ema=0.999", "batch_size=8"], data=str(sudoku4)).train.ema == 0.999
    assert run_config("transformer-1m").train.ema is None  # the language models keep theirs
    assert type(run).from_dict(json.loads(json.dumps(run.to_dict()))) == run


def test_training_logs_exact_and_cell_accuracy_and_the_checkpoint_serves_the_average(trained, sudoku4):
    evals = [json.loads(line) for line in (trained / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 6]
    assert all(0 <= e["val_exact"] <= 1 and 0 <= e["val_cell"] <= 1 and e["val_puzzles"] == 6 for e in evals)
    assert len(losses(trained)) == 6
    model, meta, run, step = load_run(trained)
    assert step == 6 and meta["kind"] == "sudoku" and meta["box"] == [2, 2] and meta["vocab_size"] == 6
    state = torch.load(sorted(trained.glob("ckpt-*"))[-1] / "state.pt", weights_only=True)
    served, raw = model.state_dict(), state["ema"]["raw"]
    for name, average in state["ema"]["shadow"].items():
        assert torch.equal(served[name], average), name
    assert any(not torch.equal(served[n], raw[n]) for n in raw)  # raw weights are kept apart for the resume


def test_eval_serves_puzzle_checkpoints(capsys, trained):
    assert main(["eval", str(trained), "--json", "--puzzles", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "puzzles" and out["puzzles"] == 4 and out["step"] == 6
    (row,) = out["sweep"]  # the transformer has no depth to sweep
    assert 0 <= row["val_exact"] <= row["val_cell"] <= 1  # an exact puzzle has every cell right
    assert sum(b["puzzles"] for b in row["by_rating"]) == 4
    # the same numbers by hand from the served model
    model, _, run, _ = load_run(trained)
    from attractor.data.puzzles import load_puzzles
    from attractor.tasks import cell_metrics, changed_metrics, test_batches

    (inputs, labels), = test_batches(load_puzzles(run.data.source)["test"], 4, max_puzzles=4)
    logits = model(inputs).logits
    exact, cell = cell_metrics(logits, labels)
    assert row["val_exact"] == pytest.approx(exact.float().mean().item())
    assert row["val_cell"] == pytest.approx(cell.mean().item())
    assert row["val_changed"] == pytest.approx(changed_metrics(logits, inputs, labels).mean().item())
    assert "changed" in row["by_rating"][0]
    assert main(["eval", "--checkpoint", str(trained)]) == 0
    assert "test puzzles" in capsys.readouterr().out


def test_eval_on_another_dataset_of_the_same_geometry(capsys, tmp_path, trained, sudoku4):
    other = build_sudoku(tmp_path / "other4", n_train=2, n_test=5, n_aug=0, seed=7, box=(2, 2))
    assert main(["eval", str(trained), "--json", "--data", str(other)]) == 0
    assert json.loads(capsys.readouterr().out)["puzzles"] == 5  # the other test split, not sudoku4's 6
    maze4 = build_maze(tmp_path / "maze4", n_train=2, n_test=2, size=4, min_path=1)  # also length 16, vocab 6
    one_line_error(capsys, ["eval", str(trained), "--data", str(maze4)], "'kind': 'maze'")
    one_line_error(capsys, ["eval", str(trained), "--data", str(tmp_path / "none")], "none")


def test_eval_sweeps_iterations_and_supervision_steps_of_a_recursive_model(capsys, trained_trm):
    assert main(["eval", str(trained_trm), "--json", "--iters", "0,1,adaptive", "--steps", "1,4,all",
                 "--puzzles", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["iters"] for r in out["sweep"]] == [0, 1, "adaptive"]
    assert [r["steps"] for r in out["steps_sweep"]] == [1, 4]  # 'all' is the adaptive row
    adaptive, all_steps = out["sweep"][-1], out["steps_sweep"][-1]  # halt_max_steps is 4
    for key in ("val_loss", "val_exact", "val_cell", "val_depth"):
        assert all_steps[key] == adaptive[key], key
    assert out["sweep"][0]["val_depth"] == 0 < out["sweep"][1]["val_depth"] < adaptive["val_depth"]
    assert sum(b["puzzles"] for b in adaptive["by_rating"]) == 4 and "depth" in adaptive["by_rating"][0]


def test_by_rating_groups_puzzles_by_quartile():
    ratings = np.array([1, 1, 1, 2, 3, 5, 8, 8])
    exact = np.array([1, 1, 0, 1, 0, 0, 0, 1.0])
    cell = np.linspace(0.2, 0.9, 8)
    depth = np.arange(8.0)
    rows = by_rating(ratings, exact, cell, depth)
    # quartile edges (lower) 1, 2, 5: groups {1, 1, 1}, {2}, {3, 5}, {8, 8}
    assert [r["rating"] for r in rows] == [[1, 1], [2, 2], [3, 5], [8, 8]]
    assert [r["puzzles"] for r in rows] == [3, 1, 2, 2]
    assert [r["exact"] for r in rows] == pytest.approx([2 / 3, 1, 0, 0.5])
    assert [r["depth"] for r in rows] == pytest.approx([1, 3, 4.5, 6.5])
    assert rows[2]["cell"] == pytest.approx(cell[4:6].mean())
    assert "depth" not in by_rating(ratings, exact, cell, None)[0]


@pytest.mark.parametrize("extra,match", [
    (["--data", "/no/such/dataset"], "/no/such/dataset"),
    ([], "needs a dataset"),
    (["--set", "model.seq_len=81"], "model.seq_len=81 does not fit"),
    (["--set", "vocab_size=11"], "model.vocab_size=11 does not fit"),
])
def test_bad_puzzle_data_is_one_line_and_exit_2(capsys, tmp_path, sudoku4, extra, match):
    data = [] if extra[:1] == ["--data"] or extra == [] else ["--data", str(sudoku4)]
    one_line_error(capsys, ["train", "puzzle-transformer-cpu", "--out", str(tmp_path / "r"), *data, *extra], match)
    assert not (tmp_path / "r").exists()


def test_gradient_accumulation_is_refused_for_a_model_that_carries_state(capsys, tmp_path, sudoku4):
    one_line_error(capsys, ["train", "trm-cpu", "--data", str(sudoku4), "--out", str(tmp_path / "r"), "--steps", "2",
                            *sets("trm-cpu", "train.grad_accum=2")], "grad_accum=2")
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_eval_flags_of_the_other_task_are_refused(capsys, trained):
    one_line_error(capsys, ["eval", str(trained), "--batches", "2"], "--puzzles")
    one_line_error(capsys, ["eval", str(trained), "--steps", "x"], "--steps")
    one_line_error(capsys, ["eval", str(trained), "--checkpoint", "/elsewhere"], "two checkpoints")
    one_line_error(capsys, ["eval"], "name the checkpoint")


@pytest.mark.ddp
@pytest.mark.slow  # about 40 s each on the shared 2-core machine (two interpreters, gloo)
@pytest.mark.parametrize("preset,extra", [
    ("puzzle-transformer-cpu", []),
    # each process carries its own rows; exploration off, since its draws depend on the rows per process
    ("trm-cpu", ["model.halt_explore=0.0"]),
])
def test_two_processes_match_one(tmp_path, sudoku4, preset, extra):
    settings = [*COMMON, *TINY[preset], *extra, "train.eval_every=null", "train.checkpoint_every=null"]
    args = ["train", preset, "--data", str(sudoku4), "--steps", "6", "--quiet",
            *[a for s in settings for a in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train(run_config(preset, settings, data=str(sudoku4), steps=6), tmp_path / "one", progress=False)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "attractor", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(a) == len(b) == 6
    # rank r takes rows r::2 of the same global batch: the same losses and (averaged) weights,
    # up to float32 summation order
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-5, atol=1e-6)
    w1 = dict(load_run(tmp_path / "one")[0].named_parameters())  # not the carry: rank 0 holds its rows only
    w2 = dict(load_run(tmp_path / "two")[0].named_parameters())
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-6)


def test_a_killed_and_resumed_recursive_run_repeats_the_uninterrupted_losses(tmp_path, sudoku4, monkeypatch):
    settings = [*COMMON, *TINY["trm-cpu"], "train.eval_every=4"]
    full = tmp_path / "full"
    trainer = train(run_config("trm-cpu", settings, data=str(sudoku4), steps=8), full, progress=False)
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    # slots halted and took new puzzles before the kill, and were mid-way at the checkpoint (step 3)
    assert sum(r["halted"] for r in records[:5]) > 0 and records[2]["halted"] < 4
    carry = [k for k in trainer.model.state_dict() if k.endswith("_extra_state")]
    assert carry, "the carry must be part of the model's state_dict"

    step = Trainer.train_step

    def dies_after_five(self):
        if self.step == 5:
            raise Killed
        return step(self)

    killed = tmp_path / "killed"
    monkeypatch.setattr(Trainer, "train_step", dies_after_five)
    with pytest.raises(Killed):
        train(run_config("trm-cpu", settings, data=str(sudoku4), steps=8), killed, progress=False)
    monkeypatch.setattr(Trainer, "train_step", step)
    assert main(["train", "--out", str(killed), "--resume", "--quiet"]) == 0  # from the checkpoint at step 3
    a, b = losses(full), losses(killed)
    assert len(a) == len(b) == 8
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=0, atol=1e-6)
    evals = [json.loads(line) for line in (killed / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [4, 8] and all("val_exact" in e and "val_depth" in e for e in evals)
