"""Tasks as registered objects: every family names one, presets keep their trainer defaults
beside them, a new task plugs into the run without editing it; micro_batch; the key resolver."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest

from attractor.config import RunConfig, apply_settings, run_config, task_of
from attractor.data import TokenBatches, val_batches
from attractor.errors import ConfigError
from attractor.models import PRESETS, config_to_dict, override
from attractor.models import config as model_config
from attractor.models.registry import FAMILIES, PRESET_TRAIN, TASK_OF, resolve_key
from attractor.run import load_run, train
from attractor.schema import check_fields
from attractor.tasks import PUZZLES, TASKS, TEXT, Task, TextTask
from attractor.train import TrainConfig

# ---------------------------------------------------------------- the registry


def test_every_family_and_preset_trains_on_a_registered_task():
    assert set(TASK_OF) == set(FAMILIES)
    assert set(TASK_OF.values()) <= set(TASKS)
    for name in PRESETS:
        task = task_of(model_config(name))
        assert TASKS[task.name] is task, name
        assert type(run_config(name).data) is task.data_config, name


def test_tasks_are_registered_by_their_name():
    assert TASKS["text"] is TEXT and TASKS["puzzles"] is PUZZLES
    assert all(task.name == name and isinstance(task, Task) for name, task in TASKS.items())


def test_a_preset_keeps_its_trainer_defaults_beside_it():
    assert set(PRESET_TRAIN) == {"puzzle-transformer-cpu", "trm-cpu", "attractor-reasoner-cpu",
                                 "maze-transformer", "maze-trm"}
    cpu, published = run_config("trm-cpu").train, run_config("trm-7m").train
    assert (cpu.lr, cpu.weight_decay, cpu.ema, cpu.warmup, cpu.batch_size) == (1e-3, 0.1, 0.99, 50, 64)
    assert (published.lr, published.ema, published.matrix_optimizer) == (1e-4, 0.999, "adamw")  # the task's
    assert run_config("attractor-1m").train == TrainConfig()  # text: the trainer's own defaults
    assert run_config("trm-cpu", ["lr=3e-3"]).train.lr == 3e-3  # --set still wins


def test_saved_configs_name_their_task_and_old_ones_read_as_text():
    saved = run_config("attractor-1m").to_dict()
    assert saved["data"]["task"] == "text"
    del saved["data"]["task"]  # written before the tag existed
    assert RunConfig.from_dict(saved) == run_config("attractor-1m")
    with pytest.raises(ConfigError, match="puzzles data config does not fit"):
        RunConfig.from_dict({**saved, "data": {"task": "puzzles"}})
    with pytest.raises(ConfigError, match="did you mean 'text'"):
        RunConfig.from_dict({**saved, "data": {"task": "txt"}})


# ---------------------------------------------------------------- a new task, registered here


@dataclass(frozen=True)
class CountingData:
    """A toy task's data: the stream 0, 1, 2, ... modulo the vocabulary, made in memory."""

    vocab_size: int = 256
    length: int = 4096
    source: str | None = None

    def __post_init__(self) -> None:
        check_fields(self)


class CountingTask(Task):
    """Next-token prediction on a counting stream, with none of text's files or tokenizer."""

    name = "counting"
    data_config = CountingData
    train = {"warmup": 1}
    model_kind = "counting model"

    def default_data(self, model):
        return CountingData(vocab_size=model.vocab_size)

    def load(self, run, rank=0, world=1):
        stream = np.arange(run.data.length, dtype=np.int64) % run.data.vocab_size
        return {"train": stream, "val": stream[: run.data.length // 4]}

    def batches(self, run, data, rank=0, world=1):
        return TokenBatches(data["train"], run.train.micro_batch, run.model.seq_len, seed=run.train.seed, rank=rank,
                            world_size=world)

    def validation(self, run, data):
        return val_batches(data["val"], run.train.micro_batch, run.model.seq_len, max_batches=run.train.eval_batches)

    def vocab(self, data):
        return {"counting": len(data["train"])}

    def vocab_json(self, vocab):
        return json.dumps(vocab)

    def vocab_from_json(self, text, where):
        return json.loads(text)

    def eval_metrics(self, record):
        return f", ppl {record['val_ppl']:.2f}"


@pytest.fixture
def counting(monkeypatch):
    """The transformer family trains on the counting task for the test's length."""
    task = CountingTask()
    monkeypatch.setitem(TASKS, task.name, task)
    monkeypatch.setitem(TASK_OF, "transformer", task.name)
    return task


def test_a_new_task_plugs_into_the_run_unedited(counting, tmp_path):
    settings = ["model.d=32", "model.n_head=2", "model.n_layer=1", "model.seq_len=16", "train.batch_size=4",
                "train.grad_accum=2", "train.eval_every=2", "train.eval_batches=1", "train.log_every=1",
                "train.checkpoint_every=null", "data.length=2048"]
    run = run_config("transformer-1m", settings, steps=4)
    assert run.task is counting and run.data == CountingData(length=2048) and run.train.warmup == 1
    lines = []
    trainer = train(run, tmp_path / "run", progress=False, log=lines.append)
    assert trainer.step == 4 and trainer.tokens == 4 * 4 * 16
    assert lines and all(line.startswith("step ") and ", ppl " in line for line in lines)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"] == {"task": "counting", "vocab_size": 256, "length": 2048, "source": None}
    model, vocab, loaded, step = load_run(tmp_path / "run")
    assert vocab == {"counting": 2048} and loaded == run and step == 4


def test_micro_batch_is_the_batch_over_the_accumulation_steps(counting):
    assert TrainConfig(batch_size=16, grad_accum=4).micro_batch == 4
    assert TrainConfig().micro_batch == TrainConfig().batch_size
    run = run_config("transformer-1m", ["train.batch_size=8", "train.grad_accum=4", "model.seq_len=16",
                                        "data.length=512"])
    data = counting.load(run)
    idx, _ = next(counting.batches(run, data))
    assert idx.shape == (2, 16) and all(len(b[0]) <= 2 for b in counting.validation(run, data))


def test_text_and_puzzle_batches_take_micro_batches(tmp_path):
    from attractor.data.puzzles import build_sudoku

    source = build_sudoku(tmp_path / "s", n_train=4, n_test=4, n_aug=1, seed=0, box=(2, 2))
    run = run_config("trm-cpu", ["train.batch_size=4", "train.grad_accum=2"], data=str(source))
    data = PUZZLES.load(run)
    assert next(PUZZLES.batches(run, data))[0].shape[0] == 2 and len(PUZZLES.validation(run, data)[0][0]) == 2
    assert isinstance(TextTask(), Task) and TEXT.model_kind == "language model"


# ---------------------------------------------------------------- one resolver for --set keys


@pytest.mark.parametrize("key,section,path", [
    ("tol", "model", "solve.tol"),
    ("solver.m", "model", "solve.solver.m"),
    ("solve.tol", "model", "solve.tol"),
    ("model.tol", "model", "solve.tol"),
    ("model.solve.solver.m", "model", "solve.solver.m"),
    ("d", "model", "d"),
    ("lr", "train", "lr"),
    ("train.seed", "train", "seed"),
    ("tokenizer", "data", "tokenizer"),
    ("data.vocab_size", "data", "vocab_size"),
])
def test_keys_resolve_to_a_section_and_a_path(key, section, path):
    run = run_config("attractor-1m")
    assert resolve_key(key, {"model": run.model, "data": run.data, "train": run.train}) == (section, path)


@pytest.mark.parametrize("key,match", [
    ("lrr", "did you mean 'lr'"),
    ("model.dd", "did you mean 'd'"),
    ("model.lr", "config key for AttractorLMConfig 'lr'"),
    ("train.", "name a field"),
    ("vocab_size", "ambiguous, it is a field of model and data; write model.vocab_size or data.vocab_size"),
])
def test_bad_keys_say_what_is_wrong(key, match):
    run = run_config("attractor-1m")
    with pytest.raises(ConfigError, match=match):
        resolve_key(key, {"model": run.model, "data": run.data, "train": run.train})


def test_a_model_alone_and_a_run_resolve_alike():
    """registry.override (build's keys) and apply_settings (--set) go through the one resolver."""
    cfg = model_config("attractor-1m")
    assert resolve_key("tol", {"model": cfg}) == ("model", "solve.tol")
    assert override(cfg, tol=1e-5).solve.tol == 1e-5
    assert apply_settings(run_config("attractor-1m"), ["tol=1e-5"]).model == override(cfg, tol=1e-5)
    with pytest.raises(ConfigError, match="did you mean 'tol'"):
        override(cfg, tool=1e-4)
    assert config_to_dict(cfg)["family"] == "attractor"
