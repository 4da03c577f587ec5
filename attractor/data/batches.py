"""Batches of (idx, targets) windows from a 1-D token stream: random for training, fixed for
validation.

Training batches are a pure function of (seed, step): step n's global batch of window starts is
drawn from numpy's generator seeded with SeedSequence([seed, n]). So the position is the whole
state ({"seed": s, "step": n}), resuming repeats the uninterrupted run exactly, and under DDP
rank r of w takes rows r::w of the same global batch: two processes with batch B/2 each see
exactly the rows one process with batch B sees, whatever the number of processes at resume.
"""

from __future__ import annotations

import numpy as np
import torch

from attractor.errors import ConfigError, check_int


def _as_numpy(tokens) -> np.ndarray:
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.cpu().numpy()
    tokens = np.asarray(tokens) if not isinstance(tokens, np.ndarray) else tokens
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ConfigError(f"tokens must be a 1-D integer stream, got shape {tokens.shape} of {tokens.dtype}")
    return tokens


def _check_long_enough(tokens: np.ndarray, seq_len: int, what: str) -> None:
    if len(tokens) < seq_len + 1:
        raise ConfigError(f"the {what} stream has {len(tokens)} tokens, too few for one window of "
                          f"seq_len + 1 = {seq_len + 1}; use more text or a shorter seq_len")


def _windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)   # (b, T + 1)
    rows = torch.from_numpy(rows)
    return rows[:, :-1], rows[:, 1:]                                           # (b, T) each


class SteppedBatches:
    """Endless training batches whose global batch at step n is a pure function of (seed, n).

    What every task's training batches share (TokenBatches here, the puzzle batches in
    attractor/tasks/puzzles.py): rank r of w takes rows r::w of the global batch, and the position
    {"seed", "step"} is the whole state, so a resume repeats the uninterrupted run. A subclass
    says which rows make step n's global batch (`global_rows`) and how to read them (`fetch`).
    """

    def __init__(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.seed = check_int(seed, "seed", minimum=0)
        self.world_size = check_int(world_size, "world_size", minimum=1)
        self.rank = check_int(rank, "rank", minimum=0)
        if self.rank >= self.world_size:
            raise ConfigError(f"rank={rank} must be below world_size={world_size}")
        if self.batch_size % self.world_size:
            raise ConfigError(f"batch_size={batch_size} (global) must be divisible by world_size={world_size}")
        self.step = 0

    def global_rows(self, step: int) -> np.ndarray:
        """(batch_size,) what step `step`'s global batch reads, every rank's rows."""
        raise NotImplementedError

    def fetch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The (inputs, targets) tensors of `rows` (this rank's share of a global batch)."""
        raise NotImplementedError

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.global_rows(self.step)[self.rank::self.world_size]
        self.step += 1
        return self.fetch(rows)

    def state_dict(self) -> dict:
        """JSON-safe position: the batches after load_state_dict(this) are the ones that follow now."""
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        name = type(self).__name__
        if not isinstance(state, dict) or set(state) != {"seed", "step"}:
            raise ConfigError(f"{name} state must be {{'seed', 'step'}}, got {state!r}")
        if state["seed"] != self.seed:
            raise ConfigError(f"{name} state has seed {state['seed']!r}, but these batches use seed {self.seed}")
        self.step = check_int(state["step"], f"{name} step", minimum=0)


class TokenBatches(SteppedBatches):
    """Endless random windows of seq_len + 1 tokens: next(batches) -> (idx, targets).

    Args:
        tokens: 1-D integer stream (np.memmap from prepare(), an array or a tensor).
        batch_size: the GLOBAL batch; each rank gets batch_size // world_size rows.
        seq_len: T, the length of idx and targets.
        seed: with the step count, fixes every batch.
        rank, world_size: this process's share, rows rank::world_size of the global batch.
    Yields:
        idx, targets: (batch_size // world_size, T) int64, with targets[:, t] = idx[:, t + 1]'s
        token in the stream, i.e. targets is idx shifted left by one.
    """

    def __init__(self, tokens, batch_size: int, seq_len: int, seed: int, rank: int = 0, world_size: int = 1):
        super().__init__(batch_size, seed, rank, world_size)
        self.tokens = _as_numpy(tokens)
        self.seq_len = check_int(seq_len, "seq_len", minimum=1)
        _check_long_enough(self.tokens, self.seq_len, "training")

    def global_rows(self, step: int) -> np.ndarray:
        """(batch_size,) window starts of the global batch at `step`."""
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)

    def fetch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return _windows(self.tokens, rows, self.seq_len)


def val_batches(tokens, batch_size: int, seq_len: int, max_batches: int | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping windows covering the stream in order, the same on every call.

    Window i is tokens[i*T : i*T + T + 1]; consecutive windows share one token (the last target
    of one is the first input of the next), so every token but the first is predicted once.
    Batches hold batch_size windows, the last one possibly fewer: weight a batch's mean loss by
    its rows (or sum losses) for an exact mean. `max_batches` keeps the first ones.
    """
    tokens = _as_numpy(tokens)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    seq_len = check_int(seq_len, "seq_len", minimum=1)
    if max_batches is not None:
        max_batches = check_int(max_batches, "max_batches", minimum=1)
    _check_long_enough(tokens, seq_len, "validation")
    starts = np.arange((len(tokens) - 1) // seq_len) * seq_len
    out = []
    for i in range(0, len(starts), batch_size):
        if max_batches is not None and len(out) == max_batches:
            break
        out.append(_windows(tokens, starts[i:i + batch_size], seq_len))
    return out
