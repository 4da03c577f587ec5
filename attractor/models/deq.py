"""DEQLM: the Attractor paper's DEQ ablation, a hidden-state equilibrium solved from zero.

Fein-Ashley and Rashidinejad, arXiv 2605.12466 (2026), Table 3: "DEQ (hidden-state equilibrium,
zero init, separate head)" and "+ tied unembedding", after Bai, Kolter and Koltun, "Deep
Equilibrium Models", arXiv 1909.01377 (2019). Design choices:
- tied embedding E -> n_prelude plain blocks -> x (B, T, D), the injected input (n_prelude = 0
  injects the embedding itself, the classic single-stack DEQ);
- H: n_deq gated blocks (gates as in AttractorLM), weight-tied across iterations;
- the equilibrium z* = f(z*) of f(z) = H(z + x) - z = x + R(z + x), where R(h) = H(h) - h is
  the stack's residual branches: the attractor's map with x for c. (z = H(z + x) itself would
  ask R(z + x) = -x of a map whose Jacobian is I + dR: no contraction, nothing to iterate.)
  Solved from z0 = 0, the ablation's zero init, not from x;
- z* is decoded by its own head: an untied Linear(D, V) by default (the "separate head"),
  or the embedding with tied_head=True;
- solver, gradient mode and stopping as in AttractorLM: one problem per token with prefix
  stopping (`stop="token"`) keeps adaptive depth exactly causal; `stop="sample"` per sequence.

Dimension letters: B batch, T sequence, D width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attractor.layers import Block, block_flops, init_weights
from attractor.models.base import ModelOutput, ParamGroup, TiedLM, block_groups, check_batch, check_depth, check_width
from attractor.models.equilibrium import Equilibrium, EquilibriumConfig, EquilibriumStack, solve_equilibrium
from attractor.schema import require


@dataclass(frozen=True)
class DEQConfig(EquilibriumConfig):  # plus gate_init, gamma_max, lr_mult, solve, jac_penalty
    vocab_size: int = 256  # byte-level by default
    seq_len: int = 256  # longest sequence the model accepts
    d: int = 128  # width
    n_head: int = 4
    n_prelude: int = 4  # plain blocks giving the injected input x (0: x is the embedding)
    n_deq: int = 1  # gated blocks in H, reused at every iteration
    tied_head: bool = False  # decode with the embedding (True) or a separate head (the ablation)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_width(self.d, self.n_head)
        require(min(self.vocab_size, self.seq_len, self.n_deq) >= 1, "vocab_size, seq_len and n_deq must be >= 1")
        require(self.n_prelude >= 0, f"n_prelude={self.n_prelude} must be >= 0")


class DEQLM(TiedLM):
    """The DEQ ablation of the module docstring, built from a DEQConfig. Why it is not an
    AttractorLM with a zero start: see AttractorLM."""

    def __init__(self, cfg: DEQConfig):
        super().__init__(cfg.vocab_size, cfg.d, tied=cfg.tied_head)
        self.cfg = cfg
        self.prelude = nn.ModuleList(Block(cfg.d, cfg.n_head) for _ in range(cfg.n_prelude))
        self.deq = EquilibriumStack(cfg.d, cfg.n_head, cfg.n_deq, cfg)
        init_weights(self, n_residual=cfg.n_prelude + cfg.n_deq)

    def inject(self, idx: Tensor) -> Tensor:
        """The injected input x: (B, T) tokens -> (B, T, D)."""
        h = self.embed(idx)
        for block in self.prelude:
            h = block(h)
        return h

    def equilibrium(self, idx: Tensor) -> Equilibrium:
        """The problem the forward solves on tokens idx (B, T): the fixed point z* of
        f(z) = H(z + x) - z from z0 = 0, x the injected input (B, T, D); the solve config is cfg.solve."""
        x = self.inject(idx)
        return self.deq.equilibrium(x, torch.zeros_like(x))  # the ablation's zero start

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, iters: int | None = None) -> ModelOutput:
        """Decode the equilibrium (iters=None), or exactly `iters` plain steps from z = 0.

        Args:
            idx: (B, T) token ids; targets: (B, T) next-token ids, -100 to ignore.
            iters: None solves to tol (adaptive); k >= 0 applies f exactly k times from z = 0,
                with the configured gradient mode attached at the result. iters=0 decodes the
                zero state (uniform logits): defined, but carries no information.
        Returns:
            ModelOutput: logits (B, T, V), loss, depth, n_evals, converged, info.
        """
        check_batch(idx, targets, self.cfg.vocab_size, self.cfg.seq_len)
        check_depth(iters, "DEQLM")
        problem = self.equilibrium(idx)
        z, report = solve_equilibrium(problem, iters)
        logits, loss = self.decode(z, targets)
        loss = self.deq.regularise(loss, problem.f, z)  # + the Jacobian penalty, if configured
        return ModelOutput(logits, loss, **report._asdict())

    def param_groups(self) -> list[ParamGroup]:
        """Embedding and head (AdamW); prelude matrices (Muon); the equilibrium stack's matrices
        and gates (AdamW at lr_mult, as the attractor's)."""
        return [*self.embedding_groups(), *block_groups("prelude", self.prelude),
                *block_groups("equilibrium", self.deq, "adamw", self.cfg.lr_mult)]

    def flops_per_token(self, out: ModelOutput | float | None = None) -> float:
        """Forward FLOPs per token: of a forward's evaluations (its ModelOutput, or a number of
        evaluations of f), or of the worst case, max_iter + 1 evaluations (None)."""
        c = self.cfg
        prelude = c.n_prelude * block_flops(c.d, c.seq_len) + 2 * c.d * c.vocab_size
        n_evals = out.n_evals if isinstance(out, ModelOutput) else out
        return prelude + self.deq.flops_per_token(c.d, c.seq_len, n_evals)
