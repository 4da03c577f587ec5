"""What the puzzle models share (Sudoku, mazes), and the plain bidirectional baseline.

The puzzle contract extends the LM one (models/base.py):
    model(inputs, labels=None, *, iters=None) -> ModelOutput
`inputs` (B, L) are the dataset's token ids (Sudoku: 0 pad, 1 blank, 2..n+1 digits; mazes: 0 pad,
`# SGo` as 1..5) with L == cfg.seq_len exactly; `labels` (B, L) the solution's ids, IGNORE_INDEX
(-100) where a cell is not scored. Logits (B, L, V) float32; the loss is TRM's stablemax
cross-entropy (below), the mean over scored cells. `model.trace(inputs)` returns the refinements
a person can watch, as `TraceStep`s, the last one's logits equal to the eval forward's.

Stablemax: Wang et al., "Grokking at the Edge of Numerical Stability", arXiv 2501.04697 (2025),
the loss TRM (Jolicoeur-Martineau, "Less is More: Recursive Reasoning with Tiny Networks", arXiv
2510.04871, 2025) and the Attractor paper (arXiv 2605.12466, SPEC 2.2) train puzzles with:
s(x) = x + 1 for x >= 0 and 1 / (1 - x) below, p_i = s(x_i) / sum_j s(x_j). Unlike softmax it
grows linearly, so a confident model cannot push its logits to float overflow.

`PuzzleTransformer`: token embedding -> n_layer bidirectional blocks (attractor.layers.Block,
causal=False) -> RMS norm -> an untied head, one pass. Width 512 / 8 heads / 8 layers is the
"plain 27M transformer" of SPEC 2.2, which the paper reports at 0% exact on Sudoku-Extreme.

Grids of any side (`GridTransformerConfig`, the "grid-transformer" family; reasoner.py's
GridTRMConfig): the maze-sizes task's mazes, s*s tokens of any side s, taken from the input. The
only change is where a cell is: its queries and keys are rotated by its row in one half of each
head and by its column in the other (2-D RoPE, attractor.layers.grid_rotary) instead of by its
index in the row-by-row sequence, whose vertical neighbours sit s apart, so a different offset at
every side. Scores then depend on row and column offsets alone, the same at every side; the
weights and everything else are the fixed-size model's. seq_len is then a cost estimate only.

Dimension letters: B batch, L puzzle length, D width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attractor.layers import Block, block_flops, init_weights, rms_norm
from attractor.models.base import (
    IGNORE_INDEX,
    ModelOutput,
    ParamGroup,
    TiedLM,
    block_groups,
    check_batch,
    check_width,
)
from attractor.schema import check_fields, require


class TraceStep(NamedTuple):
    """One refinement of a solve, as `model.trace` reports it (for a page or a --trace print)."""

    logits: Tensor  # (1, L, V) float32: the answer the model would give at this point
    residual: float | None  # the solver's relative residual here, None where there is no solver
    label: str  # where in the solve, e.g. "step 2, cycle 3, iteration 4"


def stablemax_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean stablemax cross-entropy over the cells whose label is not IGNORE_INDEX.

    Args:
        logits: (..., V) any float dtype; computed in float64 (as TRM does), returned in float32.
        labels: (...) integer ids in [0, V) or IGNORE_INDEX.
    Returns:
        0-d float32: -mean log(s(x_label) / sum_j s(x_j)) over kept cells; 0 with a zero
        gradient when every cell is ignored (a sum over nothing divided by 1, not 0 / 0).
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} must match logits {tuple(logits.shape)} without V")
    x = logits.double()
    s = torch.where(x >= 0, x + 1, 1 / (1 - torch.clamp(x, max=0)))  # clamp: no 1/(1-x) blow-up for x >= 1
    log_p = torch.log(s) - torch.log(s.sum(-1, keepdim=True))  # (..., V)
    keep = labels != IGNORE_INDEX
    picked = log_p.gather(-1, torch.where(keep, labels, 0).unsqueeze(-1)).squeeze(-1)  # (...)
    total = -(picked * keep).sum()
    return (total / keep.sum().clamp(min=1)).float()


def grid_side(n: int) -> int:
    """The side s of a square grid of n = s*s cells; ValueError otherwise."""
    s = math.isqrt(n)
    if s * s != n:
        raise ValueError(f"a grid model takes square grids as s*s tokens, got {n} tokens")
    return s


def check_puzzle_batch(inputs: Tensor, labels: Tensor | None, vocab_size: int, seq_len: int,
                       grid: bool = False) -> int | None:
    """check_batch, and the puzzle length must be exactly seq_len (a puzzle is never cut short);
    grid=True: any square grid of s*s cells instead, and its side s is returned (else None)."""
    if grid:
        check_batch(inputs, labels, vocab_size, inputs.shape[-1] if inputs.dim() else 1)
        return grid_side(inputs.shape[1])
    check_batch(inputs, labels, vocab_size, seq_len)
    if inputs.shape[1] != seq_len:
        raise ValueError(f"puzzles must have length seq_len={seq_len}, got {inputs.shape[1]}")
    return None


class PuzzleModel(TiedLM):
    """Embedding of puzzle tokens and decoding by an untied head (TRM's lm_head), stablemax loss.

    The embedding starts at unit scale, N(0, 1), as TRM's (init std 1/sqrt(D) times sqrt(D)):
    the recursive models add it to unit-RMS states at every cycle.
    """

    def __init__(self, vocab_size: int, d: int):
        super().__init__(vocab_size, d, tied=False)

    def init_embedding(self) -> None:
        """N(0, 1) token embedding; call after init_weights, which sets every matrix to N(0, 0.02)."""
        nn.init.normal_(self.embed.weight, std=1.0)

    def decode(self, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """(B, L, D) -> logits (B, L, V) float32, and the stablemax loss if labels."""
        logits = F.linear(rms_norm(h, fused=self.fused_kernels), self.head.weight).float()
        return logits, None if labels is None else stablemax_cross_entropy(logits, labels)

    def embedding_groups(self) -> list[ParamGroup]:
        """Embedding and head on AdamW, both decayed: TRM applies its weight decay (1.0) to every
        parameter, where the language models leave the lookup table undecayed."""
        return [ParamGroup("embedding", [self.embed.weight, self.head.weight], "adamw")]


@dataclass(frozen=True)
class PuzzleTransformerConfig:
    grid: ClassVar[bool] = False  # square grids of any side with 2-D positions (GridTransformerConfig)
    vocab_size: int = 11  # Sudoku 9x9: pad, blank, 9 digits
    seq_len: int = 81  # puzzle length L (9x9 Sudoku; a maze of side n has n^2)
    d: int = 128  # width
    n_head: int = 4
    n_layer: int = 5  # bidirectional blocks; 5 x 12 d^2 = 0.98M dense at d=128

    def __post_init__(self) -> None:
        check_fields(self)
        check_width(self.d, self.n_head)
        require(min(self.vocab_size, self.seq_len, self.n_layer) >= 1, "vocab_size, seq_len and n_layer must be >= 1")
        require(not self.grid or (self.d // self.n_head) % 4 == 0,
                f"2-D positions need a head size (d / n_head = {self.d // self.n_head}) divisible by 4")


@dataclass(frozen=True)
class GridTransformerConfig(PuzzleTransformerConfig):
    """The puzzle transformer on square grids of any side (mazes of the maze-sizes task): 2-D
    positions (module docstring); seq_len (a 9x9 maze's 81 cells) for cost estimates only."""

    grid: ClassVar[bool] = True
    vocab_size: int = 6  # maze tokens (attractor/data/maze.py: pad and `# SGo`)


class PuzzleTransformer(PuzzleModel):
    """One bidirectional pass over the puzzle; no depth to set (`iters` must stay None)."""

    has_depth = False

    def __init__(self, cfg: PuzzleTransformerConfig):
        super().__init__(cfg.vocab_size, cfg.d)
        self.cfg = cfg
        self.blocks = nn.ModuleList(Block(cfg.d, cfg.n_head, causal=False) for _ in range(cfg.n_layer))
        init_weights(self, n_residual=cfg.n_layer)
        self.init_embedding()

    def forward(self, inputs: Tensor, labels: Tensor | None = None, *, iters: None = None) -> ModelOutput:
        """Logits (B, L, V) and the stablemax loss of (B, L) puzzles (see the module docstring)."""
        side = check_puzzle_batch(inputs, labels, self.cfg.vocab_size, self.cfg.seq_len, self.cfg.grid)
        if iters is not None:
            raise ValueError(f"PuzzleTransformer has a fixed depth of {self.cfg.n_layer} blocks; got iters={iters!r}")
        grid = None if side is None else (0, side)  # no prefix
        h = self.embed(inputs)  # (B, L, D)
        for block in self.blocks:
            h = block(h, grid=grid)
        logits, loss = self.decode(h, labels)
        return ModelOutput(logits, loss)

    @torch.no_grad()
    def trace(self, inputs: Tensor) -> list[TraceStep]:
        """The single pass as one TraceStep, in eval mode: inputs (1, L)."""
        if inputs.dim() != 2 or inputs.shape[0] != 1:
            raise ValueError(f"trace takes one puzzle, (1, L); got shape {tuple(inputs.shape)}")
        was_training = self.training
        self.eval()
        try:
            return [TraceStep(self(inputs).logits, None, "single pass")]
        finally:
            self.train(was_training)

    def param_groups(self) -> list[ParamGroup]:
        """Embedding and head (AdamW, decayed); the blocks' matrices, and their vectors (none
        here, the blocks being ungated) without decay."""
        return [*self.embedding_groups(), *block_groups("blocks", self.blocks)]

    def flops_per_token(self, out: ModelOutput | float | None = None) -> float:
        """Forward FLOPs per cell: blocks plus the head (the same for every forward)."""
        c = self.cfg
        return c.n_layer * block_flops(c.d, c.seq_len, causal=False) + 2 * c.d * c.vocab_size
