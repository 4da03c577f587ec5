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

from attractor.models.base import ParamGroup, block_groups
from attractor.models.equilibrium import Equilibrium, EquilibriumLM, EquilibriumLMConfig, EquilibriumStack
from attractor.schema import require


@dataclass(frozen=True)
class DEQConfig(EquilibriumLMConfig):  # plus the LM shape and the equilibrium fields
    n_prelude: int = 4  # plain blocks giving the injected input x (0: x is the embedding)
    n_deq: int = 1  # gated blocks in H, reused at every iteration
    tied_head: bool = False  # decode with the embedding (True) or a separate head (the ablation)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_deq >= 1, f"n_deq={self.n_deq} must be >= 1")
        require(self.n_prelude >= 0, f"n_prelude={self.n_prelude} must be >= 0")


class DEQLM(EquilibriumLM):
    """The DEQ ablation of the module docstring, built from a DEQConfig. Why it is not an
    AttractorLM with a zero start: see AttractorLM."""

    prelude: nn.ModuleList  # n_prelude plain blocks giving x (the lead)
    deq: EquilibriumStack  # H (the stack)

    def __init__(self, cfg: DEQConfig):
        super().__init__(cfg, lead=("prelude", cfg.n_prelude), stack=("deq", cfg.n_deq), tied=cfg.tied_head)

    def inject(self, idx: Tensor) -> Tensor:
        """The injected input x: (B, T) tokens -> (B, T, D)."""
        return self.injection(idx)

    def equilibrium(self, idx: Tensor) -> Equilibrium:
        """The problem the forward solves on tokens idx (B, T): the fixed point z* of
        f(z) = H(z + x) - z from z0 = 0, x the injected input (B, T, D); the solve config is cfg.solve.
        iters=0 decodes the zero state (uniform logits): defined, but carries no information."""
        x = self.inject(idx)
        return self.deq.equilibrium(x, torch.zeros_like(x))  # the ablation's zero start

    def start(self, x: Tensor) -> Tensor:
        """The solve starts at zero (the ablation's zero init)."""
        return torch.zeros_like(x)

    def param_groups(self) -> list[ParamGroup]:
        """Embedding and head (AdamW); prelude matrices (Muon); the equilibrium stack's matrices
        and gates (AdamW at lr_mult, as the attractor's)."""
        return [*self.embedding_groups(), *block_groups("prelude", self.prelude),
                *block_groups("equilibrium", self.deq, "adamw", self.cfg.lr_mult)]
