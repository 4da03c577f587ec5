"""The part AttractorLM, DEQLM and the reasoners share: the configuration of an equilibrium solve,
the solve itself, and a gated, weight-tied stack H solved to a fixed point.

`solve_equilibrium(problem, iters)` is the one solve of every equilibrium model: an `Equilibrium`
is a map f, a start y0, the SolveConfig and whether f is causal, and each model says what its
problem is through `model.equilibrium(...)` (public, so that benchmarks solve the model's own
problem without knowing its parts).

With an injection x (B, T, D), the stack's map is f(y) = H(y + x) - y = x + R(y + x), R(h) = H(h) - h
being its residual branches, solved from a start the model chooses (the proposal c for an
Attractor, zero for a DEQ). The stack is causal (language models: prefix stopping keeps adaptive
depth exactly causal) or bidirectional (puzzles: every position sees every other).

`SolveConfig` holds the solver and gradient-mode objects themselves, so every option of Picard,
Anderson, Broyden, Implicit, Neumann and Phantom is reachable from a model config, and it
serialises them with a name tag: a config round-trips through JSON exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attractor.fixedpoint import (
    Anderson,
    Broyden,
    FixedPointInfo,
    Implicit,
    Neumann,
    OneStep,
    Phantom,
    Picard,
    Unroll,
    fixed_point,
    grad_from_dict,
    grad_to_dict,
    jacobian_penalty,
    solver_from_dict,
    solver_to_dict,
)
from attractor.layers import Block, block_flops, init_weights
from attractor.kvcache import KVCache
from attractor.models.base import LMShape, ModelOutput, TiedLM, check_batch, check_depth
from attractor.schema import check_fields, require


@dataclass(frozen=True)
class SolveConfig:
    """How an equilibrium model finds its fixed point and differentiates through it.

    `solver` and `grad` take a configured object (`Anderson(m=3, beta=0.8)`), a registry name
    ('picard') or a dict with a name tag ({"name": "anderson", "m": 3}); they are stored as objects.
    """

    # The defaults of every equilibrium LM (attractor, deq); the paper presets override tol and
    # the step range (SPEC 2.1), and the AttractorReasoner has its own (`published_solve`). The
    # table of every family's defaults is in docs/models.md (tests/models/test_defaults.py checks it).
    solver: Picard | Anderson | Broyden = field(default_factory=Anderson)  # paper: Anderson m=5
    grad: Implicit | OneStep | Neumann | Phantom | Unroll = field(default_factory=OneStep)  # paper LM: one-step
    # Relative residual at which a token (or sequence) stops. Looser than fixed_point's generic
    # 1e-4: a model pays a whole batch's evaluation per step, and on trained attractor-1m a 3x
    # tighter tol (3e-4) left the validation loss within 0.004 nats (docs/results-lm.md, section 2)
    # while tokens meet 1e-3 in 2 to 4 steps of their own (section 3).
    tol: float = 1e-3
    # Most solver steps: a cap for the untrained or badly conditioned map (a trained one stops
    # long before); it also sets the worst-case FLOPs. Below fixed_point's 50 for the same reason.
    max_iter: int = 32
    min_iter: int = 0  # fewest solver steps (the paper presets force 6 or 8)
    stop: Literal["token", "sample"] = "token"  # unit of convergence and stopping

    def __post_init__(self) -> None:
        if isinstance(self.solver, (str, dict)):
            object.__setattr__(self, "solver", solver_from_dict(self.solver))
        if isinstance(self.grad, (str, dict)):
            object.__setattr__(self, "grad", grad_from_dict(self.grad))
        check_fields(self)
        require(self.tol >= 0, f"SolveConfig.tol={self.tol} must be >= 0")
        require(0 <= self.min_iter <= self.max_iter,
                f"SolveConfig: need 0 <= min_iter ({self.min_iter}) <= max_iter ({self.max_iter})")

    def to_dict(self) -> dict:
        """JSON-safe form; `schema.from_dict(SolveConfig, d)` rebuilds it exactly."""
        return {"solver": solver_to_dict(self.solver), "grad": grad_to_dict(self.grad), "tol": self.tol,
                "max_iter": self.max_iter, "min_iter": self.min_iter, "stop": self.stop}


@dataclass(frozen=True)
class EquilibriumConfig:
    """Fields every model with an equilibrium stack shares (its own config extends this)."""

    gate_init: float = 0.5  # initial residual-gate value of H's blocks (paper: 0.5 to 0.75)
    gamma_max: float = 1.0  # gates live in (0, gamma_max)
    lr_mult: float = 0.5  # learning-rate multiplier of H's parameters (SPEC 2.1: 0.4 to 0.5)
    solve: SolveConfig = field(default_factory=SolveConfig)
    # Weight of the Jacobian penalty ||J||_F^2 / dim of the map at y* (one Hutchinson probe, Bai
    # et al. 2021) added to the training loss: pushes f towards contraction. 0: off (the paper).
    jac_penalty: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self)
        require(0.0 < self.gate_init < self.gamma_max <= 1.0,
                f"need 0 < gate_init ({self.gate_init}) < gamma_max ({self.gamma_max}) <= 1")
        require(self.lr_mult > 0, f"lr_mult={self.lr_mult} must be > 0")
        require(self.jac_penalty >= 0, f"jac_penalty={self.jac_penalty} must be >= 0")


class Equilibrium(NamedTuple):
    """A model's fixed-point problem on one batch: y* = f(y*), found from y0 as `solve` says.

    `model.equilibrium(...)` returns the problem its forward solves, and
    `solve_equilibrium(problem, iters)` solves it exactly as the forward does. Shapes: (B, T, D)
    for the language models; (B, S, D), or (B, 2S, D) for a joint reasoner, for the puzzle models.
    """

    f: Callable[[Tensor], Tensor]  # the map (B, *U) -> (B, *U); samples do not interact
    y0: Tensor  # (B, *U) the start
    solve: SolveConfig  # solver, gradient mode, tol, min_iter, max_iter and the unit of stopping
    causal: bool  # unit t of f(y) depends only on units <= t; stop="token" then stops in prefix order
    # (B,) a causal problem continuing a prefix solved before (a KV cache's tokens): the solver
    # steps its last position took; no new token stops before them (see fixed_point)
    prefix_depth: Tensor | None = None


class SolveReport(NamedTuple):
    """How a solve went: the solve's part of a ModelOutput (same field names)."""

    depth: Tensor  # (B,) int64 steps of each sample's slowest unit (token, or the sample itself)
    n_evals: int  # evaluations of f over the batch
    converged: Tensor | None  # 0-d fraction of units below tol (adaptive solves only)
    info: FixedPointInfo | None

    def converged_per_sample(self) -> Tensor | None:
        """(B,) bool: every unit of the sample met tol; None without an adaptive solve."""
        return None if self.info is None else self.info.converged.reshape(self.depth.shape[0], -1).all(1)


# preview(y_i, relative residual or None, i): an iterate before the answer, for a trace
Preview = Callable[[Tensor, "float | None", int], None]


def solve_equilibrium(problem: Equilibrium, iters: int | None = None,
                      preview: Preview | None = None) -> tuple[Tensor, SolveReport]:
    """Solve problem.f from problem.y0 to tol (iters=None), or apply f exactly `iters` times.

    Args:
        problem: the map, its start y0 (B, *U), the SolveConfig and the causality.
        iters: None solves to tol; k >= 0 takes k plain steps (0 returns y0 itself) with the
            configured gradient mode attached at the result (Unroll: backprop through the steps).
        preview: called for the iterates before the answer, i = 1 .. n-1 (a trace shows the
            answer itself as iteration n): after each of the first k-1 plain steps (residual
            None), or at every point the solver evaluated f at after y0 but the last, with the
            largest relative residual of its units there.
    Returns:
        y (B, *U) and the SolveReport. With stop="token" every unit (b, t) is its own problem
        with its own residual, solver state and stopping; in a causal problem a unit stops only
        once every earlier one has (prefix stopping), so adaptive depth stays exactly causal.
        With stop="sample" a sample is one problem.
    """
    f, y0, solve, causal, prefix_depth = problem
    batch = y0.shape[0]
    if iters is not None:
        y = y0
        unroll = isinstance(solve.grad, Unroll)
        with torch.set_grad_enabled(unroll and torch.is_grad_enabled()):
            for i in range(1, iters + 1):
                y = f(y)
                if preview is not None and i < iters:
                    preview(y, None, i)
        if iters > 0 and torch.is_grad_enabled() and not unroll:
            y = solve.grad.attach(f, y)
        return y, SolveReport(torch.full((batch,), iters, dtype=torch.long, device=y0.device), iters, None, None)
    seen: list[Tensor] = []
    watched = f
    if preview is not None:
        def watched(y: Tensor) -> Tensor:  # records every iterate the solver evaluates f at
            seen.append(y.detach().clone())
            return f(y)
    per_token = solve.stop == "token"
    y, info = fixed_point(watched, y0, solver=solve.solver, grad=solve.grad, tol=solve.tol,
                          max_iter=solve.max_iter, min_iter=solve.min_iter, on_fail="ignore",
                          trace=preview is not None, batch_dims=2 if per_token else 1,
                          prefix_stop=per_token and causal, prefix_depth=prefix_depth)
    if preview is not None:
        residuals = info.trace.flatten(0, -2).max(0).values  # (n_evals,) the worst unit's
        for i in range(1, len(seen) - 1):
            preview(seen[i], float(residuals[i]), i)
    depth = info.depth.reshape(batch, -1).max(1).values  # (B,) each sample's slowest unit
    return y, SolveReport(depth, info.n_evals, info.converged.float().mean(), info)


class EquilibriumStack(nn.Module):
    """n gated blocks H, reused at every iteration, and the solve of y = H(y + x) - y."""

    def __init__(self, d: int, n_head: int, n_blocks: int, cfg: EquilibriumConfig, causal: bool = True):
        super().__init__()
        self.cfg, self.causal = cfg, causal
        self.blocks = nn.ModuleList(
            Block(d, n_head, causal=causal, gate_init=cfg.gate_init, gamma_max=cfg.gamma_max)
            for _ in range(n_blocks)
        )

    def map(self, x: Tensor):
        """f(y) = H(y + x) - y for the injection x (B, T, D)."""

        def f(y: Tensor) -> Tensor:
            h = y + x
            for block in self.blocks:
                h = block(h)
            return h - y

        return f

    def equilibrium(self, x: Tensor, y0: Tensor) -> Equilibrium:
        """The problem y = H(y + x) - y of the injection x (B, T, D), from y0 (B, T, D)."""
        return Equilibrium(self.map(x), y0, self.cfg.solve, self.causal)

    def forward(self, x: Tensor, y0: Tensor, iters: int | None) -> tuple[Tensor, SolveReport]:
        """Solve from y0 (iters=None), or apply f exactly `iters` times with the gradient attached.

        Args:
            x: (B, T, D) injection; y0: (B, T, D) start.
            iters: None solves to tol; k >= 0 takes k plain steps (0 returns y0 itself).
        Returns:
            y (B, T, D) and the SolveReport (see `solve_equilibrium`): in a causal stack prefix
            stopping keeps adaptive depth exactly causal; bidirectionally positions stop on
            their own.
        """
        return solve_equilibrium(self.equilibrium(x, y0), iters)

    def cached_map(self, x: Tensor, cache: KVCache):
        """f(y) = H(y + x) - y for new positions continuing the cache, x (B, T, D) their injection.

        The k-th evaluation's block j attends to the earlier positions' keys and values at their
        own k-th evaluation, cached as ("stack", k, j) (cache.mode="exact": a step no earlier
        position reached is a copy of step k-1, since a stopped position's iterate stays put),
        or at their last one, ("stack", j) ("converged"), and writes the new positions' there.
        With "exact" a new token's iterates are those of the full forward (up to rounding).
        """
        calls = 0

        def f(y: Tensor) -> Tensor:
            nonlocal calls
            k, calls = calls, calls + 1
            h = y + x
            for j, block in enumerate(self.blocks):
                if cache.mode == "exact":
                    layer = cache.layer(("stack", k, j), like=("stack", k - 1, j))
                else:
                    layer = cache.layer(("stack", j))
                h = block(h, layer)
            return h - y

        return f

    def regularise(self, loss: Tensor | None, f, y: Tensor) -> Tensor | None:
        """loss + jac_penalty * (Hutchinson ||J||_F^2 / dim of the map f at y, mean over the batch)
        while training with autograd on and a weight set; the loss unchanged otherwise.

        f: the stack's map (`equilibrium(x, y0).f`), y: (B, T, D) the solution (detached for the
        penalty: it measures the map at that point, and its gradient reaches H's weights and x).
        """
        if loss is None or self.cfg.jac_penalty == 0 or not (self.training and torch.is_grad_enabled()):
            return loss
        # The penalty's gradient differentiates a vector-Jacobian product (double backward),
        # which the fused attention kernels do not implement: use the plain math kernel here.
        with sdpa_kernel(SDPBackend.MATH):
            penalty = jacobian_penalty(f, y.detach()).mean()
        return loss + self.cfg.jac_penalty * penalty

    def flops_per_token(self, d: int, seq_len: int, n_evals: float | None) -> float:
        """FLOPs per token of `n_evals` evaluations of f (max_iter + 1, the worst case, if None).

        Every evaluation runs the whole batch through H, so the realised cost is set by the
        batch's n_evals, not by the average token.
        """
        evals = self.cfg.solve.max_iter + 1 if n_evals is None else n_evals
        return evals * len(self.blocks) * block_flops(d, seq_len, causal=self.causal)


@dataclass(frozen=True)
class EquilibriumLMConfig(LMShape, EquilibriumConfig):
    """What AttractorLM's and DEQLM's configs share: the LM shape and the equilibrium fields."""


class EquilibriumLM(TiedLM):
    """A language model decoded from the fixed point of an EquilibriumStack: AttractorLM and DEQLM.

    A subclass names its parts, since the names are its checkpoints' state_dict keys and its
    optimiser groups (backbone and attractor, or prelude and deq), exposes them as `lead` (the
    plain blocks before the stack) and `stack`, and says what its problem is (`equilibrium`):
    where the solve starts. The forward and the FLOPs are the same for both.
    """

    def __init__(self, cfg: EquilibriumLMConfig, lead: tuple[str, int], stack: tuple[str, int], tied: bool = True):
        """Build the parts under their names: `lead` (name, plain blocks) and `stack` (name,
        gated blocks of the EquilibriumStack), registered in that order after the embedding."""
        super().__init__(cfg.vocab_size, cfg.d, tied=tied)
        self.cfg = cfg
        self.part_names = (lead[0], stack[0])
        self.add_module(lead[0], nn.ModuleList(Block(cfg.d, cfg.n_head) for _ in range(lead[1])))
        self.add_module(stack[0], EquilibriumStack(cfg.d, cfg.n_head, stack[1], cfg))
        init_weights(self, n_residual=lead[1] + stack[1])

    @property
    def lead(self) -> nn.ModuleList:
        """The plain blocks that turn the embedding into the injection."""
        return getattr(self, self.part_names[0])

    @property
    def stack(self) -> EquilibriumStack:
        """The gated, weight-tied stack solved to its fixed point."""
        return getattr(self, self.part_names[1])

    def injection(self, idx: Tensor) -> Tensor:
        """The embedding of tokens idx (B, T) through the lead blocks: (B, T, D)."""
        h = self.embed(idx)
        for block in self.lead:
            h = block(h)
        return h

    def equilibrium(self, idx: Tensor) -> Equilibrium:
        """The problem the forward solves on tokens idx (B, T) (see the subclass)."""
        raise NotImplementedError

    def start(self, x: Tensor) -> Tensor:
        """Where the solve starts for the injection x (B, T, D): the subclass's y0 of `equilibrium`."""
        raise NotImplementedError

    def can_cache(self, iters: int | None) -> bool:
        """A KV cache serves a fixed depth iters=k (0 skips the solver) and adaptive solves stopped
        per token (prefix stopping: a position's iterates never depend on later ones); not an
        adaptive solve stopped per sample, whose whole sequence is one problem."""
        return iters is not None or self.cfg.solve.stop == "token"

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, iters: int | None = None,
                cache: KVCache | None = None) -> ModelOutput:
        """Decode the fixed point (iters=None), or exactly `iters` plain steps from the start.

        Args:
            idx: (B, T) token ids; targets: (B, T) next-token ids, -100 to ignore.
            iters: None solves to tol (adaptive); k >= 0 applies f exactly k times from the
                start, with the configured gradient mode attached at the result (0 decodes the
                start itself: an Attractor's proposal, a DEQ's zero state).
        Returns:
            ModelOutput: logits (B, T, V), loss (plus the Jacobian penalty, if configured),
            depth, n_evals, converged, info.
        `cache` (inference only, see `can_cache`): idx continues the cache's positions; the lead
        blocks and every evaluation of the stack attend to their cached keys and values
        (`EquilibriumStack.cached_map`), only idx's positions are computed, and an adaptive solve
        continues the cached prefix's (none of idx's tokens stops before its last position did).
        """
        check_batch(idx, targets, self.cfg.vocab_size, self.cfg.seq_len)
        check_depth(iters, type(self).__name__)
        if cache is not None:
            return self._cached_forward(idx, targets, iters, cache)
        problem = self.equilibrium(idx)
        y, report = solve_equilibrium(problem, iters)
        logits, loss = self.decode(y, targets)
        loss = self.stack.regularise(loss, problem.f, y)
        return ModelOutput(logits, loss, **report._asdict())

    def _cached_forward(self, idx: Tensor, targets: Tensor | None, iters: int | None, cache: KVCache) -> ModelOutput:
        if not self.can_cache(iters):
            raise ValueError(f"{type(self).__name__}: a KV cache serves fixed depths and adaptive solves "
                             "stopped per token, not solve.stop='sample'")
        if torch.is_grad_enabled() and self.training:
            raise ValueError(f"{type(self).__name__}: the cached forward is for inference (no gradient mode is attached)")
        cache.check(idx.shape[1], "adaptive" if iters is None else iters)
        x = self.embed(idx)
        for i, block in enumerate(self.lead):
            x = block(x, cache.layer(("lead", i)))
        # "exact" continues the prefix's solve (its tokens stop no earlier than the last cached
        # one, as in the full forward); "converged" solves the new tokens against a prefix at rest,
        # so each stops on its own residual.
        floor = cache.last_depth if cache.mode == "exact" else None
        problem = Equilibrium(self.stack.cached_map(x, cache), self.start(x), self.cfg.solve, True, floor)
        y, report = solve_equilibrium(problem, iters)
        if report.info is not None:
            cache.last_depth = report.info.depth[:, -1]
        cache.advance(idx.shape[1])
        logits, loss = self.decode(y, targets)
        return ModelOutput(logits, loss, **report._asdict())

    def flops_per_token(self, out: ModelOutput | float | None = None) -> float:
        """Forward FLOPs per token: of a forward's evaluations (its ModelOutput, or a number of
        evaluations of f), or of the worst case, max_iter + 1 evaluations (None)."""
        c = self.cfg
        lead = len(self.lead) * block_flops(c.d, c.seq_len) + 2 * c.d * c.vocab_size
        n_evals = out.n_evals if isinstance(out, ModelOutput) else out
        return lead + self.stack.flops_per_token(c.d, c.seq_len, n_evals)
