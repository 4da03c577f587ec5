"""A task: what a family of models trains on, from its data config to its metrics' lines.

    task = TASKS["puzzles"]                      # a model family names its task (models/registry.py TASK_OF)
    data = task.load(run)                        # checked against the run's model
    batches = task.batches(run, data)            # endless training batches
    val = task.validation(run, data)             # the fixed validation batches

One instance of each Task subclass is registered by name (`register`); the name is what a run's
config.json saves as its data's "task". A new task is one file here with its subclass, an entry
in TASKS, and its families' entries in attractor/models/registry.py TASK_OF. The run, the
trainer and the commands reach it only through these methods. A task knows tokens, labels and
metrics, never models (STYLE.md section 2): it names its evaluator in attractor.evaluate, which
run.py looks up, and it receives the run's configs as plain objects.
"""

from __future__ import annotations

import json

from attractor.errors import check_name


class Task:
    """What a model family trains on. Subclasses set the class attributes and the methods that
    raise NotImplementedError; the others have defaults that fit a task whose data fixes nothing
    about the model."""

    name: str  # the key in TASKS, saved in config.json's data section as "task"
    data_config: type  # the data config class (a frozen dataclass of attractor.schema)
    train: dict = {}  # the task's trainer recipe: TrainConfig field overrides (presets may add their own)
    evaluator: str = "evaluate"  # its evaluator, a function of attractor.evaluate (tasks do not import models)
    model_kind: str = "model"  # how messages name its models ("language model", "puzzle model")
    reads: str = "its data"  # what its models read, for messages ("text")
    continues_text: bool = False  # `attractor generate` continues a prompt with its models
    solves_puzzles: bool = False  # `attractor solve` runs its models

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ---- configuration

    def default_data(self, model):
        """The data config a model of this task starts from."""
        return self.data_config()

    def check_config(self, model, data) -> None:
        """ConfigError when a model config and a data config cannot go together (no data read)."""

    def model_settings(self, data) -> list[str]:
        """Settings ('model.seq_len=81') the data fixes for the model, applied before --set,
        which may not contradict them (check_fit); [] where the data fixes nothing."""
        return []

    def check_fit(self, run) -> None:
        """ConfigError when the run's model does not fit what its data fixes (model_settings)."""

    def recognise(self, source: str) -> str | None:
        """What `source` is ('a sudoku puzzle dataset') when it is data of this task that another
        task's models would misread, so that they refuse it by name; None otherwise."""
        return None

    # ---- data and batches (`run`: a RunConfig of this task)

    def load(self, run, rank: int = 0, world: int = 1):
        """The run's data, checked against its model (rank 0 prepares, the others wait)."""
        raise NotImplementedError

    def batches(self, run, data, rank: int = 0, world: int = 1):
        """Endless training batches of run.train.micro_batch rows, this rank's share."""
        raise NotImplementedError

    def validation(self, run, data):
        """The fixed validation batches, run.train.eval_batches of run.train.micro_batch rows:
        training, `attractor eval` and the demo all evaluate on these."""
        raise NotImplementedError

    # ---- what a checkpoint keeps beside the weights (tokenizer.json)

    def vocab(self, data):
        """What a checkpoint needs to read and write the model's tokens without the data."""
        raise NotImplementedError

    def vocab_json(self, vocab) -> str:
        """The text of a checkpoint's tokenizer.json for `vocab`."""
        raise NotImplementedError

    def vocab_from_json(self, text: str, where: str):
        """The vocab a checkpoint's tokenizer.json holds; an error naming `where` if it cannot."""
        raise NotImplementedError

    # ---- metrics

    def eval_line(self, record: dict) -> str:
        """One evaluation record (the evaluator's result with its step) as a line: 'step 100: val
        loss 1.2345', the task's own metrics (eval_metrics), the depth of recurrent models."""
        depth = f", depth {record['val_depth']:.1f}" if "val_depth" in record else ""
        return f"step {record['step']}: val loss {record['val_loss']:.4f}{self.eval_metrics(record)}{depth}"

    def eval_metrics(self, record: dict) -> str:
        """The task's metrics in an eval line after the loss (', ppl 3.21'); '' for none."""
        return ""


class DescribedDataTask(Task):
    """A task whose dataset folder describes itself (its dataset.json): that description is what a
    checkpoint keeps in tokenizer.json, under `vocab_key`, so the checkpoint loads without its data."""

    vocab_key: str  # the key in tokenizer.json ("puzzles", "parity")
    dataset_kind: str  # how messages name its datasets ("puzzle", "parity")

    def check_meta(self, run, meta: dict) -> None:
        """ConfigError unless the run's model fits the dataset its dataset.json describes."""
        raise NotImplementedError

    def check_fit(self, run) -> None:
        if run.data.source is not None:
            self.check_meta(run, run.data.load()["meta"])

    def load(self, run, rank: int = 0, world: int = 1) -> dict:
        """The loaded dataset ({"meta", "train", "test"}), checked against the model."""
        data = run.data.load()
        self.check_meta(run, data["meta"])
        return data

    def vocab(self, data) -> dict:
        """The dataset's description (its dataset.json as a dict)."""
        return data["meta"]

    def vocab_json(self, vocab: dict) -> str:
        return json.dumps({self.vocab_key: vocab})

    def vocab_from_json(self, text: str, where: str) -> dict:
        from attractor.io import CheckpointError

        try:
            return json.loads(text)[self.vocab_key]
        except (ValueError, KeyError, TypeError):
            raise CheckpointError(f"{where}: tokenizer.json does not describe a {self.dataset_kind} dataset") from None


TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to TASKS under its name (a name taken already is an error)."""
    if task.name in TASKS:
        raise ValueError(f"task {task.name!r} is registered already")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task of a name; ConfigError with suggestions for an unknown one."""
    check_name(name, TASKS, "task")
    return TASKS[name]
