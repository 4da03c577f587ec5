"""The commands: train, eval and generate work, and every bad input is one line and exit code 2."""

from __future__ import annotations

import json

import pytest
from conftest import sets, tiny_settings

from attractor.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """A tiny Attractor run of 4 steps, shared by the tests below (read-only)."""
    root = tmp_path_factory.mktemp("cli")
    out = root / "run"
    args = ["train", "--preset", "attractor-1m", "--out", str(out), "--data", str(corpus), "--steps", "4", "--quiet",
            *sets(tiny_settings("attractor-1m", root / "cache"))]
    assert main(args) == 0
    return out, args


def one_line_error(capsys, code: int, argv: list[str], match: str) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("attractor: error:") and match in err, err
    return err


@pytest.mark.parametrize("argv,match", [
    (["train", "--preset", "atractor-1m", "--out", "X"], "did you mean 'attractor-1m'"),
    (["train", "--preset", "attractor-1m", "--out", "X", "--set", "model.dd=3"], "did you mean 'd'"),
    (["train", "--preset", "attractor-1m", "--out", "X", "--set", "train.lr=fast"], "lr='fast' must be float"),
    (["train", "--preset", "attractor-1m", "--out", "X", "--data", "/no/such/corpus.txt"], "/no/such/corpus.txt"),
    (["train", "--out", "X"], "--preset is required"),
    (["eval", "--checkpoint", "/no/such/run"], "no such"),
    (["generate", "--checkpoint", "/no/such/run", "--prompt", "a"], "no such"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.chdir(tmp_path)  # nothing may be written: the out dir X must not appear
    one_line_error(capsys, 2, argv, match)
    assert not (tmp_path / "X").exists()


def test_training_writes_metrics_checkpoints_and_refuses_to_overwrite(capsys, trained):
    out, args = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all({"step", "loss", "tokens", "depth", "n_evals", "converged"} <= set(r) for r in records)
    assert records[-1]["tokens"] == 4 * 4 * 32
    assert (out / "latest").read_text().strip() == "ckpt-00000004"
    before = (out / "metrics.jsonl").read_text()
    one_line_error(capsys, 2, args, "already holds a run")
    one_line_error(capsys, 2, [*args, "--set", "model.d=64", "--resume"], "other settings")
    assert (out / "metrics.jsonl").read_text() == before


def test_eval_sweeps_depths(capsys, trained):
    out, _ = trained
    assert main(["eval", "--checkpoint", str(out), "--iters", "0,1,adaptive", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = {r["iters"]: r for r in result["sweep"]}
    assert set(rows) == {0, 1, "adaptive"} and result["step"] == 4
    assert rows[0]["val_depth"] == 0 and rows[1]["val_n_evals"] == 1
    assert sum(rows["adaptive"]["val_residuals"].values()) == rows["adaptive"]["val_tokens"]
    assert main(["eval", "--checkpoint", str(out), "--iters", "0,adaptive"]) == 0
    assert "adaptive" in capsys.readouterr().out
    one_line_error(capsys, 2, ["eval", "--checkpoint", str(out), "--iters", "0,deep"], "'deep'")


def test_eval_with_other_solve_settings(capsys, trained):
    out, _ = trained
    assert main(["eval", str(out), "--iters", "adaptive", "--json", "--set", "min_iter=6", "--set", "max_iter=6"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["sweep"]
    assert row["val_depth"] == 6 and row["val_n_evals"] == 7  # every token forced to 6 steps: 6 + 1 evaluations
    assert main(["eval", str(out), "--iters", "adaptive", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sweep"][0]["val_depth"] < 6  # the saved solve stops earlier
    one_line_error(capsys, 2, ["eval", str(out), "--set", "model.d=64"],
                   "--set model.d=64 does not fit the trained weights")
    one_line_error(capsys, 2, ["eval", str(out), "--set", "min_iterz=1"], "min_iterz")


def test_generate_continues_the_prompt(capsys, trained):
    out, _ = trained
    argv = ["generate", "--checkpoint", str(out), "--prompt", "the cat", "--max-new-tokens", "12", "--seed", "3"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("the cat") and len(first.rstrip("\n")) > len("the cat")
    assert main(argv) == 0 and capsys.readouterr().out == first  # seeded
    one_line_error(capsys, 2, [*argv, "--temperature", "-1"], "temperature")


def test_a_corrupt_checkpoint_is_one_line(capsys, trained, tmp_path):
    import shutil

    out, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    weights = copy / "ckpt-00000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    shutil.rmtree(copy / "ckpt-00000003")
    one_line_error(capsys, 2, ["eval", "--checkpoint", str(copy / "ckpt-00000004")], "truncated or corrupt")
    one_line_error(capsys, 2, ["generate", "--checkpoint", str(copy), "--prompt", "a"], "no loadable checkpoint")
