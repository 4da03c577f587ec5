"""A run's configuration: the model (any family, its solve included), the data and the trainer.

    run = run_config("attractor-1m", ["tol=1e-4", "train.lr=1e-3", "data.tokenizer=bpe"])

The preset names a model (`attractor models` lists them); its family names the task (TASKS):
language models read text (attractor.data.DataConfig), the puzzle families a puzzle dataset
folder (attractor.tasks.PuzzleDataConfig), and each task brings its trainer defaults (puzzles:
TRM's). A puzzle model's seq_len and vocab_size follow the dataset's unless set explicitly, and
an explicit setting the dataset contradicts is a ConfigError. `--set key=value` reaches any
field: `model.<field>`, `data.<field>`, `train.<field>`, dotted paths below them
(`model.solve.solver.m=3`), or a bare field name when exactly one part of the config has it
(`tol`, `lr`, `steps`, `vocab_size`...). Values are JSON when they parse
(`64`, `1e-4`, `true`, `null`, `{"name": "anderson", "m": 3}`), else text (`picard`). Every
unknown key or badly typed value is a ConfigError naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from attractor import schema
from attractor.data import DataConfig
from attractor.errors import ConfigError, check_name
from attractor.models import config as model_config
from attractor.models import config_from_dict, config_to_dict
from attractor.models.registry import key_path
from attractor.tasks import PuzzleDataConfig
from attractor.train import TrainConfig

SECTIONS = ("model", "data", "train")


@dataclass(frozen=True)
class Task:
    """What a model family trains on: its data config and the trainer's defaults for it."""

    data: type  # the data config class
    train: TrainConfig  # the trainer's defaults; --set overrides them field by field


TASKS: dict[str, Task] = {
    "text": Task(DataConfig, TrainConfig()),
    # TRM's recipe (SPEC 2.2; reference-impl.md 4.5): AdamW for every parameter (no Muon), lr
    # 1e-4, betas (0.9, 0.95), weight decay 1.0, EMA 0.999, a linear warmup and then a constant
    # rate (no cooldown). TRM warms up over 2000 of its ~65k steps; 100 suits CPU runs of a few
    # thousand (the 27M recipe in docs/training.md sets 2000).
    "puzzles": Task(PuzzleDataConfig, TrainConfig(lr=1e-4, weight_decay=1.0, betas=(0.9, 0.95), ema=0.999,
                                                  warmup=100, cooldown=0.0, matrix_optimizer="adamw")),
}
TASK_OF_FAMILY = {"puzzle-transformer": "puzzles", "trm": "puzzles", "attractor-reasoner": "puzzles"}  # else text

# Presets whose trainer defaults differ from their task's. TRM's lr 1e-4 and EMA 0.999 are made
# for ~65k steps; over the few hundred to few thousand steps of a CPU run they leave the served
# (averaged) weights near their initialisation. The CPU puzzle presets therefore default to what
# docs/results-puzzles.md trained them with: lr 1e-3 and weight decay 0.1 (TRM's lr x wd
# product), EMA 0.99, a 50-step warmup, batch 64.
CPU_PUZZLE_TRAIN = {"batch_size": 64, "lr": 1e-3, "weight_decay": 0.1, "ema": 0.99, "warmup": 50}
PRESET_TRAIN = {preset: CPU_PUZZLE_TRAIN for preset in ("puzzle-transformer-cpu", "trm-cpu", "attractor-reasoner-cpu")}


def task_of(model) -> str:
    """The task name ('text' or 'puzzles') of a model config, from its family."""
    return TASK_OF_FAMILY.get(config_to_dict(model)["family"], "text")


@dataclass(frozen=True)
class RunConfig:
    model: object  # a model config of any family (AttractorLMConfig, TransformerConfig, TRMConfig, ...)
    data: DataConfig | PuzzleDataConfig  # the task's data config (TASKS[task_of(model)].data)
    train: TrainConfig

    def __post_init__(self) -> None:
        task = task_of(self.model)
        schema.require(type(self.data) is TASKS[task].data,
                       f"a {config_to_dict(self.model)['family']} model trains on {TASKS[task].data.__name__}, "
                       f"not {type(self.data).__name__}")
        if task == "text":
            schema.require(self.model.vocab_size == self.data.vocab_size,
                           f"model.vocab_size={self.model.vocab_size} must equal data.vocab_size={self.data.vocab_size} "
                           "(the tokenizer's); set data.vocab_size and the model follows")

    @property
    def task(self) -> str:
        return task_of(self.model)

    def to_dict(self) -> dict:
        """JSON-safe data with the model's family tag and the data's task tag; `from_dict`
        rebuilds it exactly."""
        return {"model": config_to_dict(self.model), "data": {"task": self.task, **schema.to_dict(self.data)},
                "train": schema.to_dict(self.train)}

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """The config `to_dict` wrote (configs saved before the data's task tag read as text)."""
        if not isinstance(data, dict):
            raise ConfigError("a run config must be a mapping with model, data and train")
        for key in data:
            check_name(key, SECTIONS, "run config section")
        model = config_from_dict(data.get("model", {}))
        fields = dict(data.get("data", {}))
        task = fields.pop("task", "text")
        check_name(task, TASKS, "data task")
        if task != task_of(model):
            raise ConfigError(f"a {task} data config does not fit a {config_to_dict(model)['family']} model")
        return cls(model, schema.from_dict(TASKS[task].data, fields), schema.from_dict(TrainConfig, data.get("train", {})))


def split_setting(text: str) -> tuple[str, str]:
    """'key=value' -> (key, value); anything else is a ConfigError."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    return key.strip(), value


def _top_names(run: RunConfig, section: str) -> set[str]:
    """Field names a key may start with in a section (the model's include its solve's)."""
    names = {f.name for f in dataclasses.fields(getattr(run, section))}
    if section == "model" and "solve" in names:
        names |= {f.name for f in dataclasses.fields(run.model.solve)}
    return names


def section_of(key: str, run: RunConfig) -> tuple[str, str]:
    """(section, path inside it) for an override key, resolving bare names (see module doc)."""
    head, _, rest = key.partition(".")
    if head in SECTIONS:
        if not rest:
            raise ConfigError(f"--set {key}: name a field of {head}, e.g. {head}.{dataclasses.fields(getattr(run, head))[0].name}")
        return head, rest
    owners = [s for s in SECTIONS if head in _top_names(run, s)]
    if len(owners) > 1:
        raise ConfigError(f"--set {key}: ambiguous, it is a field of {' and '.join(owners)}; "
                          f"write {' or '.join(f'{o}.{key}' for o in owners)}")
    if not owners:
        known = set().union(*(_top_names(run, s) for s in SECTIONS))
        check_name(head, known, "config key")
    return owners[0], key


def apply_settings(run: RunConfig, settings: list[str]) -> RunConfig:
    """`run` with each 'key=value' applied in order, validated once at the end (so that
    `min_iter=40 max_iter=64` works whatever the order). Setting data.vocab_size moves the
    model's vocabulary with it unless model.vocab_size is set too."""
    tree = run.to_dict()
    vocab_set = {"model": False, "data": False}
    for text in settings:
        key, raw = split_setting(text)
        section, path = section_of(key, run)
        if section == "model":
            path = key_path(run.model, path)
        try:
            value = schema.parse_value(raw, schema.annotation_at(getattr(run, section), path))
        except ConfigError:  # a field of a solver chosen by an earlier setting: checked at the end
            value = schema.parse_value(raw, object)
        _set_path(tree[section], path.split("."), value, key)
        if path == "vocab_size" and section in vocab_set:
            vocab_set[section] = True
    if vocab_set["data"] and not vocab_set["model"]:
        tree["model"]["vocab_size"] = tree["data"]["vocab_size"]
    return RunConfig.from_dict(tree)


def _set_path(tree: dict, parts: list[str], value, key: str) -> None:
    """tree[a][b][c] = value for parts [a, b, c]; a registry name replacing a solver's or
    gradient's dict form becomes {"name": value}, so its options can follow."""
    for part in parts[:-1]:
        if not isinstance(tree.get(part), dict):
            raise ConfigError(f"--set {key}: {part} has no fields to set")
        tree = tree[part]
    old = tree.get(parts[-1])
    if isinstance(old, dict) and "name" in old and isinstance(value, str):
        value = {"name": value}
    tree[parts[-1]] = value


def run_config(preset: str, settings: list[str] = (), *, data: str | None = None,
               steps: int | None = None) -> RunConfig:
    """The run for a model preset, with `--data`, `--steps` and `--set` applied (in that order).

    Data and trainer start from the task's defaults (TASKS), the trainer's changed where the
    preset has its own (PRESET_TRAIN: the CPU puzzle presets). Text: the default tokenizer follows
    the preset's vocabulary, bytes for 256, BPE of that size else. Puzzles: the model's seq_len
    and vocab_size are set from the dataset before `--set`, which may not contradict it.
    """
    model = model_config(preset)
    task = task_of(model)
    train = dataclasses.replace(TASKS[task].train, **PRESET_TRAIN.get(preset, {}))
    if task == "text":
        tokenizer = "bytes" if model.vocab_size == 256 else "bpe"
        base = RunConfig(model, DataConfig(tokenizer=tokenizer, vocab_size=model.vocab_size), train)
    else:
        base = RunConfig(model, TASKS[task].data(), train)
    extra = ([f"data.source={data}"] if data is not None else []) + ([f"train.steps={steps}"] if steps is not None else [])
    run = apply_settings(base, [*extra, *settings])
    if task == "text":
        _refuse_puzzle_dataset(preset, run.data.source)
    if task != "puzzles" or run.data.source is None:
        return run
    meta = run.data.load()["meta"]
    shape = [f"model.{key}={meta[key]}" for key in ("seq_len", "vocab_size")]
    run = apply_settings(base, [*extra, *shape, *settings])
    check_dataset(run, meta)
    return run


def puzzle_presets() -> list[str]:
    """The model presets that train on a puzzle dataset folder (their family's task is puzzles)."""
    from attractor.models import PRESETS

    return [name for name in PRESETS if task_of(model_config(name)) == "puzzles"]


def _refuse_puzzle_dataset(preset: str, source: str | None) -> None:
    """ConfigError when a language model's --data is a puzzle dataset folder (it holds
    dataset.json), naming the presets that train on it."""
    if source is None or not (Path(source) / "dataset.json").is_file():
        return
    try:
        kind = json.loads((Path(source) / "dataset.json").read_text()).get("kind", "puzzle")
    except (OSError, ValueError, AttributeError):
        kind = "puzzle"
    raise ConfigError(f"{source} is a {kind} puzzle dataset, and {preset} is a language model (it reads text); "
                      f"train a puzzle preset on it: {', '.join(puzzle_presets())}")


def check_dataset(run: RunConfig, meta: dict) -> None:
    """ConfigError unless the model takes the puzzle dataset's sequences and tokens."""
    for key in ("seq_len", "vocab_size"):
        if getattr(run.model, key) != meta[key]:
            raise ConfigError(f"model.{key}={getattr(run.model, key)} does not fit the dataset {Path(run.data.source)} "
                              f"({key} {meta[key]}, {meta['kind']}); drop the setting: the model follows the dataset")
