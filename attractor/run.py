"""A training run in a directory: start it, resume it, load what it made.

    RUN/metrics.jsonl    one JSON object per logged step (step, loss, tokens, lr, tokens_per_s,
                         grad_norm; depth, n_evals and converged for recurrent models)
    RUN/eval.jsonl       one per evaluation (step, val_loss, val_ppl or, for puzzles, val_exact
                         and val_cell; solve statistics)
    RUN/ckpt-<step>/     checkpoints (attractor/io.py), RUN/latest names the newest

Starting into a directory that already holds a run is refused (nothing is overwritten); `resume`
continues from the newest checkpoint that verifies, with the saved configuration, to the same
end, and first cuts the logs back to that checkpoint's step, so a killed and resumed run leaves
the same logs as an uninterrupted one.

Puzzle runs (the puzzle families, see attractor/config.py TASKS) train on a dataset folder in
TRM's order (attractor/tasks/puzzles.py), evaluate exact and cell accuracy on the first batches
of its test split, and save the dataset's description (dataset.json: kind, token ids, box or
size) in the checkpoint where a language model saves its tokenizer, so that a checkpoint loads
without its dataset: `load_run` returns that dict in the tokenizer's place.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from attractor import io
from attractor.config import RunConfig, apply_settings, check_dataset
from attractor.data import TokenBatches, Tokenizer, prepare, tokenizer_from_json, val_batches
from attractor.errors import ConfigError
from attractor.evaluate import evaluate, evaluate_puzzles
from attractor.models import from_config
from attractor.tasks import PuzzleBatches, test_batches
from attractor.train import Callbacks, Trainer, distributed, write_jsonl


def tokenizer_text(vocab: Tokenizer | dict) -> str:
    """What a checkpoint's tokenizer.json holds: the tokenizer, or a puzzle dataset's description."""
    return json.dumps({"puzzles": vocab} if isinstance(vocab, dict) else vocab.to_json())


def load_run(path: str | Path, *, device: str | torch.device = "cpu", settings: list[str] = ()
             ) -> tuple[nn.Module, Tokenizer | dict, RunConfig, int]:
    """(model in eval mode, tokenizer, run config, step) of a checkpoint or run directory.

    `settings` ('key=value', as `--set` takes them) change the saved config before the model is
    built: the solve of an equilibrium model (`min_iter=1`, `tol=1e-5`, `solver=picard`) can differ
    from training's; a setting that changes the weights' shapes is a CheckpointError.

    For a puzzle run the second item is the dataset's description (its dataset.json as a dict:
    "kind" 'sudoku' or 'maze', "seq_len", "vocab_size", "tokens", "box" or "size", "recipe",
    "splits") instead of a tokenizer. The weights are the ones the run serves (the average of
    the weights when train.ema is set).
    """
    ckpt = io.load_checkpoint(path, with_state=False)
    run = apply_settings(RunConfig.from_dict(ckpt.config), list(settings))
    with torch.device("meta"):
        model = from_config(run.model)
    try:
        model.load_state_dict(ckpt.model_state, assign=True)
    except RuntimeError as err:
        raise io.CheckpointError(f"{ckpt.path}: weights do not fit the saved config ({str(err).splitlines()[0]})") from None
    for name, buffer in model.named_buffers():
        if buffer.is_meta:
            raise io.CheckpointError(f"{ckpt.path}: buffer {name} missing from the weights")
    if run.task == "puzzles":
        try:
            vocab = json.loads(ckpt.tokenizer_json)["puzzles"]
        except (ValueError, KeyError, TypeError):
            raise io.CheckpointError(f"{ckpt.path}: tokenizer.json does not describe a puzzle dataset") from None
    else:
        vocab = tokenizer_from_json(ckpt.tokenizer_json, where=str(ckpt.path))
    return model.to(device).eval(), vocab, run, ckpt.step


def validation(run: RunConfig, data):
    """The fixed validation batches of a run: micro-batch rows, eval_batches of them (for text,
    windows of the model's context from the validation split; for puzzles, the first puzzles of
    the test split in order). Training, `attractor eval` and the demo all evaluate on these."""
    micro_batch = run.train.batch_size // run.train.grad_accum
    if run.task == "puzzles":
        return test_batches(data["test"], micro_batch, max_puzzles=run.train.eval_batches * micro_batch)
    return val_batches(data.val, micro_batch, run.model.seq_len, max_batches=run.train.eval_batches)


def load_data(run: RunConfig, rank: int = 0, world: int = 1):
    """The run's data, checked against its model: PreparedData for text (rank 0 tokenises, the
    others wait and read its cache), the loaded dataset ({"meta", "train", "test"}) for puzzles."""
    if run.task == "puzzles":
        data = run.data.load()
        check_dataset(run, data["meta"])
        return data
    return _data(run, rank, world)


def _data(run: RunConfig, rank: int, world: int):
    """The prepared data (rank 0 tokenises, the others wait and read its cache)."""
    if world > 1 and rank != 0:
        dist.barrier()
    data = prepare(run.data, rank_zero=rank == 0, progress=rank == 0)
    if world > 1 and rank == 0:
        dist.barrier()
    if data.tokenizer.vocab_size != run.model.vocab_size:
        raise ConfigError(f"tokenizer has {data.tokenizer.vocab_size} tokens but the model expects {run.model.vocab_size}")
    return data


def train(run: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          log=print) -> Trainer:
    """Train `run` into directory `out` (or resume the run there); returns the finished Trainer."""
    out = Path(out)
    rank, world, _ = distributed()
    ckpt = None
    if resume:
        if io.checkpoints(out) or (out / "latest").exists():
            ckpt = io.load_checkpoint(out)
            saved = RunConfig.from_dict(ckpt.config)
            if saved != run:
                diff = _differences(saved.to_dict(), run.to_dict())
                raise ConfigError(f"{out} holds a run with other settings ({diff}); --resume continues it "
                                  "unchanged: drop the changes or train into another --out")
    elif io.checkpoints(out) or (out / "metrics.jsonl").exists():
        raise ConfigError(f"{out} already holds a run; continue it with --resume or choose another --out")
    torch.manual_seed(run.train.seed)
    model = from_config(run.model)  # initialised from the seed, then overwritten on resume
    data = load_data(run, rank, world)
    micro_batch = run.train.batch_size // run.train.grad_accum
    if micro_batch % world:
        raise ConfigError(f"batch_size / grad_accum = {micro_batch} must be divisible by the {world} processes")
    if run.task == "puzzles":
        batches = PuzzleBatches(data["train"], micro_batch, seed=run.train.seed, rank=rank, world_size=world)
        vocab, evaluator = data["meta"], evaluate_puzzles
    else:
        batches = TokenBatches(data.train, micro_batch, run.model.seq_len, seed=run.train.seed, rank=rank,
                               world_size=world)
        vocab, evaluator = data.tokenizer, evaluate
    val = validation(run, data)
    metrics, evals = out / "metrics.jsonl", out / "eval.jsonl"

    def log_record(record: dict, path: Path) -> None:
        write_jsonl(path, record)
        if board is not None:
            board.add(record)

    callbacks = Callbacks(
        log=lambda r: log_record(r, metrics),
        evaluate=lambda r: (log_record(r, evals), bar.write(_eval_line(r)) if bar.bar else log(_eval_line(r))),
        checkpoint=lambda step: save(trainer, run, vocab, out),
        progress=lambda r: bar.update(r),
    )
    trainer = Trainer(model, batches, val, run.train, callbacks, evaluate=evaluator)
    # after the Trainer, which may still refuse the run: a refusal then prints no bar and writes nothing
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
        out.mkdir(parents=True, exist_ok=True)
        for path in (metrics, evals):
            _truncate_log(path, 0)
        io.atomic_write_json(out / "config.json", run.to_dict())
    try:
        trainer.fit()
    finally:
        bar.close()
        if board is not None:
            board.close()
    return trainer


def save(trainer: Trainer, run: RunConfig, vocab: Tokenizer | dict, out: Path) -> Path:
    """Checkpoint the trainer: the served weights, the run config, the tokenizer (or the puzzle
    dataset's description) and the resume state."""
    return io.save_checkpoint(out, trainer.step, model_state=trainer.inference_state_dict(), config=run.to_dict(),
                              tokenizer_json=tokenizer_text(vocab), state=trainer.state_dict())


def _truncate_log(path: Path, step: int) -> None:
    """Keep the lines of a JSON-lines log up to `step` (a resumed run rewrites the rest)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    io.atomic_write_text(path, "".join(line + "\n" for line in kept))


def _differences(a: dict, b: dict, prefix: str = "") -> str:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            inner = _differences(x, y, f"{prefix}{k}.")
            if inner:
                out.append(inner)
        elif x != y:
            out.append(f"{prefix}{k}: {x!r} -> {y!r}")
    return ", ".join(out)


def _eval_line(r: dict) -> str:
    extra = f", depth {r['val_depth']:.1f}" if "val_depth" in r else ""
    if "val_exact" in r:
        return f"step {r['step']}: val loss {r['val_loss']:.4f}, exact {r['val_exact']:.3f}, cell {r['val_cell']:.3f}{extra}"
    return f"step {r['step']}: val loss {r['val_loss']:.4f}, ppl {r['val_ppl']:.2f}{extra}"


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
