"""The part AttractorLM and DEQLM share: a gated, weight-tied stack H solved to a fixed point.

With an injection x (B, T, D), the map is f(y) = H(y + x) - y = x + R(y + x), R(h) = H(h) - h
being the stack's residual branches, and its fixed point is found by `fixed_point` from a start
the model chooses (the proposal c for an Attractor, zero for a DEQ). Configuration fields that
describe the solve live in `EquilibriumConfig`, which both model configs extend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from attractor.errors import check_name
from attractor.fixedpoint import GRADS, SOLVERS, Anderson, Implicit, Neumann, Phantom, Unroll, fixed_point
from attractor.layers import Block, block_flops


@dataclass(frozen=True)
class EquilibriumConfig:
    gate_init: float = 0.5  # initial residual-gate value of H's blocks (paper: 0.5 to 0.75)
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
        if not 0.0 < self.gate_init < self.gamma_max <= 1.0:
            raise ValueError(f"need 0 < gate_init ({self.gate_init}) < gamma_max ({self.gamma_max}) <= 1")
        check_name(self.solver, SOLVERS, "solver")
        check_name(self.grad, GRADS, "gradient mode")
        check_name(self.stop, ("token", "sample"), "stop rule")
        if not self.tol >= 0:
            raise ValueError(f"tol={self.tol} must be >= 0")
        if not 0 <= self.min_iter <= self.max_iter:
            raise ValueError(f"need 0 <= min_iter ({self.min_iter}) <= max_iter ({self.max_iter})")
        solver_and_grad(self)  # the solver's and gradient mode's own range checks, now

    def check_width(self, d: int, n_head: int) -> None:
        if d % n_head or (d // n_head) % 2:
            raise ValueError(f"d={d} must split into n_head={n_head} heads of even size")


def solver_and_grad(cfg: EquilibriumConfig) -> tuple[object, object]:
    """The configured solver and gradient-mode objects."""
    solver = Anderson(m=cfg.anderson_m) if cfg.solver == "anderson" else SOLVERS[cfg.solver]()
    grad = {
        "implicit": lambda: Implicit(tol=cfg.implicit_tol),
        "neumann": lambda: Neumann(k=cfg.grad_k),
        "phantom": lambda: Phantom(k=cfg.grad_k, damping=cfg.phantom_damping),
    }.get(cfg.grad, GRADS[cfg.grad])()
    return solver, grad


class EquilibriumStack(nn.Module):
    """n gated blocks H, reused at every iteration, and the solve of y = H(y + x) - y."""

    def __init__(self, d: int, n_head: int, n_blocks: int, cfg: EquilibriumConfig):
        super().__init__()
        self.cfg = cfg
        self.blocks = nn.ModuleList(
            Block(d, n_head, gate_init=cfg.gate_init, gamma_max=cfg.gamma_max) for _ in range(n_blocks)
        )
        self.solver, self.grad = solver_and_grad(cfg)

    def map(self, x: Tensor):
        """f(y) = H(y + x) - y for the injection x (B, T, D)."""

        def f(y: Tensor) -> Tensor:
            h = y + x
            for block in self.blocks:
                h = block(h)
            return h - y

        return f

    def forward(self, x: Tensor, y0: Tensor, iters: int | None) -> tuple[Tensor, dict]:
        """Solve from y0 (iters=None), or apply f exactly `iters` times with the gradient attached.

        Args:
            x: (B, T, D) injection; y0: (B, T, D) start.
            iters: None solves to tol; k >= 0 takes k plain steps (0 returns y0 itself).
        Returns:
            y (B, T, D) and stats: iters (B,) steps of the slowest token per sequence, residual (B,)
            worst token residual, token_converged (fraction of tokens below tol), n_evals
            (evaluations of f over the batch) and info (the FixedPointInfo); fixed depth: iters
            and n_evals only.
        """
        cfg, f = self.cfg, self.map(x)
        if iters is None:
            per_token = cfg.stop == "token"
            y, info = fixed_point(f, y0, solver=self.solver, grad=self.grad, tol=cfg.tol,
                                  max_iter=cfg.max_iter, min_iter=cfg.min_iter, on_fail="ignore",
                                  batch_dims=2 if per_token else 1, prefix_stop=per_token)
            per_sample = (lambda t: t.flatten(1).max(1).values) if per_token else (lambda t: t)
            return y, {"iters": per_sample(info.iters), "residual": per_sample(info.residual),
                       "token_converged": info.converged.float().mean().item(),
                       "n_evals": info.n_evals, "info": info}
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
            raise ValueError(f"iters={iters!r} must be None or an int >= 0")
        y = y0
        if iters > 0:
            unroll = isinstance(self.grad, Unroll)
            with torch.set_grad_enabled(unroll and torch.is_grad_enabled()):
                for _ in range(iters):
                    y = f(y)
            if torch.is_grad_enabled() and not unroll:
                y = self.grad.attach(f, y)
        stats = {"iters": torch.full((x.shape[0],), iters, dtype=torch.long, device=x.device), "n_evals": iters}
        return y, stats

    def flops_per_token(self, d: int, seq_len: int, stats: dict | None) -> float:
        """FLOPs per token of the evaluations a forward made (worst case without stats).

        Every evaluation runs the whole batch through H, so the realised cost is set by the
        batch's n_evals, not by the average token.
        """
        evals = self.cfg.max_iter + 1 if stats is None else stats["n_evals"]
        return evals * len(self.blocks) * block_flops(d, seq_len)
