"""An equilibrium map made of the attention Block, for the growing tasks: can the paper's block,
given a locality bias, answer a longer input by iterating longer, as the local map does?

    model = AttentionEquilibrium(AttentionMapConfig(window=1, qk_gain=True))
    out = model(bits)                                     # bits (B, n) int64, any n >= 1
    out.logits                                            # (B, n, 2) float32
    out.depth                                             # (B,) solver steps

The map is the attractor's, f(z; x) = H(z + e) - z with e = embed(x) injected at every iteration
and H a stack of n_layer gated, bidirectional Blocks (attractor/layers.py: pre-norm, RoPE,
QK-norm, ReLU^2 MLP), weight-tied across iterations; a linear head reads the fixed point. RoPE is
relative, so nothing in the map depends on the length. The Block's options, all off by default
(the default map is the plain block):

    window    attention restricted to keys within w positions, |i - j| <= w (a mask)
    qk_gain   a learnable per-head gain exp(s) on the normed queries (s starts at 0): without it
              QK-norm caps a logit at sqrt(head size), too flat to attend to one neighbour
    conv      a depthwise convolution of width 3 (zero padding) as a residual branch before
              attention: a local path that needs no attention at all

and one of the map's own: `bounded` squashes the map's output, f(z; x) = tanh(H(z + e) - z), so
that the state stays in [-1, 1] as the local map's does (off: the attractor's unbounded map).

Everything else is LocalEquilibrium's (attractor/models/local.py), inherited rather than copied:
the solve (`solve_equilibrium` with the step cap max(solve.max_iter, ceil(max_iter_per_position
* n))), the zero or random start, the looped baseline's fixed depth (loops_per_position), the
forward, the loss and `trace`. What the variants measured is docs/results-reasoning.md,
"Attention maps on parity": without `bounded` every variant stopped converging in training;
bounded, with window=1 (and the conv branch for a solve that converges), trained at 16 bits it is
exact at 128 and 256 (the preset `parity-attention-local`, all four on). Dimension letters:
B batch, n length, D width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from attractor.layers import Block, init_weights
from attractor.models.base import ModelOutput, ParamGroup
from attractor.models.equilibrium import SolveConfig
from attractor.models.local import LocalEquilibrium, check_recipe, local_solve
from attractor.schema import check_fields, require


@dataclass(frozen=True)
class AttentionMapConfig:
    # What LocalEquilibrium's inherited methods read of a config besides the fields below:
    dims: ClassVar[int] = 1  # strings, not grids
    layers: ClassVar[None] = None  # one weight-tied map (never local.py's untied feed-forward stack)
    vocab_size: int = 2  # input tokens, and answers (parity: bits in, parities out)
    seq_len: int = 16  # a length for cost estimates only: the model takes any length
    d: int = 32  # width of the state and the blocks (12 d^2 weights a block: 12.3k at 32)
    n_head: int = 2  # head size d / n_head = 16: QK-norm caps a logit at sqrt(16) = 4 without qk_gain
    n_layer: int = 1  # gated blocks in H, applied in turn at every iteration
    gate_init: float = 0.5  # the residual gates' start, sigmoid(raw) in (0, 1) (the attractor's)
    window: int | None = None  # attend only to keys within this many positions; None: all
    qk_gain: bool = False  # a learnable per-head gain on the attention logits
    conv: bool = False  # a depthwise width-3 convolution branch in each block
    bounded: bool = False  # f = tanh(H(z + e) - z): the state in [-1, 1], as the local map's
    solve: SolveConfig = field(default_factory=local_solve)  # Anderson to 1e-3 per string, phantom k=5
    # The step cap grows with the length n: max(solve.max_iter, ceil(this * n)); 0: solve.max_iter.
    max_iter_per_position: float = 3.0
    start: Literal["zero", "random"] = "zero"  # z0: zeros, or uniform in [-1, 1]
    start_seed: int = 0  # the random start's generator in evaluation (training uses torch's)
    # The looped baseline: exactly ceil(this * n) evaluations of the map instead of a solve; None: solve.
    loops_per_position: float | None = None
    jac_penalty: float = 0.0  # the training options of LocalConfig (attractor/models/local.py)
    progressive: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.vocab_size >= 2 and self.seq_len >= 1, "need vocab_size >= 2 and seq_len >= 1")
        require(self.d >= 2 and self.n_head >= 1 and self.d % (2 * self.n_head) == 0,
                f"d={self.d} must be a multiple of 2 * n_head={self.n_head} (an even head size for RoPE)")
        require(self.n_layer >= 1, f"n_layer={self.n_layer} must be >= 1")
        require(0.0 < self.gate_init < 1.0, f"gate_init={self.gate_init} must be in (0, 1)")
        require(self.window is None or self.window >= 1, f"window={self.window} must be >= 1 or None")
        require(self.max_iter_per_position >= 0, f"max_iter_per_position={self.max_iter_per_position} must be >= 0")
        require(self.start_seed >= 0, f"start_seed={self.start_seed} must be >= 0")
        require(self.loops_per_position is None or self.loops_per_position > 0,
                f"loops_per_position={self.loops_per_position} must be > 0 or None")
        check_recipe(self)


class AttentionEquilibrium(LocalEquilibrium):
    """The fixed point of f(z; x) = H(z + embed(x)) - z, H the attention blocks (module docstring).

    forward(idx, targets=None, *, iters=None) -> ModelOutput, LocalEquilibrium's: idx (B, n)
    token ids of any length n >= 1; iters=None solves to tol (or runs the looped baseline's
    fixed depth), iters=k applies the map k times.
    """

    def __init__(self, cfg: AttentionMapConfig):
        nn.Module.__init__(self)  # not LocalEquilibrium's: its parts are convolutions
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d)
        self.blocks = nn.ModuleList(
            Block(cfg.d, cfg.n_head, causal=False, gate_init=cfg.gate_init, window=cfg.window,
                  qk_gain=cfg.qk_gain, conv=cfg.conv)
            for _ in range(cfg.n_layer))
        self.head = nn.Linear(cfg.d, cfg.vocab_size)
        init_weights(self.blocks, n_residual=cfg.n_layer)

    def map(self, idx: Tensor):
        """f(z) = H(z + e) - z (tanh of it if bounded) for the tokens idx (B, n), e = embed(idx); z (B, n, D)."""
        e = self.embed(idx)  # (B, n, D)

        def f(z: Tensor) -> Tensor:
            h = z + e
            for block in self.blocks:
                h = block(h)
            return torch.tanh(h - z) if self.cfg.bounded else h - z

        return f

    def param_groups(self) -> list[ParamGroup]:
        """All on AdamW: the embedding, the gates, the QK gains and the head's bias without weight decay."""
        vectors = [p for p in self.blocks.parameters() if p.dim() < 2]
        matrices = [p for p in self.blocks.parameters() if p.dim() >= 2]
        return [ParamGroup("embedding", [self.embed.weight], "adamw", wd_mult=0.0),
                ParamGroup("map", matrices + [self.head.weight], "adamw"),
                ParamGroup("map.vectors", vectors + [self.head.bias], "adamw", wd_mult=0.0)]

    def flops_per_token(self, out: ModelOutput | float | None = None) -> float:
        """Forward FLOPs per position at length seq_len: the head, plus each evaluation of the map
        (of a forward's ModelOutput, a number of evaluations, or the worst case when None)."""
        c = self.cfg
        n_evals = out.n_evals if isinstance(out, ModelOutput) else out
        if n_evals is None:
            n_evals = self.loops(c.seq_len) or self.max_iter(c.seq_len) + 1
        keys = c.seq_len if c.window is None else min(c.seq_len, 2 * c.window + 1)
        per_block = 2 * 12 * c.d * c.d + 4 * keys * c.d + (2 * 3 * c.d if c.conv else 0)
        return 2 * c.d * c.vocab_size + n_evals * c.n_layer * per_block
