"""What every language model here shares: the output type, input checks, the tied embedding and
head, the loss, parameter counts and optimiser groups.

The contract every family keeps, so one trainer and one evaluation serve them all:
    model(idx, targets=None, *, iters=None) -> ModelOutput
`iters` is the depth knob of the recurrent families (None: their own rule, adaptive or sampled;
k: exactly k evaluations or loops); `TransformerLM` has no depth and refuses one. Targets use
PyTorch's ignore value -100; `model.param_groups()` labels every parameter once.

Dense parameters are those that take part in matrix multiplies (blocks, injections, an untied
head); the embedding table is a lookup and is left out, even when the unembedding is tied to it.
Comparisons across families match dense parameters (SPEC 2.1: the published baselines counted
large lookup tables, so the published Attractor had about twice their dense parameters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attractor.fixedpoint import FixedPointInfo
from attractor.kernels import FusedPath
from attractor.layers import rms_norm
from attractor.schema import check_fields, require

IGNORE_INDEX = -100  # targets with this value take no part in the loss (PyTorch's, HF's default)


@dataclass
class ModelOutput:
    """What a forward returns, the same fields for every family.

    Attributes:
        logits: (B, T, V) float32.
        loss: scalar mean cross-entropy over the targets that are not IGNORE_INDEX (0 with zero
            gradient when all are ignored); None without targets.
        depth: (B,) int64, the depth each sample got: solver steps of its slowest token (the
            equilibrium LMs: `info.depth`'s maximum over the sequence), loops it ran (LoopedLM),
            applications of the inner map in the last supervision step, summed over the cycles
            (TRM, AttractorReasoner); None for the transformers. At `iters=k` it is k
            (h_cycles x k for TRM and the split AttractorReasoner).
        n_evals: evaluations of the recurrent map (or loops) run over the batch; 0 for the
            transformer. Every evaluation costs the whole batch, so this sets the realised FLOPs.
        converged: 0-d float tensor, fraction of tokens whose residual fell below tol (adaptive
            solves only; None otherwise). A tensor, not a float: reading it syncs the device.
        info: the solve's per-token (or per-sequence) FixedPointInfo, None without a solve
            (its `depth` is the steps each unit took).
        metrics: named 0-d tensors the trainer logs as they are (the recursive puzzle models put
            TRM's training metrics here); empty for most families.
    """

    logits: Tensor
    loss: Tensor | None = None
    depth: Tensor | None = None
    n_evals: int = 0
    converged: Tensor | None = None
    info: FixedPointInfo | None = None
    metrics: dict[str, Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class LMShape:
    """The fields every language model's config starts with; a family's config extends it."""

    vocab_size: int = 256  # byte-level by default
    seq_len: int = 256  # longest sequence the model accepts
    d: int = 128  # width
    n_head: int = 4

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)  # EquilibriumConfig's, where a family has both
        if parent is not None:
            parent()
        check_fields(self)
        check_width(self.d, self.n_head)
        require(min(self.vocab_size, self.seq_len) >= 1, "vocab_size and seq_len must be >= 1")


@dataclass
class ParamGroup:
    """Parameters an optimiser should treat alike, labelled by the model that owns them.

    The trainer maps `optimizer` to an optimiser, multiplies its base learning rate by `lr_mult`
    and its base weight decay by `wd_mult`, and never matches parameter names itself.
    """

    name: str  # what the parameters are: "matrices", "embedding", "gates", "attractor", ...
    params: list[nn.Parameter]
    optimizer: Literal["muon", "adamw"]  # Muon only for 2-D hidden matrices
    lr_mult: float = 1.0
    wd_mult: float = 1.0


def check_batch(idx: Tensor, targets: Tensor | None, vocab_size: int, seq_len: int) -> None:
    """Raise ValueError for token ids or targets a model cannot take.

    idx: (B, T) integer ids in [0, vocab_size), 1 <= T <= seq_len, B >= 1; targets: None or
    (B, T) integer ids in [0, vocab_size) or IGNORE_INDEX. One device sync for both range checks.
    """
    if idx.dim() != 2:
        raise ValueError(f"tokens must be (B, T), got shape {tuple(idx.shape)}")
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor, got {idx.dtype}")
    if idx.shape[0] == 0 or idx.shape[1] == 0:
        raise ValueError(f"need at least one sequence of at least one token, got shape {tuple(idx.shape)}")
    if idx.shape[1] > seq_len:
        raise ValueError(f"sequence length {idx.shape[1]} exceeds the model's seq_len {seq_len}")
    bad = ((idx < 0) | (idx >= vocab_size)).any()
    if targets is not None:
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the tokens' shape {tuple(idx.shape)}, got {tuple(targets.shape)}")
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(f"targets must be an integer tensor, got {targets.dtype}")
        bad_targets = ((targets < 0) & (targets != IGNORE_INDEX)) | (targets >= vocab_size)
        bad = bad | bad_targets.any()
    if bool(bad):
        if bool(((idx < 0) | (idx >= vocab_size)).any()):
            raise ValueError(f"token ids must be in [0, {vocab_size}), got [{int(idx.min())}, {int(idx.max())}]")
        wrong = targets[bad_targets].unique()[:5].tolist()
        raise ValueError(f"targets must be in [0, {vocab_size}) or {IGNORE_INDEX} (ignored), got {wrong}")


def check_width(d: int, n_head: int) -> None:
    """d must split into n_head heads of even size (rotary embeddings rotate pairs)."""
    require(d >= 1 and n_head >= 1 and d % n_head == 0 and (d // n_head) % 2 == 0,
            f"d={d} must split into n_head={n_head} heads of even size")


def check_depth(iters, family: str) -> None:
    """iters must be None or an int >= 0 (bools and floats are refused)."""
    if iters is not None and (isinstance(iters, bool) or not isinstance(iters, int) or iters < 0):
        raise ValueError(f"{family}: iters={iters!r} must be None or an int >= 0")


class TiedLM(FusedPath, nn.Module):
    """Token embedding E, and decoding by norm(h) @ E^T (or an untied head). Every model is one:
    its norms take the fused kernels when attractor.kernels.use_fused_kernels set its flag."""

    has_depth = True  # takes iters=k; the plain transformer sets False

    def can_cache(self, iters: int | None) -> bool:
        """Whether forward(..., iters=iters, cache=KVCache) serves this model (attractor.kvcache):
        a family that supports a cached forward says at which depths."""
        return False

    def __init__(self, vocab_size: int, d: int, tied: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d)
        self.head = None if tied else nn.Linear(d, vocab_size, bias=False)

    def decode(self, h: Tensor, targets: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(B, T, D) -> logits (B, T, V) in float32, and the loss if targets (see ModelOutput)."""
        weight = self.embed.weight if self.head is None else self.head.weight
        logits = F.linear(rms_norm(h, fused=self.fused_kernels), weight).float()
        if targets is None:
            return logits, None
        # Sum over kept targets, divided by at least 1: an all-ignored batch gives 0 (with a zero
        # gradient) where the mean reduction would give 0 / 0 = NaN.
        total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                reduction="sum")
        return logits, total / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def parameter_counts(self) -> dict[str, int]:
        """{'total': all parameters, 'dense': all but the embedding lookup table}."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "dense": total - self.embed.weight.numel()}

    def embedding_groups(self) -> list[ParamGroup]:
        """The embedding (and an untied head): AdamW, no weight decay on the lookup table."""
        groups = [ParamGroup("embedding", [self.embed.weight], "adamw", wd_mult=0.0)]
        if self.head is not None:
            groups.append(ParamGroup("head", [self.head.weight], "adamw"))
        return groups


def block_groups(name: str, blocks: nn.Module, optimizer: Literal["muon", "adamw"] = "muon",
                 lr_mult: float = 1.0) -> list[ParamGroup]:
    """A stack of blocks split into its 2-D matrices and its gates (AdamW, no weight decay)."""
    matrices = [p for p in blocks.parameters() if p.dim() == 2]
    vectors = [p for p in blocks.parameters() if p.dim() != 2]
    groups = [ParamGroup(name, matrices, optimizer, lr_mult=lr_mult)] if matrices else []
    if vectors:
        groups.append(ParamGroup(f"{name}.gates", vectors, "adamw", lr_mult=lr_mult, wd_mult=0.0))
    return groups
