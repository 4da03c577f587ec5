"""The recursive puzzle reasoners: TRM, and the Attractor reasoner that solves TRM's inner loop.

TRM: Jolicoeur-Martineau, "Less is More: Recursive Reasoning with Tiny Networks", arXiv
2510.04871 (2025). One small network `net` updates a latent z_L and an answer z_H:
    repeat h_cycles times:  z_L <- net(z_L + z_H + x)  l_cycles times;  z_H <- net(z_H + z_L)
the first h_cycles - 1 cycles without gradient, the last with it; logits decode z_H, and a halting
head reads z_H at the first prefix position. That is one *supervision step*. Deep supervision
carries (z_H, z_L), detached, from step to step, each step with its own loss, for up to
halt_max_steps steps per sample; a sample stops early when q_halt > 0 (ACT with a learned head).

AttractorReasoner: Fein-Ashley and Rashidinejad, arXiv 2605.12466 (SPEC 2.2). The inner
l_cycles loop becomes a fixed-point solve of z_L = net(z_L + z_H + x), warm-started from the
carried z_L, by the equilibrium models' one solve, `solve_equilibrium` (Anderson m=5, at least 4
and at most 8 steps, tol 1e-3), and trained by the phantom gradient (k=2). With `joint=True` the whole cycle, the map
(z_H, z_L) -> (net(z_H + z_L'), z_L' = net(z_L + z_H + x)), is solved as one fixed point
instead (the two states concatenated along the sequence, (B, 2(P+L), D)); h_cycles is then unused.

The ACT scheme, exactly TRM's, runs inside `forward` so that the generic trainer, which calls
`model(inputs, labels)` once per optimiser step, trains with deep supervision:
- training mode: ONE supervision step per call on the carried state (`ReasonerCarry`). Slots that
  halted (all of them on the first call, after `reset_carry()` or when the batch size or the
  puzzle length changes) take this call's sample and restart from the initial state; the others
  keep their sample and ignore this call's. A slot halts after halt_max_steps steps, or when
  q_halt > 0 and, with probability halt_explore, only once a minimum step drawn from
  [2, halt_max_steps] is reached.
  Loss: stablemax CE over scored cells + 0.5 BCE(q_halt, "every scored cell right"). The logits,
  loss and `out.metrics` refer to the carried samples, not necessarily this call's inputs.
- eval mode: a fresh state, every supervision step run (no halting, no exploration), the last
  step's logits; deterministic. The training carry is left alone.
The carry and the exploration generator are saved in state_dict (see `get_extra_state`), so a
resumed run continues exactly.

Deviations from the published models, and why:
- Blocks are ours (attractor.layers.Block: pre-norm, RoPE, QK-norm, ReLU^2, no biases), not TRM's
  post-norm SwiGLU blocks. A pre-norm stack applied hundreds of times lets the state grow, so
  `net` ends in an RMS norm: every z_H and z_L has unit RMS, which is what post-norm achieves.
  At equal width the MLP is 4d ReLU^2 (2 x 4 d^2 weights) instead of SwiGLU 2/3 x 4d (3 x 1536 x
  512 at d=512): the 7M / 27M presets have 6.3M / 25.2M parameters, not 6.8M / 27.3M.
- The prefix (TRM: 16 positions holding a per-puzzle embedding, one shared vector on Sudoku and
  mazes) is a learned (prefix_len, D) parameter, zero at init, trained by the main optimiser
  (TRM uses SignSGD for it).
- The head is untied and the embedding unit-scale, as TRM; the halting head has one output
  (q_halt): TRM's q_continue has no loss in the published setting.
- The phantom gradient is `Phantom(k=2, damping=1.0)`: gradients through two undamped steps from
  the solution, as the published code's bptt_through=2. The published code also moves the
  forward value by those two steps; ours keeps the solver's answer (the same at a fixed point).
- The published reasoner's Anderson read zero-filled history slots (SPEC 3); ours is the tested
  solver of `attractor.fixedpoint`.

`GridTRMConfig` (the "grid-trm" family) is TRM on square grids of any side (the maze-sizes
task's mazes): the cells' positions are 2-D (attractor.layers.grid_rotary, as the grid
transformer's in puzzle.py), the prefix keeps angle 0, and the side comes from the input.

Dimension letters: B batch, L puzzle length, P prefix length, S = P + L, D width, V vocabulary.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attractor.fixedpoint import Anderson, FixedPointInfo, Phantom
from attractor.layers import Block, block_flops, init_weights, rms_norm
from attractor.models.base import IGNORE_INDEX, ModelOutput, ParamGroup, block_groups, check_depth, check_width
from attractor.models.equilibrium import Equilibrium, Preview, SolveConfig, solve_equilibrium
from attractor.models.puzzle import PuzzleModel, TraceStep, check_puzzle_batch, grid_side
from attractor.schema import check_fields, require

# emit(z_H, residual, label): one refinement a person can watch (see `trace`)
Emit = Callable[[Tensor, "float | None", str], None]


@dataclass(frozen=True)
class ReasonerConfig:
    """What TRM and the Attractor reasoner share (defaults: about 0.9M parameters, 9x9 Sudoku)."""

    grid: ClassVar[bool] = False  # square grids of any side with 2-D positions (GridTRMConfig)
    vocab_size: int = 11  # Sudoku 9x9: pad, blank, 9 digits; mazes: 6
    seq_len: int = 81  # puzzle length L, without the prefix
    d: int = 192  # width
    n_head: int = 4
    n_layer: int = 2  # blocks in the one shared network (TRM's L_layers)
    prefix_len: int = 4  # learned positions before the puzzle (TRM: 16); the halting head reads the first
    h_cycles: int = 3  # answer updates per supervision step, all but the last without grad (TRM: 3)
    halt_max_steps: int = 16  # supervision steps per sample (TRM: 16)
    halt_explore: float = 0.1  # training: chance that a slot must run a drawn minimum of steps
    seed: int = 0  # seeds the initial state and the exploration draws

    def __post_init__(self) -> None:
        check_fields(self)
        check_width(self.d, self.n_head)
        require(min(self.vocab_size, self.seq_len, self.n_layer, self.prefix_len, self.h_cycles,
                    self.halt_max_steps) >= 1,
                "vocab_size, seq_len, n_layer, prefix_len, h_cycles and halt_max_steps must be >= 1")
        require(0.0 <= self.halt_explore <= 1.0, f"halt_explore={self.halt_explore} must be in [0, 1]")
        require(not self.grid or (self.d // self.n_head) % 4 == 0,
                f"2-D positions need a head size (d / n_head = {self.d // self.n_head}) divisible by 4")


@dataclass(frozen=True)
class TRMConfig(ReasonerConfig):
    l_cycles: int = 6  # latent updates per answer update (TRM: 6)

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.l_cycles >= 1, f"l_cycles={self.l_cycles} must be >= 1")


@dataclass(frozen=True)
class GridTRMConfig(TRMConfig):
    """TRM on square grids of any side (mazes of the maze-sizes task), 2-D positions (module
    docstring); seq_len (a 9x9 maze's 81 cells) for cost estimates only."""

    grid: ClassVar[bool] = True
    vocab_size: int = 6  # maze tokens (attractor/data/maze.py: pad and `# SGo`)


def published_solve() -> SolveConfig:
    """SPEC 2.2: Anderson m=5, 4 to 8 steps at tol 1e-3, phantom gradient k=2 (undamped, as the
    published bptt_through=2); one stopping decision per puzzle.

    The AttractorReasoner's default solve. Every value is the published one, written out even
    where it equals SolveConfig's own default (m=5, tol 1e-3): those are the LMs' defaults, with
    their own reasons, and changing them must not move the published puzzle setup.
    """
    return SolveConfig(solver=Anderson(m=5), grad=Phantom(k=2, damping=1.0), tol=1e-3, max_iter=8,
                       min_iter=4, stop="sample")


@dataclass(frozen=True)
class AttractorReasonerConfig(ReasonerConfig):
    solve: SolveConfig = field(default_factory=published_solve)
    joint: bool = False  # solve the whole (z_H, z_L) cycle as one fixed point (h_cycles unused)


@dataclass
class ReasonerCarry:
    """The state deep supervision carries between training calls, one slot per batch row."""

    z_H: Tensor  # (B, S, D) answer state, detached
    z_L: Tensor  # (B, S, D) latent state, detached
    steps: Tensor  # (B,) int64 supervision steps the slot's sample has had
    halted: Tensor  # (B,) bool: the slot takes a new sample at the next call
    inputs: Tensor  # (B, L) the slot's current puzzle
    labels: Tensor  # (B, L) its solution (IGNORE_INDEX where not scored)

    def to(self, device: torch.device) -> ReasonerCarry:
        return ReasonerCarry(*(getattr(self, n).to(device) for n in CARRY_FIELDS))


CARRY_FIELDS = ("z_H", "z_L", "steps", "halted", "inputs", "labels")


@dataclass
class StepReport:
    """The solve statistics of one supervision step."""

    depth: Tensor  # (B,) int64 applications of the inner map per sample (summed over the cycles)
    n_evals: int  # forward evaluations of the network over the batch
    converged: Tensor | None = None  # (B,) bool: every solve of the sample met tol (adaptive only)
    info: FixedPointInfo | None = None  # the step's last solve


class RecursiveReasoner(PuzzleModel):
    """The shared part: prefix and embedding, the network, the carry, ACT, halting, tracing.

    A subclass defines `recurse`: one supervision step's recursion from (z_H, z_L).
    """

    # Every training call advances the carry one supervision step: the trainer refuses gradient
    # accumulation, whose micro-batches would be successive steps of the same samples.
    carries_state = True

    def __init__(self, cfg: ReasonerConfig):
        super().__init__(cfg.vocab_size, cfg.d)
        self.cfg = cfg
        self.prefix = nn.Parameter(torch.zeros(cfg.prefix_len, cfg.d))  # (P, D)
        self.blocks = nn.ModuleList(Block(cfg.d, cfg.n_head, causal=False) for _ in range(cfg.n_layer))
        self.halt_head = nn.Linear(cfg.d, 1)
        init_weights(self, n_residual=cfg.n_layer)
        self.init_embedding()
        nn.init.zeros_(self.prefix)  # TRM's puzzle embedding starts at zero
        # TRM: q_head weight 0, bias -5, so q_halt starts far below 0 and nothing halts early
        nn.init.zeros_(self.halt_head.weight)
        nn.init.constant_(self.halt_head.bias, -5.0)
        gen = torch.Generator().manual_seed(cfg.seed)
        # TRM's H_init and L_init: fixed random vectors (truncated normal, std 1), every position
        start = nn.init.trunc_normal_(torch.empty(2, cfg.d), std=1.0, a=-2.0, b=2.0, generator=gen)
        self.register_buffer("start", start)  # (2, D): z_H, z_L
        self.halt_rng = torch.Generator().manual_seed(cfg.seed)  # CPU; exploration draws
        self.carry: ReasonerCarry | None = None

    # ---- the recursion -----------------------------------------------------------------------

    def net(self, h: Tensor, injection: Tensor) -> Tensor:
        """The one shared network: rms_norm(blocks(h + injection)), (B, S, D) -> (B, S, D)."""
        p = self.cfg.prefix_len
        grid = (p, grid_side(h.shape[1] - p)) if self.cfg.grid else None  # the prefix, then the cells
        h = h + injection
        for block in self.blocks:
            h = block(h, grid=grid)
        # unit RMS, as TRM's post-norm blocks leave it (module docstring)
        return rms_norm(h, fused=self.fused_kernels)

    def embed_inputs(self, inputs: Tensor) -> Tensor:
        """(B, L) ids -> x (B, S, D): the learned prefix, then the token embeddings."""
        prefix = self.prefix.expand(inputs.shape[0], -1, -1)  # (B, P, D)
        return torch.cat([prefix, self.embed(inputs)], dim=1)

    def initial_state(self, batch: int, cells: int | None = None) -> tuple[Tensor, Tensor]:
        """(z_H, z_L), each (B, S, D), S = prefix_len + cells (None: seq_len): the fixed start
        vectors at every position."""
        s = self.cfg.prefix_len + (self.cfg.seq_len if cells is None else cells)
        z_H, z_L = (v.expand(batch, s, -1) for v in self.start)
        return z_H, z_L

    def recurse(self, x: Tensor, z_H: Tensor, z_L: Tensor, iters: int | None,
                emit: Emit | None) -> tuple[Tensor, Tensor, StepReport]:
        """One supervision step from (z_H, z_L), each (B, S, D); x (B, S, D) the input."""
        raise NotImplementedError

    def cycles(self, x: Tensor, z_H: Tensor, z_L: Tensor, iters: int | None, emit: Emit | None,
               refine: Callable) -> tuple[Tensor, Tensor, StepReport]:
        """h_cycles of (z_L <- refine(...), z_H <- net(z_H + z_L)), the last one with gradient.

        refine(x, z_H, z_L, iters, preview) -> (z_L, StepReport) updates the latent; `preview`
        (or None) takes each intermediate latent and its residual, for the trace.
        """
        h, grad = self.cfg.h_cycles, torch.is_grad_enabled()
        depth, n_evals, converged, info = 0, 0, None, None
        for cycle in range(1, h + 1):
            preview = None
            if emit is not None:
                def preview(z: Tensor, residual: float | None, i: int, z_H: Tensor = z_H, cycle: int = cycle) -> None:
                    emit(self.net(z_H, z), residual, f"cycle {cycle}, iteration {i}")
            with torch.set_grad_enabled(grad and cycle == h):
                z_L, report = refine(x, z_H, z_L, iters, preview)
                z_H = self.net(z_H, z_L)
            depth, n_evals = depth + report.depth, n_evals + report.n_evals + 1
            if report.converged is not None:
                converged = report.converged if converged is None else converged & report.converged
            info = report.info
            if emit is not None:
                emit(z_H, worst_residual(report), f"cycle {cycle}, iteration {int(report.depth.max())}")
        return z_H, z_L, StepReport(depth, n_evals, converged, info)

    # ---- forward -----------------------------------------------------------------------------

    def forward(self, inputs: Tensor, labels: Tensor | None = None, *, iters: int | None = None,
                steps: int | None = None) -> ModelOutput:
        """One supervision step on the carry (training mode), or every step from a fresh state
        (eval mode). See the module docstring.

        Args:
            inputs: (B, L) puzzle ids; labels: (B, L) solution ids, IGNORE_INDEX where not scored.
            iters: the depth knob, as for the LMs: exactly k applications of the inner recurrent
                map per latent update (TRM: k latent updates z_L <- net(z_L + z_H + x) instead of
                l_cycles; AttractorReasoner: k plain steps of the solved map instead of the solve);
                None: the model's own rule (l_cycles, or the adaptive solve).
            steps: eval mode only: supervision steps to run (None: halt_max_steps).
        Returns:
            ModelOutput: logits (B, L, V) float32, loss, depth (B,) (inner iterations of the last
            step), n_evals (network evaluations of the call), converged, info, metrics.
        """
        c = self.cfg
        check_puzzle_batch(inputs, labels, c.vocab_size, c.seq_len, c.grid)
        check_depth(iters, type(self).__name__)
        if steps is not None:
            if self.training:
                raise ValueError("steps= sets the supervision steps of an evaluation; training runs one per call")
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"steps={steps!r} must be None or an int >= 1")
        if labels is None:
            labels = torch.full_like(inputs, IGNORE_INDEX)
            scored = False
        else:
            scored = True
        if self.training:
            return self.supervision_step(inputs, labels, iters, scored)
        z_H, report = self.run_steps(inputs, iters, steps or c.halt_max_steps, None)
        logits, loss = self.decode(z_H[:, c.prefix_len:], labels if scored else None)
        return self.output(logits, loss, report, {})

    def run_steps(self, inputs: Tensor, iters: int | None, steps: int,
                  emit: Emit | None) -> tuple[Tensor, StepReport]:
        """Eval: `steps` supervision steps from a fresh state; z_H (B, S, D) and the last report.

        Only the last step keeps a graph (if autograd is on): the state between steps is
        detached, as in training.
        """
        x = self.embed_inputs(inputs)
        z_H, z_L = self.initial_state(*inputs.shape)
        n_evals = 0
        for step in range(1, steps + 1):
            step_emit = None if emit is None else (lambda z, r, label, s=step: emit(z, r, f"step {s}, {label}"))
            with torch.set_grad_enabled(torch.is_grad_enabled() and step == steps):
                z_H, z_L, report = self.recurse(x, z_H.detach(), z_L.detach(), iters, step_emit)
            n_evals += report.n_evals
        report.n_evals = n_evals
        return z_H, report

    def supervision_step(self, inputs: Tensor, labels: Tensor, iters: int | None, scored: bool) -> ModelOutput:
        """Training: one ACT step on the carried state (module docstring); updates the carry."""
        c, batch = self.cfg, inputs.shape[0]
        carry = self.carry
        if carry is None or carry.steps.shape[0] != batch or carry.inputs.shape[1] != inputs.shape[1]:
            z_H, z_L = self.initial_state(*inputs.shape)
            carry = ReasonerCarry(z_H, z_L, torch.zeros(batch, dtype=torch.long, device=inputs.device),
                                  torch.ones(batch, dtype=torch.bool, device=inputs.device), inputs, labels)
        carry = carry.to(inputs.device)
        new = carry.halted  # (B,) slots that take this call's sample
        start_H, start_L = self.initial_state(*inputs.shape)
        rows = new.view(-1, 1, 1)
        z_H = torch.where(rows, start_H, carry.z_H)  # (B, S, D)
        z_L = torch.where(rows, start_L, carry.z_L)
        inputs = torch.where(new.view(-1, 1), inputs, carry.inputs)  # (B, L)
        labels = torch.where(new.view(-1, 1), labels, carry.labels)
        steps = torch.where(new, 0, carry.steps) + 1  # (B,)

        z_H, z_L, report = self.recurse(self.embed_inputs(inputs), z_H, z_L, iters, None)
        logits, loss = self.decode(z_H[:, c.prefix_len:], labels)  # (B, L, V)
        q_halt = self.halt_head(z_H[:, 0]).squeeze(-1).float()  # (B,)

        with torch.no_grad():
            keep = labels != IGNORE_INDEX
            right = (logits.argmax(-1) == labels) & keep  # (B, L)
            correct = right.sum(-1) == keep.sum(-1)  # (B,) every scored cell right
            cell = right.sum(-1) / keep.sum(-1).clamp(min=1)
            halted = steps >= c.halt_max_steps
            if c.halt_max_steps > 1:
                halted = halted | (q_halt > 0)
                explore = torch.rand(batch, generator=self.halt_rng) < c.halt_explore
                least = torch.randint(2, c.halt_max_steps + 1, (batch,), generator=self.halt_rng) * explore
                halted = halted & (steps >= least.to(steps.device))
        loss = loss + 0.5 * F.binary_cross_entropy_with_logits(q_halt, correct.float())
        self.carry = ReasonerCarry(z_H.detach(), z_L.detach(), steps, halted, inputs, labels)
        metrics = halted_metrics(halted & keep.any(-1), correct, cell, q_halt, steps) if scored else {}
        return self.output(logits, loss if scored else None, report, metrics)

    def output(self, logits: Tensor, loss: Tensor | None, report: StepReport,
               metrics: dict[str, Tensor]) -> ModelOutput:
        converged = None if report.converged is None else report.converged.float().mean()
        return ModelOutput(logits, loss, depth=report.depth, n_evals=report.n_evals, converged=converged,
                           info=report.info, metrics=metrics)

    def reset_carry(self) -> None:
        """Forget the carried state: every slot takes a new sample at the next training call."""
        self.carry = None

    # ---- watching a solve --------------------------------------------------------------------

    @torch.no_grad()
    def trace(self, inputs: Tensor) -> list[TraceStep]:
        """Every refinement of one puzzle's eval-mode solve, inputs (1, L).

        One TraceStep per inner iteration (a TRM latent update, an Attractor solver iteration)
        of every cycle of every supervision step: the logits are the answer the network would
        give from that latent (net(z_H + z_L) decoded: one extra evaluation per entry); the last
        entry of a cycle is its actual answer update, so the last TraceStep's logits are those
        of the eval forward.
        """
        if inputs.dim() != 2 or inputs.shape[0] != 1:
            raise ValueError(f"trace takes one puzzle, (1, L); got shape {tuple(inputs.shape)}")
        check_puzzle_batch(inputs, None, self.cfg.vocab_size, self.cfg.seq_len, self.cfg.grid)
        out: list[TraceStep] = []
        p = self.cfg.prefix_len

        def emit(z_H: Tensor, residual: float | None, label: str) -> None:
            out.append(TraceStep(self.decode(z_H[:, p:], None)[0], residual, label))

        was_training = self.training
        self.eval()
        try:
            self.run_steps(inputs, None, self.cfg.halt_max_steps, emit)
        finally:
            self.train(was_training)
        return out

    # ---- state, optimiser groups, cost -------------------------------------------------------

    def get_extra_state(self) -> Tensor:
        """The carry and the exploration generator, serialised into one uint8 tensor.

        Checkpoints store tensors only (safetensors), and the carry's shape follows the batch, so
        it cannot be a fixed buffer; nor should it be a buffer at all, since DDP broadcasts
        buffers from rank 0 and every rank carries its own samples.
        """
        carry = None if self.carry is None else {n: getattr(self.carry, n).cpu() for n in CARRY_FIELDS}
        buffer = io.BytesIO()
        torch.save({"rng": self.halt_rng.get_state(), "carry": carry}, buffer)
        return torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8).clone()

    def set_extra_state(self, state: Tensor) -> None:
        data = torch.load(io.BytesIO(state.cpu().numpy().tobytes()), weights_only=True)
        self.halt_rng.set_state(data["rng"])
        carry = data["carry"]
        self.carry = None if carry is None else ReasonerCarry(**carry).to(self.start.device)

    def param_groups(self) -> list[ParamGroup]:
        """Embedding and head, prefix, halting head (AdamW, decayed as TRM decays everything);
        the network's matrices, and its vectors (none: the blocks are ungated) without decay."""
        return [*self.embedding_groups(), ParamGroup("prefix", [self.prefix], "adamw"),
                ParamGroup("halt", list(self.halt_head.parameters()), "adamw"),
                *block_groups("blocks", self.blocks)]

    def flops_per_token(self, out: ModelOutput | float | None = None) -> float:
        """Forward FLOPs per cell: of a forward's network evaluations (its ModelOutput or a
        number), or of one training call's worst case (None). Prefix positions count as cells."""
        c = self.cfg
        s = c.prefix_len + c.seq_len
        n_evals = out.n_evals if isinstance(out, ModelOutput) else out
        if n_evals is None:
            n_evals = self.evals_per_step()
        per_eval = c.n_layer * block_flops(c.d, s, causal=False) * s / c.seq_len
        return 2 * c.d * c.vocab_size + n_evals * per_eval

    def evals_per_step(self) -> int:
        """Most forward evaluations of the network in one supervision step."""
        raise NotImplementedError


def worst_residual(report: StepReport) -> float | None:
    """The largest relative residual of the report's last solve (None without a solve)."""
    return None if report.info is None else float(report.info.residual.max())


def halted_metrics(counted: Tensor, correct: Tensor, cell: Tensor, q_halt: Tensor,
                   steps: Tensor) -> dict[str, Tensor]:
    """TRM's training metrics over the slots counted (halted on this call, with scored cells):
    their number, and their means of exact and cell accuracy, halting-head accuracy and steps
    (0 when none halted)."""
    n = counted.sum()

    def mean(v: Tensor) -> Tensor:
        return (v.float() * counted).sum() / n.clamp(min=1)

    return {"halted": n.float(), "exact": mean(correct), "cell": mean(cell),
            "halt_acc": mean((q_halt >= 0) == correct), "steps": mean(steps)}


class TRM(RecursiveReasoner):
    """TRM: the latent updated l_cycles times per answer update.

    `iters=k` replaces l_cycles by k: each cycle applies TRM's recurrent map, the latent update
    z_L <- net(z_L + z_H + x), exactly k times (0: the latent is left as it is), which is what
    `iters=k` means for every family (k applications of the recurrent map). h_cycles, the answer
    updates, is not a depth knob: it stays as configured. `depth` reports h_cycles x k (or
    h_cycles x l_cycles). Built from a TRMConfig.
    """

    def recurse(self, x, z_H, z_L, iters, emit):
        return self.cycles(x, z_H, z_L, iters, emit, self.unrolled_latent)

    def unrolled_latent(self, x: Tensor, z_H: Tensor, z_L: Tensor, iters: int | None,
                        preview) -> tuple[Tensor, StepReport]:
        """z_L <- net(z_L + z_H + x), l_cycles (or iters) times, backprop through all of them."""
        n = self.cfg.l_cycles if iters is None else iters
        injection = z_H + x
        for i in range(1, n + 1):
            z_L = self.net(z_L, injection)
            if preview is not None and i < n:
                preview(z_L, None, i)
        depth = torch.full((x.shape[0],), n, dtype=torch.long, device=x.device)
        return z_L, StepReport(depth, n)

    def evals_per_step(self) -> int:
        return self.cfg.h_cycles * (self.cfg.l_cycles + 1)


class AttractorReasoner(RecursiveReasoner):
    """TRM with the latent's inner loop solved to a fixed point (or the whole cycle: joint).

    `iters=k`: each solve replaced by exactly k plain steps of its map from the warm start, with
    the configured gradient attached (0: the warm start itself), as `iters` means for the LMs.
    Built from an AttractorReasonerConfig.
    """

    def recurse(self, x, z_H, z_L, iters, emit):
        if not self.cfg.joint:
            return self.cycles(x, z_H, z_L, iters, emit, self.solved_latent)
        s = z_H.shape[1]
        preview = None if emit is None else (lambda z, r, i: emit(z[:, :s], r, f"iteration {i}"))
        z, report = self.solve(self.equilibrium_at(x, z_H, z_L), iters, preview)
        if emit is not None:
            emit(z[:, :s], worst_residual(report), f"iteration {int(report.depth.max())}")
        return z[:, :s], z[:, s:], StepReport(report.depth, 2 * report.n_evals, report.converged, report.info)

    def solved_latent(self, x: Tensor, z_H: Tensor, z_L: Tensor, iters: int | None,
                      preview) -> tuple[Tensor, StepReport]:
        """z_L = net(z_L + z_H + x) solved from the carried z_L."""
        return self.solve(self.equilibrium_at(x, z_H, z_L), iters, preview)

    def equilibrium(self, inputs: Tensor) -> Equilibrium:
        """The first problem the eval forward solves on puzzles inputs (B, L), from the initial
        state: the latent update f(z) = net(z + z_H + x) from z_L, each (B, S, D); joint, the
        whole cycle (see `equilibrium_at`) from [z_H, z_L] (B, 2S, D). The solve config is
        cfg.solve; bidirectional (causal=False)."""
        z_H, z_L = self.initial_state(*inputs.shape)
        return self.equilibrium_at(self.embed_inputs(inputs), z_H, z_L)

    def equilibrium_at(self, x: Tensor, z_H: Tensor, z_L: Tensor) -> Equilibrium:
        """The problem a latent update (joint: a whole cycle) solves from the state (z_H, z_L),
        each (B, S, D), with x (B, S, D) the embedded input."""
        solve = self.cfg.solve
        if not self.cfg.joint:
            injection = z_H + x
            return Equilibrium(lambda z: self.net(z, injection), z_L, solve, causal=False)
        s = z_H.shape[1]

        def cycle_map(z: Tensor) -> Tensor:  # (B, 2S, D) = [z_H, z_L] -> one whole cycle
            z_L = self.net(z[:, s:], z[:, :s] + x)
            return torch.cat([self.net(z[:, :s], z_L), z_L], dim=1)

        return Equilibrium(cycle_map, torch.cat([z_H, z_L], dim=1), solve, causal=False)

    def solve(self, problem: Equilibrium, iters: int | None,
              preview: Preview | None) -> tuple[Tensor, StepReport]:
        """`solve_equilibrium`, reported per sample: converged when every unit of it is."""
        z, report = solve_equilibrium(problem, iters, preview)
        return z, StepReport(report.depth, report.n_evals, report.converged_per_sample(), report.info)

    def evals_per_step(self) -> int:
        evals = self.cfg.solve.max_iter + 1
        return 2 * evals if self.cfg.joint else self.cfg.h_cycles * (evals + 1)
