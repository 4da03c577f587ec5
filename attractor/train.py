"""The one trainer: every model, every task, one process or many (torchrun).

A plain loop, nanoGPT-style, around four ideas:
- optimisers come from `model.param_groups()` (Muon for the groups labelled "muon" where it pays,
  AdamW for the rest), so the trainer never matches parameter names and serves every family alike;
- a warmup-stable-decay schedule (linear warmup, constant, linear cooldown over the last
  `cooldown` fraction of the run; SPEC 2.1 uses a 50% cooldown), gradient accumulation and
  clipping, fp32 on CPU and bf16 autocast on CUDA;
- a guard: a step whose gradient norm is not finite (NaN or inf in the loss or any gradient,
  after the all-reduce, so every rank decides alike) is skipped; after `max_bad_steps` in a row
  the run stops with an error instead of training on garbage;
- everything a resume needs is state (`state_dict`): weights, optimisers, schedule, step, token
  count, the data position and every random generator, so a resumed run repeats the
  uninterrupted one's losses;
- an optional exponential moving average of the weights (`ema`, TRM's 0.999 for puzzles): it is
  what evaluation and a checkpoint's served weights use, while training goes on with the raw
  weights, which the resume state keeps.

Distributed: under torchrun (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel
(gloo on CPU, nccl on CUDA); each rank draws its rows of the same global batch, and only rank 0
logs and writes checkpoints.

Stopping: during fit(), SIGINT (Ctrl-C) and SIGTERM ask the loop to stop after the current step;
it then writes a checkpoint, as at a last step, and raises attractor.errors.Interrupted (exit
code 130 or 143). Under torchrun the ranks agree on the step (one all-reduce per step).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

from attractor.errors import ConfigError, Interrupted
from attractor.evaluate import depth_stats, evaluate
from attractor.kernels import build as build_kernels, use_fused_kernels
from attractor.models.base import ModelOutput
from attractor.schema import check_fields, require


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300  # optimiser steps in the run; the schedule's length too
    batch_size: int = 16  # sequences per optimiser step, over all ranks and accumulation steps
    grad_accum: int = 1  # micro-batches per optimiser step
    lr: float = 3e-3  # base learning rate; Muon's is matched to AdamW's update RMS (see below)
    weight_decay: float = 0.1  # base decoupled weight decay, times each group's wd_mult
    betas: tuple[float, float] = (0.9, 0.95)  # AdamW
    # Optimiser of the groups the model labels "muon" (the blocks' matrices). auto: Muon on CUDA,
    # AdamW elsewhere: torch's Muon orthogonalises in bf16, which made a 1M model's steps 3x
    # slower than AdamW's on a 2-core CPU (docs/benchmarks.md, "Trainer").
    matrix_optimizer: Literal["auto", "muon", "adamw"] = "auto"
    warmup: int = 20  # linear warmup steps
    cooldown: float = 0.5  # fraction of the run at the end with a linear decay to 0 (SPEC 2.1: 50%)
    clip: float | None = 1.0  # gradient-norm clipping; None: none (the norm is still logged)
    max_bad_steps: int = 5  # consecutive non-finite steps skipped before the run stops
    seed: int = 0  # model initialisation, data order, sampling
    log_every: int = 10  # steps between metrics lines
    eval_every: int | None = 100  # steps between evaluations (and at the end); None: never
    eval_batches: int = 8  # validation batches per evaluation
    checkpoint_every: int | None = 100  # steps between checkpoints (and at the end); None: end only
    device: str = "auto"  # auto: CUDA (the local rank's) if available, else CPU
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    compile: bool = False  # torch.compile the training forward (evaluation stays eager)
    # The blocks' elementwise parts (RMSNorm, QK-norm + RoPE, ReLU^2), training and evaluation:
    # auto: as fused C++ kernels (attractor.kernels; built on first use with a C++ compiler) where
    # they serve the run, fp32 on a CPU without train.compile, else the eager ops (without a
    # compiler: one line on stderr says so); compiled: the fused kernels, or a ConfigError; eager:
    # the eager ops. Each metrics record names the path ("kernels": "fused" or "eager").
    kernels: Literal["auto", "eager", "compiled"] = "auto"
    ema: float | None = None  # decay of an average of the weights that evaluation and checkpoints serve; None: off
    # Wall-clock budget in seconds from the start of fit() (evaluations and checkpoints included):
    # the run ends after the step that crosses it, evaluated and checkpointed as at a last step;
    # the schedule keeps the length `steps`. For comparisons at equal training time. None: no limit.
    time_limit: float | None = None

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.steps >= 1, f"steps={self.steps} must be >= 1")
        require(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be >= 1")
        require(self.batch_size % self.grad_accum == 0,
                f"batch_size={self.batch_size} must be divisible by grad_accum={self.grad_accum}")
        require(self.lr > 0 and self.weight_decay >= 0, "need lr > 0 and weight_decay >= 0")
        require(all(0 <= b < 1 for b in self.betas), f"betas={self.betas} must be in [0, 1)")
        require(self.warmup >= 0, f"warmup={self.warmup} must be >= 0")
        require(0.0 <= self.cooldown <= 1.0, f"cooldown={self.cooldown} must be in [0, 1]")
        require(self.clip is None or self.clip > 0, f"clip={self.clip} must be > 0 or None")
        require(self.max_bad_steps >= 1 and self.log_every >= 1 and self.eval_batches >= 1,
                "max_bad_steps, log_every and eval_batches must be >= 1")
        require(self.eval_every is None or self.eval_every >= 1, "eval_every must be >= 1 or None")
        require(self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every must be >= 1 or None")
        require(self.ema is None or 0.0 < self.ema < 1.0, f"ema={self.ema} must be in (0, 1) or None")
        require(self.time_limit is None or self.time_limit > 0, f"time_limit={self.time_limit} must be > 0 or None")

    @property
    def micro_batch(self) -> int:
        """Sequences per forward and backward over all ranks: batch_size // grad_accum (each
        rank takes micro_batch // world of them)."""
        return self.batch_size // self.grad_accum


def wsd(step: int, cfg: TrainConfig) -> float:
    """Learning-rate factor at `step` (0-based): linear warmup, flat, linear cooldown to 0
    (the lower of the two ramps where a short run makes them overlap)."""
    warm = (step + 1) / (cfg.warmup + 1) if step < cfg.warmup else 1.0
    decay_start = cfg.steps * (1.0 - cfg.cooldown)
    cool = 1.0 if step < decay_start or cfg.cooldown == 0 else max(0.0, (cfg.steps - step) / (cfg.steps - decay_start))
    return min(warm, cool)


def make_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """AdamW (and Muon) over the model's labelled parameter groups.

    Each group's lr and weight decay are the base values times its multipliers. Muon's step is
    rescaled to AdamW's update RMS (`adjust_lr_fn="match_rms_adamw"`, Liu et al. 2025, arXiv
    2502.16982), so one base learning rate serves both optimisers.
    """
    device = next(model.parameters()).device
    use_muon = cfg.matrix_optimizer == "muon" or (cfg.matrix_optimizer == "auto" and device.type == "cuda")
    adamw, muon = [], []
    for g in model.param_groups():
        group = {"params": g.params, "lr": cfg.lr * g.lr_mult, "weight_decay": cfg.weight_decay * g.wd_mult,
                 "name": g.name}
        (muon if g.optimizer == "muon" and use_muon else adamw).append(group)
    optimizers = [torch.optim.AdamW(adamw, betas=cfg.betas)] if adamw else []
    if muon:
        optimizers.append(torch.optim.Muon(muon, adjust_lr_fn="match_rms_adamw"))
    return optimizers


def distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def check_device(name: str | torch.device, what: str = "train.device") -> None:
    """ConfigError unless `name` ('auto', 'cpu', 'cuda', 'cuda:1', 'mps', ...) is a device this
    machine has: torch would otherwise fail deep inside the first `.to()` with an assertion."""
    if name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{what}={name!r} is not a device: auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "" if torch.version.cuda else f", and this torch ({torch.__version__}) is built without CUDA"
            raise ConfigError(f"{what}={name}: this machine has no CUDA device{build}; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{what}={name}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
                              f"(cuda:0 to cuda:{count - 1})")
        return
    if device.type == "mps":
        available = torch.backends.mps.is_available()
    else:  # xpu and the other accelerators with a torch.<type> module (meta and the like have none)
        backend = getattr(torch, device.type, None)
        if not hasattr(backend, "is_available"):
            raise ConfigError(f"{what}={name} is not a device to run a model on: auto, cpu, cuda, cuda:N or mps")
        available = backend.is_available()
    if not available:
        raise ConfigError(f"{what}={name}: this machine has no {device.type} device; use cpu or auto")


def pick_device(name: str | torch.device, local_rank: int) -> torch.device:
    """The device `name` names ('auto': the local rank's CUDA device if there is one, else the
    CPU); ConfigError where this machine lacks it (check_device)."""
    check_device(name)
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _no_buffer_sync() -> dict:
    """DDP's keyword that stops it copying rank 0's buffers at every forward: forward_sync_buffers
    where torch has it (2.13 deprecates broadcast_buffers with a FutureWarning on every rank),
    else broadcast_buffers. The new one still copies the buffers once, when DDP wraps the model,
    which changes nothing here: every rank builds the model from the same seed, and a resume
    loads the same checkpoint into each afterwards."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class Callbacks:
    """Where the trainer's outputs go; the defaults do nothing (tests, library use)."""

    log: Callable[[dict], None] = lambda record: None  # one metrics record per logged step
    evaluate: Callable[[dict], None] = lambda record: None  # one record per evaluation
    checkpoint: Callable[[int], None] = lambda step: None  # called at checkpoint steps (rank 0)
    progress: Callable[[dict], None] = lambda record: None  # every step (a progress bar)


class EMA:
    """An exponential moving average of a model's parameters: after each optimiser step
    shadow <- decay * shadow + (1 - decay) * weights, starting from the initial weights (as
    TRM's EMAHelper, no bias correction). Buffers are not averaged: the model's own are used.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.names = [name for name, _ in model.named_parameters()]
        self.params = [p for _, p in model.named_parameters()]
        self.shadow = [p.detach().float().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow, self.params):
            s.lerp_(p.detach().float(), 1.0 - self.decay)

    @contextlib.contextmanager
    def applied(self):
        """Within the block the model's parameters hold the average; the raw ones come back after."""
        raw = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self.params, raw):
                    p.copy_(r)

    def state_dict(self) -> dict:
        """The average and the raw weights by parameter name (the checkpoint's safetensors hold
        the average, so a resume needs the raw weights from here)."""
        return {"shadow": dict(zip(self.names, self.shadow)),
                "raw": {n: p.detach().clone() for n, p in zip(self.names, self.params)}}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        if set(state["shadow"]) != set(self.names):
            raise ConfigError("the checkpoint's weight average does not match this model's parameters")
        for name, p, s in zip(self.names, self.params, self.shadow):
            s.copy_(state["shadow"][name])
            p.copy_(state["raw"][name])


class Trainer:
    """Train `model` on batches from `train_batches` (an iterator of (idx, targets) that has
    state_dict/load_state_dict), evaluating on the fixed sequence `val_batches` with `evaluate`
    (the language models' loss by default; puzzle runs pass attractor.evaluate.evaluate_puzzles).

    Call `fit()` to run to cfg.steps from the current step (0, or a loaded state's).
    """

    def __init__(self, model: nn.Module, train_batches: Iterator[tuple[Tensor, Tensor]],
                 val_batches: Sequence[tuple[Tensor, Tensor]], cfg: TrainConfig, callbacks: Callbacks | None = None,
                 evaluate: Callable[..., dict] = evaluate):
        if getattr(model, "carries_state", False) and cfg.grad_accum > 1:
            raise ConfigError(f"grad_accum={cfg.grad_accum}: {type(model).__name__} carries its state from one call to "
                              "the next, so micro-batches would be successive supervision steps, not one batch; "
                              "use grad_accum=1 (more processes for a larger batch)")
        self.rank, self.world, local_rank = distributed()
        self.cfg, self.callbacks = cfg, callbacks or Callbacks()
        self.device = pick_device(cfg.device, local_rank)
        self.model = model.to(self.device)
        # Buffers stay each rank's own: a recursive puzzle model may keep its carry (its rows'
        # state across supervision steps) in buffers, which DDP would overwrite with rank 0's.
        self.ddp = (nn.parallel.DistributedDataParallel(self.model, device_ids=[local_rank] if self.device.type == "cuda" else None,
                                                        **_no_buffer_sync())
                    if self.world > 1 else None)
        self.net = self.ddp or self.model  # what the training step calls
        if cfg.compile:
            self.net = torch.compile(self.net)
        bf16 = cfg.precision == "bfloat16" or (cfg.precision == "auto" and self.device.type == "cuda")
        if bf16:
            self.autocast = lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)
        else:
            self.autocast = contextlib.nullcontext
        self.kernels = self._pick_kernels(bf16)  # "fused" or "eager": this model's, training and evaluation
        use_fused_kernels(self.model, self.kernels == "fused")
        self.train_batches, self.val_batches, self.evaluate_fn = train_batches, val_batches, evaluate
        self.ema = EMA(self.model, cfg.ema) if cfg.ema is not None else None
        self.optimizers = make_optimizers(self.model, cfg)
        self.schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: wsd(s, cfg)) for o in self.optimizers]
        self.step, self.tokens, self.bad_in_a_row, self.skipped = 0, 0, 0, 0
        self.stop_signal = 0  # SIGINT or SIGTERM received during fit(), 0: none (see fit)

    def _pick_kernels(self, bf16: bool) -> str:
        """cfg.kernels resolved for this run, "fused" or "eager" (see TrainConfig.kernels), and
        said once on rank 0: on stdout, or on stderr where auto found no kernels to build."""
        cfg = self.cfg
        unserved = (f"this run is on {self.device}" if self.device.type != "cpu" else
                    "this run autocasts to bfloat16" if bf16 else
                    "train.compile=true compiles the training forward" if cfg.compile else None)
        path, note = "eager", None
        if cfg.kernels == "compiled":
            if unserved:
                raise ConfigError(f"train.kernels=compiled: the fused kernels serve float32 on a CPU outside "
                                  f"train.compile, and {unserved}; use train.kernels=auto or eager")
            try:
                build_kernels()
            except RuntimeError as e:
                raise ConfigError(f"train.kernels=compiled: {e}") from None
            path = "fused"
        elif cfg.kernels == "auto" and not unserved:
            try:
                build_kernels()
                path = "fused"
            except RuntimeError as e:
                note = f"attractor: fused CPU kernels unavailable ({e}); training with the eager ops"
        if self.rank == 0:
            if note is not None:
                print(note, file=sys.stderr, flush=True)
            else:
                print(f"training with the {'fused CPU kernels' if path == 'fused' else 'eager ops'} "
                      f"(train.kernels={cfg.kernels})", flush=True)
        return path

    # ---- one step ------------------------------------------------------------------------------

    def train_step(self) -> dict:
        """One optimiser step over grad_accum micro-batches; returns its metrics."""
        self.model.train()
        loss_sum, outs, tokens = torch.zeros((), device=self.device), [], 0
        for micro in range(self.cfg.grad_accum):
            idx, targets = next(self.train_batches)
            idx, targets = idx.to(self.device), targets.to(self.device)
            sync = self.ddp is None or micro == self.cfg.grad_accum - 1
            with (contextlib.nullcontext() if sync else self.ddp.no_sync()), self.autocast():
                out: ModelOutput = self.net(idx, targets)
                (out.loss / self.cfg.grad_accum).backward()
            loss_sum += out.loss.detach().float()
            outs.append(out)
            tokens += idx.numel()
        if self.world > 1:  # log the global batch's loss, as one process would
            dist.all_reduce(loss_sum)
            loss_sum /= self.world
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip or math.inf)
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            for opt in self.optimizers:
                opt.step()
            if self.ema is not None:
                self.ema.update()
            self.bad_in_a_row = 0
        else:
            self.bad_in_a_row += 1
            self.skipped += 1
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        for sched in self.schedulers:
            sched.step()
        self.step += 1
        self.tokens += tokens * self.world
        if self.bad_in_a_row >= self.cfg.max_bad_steps:
            raise NonFiniteError(f"{self.bad_in_a_row} steps in a row had a non-finite loss or gradient "
                                 f"(last at step {self.step}); stopping. Lower the learning rate or check the data.")
        record = {"step": self.step, "loss": float(loss_sum) / self.cfg.grad_accum, "tokens": self.tokens,
                  "lr": self.schedulers[0].get_last_lr()[0] if self.schedulers else 0.0,
                  "grad_norm": float(grad_norm), "skipped": not finite, "kernels": self.kernels}
        record.update(depth_stats(outs))
        for key in outs[0].metrics:  # the model's own training metrics, averaged over micro-batches
            record[key] = sum(float(o.metrics[key]) for o in outs) / len(outs)
        return record

    # ---- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, iters: int | None = None) -> dict:
        """The evaluation's metrics over the first eval_batches validation batches at depth
        `iters` (None: the model's own), with the averaged weights when cfg.ema is set."""
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            return self.evaluate_fn(self.model, self.val_batches[: self.cfg.eval_batches], iters=iters,
                                    device=self.device, autocast=self.autocast)

    def inference_state_dict(self) -> dict[str, Tensor]:
        """The model's state_dict with the averaged weights when cfg.ema is set: what a
        checkpoint serves (its safetensors); the raw weights go to state_dict()."""
        with self.ema.applied() if self.ema is not None else contextlib.nullcontext():
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # ---- the loop ------------------------------------------------------------------------------

    def fit(self) -> None:
        """Train from the current step to cfg.steps, logging, evaluating and checkpointing.

        SIGINT or SIGTERM (handled during fit() only, in the main thread) stops the run after the
        current step: a checkpoint is written through the checkpoint callback and Interrupted is
        raised (exit code 128 + the signal's number), naming the step. A second signal stops a
        single process at once (Interrupted from the handler, no checkpoint); under torchrun it
        is ignored, see _stop_on_signals.
        """
        with self._stop_on_signals():
            self._fit()

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGINT and SIGTERM set self.stop_signal for the loop to see, the previous handlers
        coming back after; outside the main thread (where Python cannot handle signals) nothing
        is installed."""
        self.stop_signal = 0
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if not self.stop_signal:
                self.stop_signal = signum
            elif self.world == 1:
                raise Interrupted(f"{signal.Signals(signum).name} again at step {self.step}: stopped at once, "
                                  "without a checkpoint", 128 + signum)
            # Under torchrun a repeat is expected and ignored: the terminal's Ctrl-C reaches every
            # worker, then the agent forwards the signal once more; the agent itself sends SIGKILL
            # if the workers outlast its own timeout.

        previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
        for number in previous:
            signal.signal(number, handler)
        try:
            yield
        finally:
            for number, old in previous.items():  # None: a handler not set from Python
                signal.signal(number, old if old is not None else signal.SIG_DFL)

    def _fit(self) -> None:
        cfg, cb = self.cfg, self.callbacks
        started = window_start = time.perf_counter()
        window_tokens = self.tokens
        last = False
        while self.step < cfg.steps and not last:
            record = self.train_step()
            cb.progress(record)
            out_of_time, stop_signal = self._should_stop(started)
            last = self.step == cfg.steps or out_of_time
            # a stop asked for mid-run keeps the logs an uninterrupted run writes: no extra log
            # line or evaluation at this step, only its checkpoint (a last step ends the run anyway)
            interrupted = bool(stop_signal) and not last
            if self.step % cfg.log_every == 0 or last:
                now = time.perf_counter()
                record["tokens_per_s"] = (self.tokens - window_tokens) / max(now - window_start, 1e-9)
                window_start, window_tokens = now, self.tokens
                if self.rank == 0:
                    cb.log(record)
            if cfg.eval_every is not None and (self.step % cfg.eval_every == 0 or last) and self.val_batches:
                result = {"step": self.step, "tokens": self.tokens, **self.evaluate()}
                if self.rank == 0:
                    cb.evaluate(result)
            if (cfg.checkpoint_every is not None and self.step % cfg.checkpoint_every == 0) or last or interrupted:
                if self.rank == 0:
                    cb.checkpoint(self.step)
                if self.world > 1:
                    dist.barrier()  # no rank runs ahead of a checkpoint it may be asked to resume from
            if interrupted:
                how = "interrupted" if stop_signal == signal.SIGINT else f"stopped by {signal.Signals(stop_signal).name}"
                raise Interrupted(f"{how} at step {self.step} (checkpoint written)", 128 + stop_signal)

    def _should_stop(self, started: float) -> tuple[bool, int]:
        """(whether cfg.time_limit has passed, the number of a stop signal received or 0). Under
        DDP one all-reduce (MAX) per step makes both the same on every rank: the slowest rank's
        clock, any rank's signal."""
        over = self.cfg.time_limit is not None and time.perf_counter() - started >= self.cfg.time_limit
        if self.world == 1:
            return over, self.stop_signal
        flags = torch.tensor([float(over), float(self.stop_signal)], device=self.device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return bool(flags[0]), int(flags[1])

    # ---- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything but the weights that a resume needs (the weights go to safetensors)."""
        return {
            "step": self.step, "tokens": self.tokens, "bad_in_a_row": self.bad_in_a_row, "skipped": self.skipped,
            "optimizers": [o.state_dict() for o in self.optimizers],
            "schedulers": [s.state_dict() for s in self.schedulers],
            "data": json.dumps(self.train_batches.state_dict()),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        }

    def load_state_dict(self, state: dict) -> None:
        self.step, self.tokens = state["step"], state["tokens"]
        self.bad_in_a_row, self.skipped = state["bad_in_a_row"], state["skipped"]
        if len(state["optimizers"]) != len(self.optimizers):
            raise ConfigError("the checkpoint's optimisers do not match this run's (was matrix_optimizer changed, "
                              "or the device, under matrix_optimizer=auto?)")
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        for sched, s in zip(self.schedulers, state["schedulers"]):
            sched.load_state_dict(s)
            # The rate of the next step from this run's schedule, as LambdaLR computes it: the
            # saved one for the same run, the new length's where a resume changed train.steps.
            for group, base_lr, factor in zip(sched.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
                group["lr"] = base_lr * factor(sched.last_epoch)
        self.train_batches.load_state_dict(json.loads(state["data"]))
        if (self.ema is None) != ("ema" not in state):
            raise ConfigError("the checkpoint and this run disagree on train.ema (an average of the weights or none)")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["torch"])
        if torch.cuda.is_available() and state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])


def write_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (rank 0 only calls this): the whole line or, on a full disk, nothing
    and a DiskFullError."""
    from attractor.io import append_text

    append_text(path, json.dumps(record) + "\n")
