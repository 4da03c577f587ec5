"""Our transformer-1m against a classic GPT of the same width, depth and heads, side by side.

The yardstick is nanoGPT's model (Karpathy, github.com/karpathy/nanoGPT, model.py) at the size of
`attractor.models.build("transformer-1m")`: d 128, 4 heads, 5 blocks, vocabulary 256, context 256.
It differs from our block only in the recipe: learned positions instead of rotary embeddings,
LayerNorm (with weight, no bias) instead of parameter-free RMSNorm, no QK-norm, a GELU MLP of
width 4d instead of ReLU^2, and no biases in either (nanoGPT's `bias=False` option). Both tie
the head to the embedding and attend through `scaled_dot_product_attention(is_causal=True)`.
Per token and block the two do the same matrix multiplies (12 d^2 weights, the same attention),
so any difference in speed is elementwise work and overhead.

The loop is the bare one of bench.common: forward with loss, backward, AdamW (lr 3e-4, weight
decay 0.1), batch 16 x 256 byte tokens of English text (Python's own pydoc topics, which every
Python installation ships). The two models take turns, one training step each per round on the
identical batch, a few warm-up rounds, then the median over the timed rounds; the ratio is the
median of the per-round ratios (each round measures both models within a second of each other,
so load from other jobs cancels out better than in a ratio of medians). The loss of each model
after the timed rounds is printed as a sanity check, not as a learning comparison.

The second row runs our model with the eager ops (`train.kernels=eager`). A third row, where the
fused C++ kernels build (a C++ compiler and ninja), trains transformer-1m again with its
elementwise parts as those kernels (`attractor.kernels.use_fused_kernels`, what the trainer's
default `train.kernels=auto` picks on a CPU): the same model and values, the passes over memory
fused. The first build takes about 15 s, before the rounds. `--eager-only` drops that row.

`--profile` adds a torch.profiler table per model (top operators by self CPU time over a few
steps), which is how the hot spots in docs/benchmarks.md were found.

Threads default to 2 (the yardstick was quoted at 2 threads); on the shared 2-core machine
`--threads 1` gives steadier absolute numbers, and the ratio is what to read either way.

Run:  python -m bench.yardstick              3 warm-up rounds, median of 20 (~1 minute)
      python -m bench.yardstick --quick      1 warm-up round, median of 5
      python -m bench.yardstick --rounds 60  3 warm-up rounds, median of 60 (~3 minutes)
      python -m bench.yardstick --profile    also the profiler tables
      python -m bench.yardstick --eager-only without the fused-kernels row
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pydoc_data
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attractor.kernels import use_fused_kernels
from attractor.models import build
from bench.common import (SEED, code_line, fused_kernels_available, median, optimizer, print_table, seeded, timed,
                          train_step)

BATCH, SEQ = 16, 256
TOKENS = BATCH * SEQ


@dataclass(frozen=True)
class Sizes:
    warmup: int  # rounds before timing
    steps: int  # timed rounds


FULL = Sizes(warmup=3, steps=20)
QUICK = Sizes(warmup=1, steps=5)


# ---------------------------------------------------------------------------------------------
# The reference model: nanoGPT's GPT, trimmed to what the comparison needs


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256  # bytes
    seq_len: int = 256  # learned positions for this many tokens
    d: int = 128  # width (transformer-1m's)
    n_head: int = 4
    n_layer: int = 5


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.d, 3 * cfg.d, bias=False)
        self.c_proj = nn.Linear(cfg.d, cfg.d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (u.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for u in (q, k, v))  # (B, H, T, K)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))


class GPTBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d, bias=False)
        self.c_fc = nn.Linear(cfg.d, 4 * cfg.d, bias=False)
        self.c_proj = nn.Linear(4 * cfg.d, cfg.d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    """Token and position embeddings, blocks, final LayerNorm, head tied to the token embedding."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d, bias=False)
        self.lm_head = nn.Linear(cfg.d, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        for name, p in self.named_parameters():  # nanoGPT's init
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx: Tensor, targets: Tensor | None = None):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))  # (B, T, D)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return _Output(logits, loss)


@dataclass
class _Output:
    logits: Tensor
    loss: Tensor | None


# ---------------------------------------------------------------------------------------------
# Data: bytes of English text


def text_batches(n: int) -> list[tuple[Tensor, Tensor]]:
    """n seeded batches (inputs, next-byte targets), (B, T) each, from pydoc's topic texts."""
    data = (Path(pydoc_data.__file__).parent / "topics.py").read_bytes()
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(SEED)
    out = []
    for _ in range(n):
        starts = torch.randint(0, tokens.numel() - SEQ - 1, (BATCH,), generator=gen)
        rows = torch.stack([tokens[s : s + SEQ + 1] for s in starts.tolist()])  # (B, T + 1)
        out.append((rows[:, :-1], rows[:, 1:]))
    return out


# ---------------------------------------------------------------------------------------------


GPT_NAME, OURS, FUSED = "gpt (nanoGPT)", "transformer-1m, eager", "transformer-1m, fused kernels"


def models(fused: bool) -> dict[str, nn.Module]:
    """The GPT, ours with the eager ops, and (`fused`) ours with the fused kernels: each
    model's path set explicitly, whatever the trainer's default."""
    nets = {GPT_NAME: seeded(lambda: GPT(GPTConfig())),
            OURS: seeded(lambda: use_fused_kernels(build("transformer-1m"), False))}
    if fused:
        nets[FUSED] = seeded(lambda: use_fused_kernels(build("transformer-1m")))
    return nets


def measure(nets: dict[str, nn.Module], sizes: Sizes) -> tuple[dict[str, list[float]], dict[str, float]]:
    opts = {k: optimizer(m) for k, m in nets.items()}
    seconds: dict[str, list[float]] = {k: [] for k in nets}
    loss = {}
    names = list(nets)
    for i, (x, y) in enumerate(text_batches(sizes.warmup + sizes.steps)):
        for name in names[i % len(names):] + names[:i % len(names)]:  # each model first in turn: no position bias
            model = nets[name]
            s, out = timed(lambda: train_step(model, opts[name], x, y))
            loss[name] = out.loss.item()
            if i >= sizes.warmup:
                seconds[name].append(s)
    return seconds, loss


def profile(fused: bool, steps: int = 5) -> None:
    """torch.profiler: the top operators by self CPU time of each model over `steps` training steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    batches = text_batches(steps + 2)
    for name, model in models(fused).items():
        opt = optimizer(model)
        for x, y in batches[:2]:  # warm-up
            train_step(model, opt, x, y)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for x, y in batches[2:]:
                train_step(model, opt, x, y)
        print(f"\n### profile: {name}, {steps} training steps, top 20 operators by self CPU time\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.yardstick", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up round, median of 5")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 20; the ratio's spread "
                        "shrinks with more: single rounds range over +-30%% on a shared machine)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--profile", action="store_true", help="also print profiler tables")
    parser.add_argument("--eager-only", action="store_true", help="no fused-kernels row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        sizes = Sizes(warmup=sizes.warmup, steps=args.rounds)
    start = time.perf_counter()
    command = "python -m bench.yardstick" + (" --quick" if args.quick else "") + \
        (f" --rounds {args.rounds}" if args.rounds is not None else "") + \
        (f" --threads {args.threads}" if args.threads != 2 else "") + (" --eager-only" if args.eager_only else "")
    print(f"{command}, {time.strftime('%Y-%m-%d %H:%M %Z')}; {code_line()}", flush=True)
    fused = not args.eager_only and fused_kernels_available("fused-kernels row")
    nets = models(fused)
    params = {name: sum(p.numel() for p in net.parameters()) for name, net in nets.items()}  # before training
    seconds, loss = measure(nets, sizes)
    gpt = seconds[GPT_NAME]
    rows = []
    for name, s in seconds.items():
        n = params[name]
        rows.append([name, f"{n:,}", f"{median(s) * 1e3:.0f}", f"{TOKENS / median(s):,.0f}",
                     f"{median(gpt) / median(s):.2f}", f"{loss[name]:.2f}"])
    print_table(f"Training steps, batch {BATCH} x {SEQ} bytes, AdamW, models taking turns: median of "
                f"{sizes.steps} after {sizes.warmup} warm-up", ["model", "params", "ms / step", "tokens/s",
                "tokens/s vs gpt", f"loss at step {sizes.warmup + sizes.steps}"], rows)
    for name, s in seconds.items():
        if name != GPT_NAME:  # ours tokens/s over the GPT's, per round
            ratios = [g / o for g, o in zip(gpt, s)]
            print(f"{name} / gpt tokens/s, median of per-round ratios: {median(ratios):.2f} "
                  f"(range {min(ratios):.2f} to {max(ratios):.2f})")
    if args.profile:
        profile(fused)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
