"""AttractorLM: a backbone proposes output embeddings; an attractor refines them to a fixed point.

Fein-Ashley and Rashidinejad, "Solve the Loop: Attractor Models for Language and Reasoning",
arXiv 2605.12466 (2026). Design choices:
- tied embedding E -> n_backbone plain blocks -> proposal c (B, T, D), already decodable;
- attractor H: n_attractor gated blocks, weight-tied across iterations, gates sigmoid(raw) *
  gamma_max starting at gate_init; output projections start non-zero (else f is constant);
- f(y; c) = H(y + c) - y (additive injection of c at every step), solved from y0 = c;
- decode norm(y*) with the tied unembedding;
- one problem per token (`solve.stop="token"`): each position has its own residual, solver state and
  stopping, and stops only once every earlier position has (prefix stopping), so adaptive depth
  keeps the model exactly causal. `solve.stop="sample"` is the paper's per-sequence rule.

Dimension letters: B batch, T sequence, D width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from attractor.models.base import ParamGroup, block_groups
from attractor.models.equilibrium import Equilibrium, EquilibriumLM, EquilibriumLMConfig, EquilibriumStack
from attractor.schema import require


@dataclass(frozen=True)
class AttractorLMConfig(EquilibriumLMConfig):  # plus the LM shape and the equilibrium fields
    n_backbone: int = 4  # plain blocks proposing c
    n_attractor: int = 1  # gated blocks in H, reused at every iteration

    def __post_init__(self) -> None:
        super().__post_init__()
        require(min(self.n_backbone, self.n_attractor) >= 1, "n_backbone and n_attractor must be >= 1")


class AttractorLM(EquilibriumLM):
    """The Attractor language model of the module docstring, built from an AttractorLMConfig.

    AttractorLM and DEQLM share the forward and the solve (EquilibriumLM) and differ in the start
    (the proposal c, or zero), the head (tied, or by default a separate one) and so in what
    iters=0 decodes. They stay two classes, not one with a start option, because their parts are
    named for what they are (backbone and attractor here, prelude and deq there), and those names
    are their checkpoints' state_dict keys, their optimiser groups and their configs' fields
    (n_backbone >= 1, n_prelude >= 0): one class would choose its attribute names by a flag.
    """

    backbone: nn.ModuleList  # n_backbone plain blocks proposing c (the lead)
    attractor: EquilibriumStack  # H (the stack)

    def __init__(self, cfg: AttractorLMConfig):
        super().__init__(cfg, lead=("backbone", cfg.n_backbone), stack=("attractor", cfg.n_attractor))

    def propose(self, idx: Tensor) -> Tensor:
        """The backbone's proposal c: (B, T) tokens -> (B, T, D)."""
        return self.injection(idx)

    def equilibrium(self, idx: Tensor) -> Equilibrium:
        """The problem the forward solves on tokens idx (B, T): the fixed point of
        f(y) = H(y + c) - y from y0 = c, the proposal (B, T, D); the solve config is cfg.solve."""
        c = self.propose(idx)
        return self.attractor.equilibrium(c, c)  # injection c, start c

    def start(self, x: Tensor) -> Tensor:
        """The solve starts at the proposal c, the injection itself."""
        return x

    def param_groups(self) -> list[ParamGroup]:
        """Embedding (AdamW, no decay); backbone matrices (Muon); the attractor's matrices and
        gates (AdamW at lr_mult, gates without decay), as in SPEC 2.1."""
        return [*self.embedding_groups(), *block_groups("backbone", self.backbone),
                *block_groups("attractor", self.attractor, "adamw", self.cfg.lr_mult)]
