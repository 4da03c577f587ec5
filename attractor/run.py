"""A training run in a directory: start it, resume it, load what it made.

    RUN/metrics.jsonl    one JSON object per logged step (step, loss, tokens, lr, tokens_per_s,
                         grad_norm; depth, n_evals and converged for recurrent models)
    RUN/eval.jsonl       one per evaluation (step, val_loss, val_ppl or, for puzzles, val_exact
                         and val_cell; solve statistics)
    RUN/ckpt-<step>/     checkpoints (attractor/io.py), RUN/latest names the newest
    RUN/lock             locked while a process trains into RUN (io.RunLock): one writer at a time

Starting into a directory that already holds a run is refused (nothing is overwritten); `resume`
continues from the newest checkpoint that verifies, with the saved configuration (where only
RESUMABLE settings may change), to the same end, and first cuts the logs back to that
checkpoint's step, so a killed and resumed run leaves the same logs as an uninterrupted one.

The run's task (attractor.tasks: its model family's) loads the data, makes the batches and the
validation batches, names the evaluator and writes its eval lines, and says what the checkpoint
keeps beside the weights (tokenizer.json): a language model's tokenizer, or for puzzle runs
(TRM's order, exact and cell accuracy on the first batches of the test split) the dataset's
description (dataset.json: kind, token ids, box or size), so that a checkpoint loads without its
dataset: `load_run` returns that dict in the tokenizer's place.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from attractor import evaluate as evaluation
from attractor import io
from attractor.config import RunConfig, apply_settings
from attractor.data import Tokenizer
from attractor.errors import ConfigError, Interrupted
from attractor.models import from_config, meta_model
from attractor.models.registry import with_weights
from attractor.train import Callbacks, Trainer, check_device, distributed, pick_device, write_jsonl


def load_run(path: str | Path, *, device: str | torch.device = "cpu", settings: list[str] = ()
             ) -> tuple[nn.Module, Tokenizer | dict, RunConfig, int]:
    """(model in eval mode, tokenizer, run config, step) of a checkpoint or run directory.

    `settings` ('key=value', as `--set` takes them) change the saved config before the model is
    built: the solve of an equilibrium model (`min_iter=1`, `tol=1e-5`, `solver=picard`) can differ
    from training's; a setting that changes the weights' shapes is a ConfigError naming it.
    `device` ('cpu', 'cuda', 'auto', ...) must be one this machine has (ConfigError otherwise).

    For a puzzle run the second item is the dataset's description (its dataset.json as a dict:
    "kind" 'sudoku' or 'maze', "seq_len", "vocab_size", "tokens", "box" or "size", "recipe",
    "splits") instead of a tokenizer. The weights are the ones the run serves (the average of
    the weights when train.ema is set).
    """
    check_device(device, "device")
    ckpt = io.load_checkpoint(path, with_state=False)
    saved = RunConfig.from_dict(ckpt.config)
    run = apply_settings(saved, list(settings))
    try:
        model = with_weights(run.model, ckpt.model_state)
    except RuntimeError as err:
        raise _misfit(ckpt, saved, list(settings), err) from None
    except ValueError as err:
        raise io.CheckpointError(f"{ckpt.path}: {err}") from None
    vocab = run.task.vocab_from_json(ckpt.tokenizer_json, where=str(ckpt.path))
    return model.to(pick_device(device, 0)).eval(), vocab, run, ckpt.step


def _shapes(model_config) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the state_dict of the model a config describes (built on the
    meta device: no memory)."""
    state = meta_model(model_config).state_dict()
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _misfit(ckpt, saved: RunConfig, settings: list[str], err: RuntimeError) -> Exception:
    """The error for weights that do not load: a ConfigError naming the settings that change the
    model's shape when the saved config itself fits the weights, else a CheckpointError."""
    lines = str(err).splitlines()  # "Error(s) in loading state_dict for X:", then the reasons
    reason = (lines[1] if len(lines) > 1 else lines[0]).strip().rstrip(".")[:300]
    stored = {k: tuple(v.shape) for k, v in ckpt.model_state.items()}
    if not settings or {k: v for k, v in _shapes(saved.model).items() if k in stored} != stored:
        return io.CheckpointError(f"{ckpt.path}: weights do not fit the saved config ({reason})")
    culprits = []
    for setting in settings:  # each alone, against the saved config: which ones move a shape
        try:
            if _shapes(apply_settings(saved, [setting]).model) != _shapes(saved.model):
                culprits.append(setting)
        except ConfigError:  # valid only together with another setting
            continue
    named = " ".join(f"--set {s}" for s in culprits or settings)
    return ConfigError(f"{named} does not fit the trained weights of {ckpt.path} ({reason}); a setting may change "
                       "the solve (min_iter, tol, solver...), not the shape of the model")


def validation(run: RunConfig, data):
    """The fixed validation batches of a run: micro-batch rows, eval_batches of them (for text,
    windows of the model's context from the validation split; for puzzles, the first puzzles of
    the test split in order). Training, `attractor eval` and the demo all evaluate on these."""
    return run.task.validation(run, data)


def load_data(run: RunConfig, rank: int = 0, world: int = 1):
    """The run's data, checked against its model: PreparedData for text (rank 0 tokenises, the
    others wait and read its cache), the loaded dataset ({"meta", "train", "test"}) for puzzles."""
    return run.task.load(run, rank, world)


def train(run: RunConfig | None, out: str | Path, *, resume: bool = False, settings: list[str] | None = None,
          progress: bool = True, log=print) -> Trainer:
    """Train `run` into directory `out` (or resume the run there); returns the finished Trainer.

    `out` is created if missing, its parent is not: a missing or unwritable parent is a ConfigError
    before any work. A full disk ends the run with DiskFullError, the newest checkpoint intact.

    One process trains into a directory at a time: the run holds io.RunLock (RUN/lock) from
    before its first write (an existing directory: before it is read) to its end, and another
    process finds a RunBusyError (a ConfigError) naming the holder, before writing anything.

    `resume`: continue the run in `out` from its newest checkpoint that verifies (a run killed
    before its first checkpoint starts over from its config.json); a directory without a run is
    a ConfigError. The saved configuration is kept; only RESUMABLE settings may differ (more
    steps extend the run). `settings` ('key=value', as typed: `--set`, `--steps`...) are then
    applied to the saved configuration, so that defaults do not count as changes, and `run` (if
    given) must be of the saved model's family; without `settings`, `run` is compared whole.
    With `resume` and `settings`, `run` may be None.

    SIGINT or SIGTERM during training: the run checkpoints the step it is at and raises
    Interrupted, naming the step and the command that continues it (Trainer.fit).
    """
    out = io.check_writable_dir(out)
    rank, world, local_rank = distributed()
    lock = io.RunLock(out)
    try:
        # an existing directory is held before it is read: a second writer learns of the first,
        # not of whatever the first is writing
        _hold(lock, rank == 0 and out.is_dir(), world, local_rank)
        return _train(run, out, lock, rank, world, local_rank, resume=resume, settings=settings,
                      progress=progress, log=log)
    finally:
        lock.release()


def _train(run: RunConfig | None, out: Path, lock: io.RunLock, rank: int, world: int, local_rank: int, *,
           resume: bool, settings: list[str] | None, progress: bool, log) -> Trainer:
    """train() inside the directory's lock (taken here for a new directory)."""
    ckpt, changes = None, []
    if resume:
        run, ckpt, changes = _resumed(out, run, settings, on_damaged=io.warn if rank == 0 else None)
    elif run is None:
        raise ConfigError("a new run needs its configuration (a preset)")
    else:
        _refuse_if_held(out)
    torch.manual_seed(run.train.seed)
    model = from_config(run.model)  # initialised from the seed, then overwritten on resume
    data = load_data(run, rank, world)
    task = run.task
    if run.train.micro_batch % world:
        raise ConfigError(f"batch_size / grad_accum = {run.train.micro_batch} must be divisible by the {world} "
                          "processes")
    batches, val, vocab = task.batches(run, data, rank, world), task.validation(run, data), task.vocab(data)
    metrics, evals = out / "metrics.jsonl", out / "eval.jsonl"

    def log_record(record: dict, path: Path) -> None:
        write_jsonl(path, record)
        if board is not None:
            board.add(record)

    callbacks = Callbacks(
        log=lambda r: log_record(r, metrics),
        evaluate=lambda r: (log_record(r, evals), bar.write(task.eval_line(r)) if bar.bar else log(task.eval_line(r))),
        checkpoint=lambda step: save(trainer, run, vocab, out),
        progress=lambda r: bar.update(r),
    )
    trainer = Trainer(model, batches, val, run.train, callbacks, evaluate=getattr(evaluation, task.evaluator))
    # after validation and the Trainer, which may still refuse the run: a refused run with a new
    # directory leaves none behind; taking the lock creates it (its first write)
    _hold(lock, rank == 0, world, local_rank, then=None if resume else lambda: _refuse_if_held(out))
    bar = _progress_bar(run.train.steps, enabled=progress and rank == 0)
    board = _Board(out, ckpt.step if ckpt is not None else 0) if rank == 0 else None
    if ckpt is not None:
        model.load_state_dict(ckpt.model_state)
        trainer.load_state_dict(ckpt.state)
        bar.start(trainer.step)
        if rank == 0:
            for path in (metrics, evals):
                _truncate_log(path, trainer.step)
    elif rank == 0:  # a fresh run, or a resumed one killed before its first checkpoint
        for path in (metrics, evals):
            _truncate_log(path, 0)
    if rank == 0:
        io.atomic_write_json(out / "config.json", run.to_dict())  # a resume's changes too
        if resume:
            line = _resume_line(out, ckpt, run, changes)
            if bar.bar:  # above the bar
                bar.write(line)
            else:
                log(line)
    try:
        trainer.fit()
    except Interrupted as err:
        raise Interrupted(f"{err}; continue with: {_resume_command(out, world)}", err.exit_code) from None
    finally:
        bar.close()
        if board is not None:
            board.close()
    return trainer


# What may change when a run is resumed: how often it logs, evaluates and checkpoints, its time
# budget, and its length (train.steps, above the step it resumes from; the schedule follows the
# new length). Anything else would change the results the run has produced so far.
RESUMABLE = ("train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every", "train.time_limit")


def holds_run(out: str | Path) -> bool:
    """Whether directory `out` holds a run: a checkpoint, or the config.json and logs of a run
    killed before its first checkpoint."""
    out = Path(out)
    return bool(io.checkpoints(out)) or any((out / name).exists() for name in ("latest", "config.json", "metrics.jsonl"))


def _refuse_if_held(out: Path) -> None:
    """ConfigError if `out` holds a run (a new run never overwrites one)."""
    if holds_run(out):
        raise ConfigError(f"{out} already holds a run; continue it with --resume or choose another --out")


def _resumed(out: Path, run: RunConfig | None, settings: list[str] | None, *, on_damaged
             ) -> tuple[RunConfig, io.Checkpoint | None, list[tuple[str, object, object]]]:
    """(the configuration to continue with, the checkpoint to continue from or None, the
    settings changed) for resuming the run in `out`; ConfigError if there is none, or the
    requested configuration changes more than RESUMABLE allows."""
    if io.checkpoints(out) or (out / "latest").exists():
        ckpt = io.load_checkpoint(out, on_damaged=on_damaged)
        saved, step = RunConfig.from_dict(ckpt.config), ckpt.step
    elif (out / "config.json").is_file():  # killed before its first checkpoint: step 0 with that config
        ckpt, step = None, 0
        try:
            saved = RunConfig.from_dict(json.loads((out / "config.json").read_text()))
        except ValueError as err:
            raise ConfigError(f"{out}/config.json: unreadable ({str(err).splitlines()[0]})") from None
    else:
        raise ConfigError(f"{out} holds no run to resume; drop --resume to start one")
    if settings is not None:  # only what was typed counts; defaults give way to the saved run's values
        family = saved.to_dict()["model"]["family"]
        if run is not None and run.to_dict()["model"]["family"] != family:
            raise ConfigError(f"{out} holds a run of a {family} model, not {run.to_dict()['model']['family']}: "
                              "drop the preset (--resume takes the saved one) or train into another --out")
        requested = apply_settings(saved, list(settings))
    else:
        requested = run if run is not None else saved
    changes = _differences(saved.to_dict(), requested.to_dict())
    refused = [c for c in changes if c[0] not in RESUMABLE]
    if refused:
        raise ConfigError(f"{out} holds a run with other settings ({_changes_text(refused)}); --resume continues it "
                          f"with its own ({', '.join(RESUMABLE)} may change): drop the changes or train into another --out")
    if requested.train.steps != saved.train.steps and requested.train.steps <= step:
        raise ConfigError(f"train.steps={requested.train.steps}: {out} is at step {step} already; "
                          "a resumed run can only be made longer than that")
    return requested, ckpt, changes


def _resume_line(out: Path, ckpt: io.Checkpoint | None, run: RunConfig, changes: list) -> str:
    """What a resume says it does: 'resuming runs/a1 from step 300 (ckpt-00000300)', and more."""
    if ckpt is None:
        line = f"resuming {out} from step 0: it has no checkpoint yet, so it starts over with its config.json"
    else:
        line = f"resuming {out} from step {ckpt.step} ({ckpt.path.name})"
    if changes:
        line += f"; changed: {_changes_text(changes)}"
    if ckpt is not None and ckpt.step >= run.train.steps:
        line += f"; the run is complete at {run.train.steps} steps (more with --steps N)"
    return line


def _resume_command(out: Path, world: int) -> str:
    """The command that continues the run in `out` (the settings come from its checkpoint)."""
    command = f"attractor train --out {shlex.quote(str(out))} --resume"
    if world == 1:
        return command
    per_node = os.environ.get("LOCAL_WORLD_SIZE", str(world))
    launch = f"torchrun --nproc_per_node={per_node}" if per_node == str(world) else "torchrun (as before)"
    return f"{launch} -m {command}"


def _hold(lock: io.RunLock, take: bool, world: int, local_rank: int, then=None) -> None:
    """Rank 0 takes the run directory's lock when `take` (and, holding it, calls `then`, which
    may refuse the run); every rank learns of a refusal (one broadcast, which every rank makes),
    so no rank waits at a barrier for one that stopped."""
    error = refusal = None
    if take:
        try:
            lock.acquire()
            if then is not None:  # another process may have started a run here before the lock
                then()
        except Exception as err:  # told to the other ranks, then raised here
            error, refusal = err, str(err)
    if world > 1:
        box = [refusal]
        device = torch.device("cuda", local_rank) if dist.get_backend() == "nccl" else None
        dist.broadcast_object_list(box, src=0, device=device)
        refusal = box[0]
    if error is not None:
        raise error
    if refusal is not None:
        raise ConfigError(refusal)


def save(trainer: Trainer, run: RunConfig, vocab: Tokenizer | dict, out: Path) -> Path:
    """Checkpoint the trainer: the served weights, the run config, the tokenizer (or the puzzle
    dataset's description: the task's vocab) and the resume state."""
    return io.save_checkpoint(out, trainer.step, model_state=trainer.inference_state_dict(), config=run.to_dict(),
                              tokenizer_json=run.task.vocab_json(vocab), state=trainer.state_dict())


def _truncate_log(path: Path, step: int) -> None:
    """Keep the lines of a JSON-lines log up to `step` (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    io.atomic_write_text(path, "".join(line + "\n" for line in kept))


def _differences(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) for every leaf where two config dicts differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out.extend(_differences(x, y, f"{prefix}{k}."))
        elif x != y:
            out.append((f"{prefix}{k}", x, y))
    return out


def _changes_text(changes: list[tuple[str, object, object]]) -> str:
    return ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)


class _Board:
    """TensorBoard scalars in RUN/tensorboard when the tensorboard package is installed."""

    def __init__(self, out: Path, step: int):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional: metrics.jsonl holds the same numbers
            self.writer = None
            return
        self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=step or None)  # a resume rewrites later steps

    def add(self, record: dict) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                self.writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _progress_bar:
    """tqdm with loss, tokens/s and the solve's depth; silent when disabled or tqdm is absent."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, dynamic_ncols=True, leave=True)
        self.tokens, self.time = None, None

    def start(self, step: int) -> None:
        if self.bar is not None:
            self.bar.n = step
            self.bar.refresh()

    def update(self, r: dict) -> None:
        if self.bar is None:
            return
        import time

        now = time.perf_counter()
        post = {"loss": f"{r['loss']:.3f}"}
        if self.time is not None:
            post["tok/s"] = f"{(r['tokens'] - self.tokens) / max(now - self.time, 1e-9):.0f}"
        if "depth" in r:
            post["depth"] = f"{r['depth']:.1f}"
        if "converged" in r:
            post["conv"] = f"{r['converged']:.2f}"
        self.tokens, self.time = r["tokens"], now
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
