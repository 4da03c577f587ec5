"""A run's configuration: the model (any family, its solve included), the data and the trainer.

    run = run_config("attractor-1m", ["tol=1e-4", "train.lr=1e-3", "data.tokenizer=bpe"])

The preset names a model (`attractor models` lists them); its family names the task
(attractor/models/registry.py TASK_OF, a name in attractor.tasks.TASKS): language models read
text (attractor.data.DataConfig), the puzzle families a puzzle dataset folder
(attractor.tasks.PuzzleDataConfig), and each task brings its trainer defaults (puzzles: TRM's),
which a preset may change (registry.PRESET_TRAIN, given beside the preset). A puzzle model's
seq_len and vocab_size follow the dataset's unless set explicitly, and an explicit setting the
dataset contradicts is a ConfigError. `--set key=value` reaches any
field: `model.<field>`, `data.<field>`, `train.<field>`, dotted paths below them
(`model.solve.solver.m=3`), or a bare field name when exactly one part of the config has it
(`tol`, `lr`, `steps`, `vocab_size`...). Values are JSON when they parse
(`64`, `1e-4`, `true`, `null`, `{"name": "anderson", "m": 3}`), else text (`picard`). Every
unknown key or badly typed value is a ConfigError naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from attractor import schema
from attractor.data import DataConfig
from attractor.errors import ConfigError, check_name
from attractor.models import PRESETS, config_from_dict, config_to_dict
from attractor.models import config as model_config
from attractor.models.registry import PRESET_TRAIN, resolve_key, task_name
from attractor.tasks import TASKS, ParityDataConfig, PuzzleDataConfig, Task, get_task
from attractor.train import TrainConfig

SECTIONS = ("model", "data", "train")


def task_of(model) -> Task:
    """The task a model config trains on (its family's, attractor/models/registry.py TASK_OF)."""
    return get_task(task_name(model))


@dataclass(frozen=True)
class RunConfig:
    model: object  # a model config of any family (AttractorLMConfig, TransformerConfig, TRMConfig, ...)
    data: DataConfig | PuzzleDataConfig | ParityDataConfig  # the data config of the model's task (task_of(model).data_config)
    train: TrainConfig

    def __post_init__(self) -> None:
        task = self.task
        schema.require(type(self.data) is task.data_config,
                       f"a {config_to_dict(self.model)['family']} model trains on {task.data_config.__name__}, "
                       f"not {type(self.data).__name__}")
        task.check_config(self.model, self.data)

    @property
    def task(self) -> Task:
        return task_of(self.model)

    def to_dict(self) -> dict:
        """JSON-safe data with the model's family tag and the data's task tag; `from_dict`
        rebuilds it exactly."""
        return {"model": config_to_dict(self.model), "data": {"task": self.task.name, **schema.to_dict(self.data)},
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
        saved = get_task(fields.pop("task", "text"))
        if saved is not task_of(model):
            raise ConfigError(f"a {saved.name} data config does not fit a {config_to_dict(model)['family']} model")
        return cls(model, schema.from_dict(saved.data_config, fields),
                   schema.from_dict(TrainConfig, data.get("train", {})))


def split_setting(text: str) -> tuple[str, str]:
    """'key=value' -> (key, value); anything else is a ConfigError."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value")
    return key.strip(), value


def apply_settings(run: RunConfig, settings: list[str]) -> RunConfig:
    """`run` with each 'key=value' applied in order, validated once at the end (so that
    `min_iter=40 max_iter=64` works whatever the order). Keys resolve as
    attractor.models.registry.resolve_key says (the module doc). Setting data.vocab_size moves
    the model's vocabulary with it unless model.vocab_size is set too."""
    tree = run.to_dict()
    sections = {s: getattr(run, s) for s in SECTIONS}
    vocab_set = {"model": False, "data": False}
    for text in settings:
        key, raw = split_setting(text)
        section, path = resolve_key(key, sections)
        try:
            value = schema.parse_value(raw, schema.annotation_at(sections[section], path))
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

    Data and trainer start from the task's defaults (Task.default_data, Task.train), the
    trainer's changed where the preset has its own (registry.PRESET_TRAIN: the CPU puzzle
    presets). Text: the default tokenizer follows the preset's vocabulary, bytes for 256, BPE of
    that size else. Where the data fixes the model (Task.model_settings: a puzzle dataset's
    seq_len and vocab_size), those settings come before `--set`, which may not contradict them.
    """
    model = model_config(preset)
    task = task_of(model)
    train = TrainConfig(**{**task.train, **PRESET_TRAIN.get(preset, {})})
    base = RunConfig(model, task.default_data(model), train)
    extra = ([f"data.source={data}"] if data is not None else []) + ([f"train.steps={steps}"] if steps is not None else [])
    run = apply_settings(base, [*extra, *settings])
    _refuse_other_dataset(preset, task, run.data.source)
    fixed = task.model_settings(run.data)
    if not fixed:
        return run
    run = apply_settings(base, [*extra, *fixed, *settings])
    task.check_fit(run)
    return run


def presets_of(task: Task) -> list[str]:
    """The model presets whose family trains on `task`."""
    return [name for name in PRESETS if task_of(model_config(name)) is task]


def _refuse_other_dataset(preset: str, task: Task, source: str | None) -> None:
    """ConfigError when --data is another task's dataset (a puzzle dataset folder for a language
    model), naming the presets that train on it."""
    for other in TASKS.values():
        what = None if other is task or source is None else other.recognise(source)
        if what:
            raise ConfigError(f"{source} is {what}, and {preset} is a {task.model_kind} ({task.reads}); "
                              f"train a {other.model_kind} preset on it: {', '.join(presets_of(other))}")
