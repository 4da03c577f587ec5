"""What every language model here shares: the output type, the tied embedding and head, counts.

Dense parameters are those that take part in matrix multiplies (blocks, injections, an untied
head); the embedding table is a lookup and is left out, even when the unembedding is tied to it.
Comparisons across families match dense parameters (SPEC 2.1: the published baselines counted
large lookup tables, so the published Attractor had about twice their dense parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import Tensor, nn

from attractor.layers import rms_norm


@dataclass
class ModelOutput:
    """logits (B, T, V); loss (scalar) when targets were given; solver statistics, if any.

    stats keys (AttractorLM, DEQLM): iters (B,) long, steps of the slowest token per sample;
    residual (B,) worst token residual; token_converged (float) fraction of tokens below tol;
    n_evals, evaluations of f over the batch; info, the raw FixedPointInfo.
    LoopedLM: loops (B,) long, the recurrence depth each sequence ran.
    """

    logits: Tensor
    loss: Tensor | None = None
    stats: dict = field(default_factory=dict)


class TiedLM(nn.Module):
    """Token embedding E, and decoding by norm(h) @ E^T (or an untied head)."""

    def __init__(self, vocab_size: int, d: int, tied: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d)
        self.head = None if tied else nn.Linear(d, vocab_size, bias=False)

    def decode(self, h: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(B, T, D) -> logits (B, T, V) in float32, and the mean cross-entropy if targets."""
        weight = self.embed.weight if self.head is None else self.head.weight
        logits = F.linear(rms_norm(h), weight).float()
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1)

    def parameter_counts(self) -> dict[str, int]:
        """{'total': all parameters, 'dense': all but the embedding lookup table}."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "dense": total - self.embed.weight.numel()}


def check_tokens(idx: Tensor, vocab_size: int, seq_len: int) -> None:
    if idx.dim() != 2:
        raise ValueError(f"tokens must be (B, T), got shape {tuple(idx.shape)}")
    if idx.shape[1] > seq_len:
        raise ValueError(f"sequence length {idx.shape[1]} exceeds the model's seq_len {seq_len}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got [{int(idx.min())}, {int(idx.max())}]")
