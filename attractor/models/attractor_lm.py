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

from attractor.layers import Block, block_flops, init_weights
from attractor.models.base import ModelOutput, ParamGroup, TiedLM, block_groups, check_batch, check_depth, check_width
from attractor.models.equilibrium import Equilibrium, EquilibriumConfig, EquilibriumStack, solve_equilibrium
from attractor.schema import require


@dataclass(frozen=True)
class AttractorLMConfig(EquilibriumConfig):  # plus gate_init, gamma_max, lr_mult, solve, jac_penalty
    vocab_size: int = 256  # byte-level by default
    seq_len: int = 256  # longest sequence the model accepts
    d: int = 128  # width
    n_head: int = 4
    n_backbone: int = 4  # plain blocks proposing c
    n_attractor: int = 1  # gated blocks in H, reused at every iteration

    def __post_init__(self) -> None:
        super().__post_init__()
        check_width(self.d, self.n_head)
        require(min(self.vocab_size, self.seq_len, self.n_backbone, self.n_attractor) >= 1,
                "vocab_size, seq_len, n_backbone and n_attractor must be >= 1")


class AttractorLM(TiedLM):
    """The Attractor language model of the module docstring, built from an AttractorLMConfig.

    AttractorLM and DEQLM share the whole solve (EquilibriumStack, `solve_equilibrium`) and differ
    in the start (the proposal c, or zero), the head (tied, or by default a separate one) and so in
    what iters=0 decodes. They stay two classes, not one with a start option, because their parts
    are named for what they are (backbone and attractor here, prelude and deq there), and those
    names are their checkpoints' state_dict keys, their optimiser groups and their configs' fields
    (n_backbone >= 1, n_prelude >= 0): one class would choose its attribute names by a flag. What
    their forwards repeat is the few lines around `solve_equilibrium`.
    """

    def __init__(self, cfg: AttractorLMConfig):
        super().__init__(cfg.vocab_size, cfg.d)
        self.cfg = cfg
        self.backbone = nn.ModuleList(Block(cfg.d, cfg.n_head) for _ in range(cfg.n_backbone))
        self.attractor = EquilibriumStack(cfg.d, cfg.n_head, cfg.n_attractor, cfg)
        init_weights(self, n_residual=cfg.n_backbone + cfg.n_attractor)

    def propose(self, idx: Tensor) -> Tensor:
        """The backbone's proposal c: (B, T) tokens -> (B, T, D)."""
        h = self.embed(idx)
        for block in self.backbone:
            h = block(h)
        return h

    def equilibrium(self, idx: Tensor) -> Equilibrium:
        """The problem the forward solves on tokens idx (B, T): the fixed point of
        f(y) = H(y + c) - y from y0 = c, the proposal (B, T, D); the solve config is cfg.solve."""
        c = self.propose(idx)
        return self.attractor.equilibrium(c, c)  # injection c, start c

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, iters: int | None = None) -> ModelOutput:
        """Decode the fixed point (iters=None), the proposal (0), or exactly `iters` plain steps.

        Args:
            idx: (B, T) token ids; targets: (B, T) next-token ids, -100 to ignore.
            iters: None solves to tol (adaptive); k >= 0 applies f exactly k times from c, with
                the configured gradient mode attached at the result.
        Returns:
            ModelOutput: logits (B, T, V), loss, depth, n_evals, converged, info.
        """
        check_batch(idx, targets, self.cfg.vocab_size, self.cfg.seq_len)
        check_depth(iters, "AttractorLM")
        problem = self.equilibrium(idx)
        y, report = solve_equilibrium(problem, iters)
        logits, loss = self.decode(y, targets)
        loss = self.attractor.regularise(loss, problem.f, y)  # + the Jacobian penalty, if configured
        return ModelOutput(logits, loss, **report._asdict())

    def param_groups(self) -> list[ParamGroup]:
        """Embedding (AdamW, no decay); backbone matrices (Muon); the attractor's matrices and
        gates (AdamW at lr_mult, gates without decay), as in SPEC 2.1."""
        return [*self.embedding_groups(), *block_groups("backbone", self.backbone),
                *block_groups("attractor", self.attractor, "adamw", self.cfg.lr_mult)]

    def flops_per_token(self, out: ModelOutput | float | None = None) -> float:
        """Forward FLOPs per token: of a forward's evaluations (its ModelOutput, or a number of
        evaluations of f), or of the worst case, max_iter + 1 evaluations (None)."""
        c = self.cfg
        backbone = c.n_backbone * block_flops(c.d, c.seq_len) + 2 * c.d * c.vocab_size
        n_evals = out.n_evals if isinstance(out, ModelOutput) else out
        return backbone + self.attractor.flops_per_token(c.d, c.seq_len, n_evals)
