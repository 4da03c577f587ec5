"""AttractorLM: a backbone proposes output embeddings; an attractor refines them to a fixed point.

Fein-Ashley and Rashidinejad, "Solve the Loop: Attractor Models for Language and Reasoning",
arXiv 2605.12466 (2026). Design choices:
- tied embedding E -> n_backbone plain blocks -> proposal c (B, T, D), already decodable;
- attractor H: n_attractor gated blocks, weight-tied across iterations, gates sigmoid(raw) *
  gamma_max starting at gate_init; output projections start non-zero (else f is constant);
- f(y; c) = H(y + c) - y (additive injection of c at every step), solved from y0 = c;
- decode norm(y*) with the tied unembedding;
- one problem per token (`stop="token"`): each position has its own residual, solver state and
  stopping, and stops only once every earlier position has (prefix stopping), so adaptive depth
  keeps the model exactly causal. `stop="sample"` is the paper's per-sequence rule.

Dimension letters: B batch, T sequence, D width, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from attractor.errors import check_name
from attractor.fixedpoint import GRADS, SOLVERS, Anderson, Implicit, Neumann, Phantom, Unroll, fixed_point
from attractor.layers import Block, block_flops, init_weights
from attractor.models.base import ModelOutput, TiedLM, check_tokens


@dataclass(frozen=True)
class AttractorLMConfig:
    vocab_size: int = 256  # byte-level by default
    seq_len: int = 256  # longest sequence the model accepts
    d: int = 128  # width
    n_head: int = 4
    n_backbone: int = 4  # plain blocks proposing c
    n_attractor: int = 1  # gated blocks in H, reused at every iteration
    gate_init: float = 0.5  # initial gate value (paper: 0.5 to 0.75)
    gamma_max: float = 1.0  # gates live in (0, gamma_max)
    solver: str = "anderson"  # picard | anderson | broyden
    anderson_m: int = 5  # Anderson history (paper: 5)
    tol: float = 1e-3  # relative residual at which a token (or sample) stops
    max_iter: int = 32  # most solver steps
    min_iter: int = 0  # fewest solver steps
    stop: Literal["token", "sample"] = "token"  # unit of convergence and stopping
    grad: str = "onestep"  # implicit | onestep | neumann | phantom | unroll (paper LM: onestep)
    grad_k: int = 2  # phantom steps, or neumann terms
    phantom_damping: float = 0.5
    implicit_tol: float = 1e-4  # adjoint tolerance for grad="implicit"

    def __post_init__(self) -> None:
        if self.d % self.n_head or (self.d // self.n_head) % 2:
            raise ValueError(f"d={self.d} must split into n_head={self.n_head} heads of even size")
        if min(self.vocab_size, self.seq_len, self.n_backbone, self.n_attractor) < 1:
            raise ValueError("vocab_size, seq_len, n_backbone and n_attractor must be >= 1")
        check_name(self.solver, SOLVERS, "solver")
        check_name(self.grad, GRADS, "gradient mode")
        check_name(self.stop, ("token", "sample"), "stop rule")
        if not 0 <= self.min_iter <= self.max_iter:
            raise ValueError(f"need 0 <= min_iter ({self.min_iter}) <= max_iter ({self.max_iter})")


class AttractorLM(TiedLM):
    def __init__(self, cfg: AttractorLMConfig):
        super().__init__(cfg.vocab_size, cfg.d)
        self.cfg = cfg
        self.backbone = nn.ModuleList(Block(cfg.d, cfg.n_head) for _ in range(cfg.n_backbone))
        self.attractor = nn.ModuleList(
            Block(cfg.d, cfg.n_head, gate_init=cfg.gate_init, gamma_max=cfg.gamma_max)
            for _ in range(cfg.n_attractor)
        )
        init_weights(self, n_residual=cfg.n_backbone + cfg.n_attractor)
        self.solver = Anderson(m=cfg.anderson_m) if cfg.solver == "anderson" else SOLVERS[cfg.solver]()
        self.grad = {
            "implicit": lambda: Implicit(tol=cfg.implicit_tol),
            "neumann": lambda: Neumann(k=cfg.grad_k),
            "phantom": lambda: Phantom(k=cfg.grad_k, damping=cfg.phantom_damping),
        }.get(cfg.grad, GRADS[cfg.grad])()

    def propose(self, idx: Tensor) -> Tensor:
        """The backbone's proposal c: (B, T) tokens -> (B, T, D)."""
        h = self.embed(idx)
        for block in self.backbone:
            h = block(h)
        return h

    def attractor_map(self, c: Tensor):
        """f(y) = H(y + c) - y, the map whose fixed point the model decodes."""

        def f(y: Tensor) -> Tensor:
            h = y + c
            for block in self.attractor:
                h = block(h)
            return h - y

        return f

    def forward(self, idx: Tensor, targets: Tensor | None = None, iters: int | None = None) -> ModelOutput:
        """Decode the fixed point (iters=None), the proposal (0), or exactly `iters` plain steps.

        Args:
            idx: (B, T) token ids; targets: (B, T) next-token ids, -1 to ignore.
            iters: None solves to tol (adaptive); k >= 0 applies f exactly k times from c, with
                the configured gradient mode attached at the result.
        Returns:
            ModelOutput with logits (B, T, V), loss, and stats (see ModelOutput).
        """
        check_tokens(idx, self.cfg.vocab_size, self.cfg.seq_len)
        c = self.propose(idx)  # (B, T, D)
        f = self.attractor_map(c)
        if iters is None:
            per_token = self.cfg.stop == "token"
            y, info = fixed_point(f, c, solver=self.solver, grad=self.grad, tol=self.cfg.tol,
                                  max_iter=self.cfg.max_iter, min_iter=self.cfg.min_iter, on_fail="ignore",
                                  batch_dims=2 if per_token else 1, prefix_stop=per_token)
            per_sample = (lambda t: t.flatten(1).max(1).values) if per_token else (lambda t: t)
            stats = {"iters": per_sample(info.iters), "residual": per_sample(info.residual),
                     "token_converged": info.converged.float().mean().item(), "n_evals": info.n_evals,
                     "info": info}
        elif iters < 0:
            raise ValueError(f"iters={iters} must be None or >= 0")
        else:
            y = c
            if iters > 0:
                unroll = isinstance(self.grad, Unroll)
                with torch.set_grad_enabled(unroll and torch.is_grad_enabled()):
                    for _ in range(iters):
                        y = f(y)
                if torch.is_grad_enabled() and not unroll:
                    y = self.grad.attach(f, y)
            stats = {"iters": torch.full((idx.shape[0],), iters, dtype=torch.long), "n_evals": iters}
        logits, loss = self.decode(y, targets)
        return ModelOutput(logits=logits, loss=loss, stats=stats)

    def flops_per_token(self, stats: dict | None = None) -> float:
        """Forward FLOPs per token; with a forward's stats, those of the evaluations it made.

        Every solver evaluation runs the whole batch through H, so the realised cost is set by
        the batch's evaluation count (n_evals), not by the average token. Without stats: the
        worst case, max_iter + 1 evaluations.
        """
        c = self.cfg
        evals = c.max_iter + 1 if stats is None else stats["n_evals"]
        block = block_flops(c.d, c.seq_len)
        return c.n_backbone * block + evals * c.n_attractor * block + 2 * c.d * c.vocab_size
