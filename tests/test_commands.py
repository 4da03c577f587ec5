"""The commands refuse options that cannot work, name the user's input in their errors, stream
generation (Ctrl-C and a closed pipe end quietly), and print what users read: --version, --help,
the eval table."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
from conftest import sets, tiny_settings

from attractor import cli
from attractor.cli import main
from attractor.errors import ConfigError


@pytest.fixture(scope="module")
def lm(tmp_path_factory, corpus):
    """A tiny transformer run of 2 steps (bytes, context 32), shared read-only by the tests below."""
    root = tmp_path_factory.mktemp("commands")
    out = root / "run"
    assert main(["train", "transformer-1m", "--out", str(out), "--data", str(corpus), "--steps", "2", "--quiet",
                 *sets(tiny_settings("transformer-1m", root / "cache"))]) == 0
    return out


@pytest.fixture(scope="module")
def puzzle_dir(tmp_path_factory):
    """A small 6x6 Sudoku dataset folder, as `attractor data sudoku` writes it."""
    out = tmp_path_factory.mktemp("puzzles") / "sudoku6"
    assert main(["data", "sudoku", "--out", str(out), "--train", "4", "--test", "2", "--aug", "1", "--box", "2x3"]) == 0
    return out


def one_line_error(capsys, argv: list[str], *matches: str, code: int = 2) -> str:
    assert main(argv) == code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.count("\n") == 0 and err.startswith("attractor: error:"), err
    assert all(m in err for m in matches), err
    assert captured.out == ""
    return err


# ---------------------------------------------------------------- options that cannot work


@pytest.fixture
def no_accelerator(monkeypatch):
    """This machine as one without CUDA or MPS, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("setting, match", [
    ("train.device=cuda", "train.device=cuda: this machine has no CUDA device"),
    ("device=mps", "train.device=mps: this machine has no mps device"),
    ("device=cuda:1", "train.device=cuda:1: this machine has no CUDA device"),
    ("device=gpu", "train.device='gpu' is not a device"),
])
def test_train_on_a_missing_device_is_refused_before_anything_is_built(capsys, tmp_path, corpus, no_accelerator,
                                                                      setting, match):
    argv = ["train", "transformer-1m", "--out", str(tmp_path / "run"), "--data", str(corpus), "--steps", "1",
            *sets(tiny_settings("transformer-1m", tmp_path / "cache", setting))]
    one_line_error(capsys, argv, match)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # no data prepared


def test_loading_onto_a_missing_device_is_refused(lm, no_accelerator):
    from attractor import load

    with pytest.raises(ConfigError, match="device=cuda: this machine has no CUDA device"):
        load(lm, device="cuda")
    assert load(lm, device="auto").embed.weight.device.type == "cpu"


@pytest.mark.parametrize("option, match", [
    (["--temperature", "nan"], "--temperature nan must be a finite number >= 0"),
    (["--temperature", "inf"], "--temperature inf must be a finite number >= 0"),
    (["--temperature", "-1"], "--temperature -1.0 must be a finite number >= 0"),
    (["--top-k", "257"], "--top-k 257 is above the vocabulary of"),
    (["--top-k", "0"], "--top-k 0 must be at least 1"),
    (["--max-new-tokens", "-1"], "--max-new-tokens -1 must be >= 0"),
])
def test_generate_refuses_options_that_cannot_work(capsys, lm, option, match):
    one_line_error(capsys, ["generate", str(lm), "--prompt", "the cat", *option], match)


def test_sample_refuses_them_too(lm):
    from attractor import load
    from attractor.generate import sample, stream

    model = load(lm)
    for bad in ({"temperature": float("nan")}, {"temperature": float("inf")}, {"top_k": 257}, {"top_k": 0},
                {"max_new_tokens": -1}):
        with pytest.raises(ValueError):
            stream(model, [1, 2], **bad)  # at the call, before any token
    whole = sample(model, [1, 2], max_new_tokens=5, top_k=256)
    assert len(whole) == 5 and whole == list(stream(model, [1, 2], max_new_tokens=5, top_k=256))


# ---------------------------------------------------------------- streaming generation


def test_text_pieces_hold_back_a_cut_character():
    """Bytes and BPE tokens can cut a UTF-8 character in two: no piece shows half of one, and the
    pieces add up to the whole decode, invalid bytes included."""
    from attractor.data import bytes_tokenizer, train_bpe
    from attractor.generate import REPLACEMENT, TextPieces

    text = "the cat sees é, € and 😀 in the sea; the cat likes bread"
    bpe = train_bpe(["the cat sees the sea. the cat likes bread. "] * 50, 300)
    for tokenizer in (bytes_tokenizer(), bpe):
        ids = tokenizer.encode(text)
        assert len(ids) > len(set(text.split()))
        pieces = TextPieces(tokenizer.decode)
        shown = [pieces.add(i) for i in ids]
        assert not any(REPLACEMENT in p for p in shown) and "".join(shown) + pieces.finish() == text
    pieces = TextPieces(bytes_tokenizer().decode)   # a lead byte that never gets its continuation
    shown = [pieces.add(i) for i in [104, 0xE2, 0x82, 105, 0xF0]]
    assert "".join(shown) + pieces.finish() == bytes([104, 0xE2, 0x82, 105, 0xF0]).decode("utf-8", "replace")


def test_generate_takes_the_checkpoint_as_an_argument(capsys, lm):
    argv = ["--prompt", "the cat", "--max-new-tokens", "8", "--seed", "2"]
    assert main(["generate", str(lm), *argv]) == 0
    positional = capsys.readouterr().out
    assert main(["generate", "--checkpoint", str(lm), *argv]) == 0
    assert capsys.readouterr().out == positional and positional.startswith("the cat") and positional.endswith("\n")
    one_line_error(capsys, ["generate", "--prompt", "a"], "name the checkpoint")


def interactive_signals() -> None:
    """In the child: Ctrl-C as a terminal gives it. A test run started in the background of a
    non-interactive shell (`make test &`) inherits SIGINT ignored, and so would its children."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_generation(lm, max_new_tokens: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "attractor", "generate", str(lm), "--prompt", "the cat",
                             "--max-new-tokens", str(max_new_tokens)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=interactive_signals,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "utf-8"})


def read_at_least(proc: subprocess.Popen, count: int, timeout: float = 120) -> bytes:
    """The first bytes of the process's stdout (a pipe) once `count` of them have come."""
    got, deadline = b"", time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            got += chunk
    return got


def test_generate_streams_into_a_pipe_and_ctrl_c_keeps_the_text(lm):
    with start_generation(lm, 10**7) as proc:  # hours of tokens: only streaming shows any before the end
        try:
            first = read_at_least(proc, len("the cat") + 20)
            running = proc.poll() is None  # the text came while the generation went on
            proc.send_signal(signal.SIGINT)
            rest, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
    assert running and first.startswith(b"the cat") and len(first) >= len("the cat") + 20, first
    out = (first + rest).decode("utf-8")
    assert proc.returncode == 130, err
    assert out.endswith("\n") and out.count("\n") >= 1
    assert "Traceback" not in err.decode() and err.decode().strip() == "attractor: interrupted"


def test_generate_into_a_closed_pipe_ends_quietly(lm):
    with start_generation(lm, 100_000) as proc:
        try:
            first = read_at_least(proc, 10)
            proc.stdout.close()  # as `| head -c 10` does
            err = proc.stderr.read()
            proc.wait(timeout=120)
        finally:
            proc.kill()
    assert first.startswith(b"the cat")
    assert proc.returncode == 141 and err == b"", err.decode()


# ---------------------------------------------------------------- errors that point at the input


def test_eval_batches_0_names_the_flag(capsys, lm):
    one_line_error(capsys, ["eval", str(lm), "--batches", "0"], "--batches=0 must be at least 1")


def test_eval_setting_that_changes_the_weights_shape_is_named(capsys, lm):
    err = one_line_error(capsys, ["eval", str(lm), "--set", "train.eval_batches=1", "--set", "model.d=64"],
                         "--set model.d=64 does not fit the trained weights", "size mismatch")
    assert "eval_batches" not in err


def test_a_language_model_on_a_puzzle_dataset_names_the_puzzle_presets(capsys, tmp_path, puzzle_dir):
    one_line_error(capsys, ["train", "attractor-1m", "--out", str(tmp_path / "run"), "--data", str(puzzle_dir)],
                   f"{puzzle_dir} is a sudoku puzzle dataset", "attractor-1m is a language model",
                   "trm-cpu", "attractor-reasoner-cpu", "puzzle-transformer-cpu")
    assert not (tmp_path / "run").exists()


def test_a_first_step_too_big_for_memory_is_refused_with_the_estimate(capsys, tmp_path, corpus):
    started = time.perf_counter()
    err = one_line_error(capsys, ["train", "attractor-1m", "--out", str(tmp_path / "run"), "--data", str(corpus),
                                  "--set", "seq_len=10000000", "--set", f"data.cache_dir={tmp_path / 'cache'}"],
                         "the first training step needs at least", "model.seq_len=10000000", "GB of memory",
                         "available on this machine")
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
    need, free = [float(word.replace(",", "")) for word, unit in zip(err.split(), err.split()[1:]) if unit == "GB"]
    assert need > free > 0


def test_the_presets_at_their_defaults_need_less_than_16_gb_by_the_bound():
    """The bound refuses only what cannot fit: every preset's first step at its defaults is under
    16 GB (the paper presets' logits dominate), so no machine with that much free refuses one."""
    from attractor.config import run_config
    from attractor.memory import step_bytes
    from attractor.models import PRESETS

    for name in PRESETS:
        run = run_config(name)
        assert step_bytes(run, run.train.batch_size // run.train.grad_accum) < 16e9, name


# ---------------------------------------------------------------- what users read


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == "attractor 0.2.0\n"
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    first_paragraph = " ".join(cli.__doc__.split("\n\n")[0].split())
    assert first_paragraph in help_text and first_paragraph.endswith(".")


def test_eval_table_prints_a_dash_where_a_column_does_not_apply(capsys, lm):
    assert main(["eval", str(lm), "--iters", "adaptive"]) == 0
    out = capsys.readouterr().out
    row = out.splitlines()[2].split()
    assert "nan" not in out and row[0] == "adaptive" and row[3:] == ["-", "-", "-"], out
    assert main(["eval", str(lm), "--json"]) == 0
    assert "val_depth" not in json.loads(capsys.readouterr().out)["sweep"][0]


def test_distributed_training_wraps_the_model_without_a_deprecation_warning(monkeypatch):
    """torchrun printed torch's FutureWarning about DDP's broadcast_buffers once per process."""
    import torch.distributed as dist

    import attractor.train as train
    from attractor.models import build

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        monkeypatch.setattr(train, "distributed", lambda: (0, 2, 0))  # as under torchrun: DDP wraps the model
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trainer = train.Trainer(build("transformer-1m", d=32, n_head=2, n_layer=1), iter([]), [],
                                    train.TrainConfig(steps=1))
        assert trainer.ddp is not None
    finally:
        dist.destroy_process_group()
