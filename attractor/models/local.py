"""A size-agnostic equilibrium model: a local, weight-tied map solved to its fixed point, so that
a longer input is answered by iterating longer.

    model = LocalEquilibrium(LocalConfig())                # 9.4k parameters
    out = model(bits)                                     # bits (B, n) int64, any n >= 1
    out.logits                                            # (B, n, 2) float32
    out.depth                                             # (B,) solver steps: grow with n

The map is a 1-D convolution over positions with the input injected at every iteration:

    f(z; x) = tanh(conv2(relu(conv1(concat[z, embed(x)]))))

with symmetric kernels (size `kernel`, 3: each evaluation moves information at most one position
per convolution, two per evaluation), zero padding at both ends (the ends are where the string
starts and stops), no normalisation, and a 1x1 convolution (a linear layer per position) as the
head. Nothing in it depends on the length: the same weights take 16 bits or 100,000. The state z
is (B, n, C) so that a unit of stopping may be a position (stop="token", never prefix-stopped:
the map sees both neighbours) or the whole string (stop="sample", the default).

The solve is `solve_equilibrium` (attractor/models/equilibrium.py), with a step cap that grows
with the length: max(solve.max_iter, ceil(max_iter_per_position * n)), since information needs
about n/2 evaluations to cross a string of n positions. The start z0 is zero or, with
start="random", uniform in [-1, 1] (the range of tanh): a map whose answer does not depend on
where the solve starts is path independent (Anil et al. 2022, arXiv 2211.09961). In training
random starts come from torch's global generator (the trainer checkpoints it); in evaluation
from a generator seeded with `start_seed`, so an evaluation repeats.

`loops_per_position` turns the same map into the fixed-depth looped baseline: exactly
ceil(loops_per_position * n) evaluations, no solve (with grad=Unroll, backprop through all).
`layers=L` turns it into the feed-forward baseline: L distinct layers, each the map's shape with
its own weights (nothing tied), applied once each from z0 and trained by backprop through all:
a fixed depth of L evaluations, whatever the length.

The 2-D map (LocalGridConfig, the "local-grid" family: mazes of any side) is the same map with
2-D convolutions (kernel x kernel, zero padding at the grid's border): a grid of side s arrives
as s*s tokens row by row, and the map reshapes the state to (B, C, s, s) at every evaluation, s
taken from the input (n must be a square). A "position" is then a cell: the step cap is
max(solve.max_iter, ceil(max_iter_per_position * s*s)), since a maze's shortest path (and a
dead end that must be ruled out) can be as long as a fixed share of its cells. `model.trace(idx)`
gives the Picard iterates of the map as TraceSteps (attractor/models/puzzle.py), for `attractor
solve maze --trace/--html`.

The calibration behind the defaults is ../shared/research/calibration-depth.md (section 2):
32 channels, kernel 3, max_iter 3n in training; docs/results-reasoning.md has the runs.
Dimension letters: B batch, n length, C channels, V vocabulary (bits in, answers out).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from attractor.fixedpoint import Anderson, Phantom, jacobian_penalty
from attractor.models.base import IGNORE_INDEX, ModelOutput, ParamGroup, check_batch, check_depth
from attractor.models.equilibrium import Equilibrium, SolveConfig, SolveReport, solve_equilibrium
from attractor.models.puzzle import TraceStep, grid_side
from attractor.schema import check_fields, require


def local_solve() -> SolveConfig:
    """The local map's solve: Anderson to tol 1e-3 per string, phantom gradient of 5 steps."""
    return SolveConfig(solver=Anderson(), grad=Phantom(k=5), tol=1e-3, max_iter=32, stop="sample")


@dataclass(frozen=True)
class LocalConfig:
    dims: ClassVar[int] = 1  # a string (1) or a square grid (2, LocalGridConfig); fixed by the config's type
    vocab_size: int = 2  # input tokens, and answers (parity: bits in, parities out)
    # A length for cost estimates only (the memory bound, FLOPs in `attractor models`): the model
    # takes strings of any length, whatever this says.
    seq_len: int = 16
    d: int = 32  # channels of the state and of the convolutions
    kernel: int = 3  # width of both convolutions, odd (symmetric around a position)
    solve: SolveConfig = field(default_factory=local_solve)
    # The step cap grows with the length n: max(solve.max_iter, ceil(this * n)); 0: solve.max_iter.
    max_iter_per_position: float = 3.0
    start: Literal["zero", "random"] = "zero"  # z0: zeros, or uniform in [-1, 1]
    start_seed: int = 0  # the random start's generator in evaluation (training uses torch's)
    # The looped baseline: exactly ceil(this * n) evaluations of the map instead of a solve; None: solve.
    loops_per_position: float | None = None
    # The feed-forward baseline: this many untied layers of the map, each applied once (no solve,
    # backprop through all, the same depth at every length); None: one weight-tied map.
    layers: int | None = None
    # Weight of the Jacobian penalty ||J||_F^2 / dim of the map at the fixed point (one Hutchinson
    # probe, Bai et al. 2021) added to the training loss of the solved map: pushes it towards
    # contraction, so that larger inputs still converge. 0: off.
    jac_penalty: float = 0.0
    # The looped baseline's progressive loss (Bansal et al. 2022, arXiv 2202.05826): with weight
    # alpha, the loss of a forward that runs a random number n < N of loops without gradient and
    # then k in [1, N - n] with it, so that no loop learns to depend on its index (N the fixed
    # depth); (1 - alpha) the loss after all N loops. 0: off.
    progressive: float = 0.0

    def __post_init__(self) -> None:
        check_fields(self)
        require(self.vocab_size >= 2 and self.seq_len >= 1 and self.d >= 1, "need vocab_size >= 2, seq_len >= 1, d >= 1")
        require(self.kernel >= 1 and self.kernel % 2 == 1, f"kernel={self.kernel} must be odd (symmetric)")
        require(self.max_iter_per_position >= 0, f"max_iter_per_position={self.max_iter_per_position} must be >= 0")
        require(self.start_seed >= 0, f"start_seed={self.start_seed} must be >= 0")
        require(self.loops_per_position is None or self.loops_per_position > 0,
                f"loops_per_position={self.loops_per_position} must be > 0 or None")
        require(self.layers is None or self.layers >= 1, f"layers={self.layers} must be >= 1 or None")
        require(self.layers is None or self.loops_per_position is None,
                "layers (the feed-forward stack) and loops_per_position (the looped map) exclude each other")
        check_recipe(self)


def check_recipe(cfg) -> None:
    """The training options a map's config may set (LocalConfig's, AttentionMapConfig's)."""
    require(cfg.jac_penalty >= 0, f"jac_penalty={cfg.jac_penalty} must be >= 0")
    require(0 <= cfg.progressive <= 1, f"progressive={cfg.progressive} must be in [0, 1]")
    require(cfg.progressive == 0 or cfg.loops_per_position is not None,
            "progressive (a loss over random loop counts) needs the looped map (loops_per_position)")
    require(cfg.jac_penalty == 0 or (cfg.layers is None and cfg.loops_per_position is None),
            "jac_penalty measures the solved map at its fixed point: not the looped map or the stack")


@dataclass(frozen=True)
class LocalGridConfig(LocalConfig):
    """The 2-D map: mazes of any side as s*s tokens (attractor/data/maze.py's ids, 0 pad and
    `# SGo` as 1..5), the answer's tokens out; a position is a cell."""

    dims: ClassVar[int] = 2
    vocab_size: int = 6  # maze tokens in and out (the answer draws the path as 'o')
    seq_len: int = 81  # cells of a 9x9 maze, for cost estimates only: any side is taken
    max_iter_per_position: float = 1.0  # the step cap per cell: max(solve.max_iter, ceil(this * s*s))


class LocalEquilibrium(nn.Module):
    """The fixed point of a local convolutional map with input injection (the module docstring).

    forward(idx, targets=None, *, iters=None) -> ModelOutput, the contract of models/base.py:
    idx (B, n) token ids of any length n >= 1; targets (B, n) ids or IGNORE_INDEX; iters=None
    solves to tol (or runs the looped baseline's fixed depth), iters=k applies the map k times.
    With a LocalGridConfig, n = s*s cells of a grid of any side s, row by row. The feed-forward
    stack (cfg.layers) runs its layers and refuses iters (has_depth is False).
    """

    has_depth = True

    def __init__(self, cfg: LocalConfig):
        super().__init__()
        self.cfg = cfg
        self.has_depth = cfg.layers is None  # the feed-forward stack's depth is fixed: iters refused
        c, k = cfg.d, cfg.kernel
        conv = nn.Conv1d if cfg.dims == 1 else nn.Conv2d
        self.embed = nn.Embedding(cfg.vocab_size, c)
        if cfg.layers is None:  # one map, reused at every evaluation
            self.conv1 = conv(2 * c, c, k, padding=k // 2)
            self.conv2 = conv(c, c, k, padding=k // 2)
        else:  # the feed-forward stack: layer i is (conv1[i], conv2[i])
            self.conv1 = nn.ModuleList(conv(2 * c, c, k, padding=k // 2) for _ in range(cfg.layers))
            self.conv2 = nn.ModuleList(conv(c, c, k, padding=k // 2) for _ in range(cfg.layers))
        self.head = nn.Linear(c, cfg.vocab_size)  # the 1x1 convolution

    def max_iter(self, n: int) -> int:
        """The solve's step cap at length n: max(solve.max_iter, ceil(max_iter_per_position * n))."""
        return max(self.cfg.solve.max_iter, math.ceil(self.cfg.max_iter_per_position * n))

    def loops(self, n: int) -> int | None:
        """The fixed depth at length n: the looped baseline's evaluations, the feed-forward
        stack's layers (None: the model solves)."""
        if self.cfg.layers is not None:
            return self.cfg.layers
        r = self.cfg.loops_per_position
        return None if r is None else math.ceil(r * n)

    def start(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """z0 (B, n, C): zeros, or uniform in [-1, 1] (training: torch's generator; eval: start_seed's)."""
        if self.cfg.start == "zero":
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        if not self.training:
            generator = torch.Generator().manual_seed(self.cfg.start_seed)
            return (torch.rand(shape, generator=generator) * 2 - 1).to(like)
        return torch.rand(shape, dtype=like.dtype, device=like.device) * 2 - 1

    def map(self, idx: Tensor, layer: int | None = None):
        """f(z) = tanh(conv2(relu(conv1(concat[z, embed(x)])))) for the tokens idx (B, n); z (B, n, C).
        In 2-D the convolutions see z as (B, C, s, s), s*s = n. The feed-forward stack: the
        `layer`-th layer's f (an int in [0, layers)); the weight-tied map takes None."""
        if (layer is None) != (self.cfg.layers is None):
            raise ValueError(f"layer={layer!r}: the feed-forward stack takes a layer index, the tied map None")
        conv1, conv2 = (self.conv1, self.conv2) if layer is None else (self.conv1[layer], self.conv2[layer])
        c, pad = self.cfg.d, self.cfg.kernel // 2
        b, n = idx.shape
        if self.cfg.dims == 1:
            conv, grid = F.conv1d, (n,)
        else:
            s = grid_side(n)
            conv, grid = F.conv2d, (s, s)
        # conv1 of concat[z, e] is conv1's z half applied to z plus its e half applied to e: the
        # injection's part (with the bias) is computed once per solve, not at every evaluation
        e = self.embed(idx).transpose(1, 2).reshape(b, c, *grid)  # (B, C, n) or (B, C, s, s)
        injected = conv(e, conv1.weight[:, c:], conv1.bias, padding=pad)
        w_z = conv1.weight[:, :c]

        def f(z: Tensor) -> Tensor:
            h = F.relu(conv(z.transpose(1, 2).reshape(b, c, *grid), w_z, padding=pad) + injected)
            return torch.tanh(conv2(h)).flatten(2).transpose(1, 2)

        return f

    def equilibrium(self, idx: Tensor) -> Equilibrium:
        """The problem the forward solves on idx (B, n): the fixed point of the map from z0, with
        the step cap of length n. The map is local in both directions: not causal. (The
        feed-forward stack has no one map, hence no such problem: ValueError.)"""
        if self.cfg.layers is not None:
            raise ValueError(f"the feed-forward stack ({self.cfg.layers} untied layers) has no map to solve")
        b, n = idx.shape
        solve = dataclasses.replace(self.cfg.solve, max_iter=self.max_iter(n))
        return Equilibrium(self.map(idx), self.start((b, n, self.cfg.d), self.embed.weight), solve, False)

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, iters: int | None = None) -> ModelOutput:
        check_batch(idx, targets, self.cfg.vocab_size, idx.shape[-1] if idx.dim() else 1)  # any length
        if self.cfg.dims == 2:
            grid_side(idx.shape[1])
        check_depth(iters, type(self).__name__)
        training = self.training and torch.is_grad_enabled()
        problem = None
        if self.cfg.layers is not None:
            z, report = self.stack(idx, iters)
        else:
            if iters is None:
                iters = self.loops(idx.shape[1])
            problem = self.equilibrium(idx)
            z, report = solve_equilibrium(problem, iters)
        logits = self.head(z).float()  # (B, n, V)
        loss = None
        if targets is not None:
            loss = self.token_loss(logits, targets)
            if training and self.cfg.progressive > 0:
                progressive = self.token_loss(self.head(self.progressive_run(problem, iters)).float(), targets)
                loss = (1 - self.cfg.progressive) * loss + self.cfg.progressive * progressive
            if training and self.cfg.jac_penalty > 0:
                # A vector-Jacobian product differentiated again: the fused attention kernels of an
                # attention map have no double backward, the plain math kernel has.
                with sdpa_kernel(SDPBackend.MATH):
                    penalty = jacobian_penalty(problem.f, z.detach()).mean()
                loss = loss + self.cfg.jac_penalty * penalty
        return ModelOutput(logits, loss, report.depth, report.n_evals, report.converged, report.info)

    @staticmethod
    def token_loss(logits: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over the scored positions of logits (B, n, V) against targets (B, n)."""
        total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return total / (targets != IGNORE_INDEX).sum().clamp(min=1)

    def progressive_run(self, problem: Equilibrium, loops: int) -> Tensor:
        """The progressive loss's state (B, n, C): n ~ U{0..N-1} loops of the map without
        gradient from z0, then k ~ U{1..N-n} with it (N = loops, the looped map's depth; torch's
        generator, which the trainer checkpoints)."""
        before = int(torch.randint(0, loops, ()))
        after = int(torch.randint(1, loops - before + 1, ()))
        with torch.no_grad():
            z, _ = solve_equilibrium(problem, before)
        z, _ = solve_equilibrium(problem._replace(y0=z), after)  # with the map's gradient mode
        return z

    def stack(self, idx: Tensor, iters: int | None) -> tuple[Tensor, SolveReport]:
        """The feed-forward stack on idx (B, n): z (B, n, C) after its layers from z0 (`iters`
        must be None: the depth is fixed), with a SolveReport of that depth."""
        layers = self.cfg.layers
        if iters is not None:
            raise ValueError(f"the feed-forward stack has a fixed depth of {layers} layers; got iters={iters}")
        b, n = idx.shape
        z = self.start((b, n, self.cfg.d), self.embed.weight)
        for i in range(layers):
            z = self.map(idx, i)(z)
        return z, SolveReport(torch.full((b,), layers, dtype=torch.long, device=idx.device), layers, None, None)

    @torch.no_grad()
    def trace(self, idx: Tensor, frames: int = 60) -> list[TraceStep]:
        """The answer along the map's Picard iterates from z0 on one input idx (1, n), up to
        the relative residual's tol or the step cap (the looped baseline: its fixed depth):
        at most `frames` TraceSteps, evenly spaced, the last iterate always among them."""
        check_batch(idx, None, self.cfg.vocab_size, idx.shape[-1] if idx.dim() else 1)
        if idx.shape[0] != 1:
            raise ValueError(f"trace takes one input (1, n), got {tuple(idx.shape)}")
        n = idx.shape[1]
        if self.cfg.layers is None:
            problem = self.equilibrium(idx)
            steps, z, tol = self.loops(n) or problem.solve.max_iter, problem.y0, problem.solve.tol
            maps = [problem.f] * steps
        else:  # the stack's layers, one frame each
            maps = [self.map(idx, i) for i in range(self.cfg.layers)]
            steps, z, tol = len(maps), self.start((1, n, self.cfg.d), self.embed.weight), 0.0
        logits, residuals = [], []
        for f in maps:
            z_next = f(z)
            residuals.append(float((z_next - z).norm() / z_next.norm().clamp(min=1e-12)))
            z = z_next
            logits.append(self.head(z).float())
            if self.loops(n) is None and residuals[-1] < tol:
                break
        shown = max(1, min(frames, len(logits)))
        keep = sorted({round(i * (len(logits) - 1) / max(shown - 1, 1)) for i in range(shown)})
        what = "layer" if self.cfg.layers is not None else "iteration"
        how = "" if self.cfg.layers is not None else " (Picard)"
        return [TraceStep(logits[i], residuals[i], f"{what} {i + 1} of {len(logits)}{how}") for i in keep]

    def parameter_counts(self) -> dict[str, int]:
        """{'total': all parameters, 'dense': all but the embedding lookup table}."""
        total = sum(p.numel() for p in self.parameters())
        return {"total": total, "dense": total - self.embed.weight.numel()}

    def param_groups(self) -> list[ParamGroup]:
        """All on AdamW: the embedding and the biases without weight decay, the kernels and the head with."""
        named = [(n, p) for n, p in self.named_parameters() if not n.startswith("embed.")]
        weights = [p for n, p in named if n.endswith("weight")]  # conv1, conv2 (each layer's), head
        biases = [p for n, p in named if n.endswith("bias")]
        return [ParamGroup("embedding", [self.embed.weight], "adamw", wd_mult=0.0),
                ParamGroup("map", weights, "adamw"), ParamGroup("map.biases", biases, "adamw", wd_mult=0.0)]

    def flops_per_token(self, out: ModelOutput | float | None = None) -> float:
        """Forward FLOPs per position: the head, plus each evaluation of the map (of a forward's
        ModelOutput, a number of evaluations, or the worst case at seq_len when None)."""
        c, v = self.cfg.d, self.cfg.vocab_size
        k = self.cfg.kernel ** self.cfg.dims  # taps of a kernel
        n_evals = out.n_evals if isinstance(out, ModelOutput) else out
        if n_evals is None:  # (the stack: its layers)
            n_evals = self.loops(self.cfg.seq_len) or self.max_iter(self.cfg.seq_len) + 1
        per_eval = 2 * (2 * c) * c * k + 2 * c * c * k
        return 2 * c * v + n_evals * per_eval
