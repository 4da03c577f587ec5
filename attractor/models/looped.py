"""LoopedLM: a stable looped transformer (prelude -> weight-tied recurrence -> coda), Parcae-style.

Prairie, Novack, Berg-Kirkpatrick and Fu, "Parcae: Scaling Laws for Stable Looped Language
Models", arXiv 2604.12946 (2026); the baseline of the Attractor paper (arXiv 2605.12466, SPEC 2.1).
Design choices:
- tied embedding E -> n_prelude plain blocks -> e (B, T, D), the input injected at every loop;
- a recurrent group R of n_recur plain blocks, weight-tied across loops, run on a state s that
  starts at zero:  s <- R(decay * s + inject(norm(e))).  decay = exp(-exp(a)) per channel is
  the diagonal A = -exp(a) discretised with step 1, so 0 < decay < 1 and the linear part of the
  recurrence is a contraction by construction (Parcae's stability argument). inject is a
  bias-free Linear(D, D) initialised to the identity and applied to the normalised e (Parcae's
  B and prelude norm); it is computed once, since e does not change across loops;
- n_coda plain blocks on the final state, then the tied unembedding;
- training depth per sequence: T_b = 1 + Poisson(mean_loops - 1), clamped to max_loops, so the
  mean is mean_loops and T_b >= 1. Draws come from a torch.Generator the model owns, seeded by
  `seed`: runs are reproducible, and DDP ranks with one config draw identical depths. A batch
  runs max_b T_b loops with the sequences right-aligned: sequence b starts at loop
  max T - T_b and only the started sequences are computed, so every sequence ends on the last
  loop and its own last `backprop_loops` loops are the differentiated ones (Parcae's truncated
  backprop; earlier loops run under no_grad, so training memory does not grow with depth);
- evaluation (eval mode, or an explicit `loops=k`): every sequence runs the same fixed depth,
  k or mean_loops. Truncation applies whenever autograd is on, in either mode.

Dimension letters: B batch, T sequence, D width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from attractor.layers import Block, block_flops, init_weights, rms_norm
from attractor.kvcache import KVCache
from attractor.models.base import LMShape, ModelOutput, ParamGroup, TiedLM, block_groups, check_batch, check_depth
from attractor.schema import require


@dataclass(frozen=True)
class LoopedConfig(LMShape):  # plus vocab_size, seq_len, d, n_head
    n_prelude: int = 2  # plain blocks before the loop, giving the injected input e
    n_recur: int = 2  # plain blocks in the recurrent group R, reused at every loop
    n_coda: int = 1  # plain blocks after the loop
    mean_loops: int = 8  # mean training depth, and the evaluation depth (Parcae: 8)
    max_loops: int = 16  # training depths are clamped to this
    backprop_loops: int | None = 4  # differentiate only the last k loops (Parcae 140M: 4); None: all
    decay_init: float = 0.5  # initial per-channel state decay exp(-exp(a)), in (0, 1)
    seed: int = 0  # seeds the training-depth sampler

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.n_recur >= 1, f"n_recur={self.n_recur} must be >= 1")
        require(min(self.n_prelude, self.n_coda) >= 0,
                f"n_prelude={self.n_prelude} and n_coda={self.n_coda} must be >= 0")
        require(1 <= self.mean_loops <= self.max_loops,
                f"need 1 <= mean_loops ({self.mean_loops}) <= max_loops ({self.max_loops})")
        require(self.backprop_loops is None or self.backprop_loops >= 1,
                f"backprop_loops={self.backprop_loops} must be None (all) or >= 1")
        require(0.0 < self.decay_init < 1.0, f"decay_init={self.decay_init} must be in (0, 1)")


class LoopedLM(TiedLM):
    def __init__(self, cfg: LoopedConfig):
        super().__init__(cfg.vocab_size, cfg.d)
        self.cfg = cfg
        self.prelude = nn.ModuleList(Block(cfg.d, cfg.n_head) for _ in range(cfg.n_prelude))
        self.recur = nn.ModuleList(Block(cfg.d, cfg.n_head) for _ in range(cfg.n_recur))
        self.coda = nn.ModuleList(Block(cfg.d, cfg.n_head) for _ in range(cfg.n_coda))
        self.inject = nn.Linear(cfg.d, cfg.d, bias=False)
        # a = log(-log(decay)): A = -exp(a) < 0, decay = exp(A) in (0, 1).
        self.a = nn.Parameter(torch.full((cfg.d,), math.log(-math.log(cfg.decay_init))))
        init_weights(self, n_residual=cfg.n_prelude + cfg.n_recur + cfg.n_coda)
        nn.init.eye_(self.inject.weight)  # Parcae's B starts at the identity
        self.depth_rng = torch.Generator().manual_seed(cfg.seed)  # CPU; draws training depths

    def decay(self) -> Tensor:
        """Per-channel state decay exp(-exp(a)), in (0, 1): (D,)."""
        return torch.exp(-torch.exp(self.a))

    def depths(self, batch: int, iters: int | None = None) -> Tensor:
        """Recurrence depth per sequence, (B,) int64 on the CPU.

        Poisson-sampled (1 + Poisson(mean_loops - 1), clamped to max_loops) in training mode
        without `iters`; otherwise `iters`, or mean_loops, for every sequence.
        """
        c = self.cfg
        if iters is None and self.training:
            rate = torch.full((batch,), float(c.mean_loops - 1))
            return (1 + torch.poisson(rate, generator=self.depth_rng)).clamp(max=c.max_loops).long()
        return torch.full((batch,), c.mean_loops if iters is None else iters, dtype=torch.long)

    def get_extra_state(self) -> Tensor:
        """The depth sampler's state, saved in state_dict so that a resumed run draws the same
        depths as an uninterrupted one (a uint8 tensor, storable by safetensors)."""
        return self.depth_rng.get_state()

    def set_extra_state(self, state: Tensor) -> None:
        self.depth_rng.set_state(state)

    def step(self, s: Tensor, u: Tensor) -> Tensor:
        """One loop: s <- R(decay * s + u), with u = inject(norm(e)). (B, T, D) -> (B, T, D)."""
        h = self.decay() * s + u
        for block in self.recur:
            h = block(h)
        return h

    def loop(self, u: Tensor, depth: Tensor) -> Tensor:
        """Run sequence b for depth[b] loops from s = 0, right-aligned, truncated backprop."""
        n = int(depth.max()) if depth.numel() else 0
        start = n - depth  # (B,) loop at which each sequence starts
        first_grad = 0 if self.cfg.backprop_loops is None else n - self.cfg.backprop_loops
        grad = torch.is_grad_enabled()
        s = torch.zeros_like(u)
        for i in range(n):
            with torch.set_grad_enabled(grad and i >= first_grad):
                if bool((start <= i).all()):
                    s = self.step(s, u)
                else:  # sequences not yet started stay at zero, and cost nothing
                    rows = (start <= i).nonzero().squeeze(1).to(u.device)
                    s = s.index_copy(0, rows, self.step(s[rows], u[rows]))
        return s

    def forward(self, idx: Tensor, targets: Tensor | None = None, *, iters: int | None = None,
                cache: KVCache | None = None) -> ModelOutput:
        """Decode after the loop: Poisson depth per sequence (training), or a fixed depth.

        Args:
            idx: (B, T) token ids; targets: (B, T) next-token ids, -100 to ignore.
            iters: None samples depths in training mode and uses mean_loops in eval mode; k >= 0
                runs exactly k loops for every sequence (0 decodes the coda of a zero state).
        Returns:
            ModelOutput: logits (B, T, V), loss, depth (B,) loops per sequence, n_evals loops run.
        """
        check_batch(idx, targets, self.cfg.vocab_size, self.cfg.seq_len)
        check_depth(iters, "LoopedLM")
        if cache is not None:
            return self._cached_forward(idx, targets, iters, cache)
        depth = self.depths(idx.shape[0], iters)
        e = self.embed(idx)  # (B, T, D)
        for block in self.prelude:
            e = block(e)
        s = self.loop(self.inject(rms_norm(e, fused=self.fused_kernels)), depth)  # (B, T, D)
        for block in self.coda:
            s = block(s)
        logits, loss = self.decode(s, targets)
        return ModelOutput(logits, loss, depth=depth.to(idx.device), n_evals=int(depth.max()))

    def can_cache(self, iters: int | None) -> bool:
        """A KV cache serves a fixed depth: iters=k, or mean_loops in eval mode (one cache per loop)."""
        return iters is not None or not self.training

    def _cached_forward(self, idx: Tensor, targets: Tensor | None, iters: int | None, cache: KVCache) -> ModelOutput:
        """The forward of idx continuing the cache's positions at a fixed depth n: the prelude, loop
        k's block j (cached as ("recur", k, j)) and the coda attend to their cached keys and values."""
        if not self.can_cache(iters):
            raise ValueError("LoopedLM: a KV cache serves a fixed depth (iters=k, or eval mode), not sampled depths")
        n = self.cfg.mean_loops if iters is None else iters
        cache.check(idx.shape[1], n)
        e = self.embed(idx)
        for i, block in enumerate(self.prelude):
            e = block(e, cache.layer(("prelude", i)))
        u = self.inject(rms_norm(e, fused=self.fused_kernels))
        s = torch.zeros_like(u)
        for k in range(n):  # self.step, each block with its loop's cache
            s = self.decay() * s + u
            for j, block in enumerate(self.recur):
                s = block(s, cache.layer(("recur", k, j)))
        for i, block in enumerate(self.coda):
            s = block(s, cache.layer(("coda", i)))
        cache.advance(idx.shape[1])
        logits, loss = self.decode(s, targets)
        depth = torch.full((idx.shape[0],), n, dtype=torch.long, device=idx.device)
        return ModelOutput(logits, loss, depth=depth, n_evals=n)

    def param_groups(self) -> list[ParamGroup]:
        """Embedding (AdamW, no decay); the blocks' matrices (Muon); the injection and the decay
        parameters (AdamW, no weight decay: Parcae exempts its injection, and decay toward 0
        would push a = log(-log(decay)) and so the decay itself)."""
        blocks = nn.ModuleList([*self.prelude, *self.recur, *self.coda])
        return [*self.embedding_groups(), *block_groups("blocks", blocks),
                ParamGroup("injection", [self.inject.weight, self.a], "adamw", wd_mult=0.0)]

    def flops_per_token(self, out: ModelOutput | float | None = None) -> float:
        """Forward FLOPs per token at a forward's mean depth (its ModelOutput, or a number of
        loops), or at mean_loops (None).

        Only started sequences are computed, so the realised cost is the mean depth over the
        batch. The injection matmul runs once per forward, as does the unembedding.
        """
        c = self.cfg
        if isinstance(out, ModelOutput):
            loops = out.depth.float().mean().item()
        else:
            loops = c.mean_loops if out is None else out
        block = block_flops(c.d, c.seq_len)
        fixed = (c.n_prelude + c.n_coda) * block + 2 * c.d * c.d + 2 * c.d * c.vocab_size
        return fixed + loops * c.n_recur * block
