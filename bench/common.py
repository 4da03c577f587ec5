"""Helpers shared by every benchmark: the matched models, the attractor map on one real block,
timing, peak memory, and the report (environment line, commit, Markdown tables).

The three model families at matched dense size: width 192, 4 heads, seven blocks' worth of
weights each (about 3.1M dense parameters; the byte embedding is a lookup and is not counted):

    TransformerLM  7 blocks
    AttractorLM    6 backbone blocks + 1 gated attractor block, iterated
    LoopedLM       5 prelude + 1 recurrent block, iterated + 1 coda block (plus a d x d injection)

Attractor and looped models then spend the same FLOPs outside the loop (six blocks) and the same
FLOPs per iteration (one block), so their costs differ only in how the iterations are trained.
"""

from __future__ import annotations

import argparse

import ctypes
import math
import os
import statistics
import weakref
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from attractor.kernels import build as build_kernels
from attractor.layers import Block, init_weights
from attractor.models import build
from attractor.models.base import ModelOutput

SEED = 0
D, N_HEAD = 192, 4
VOCAB = 256  # byte-level, the CPU presets' default
ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# The matched models


def transformer() -> nn.Module:
    return build("transformer-1m", d=D, n_head=N_HEAD, n_layer=7)


def attractor_lm(**overrides) -> nn.Module:
    """AttractorLM 6 + 1 blocks; overrides go to AttractorLMConfig (grad, tol, max_iter, ...)."""
    return build("attractor-1m", d=D, n_head=N_HEAD, n_backbone=6, n_attractor=1, **overrides)


def looped_lm(**overrides) -> nn.Module:
    """LoopedLM 5 / 1 / 1 blocks; overrides go to LoopedConfig (backprop_loops, max_loops, ...).

    LoopedLM is constructed directly: it may not be registered as a preset yet.
    """
    from attractor.models.looped import LoopedConfig, LoopedLM

    return LoopedLM(LoopedConfig(d=D, n_head=N_HEAD, n_prelude=5, n_recur=1, n_coda=1, **overrides))


def seeded(make: Callable[[], nn.Module]) -> nn.Module:
    """Build with the global seed reset, so every run starts from identical weights."""
    torch.manual_seed(SEED)
    return make()


def batches(n: int, batch: int, seq: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n seeded batches of uniformly random byte tokens: (inputs, next-token targets), (B, T) each."""
    gen = torch.Generator().manual_seed(SEED)
    out = []
    for _ in range(n):
        tokens = torch.randint(0, VOCAB, (batch, seq + 1), generator=gen)
        out.append((tokens[:, :-1], tokens[:, 1:]))
    return out


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               **forward_kwargs) -> ModelOutput:
    """One optimiser step: forward with loss, backward, AdamW step. Returns the forward's output."""
    out = model(x, y, **forward_kwargs)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    return out


def optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall time of one call of fn in seconds, and its result."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, object]:
    """Median wall time of fn() in seconds over `repeats` calls after `warmup`, and its last result."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        seconds, out = timed(fn)
        times.append(seconds)
    return median(times), out


# ---------------------------------------------------------------------------------------------
# The attractor map on one real block (bench.solvers, bench.spectrum)


def block_map(d: int, seq: int, batch: int, gain: float | None, dtype: torch.dtype = torch.float32,
              n_head: int = 4):
    """One gated `attractor.layers.Block` H (gates 0.5, causal), an injection x and the map.

    f(z) = H(z + x) - z = x + R(z + x), R the gated residual branches: the attractor's map
    (SPEC section 1) with one block. gain=None initialises the weights as the models do
    (`init_weights`: N(0, 0.02), output projections smaller), which is nearly constant at init;
    a number draws every matrix from N(0, gain^2 / fan_in), so `gain` sets how strongly f depends
    on z. x ~ N(0, 1). Seeded. Returns (block, x (batch, seq, d), f).
    """
    torch.manual_seed(SEED)
    block = Block(d, n_head, causal=True, gate_init=0.5)
    if gain is None:
        init_weights(block, n_residual=1)
    else:
        for p in block.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=gain / math.sqrt(p.shape[1]))
    block = block.to(dtype)
    x = torch.randn(batch, seq, d, dtype=dtype)
    return block, x, (lambda z: block(z + x) - z)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------
# Peak resident memory (Linux). CPU tensors have no allocator statistics; instead the kernel's
# high-water mark VmHWM is reset to the current RSS (write "5" to /proc/self/clear_refs) before
# the measured code and read after it. With MALLOC_MMAP_THRESHOLD_=65536 in the environment
# (set before the interpreter starts), every tensor above 64 kB is its own mapping and is
# unmapped when freed, so RSS follows the live tensors. Same trick as tests/conftest.py.

PEAK_RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def status_mb(key: str) -> float:
    """A /proc/self/status field (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024  # reported in kB
    raise OSError(f"{key} not in /proc/self/status")


def reset_peak() -> float:
    """Give free heap back to the OS, reset the high-water mark; returns VmRSS in MB."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return status_mb("VmRSS")


class PeakRSS:
    """Peak resident memory inside the `with` block above its start, in MB (nan off Linux).

    On entry `reset_peak`; on exit VmHWM - VmRSS at entry. ru_maxrss cannot be reset, and in a
    child it can include the parent's RSS from before exec.
    """

    def __enter__(self) -> PeakRSS:
        self.mb = float("nan")
        try:
            self.start = reset_peak()
        except OSError:
            self.start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.start is not None:
            self.mb = status_mb("VmHWM") - self.start


def available_mb() -> float:
    """MemAvailable of the machine in MB (other jobs share it)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# Reporting


def env_line(dtype: torch.dtype = torch.float32, extra: str = "") -> str:
    """torch version, threads, CPUs, the 1-minute load average (other jobs), device and dtype."""
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"env: torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"{os.cpu_count()} CPUs{load}, device cpu, {str(dtype).removeprefix('torch.')}"
            + (f", {extra}" if extra else ""))


def code_line() -> str:
    """The commit, and which files under attractor/ and bench/ differ from it (read-only git)."""
    git = ["git", "--no-optional-locks"]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "attractor", "bench"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "code: not a git checkout"
    changed = sorted({line[3:].strip() for line in dirty if line.strip()})
    return f"code: commit {commit}" + (f", uncommitted: {', '.join(changed)}" if changed else "")


def print_table(title: str, header: list[str], rows: list[list[object]], left: int = 1,
                env: str | None = None) -> None:
    """A Markdown table (pasteable into docs) under its title and one environment line.

    The first `left` columns (text) are left-aligned, the rest (numbers) right-aligned; `env`
    replaces the default `env_line()`.
    """
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *cells)]

    def line(row):
        return "| " + " | ".join(c.ljust(w) if i < left else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(row, widths))) + " |"

    print(f"\n### {title}\n{env or env_line()}\n")
    print(line([str(h) for h in header]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print(line(row))
    sys.stdout.flush()


class SavedTensors:
    """saved_tensors_hooks that remember what autograd saved, to total the distinct storages alive."""

    def __init__(self, exclude: list[torch.Tensor]):
        self.refs: list[weakref.ref] = []
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        self.refs.append(weakref.ref(t))
        return t

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    def live_mb(self) -> float:
        storages = {}
        for ref in self.refs:
            t = ref()
            if t is not None and t.untyped_storage().data_ptr() not in self.exclude:
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(storages.values()) / 2**20


def fused_kernels_available(rows: str) -> bool:
    """Whether attractor.kernels' C++ kernels build here; if not, print which `rows` of the
    benchmark are left out and why (one line)."""
    try:
        build_kernels()
        return True
    except RuntimeError as e:
        print(f"no {rows}: {e}")
        return False


def bench_parser(module: str, doc: str, quick: str) -> argparse.ArgumentParser:
    """The options every sized benchmark takes: --quick (what it shrinks: `quick`) and --threads
    (default 1: a shared machine). `setup(args)` applies them."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{module}", description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see docstring)")
    return parser


def setup(args: argparse.Namespace) -> None:
    """Apply bench_parser's options: the thread count, and the seed every benchmark starts from."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
