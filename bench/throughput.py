"""Training throughput: tokens/s and achieved GFLOP/s of the three model families, against fp32 peak.

TransformerLM, AttractorLM (default adaptive solve: Anderson m=5, tol 1e-3 per token, at most 32
steps, one-step gradient; Fein-Ashley and Rashidinejad 2026, arXiv 2605.12466; a second row
"attractor-min6" adds the published 140M model's floor of 6 solver steps, because at
initialisation the default solve stops after about 2) and LoopedLM
(Parcae-style, Prairie et al. 2026, arXiv 2604.12946: training mode, depth 1 + Poisson(7) per
sequence clamped to 16, backprop through the last 4 loops) at matched dense size (bench.common:
d 192, 4 heads, seven blocks' worth, ~3.1M dense parameters), batch 16 x 256 uniformly random
byte tokens (vocabulary 256; no text corpus is involved, so the models stay near initialisation
and the Attractor's iteration counts are those of an untrained map).

The models take turns, one training step (forward, backward, AdamW step) each per round, on
identical batches: a few warm-up rounds, then the median over N rounds. The matmul peak is the
median GFLOP/s of a 2048 x 2048 x 2048 fp32 matmul at the same thread count, timed before and
after the models in the same run; the better of the two is the reference.

FLOPs per training step, two ways:
  3 x fwd      the usual convention: 3 x the realised forward FLOPs (model.flops_per_token with
               the step's ModelOutput: the solver's f-evaluations, the sampled loop depths).
  fwd + 2 x bp forward FLOPs actually executed (the Attractor's one extra differentiable
               evaluation included) plus 2 x the part that is backpropagated. For the Attractor
               (one-step gradient) that part is the backbone, one evaluation of f and the head;
               for LoopedLM the prelude, at most 4 loops per sequence, the coda and the head.
               The convention overstates both iterated models, whose no-grad iterations cost 1x.

Threads default to 1, as in bench.solvers: the 2-core machine is shared, and two-thread kernels
stall whenever another job holds a core; --threads 2 measures both cores.

The models run the eager ops (`train.kernels=eager`), set explicitly. `--kernels` adds each model
again as "<name>, fused": the same seed and batches, with `attractor.kernels.use_fused_kernels`
(what the trainer's default `train.kernels=auto` picks on a CPU: the blocks' elementwise parts as
fused C++ kernels, in the solver's no-grad iterations too), taking turns with the others; the
last column then also gives fused over eager per model.

Run:  python -m bench.throughput            3 warm-up rounds, median of 10
      python -m bench.throughput --quick    1 warm-up round, median of 3 (~1 minute)
      python -m bench.throughput --kernels  with the fused-kernel rows
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from attractor.kernels import use_fused_kernels
from attractor.models import ModelOutput
from bench.common import (
    SEED, attractor_lm, batches, bench_parser, code_line, fused_kernels_available, looped_lm, median, optimizer,
    print_table, seeded, setup, timed, train_step, transformer,
)

BATCH, SEQ = 16, 256
TOKENS = BATCH * SEQ
MATMUL_N = 2048


@dataclass(frozen=True)
class Sizes:
    warmup: int  # rounds before timing
    steps: int  # timed rounds
    matmul_repeats: int


FULL = Sizes(warmup=3, steps=10, matmul_repeats=10)
QUICK = Sizes(warmup=1, steps=3, matmul_repeats=5)


# ---------------------------------------------------------------------------------------------
# Peak


def matmul_gflops(repeats: int) -> float:
    """Median GFLOP/s of an n x n x n fp32 matmul (2 n^3 FLOPs), after 3 warm-up calls."""
    gen = torch.Generator().manual_seed(SEED)
    a = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    b = torch.randn(MATMUL_N, MATMUL_N, generator=gen)
    for _ in range(3):
        a @ b
    seconds = median([timed(lambda: a @ b)[0] for _ in range(repeats)])
    return 2 * MATMUL_N**3 / seconds / 1e9


# ---------------------------------------------------------------------------------------------
# FLOPs of one training step


FUSED = ", fused"  # suffix of the rows trained with the fused kernels


def family(name: str) -> str:
    """The model a row trains: "attractor" for "attractor" and "attractor, fused"."""
    return name.removesuffix(FUSED)


def step_flops(name: str, model: nn.Module, out: ModelOutput) -> tuple[float, float]:
    """(3 x forward FLOPs, forward executed + 2 x backpropagated FLOPs) of one step, whole batch."""
    name = family(name)
    fwd = model.flops_per_token(out)
    if name == "transformer":
        executed, backprop = fwd, fwd
    elif name.startswith("attractor"):  # the solver's evaluations, then one differentiable one (onestep)
        executed = model.flops_per_token(out.n_evals + 1)
        backprop = model.flops_per_token(1)
    else:  # looped: only each sequence's last backprop_loops loops are differentiated
        executed = fwd
        backprop = model.flops_per_token(out.depth.clamp(max=model.cfg.backprop_loops).float().mean().item())
    return 3 * fwd * TOKENS, (executed + 2 * backprop) * TOKENS


def depth(name: str, out: ModelOutput) -> float:
    """Iterations of the step: the solver's f-evaluations, or the mean sampled loop depth."""
    name = family(name)
    if name.startswith("attractor"):
        return out.n_evals
    if name == "looped":
        return out.depth.float().mean().item()
    return 0


# ---------------------------------------------------------------------------------------------
# Measurement and report


def models(fused: bool = False) -> dict[str, nn.Module]:
    builders = {
        "transformer": transformer,
        "attractor": attractor_lm,  # preset defaults: tol 1e-3, max_iter 32, onestep
        # the published 140M setting's floor (SPEC 2.1): at initialisation the solve above stops
        # after ~2 steps, so this row shows the cost at a paper-like depth
        "attractor-min6": lambda: attractor_lm(min_iter=6),
        "looped": looped_lm,  # defaults: mean 8, max 16, backprop_loops 4
    }
    nets = {name: use_fused_kernels(seeded(build), False) for name, build in builders.items()}
    if fused:
        nets |= {name + FUSED: use_fused_kernels(seeded(build)) for name, build in builders.items()}
    return nets


def measure(sizes: Sizes, fused: bool = False) -> dict:
    """Round-robin training steps; per model lists of step seconds, FLOPs and depths."""
    nets = models(fused)
    opts = {k: optimizer(m) for k, m in nets.items()}
    for m in nets.values():
        m.train()
    rec = {k: {"seconds": [], "flops3": [], "flops_bp": [], "depth": [], "converged": []} for k in nets}
    for i, (x, y) in enumerate(batches(sizes.warmup + sizes.steps, BATCH, SEQ)):
        for name, model in nets.items():
            seconds, out = timed(lambda: train_step(model, opts[name], x, y))
            if i < sizes.warmup:
                continue
            f3, fbp = step_flops(name, model, out)
            r = rec[name]
            r["seconds"].append(seconds)
            r["flops3"].append(f3)
            r["flops_bp"].append(fbp)
            r["depth"].append(depth(name, out))
            r["converged"].append(float("nan") if out.converged is None else out.converged.item())
        if i >= sizes.warmup:
            print(f"  round {i - sizes.warmup + 1}/{sizes.steps}: " + ", ".join(
                f"{k} {rec[k]['seconds'][-1]:.2f} s" for k in nets), flush=True)
    return {"nets": nets, "rec": rec}


def report(sizes: Sizes, nets: dict, rec: dict, peaks: tuple[float, float]) -> None:
    rows = []
    for name, model in nets.items():
        c = model.parameter_counts()
        cfg = model.cfg
        if family(name) == "transformer":
            desc = f"{cfg.n_layer} blocks"
        elif name.startswith("attractor"):
            solve = cfg.solve
            desc = (f"{cfg.n_backbone} + {cfg.n_attractor} blocks, {solve.solver}, tol {solve.tol:g}, "
                    f"iterations {solve.min_iter}..{solve.max_iter}, grad {solve.grad}")
        else:
            desc = (f"{cfg.n_prelude} + {cfg.n_recur} + {cfg.n_coda} blocks, depth 1 + Poisson("
                    f"{cfg.mean_loops - 1}) <= {cfg.max_loops}, backprop last {cfg.backprop_loops}")
        rows.append([name, type(model).__name__, desc, f"{c['dense']:,}", f"{c['total']:,}"])
    print_table(f"Models (d 192, 4 heads), batch {BATCH} x seq {SEQ}, random byte tokens",
                ["name", "class", "configuration", "dense params", "total params"], rows, left=3)

    peak = max(peaks)
    base = TOKENS / median(rec["transformer"]["seconds"])
    rows = []
    for name in nets:
        r = rec[name]
        step = median(r["seconds"])
        g3 = median([f / s / 1e9 for f, s in zip(r["flops3"], r["seconds"])])
        gbp = median([f / s / 1e9 for f, s in zip(r["flops_bp"], r["seconds"])])
        d = median(r["depth"])
        if family(name) == "transformer":
            iters = "-"
        else:
            iters = f"{d:.0f} f-evals" if name.startswith("attractor") else f"{d:.1f} loops"
        mflop = median(r["flops3"]) / TOKENS / 1e6
        rows.append([name, iters, f"{step:.2f}", f"{TOKENS / step:,.0f}", f"{mflop:.0f}",
                     f"{g3:.0f}", f"{g3 / peak:.2f}", f"{gbp:.0f}", f"{gbp / peak:.2f}",
                     f"{TOKENS / step / base:.2f}"])
    print_table(f"Training throughput: median of {sizes.steps} steps after {sizes.warmup} warm-up, models "
                f"taking turns; fp32 matmul peak {peak:.0f} GFLOP/s ({MATMUL_N}^3, before {peaks[0]:.0f} / "
                f"after {peaks[1]:.0f})",
                ["model", "iterations (median)", "s / step", "tokens/s", "3 x fwd MFLOP/token",
                 "GFLOP/s (3 x fwd)", "of peak", "GFLOP/s (fwd + 2 x bp)", "of peak",
                 "tokens/s vs transformer"], rows)
    for name in nets:
        if name.endswith(FUSED):  # same round, same batch: the ratio of the pair
            eager, fused = rec[family(name)]["seconds"], rec[name]["seconds"]
            ratios = [e / f for e, f in zip(eager, fused)]
            print(f"{family(name)}: fused / eager tokens/s, median of per-round ratios {median(ratios):.2f} "
                  f"(range {min(ratios):.2f} to {max(ratios):.2f})")
    for name in nets:
        r = rec[name]
        if name.startswith("attractor"):
            print(f"{name}: f-evaluations per timed step {min(r['depth']):.0f} to {max(r['depth']):.0f} "
                  f"(at most {nets[name].cfg.solve.max_iter + 1}); tokens converged to tol "
                  f"{min(r['converged']):.3f} to {max(r['converged']):.3f}")
        elif family(name) == "looped":
            print(f"{name}: mean sampled depth per timed step {min(r['depth']):.1f} to {max(r['depth']):.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("throughput", __doc__, "1 warm-up round, median of 3")
    parser.add_argument("--kernels", action="store_true", help="add each model with the fused C++ kernels")
    args = parser.parse_args(argv)
    setup(args)
    sizes = QUICK if args.quick else FULL
    start = time.perf_counter()
    command = "python -m bench.throughput" + (" --quick" if args.quick else "") + \
        (f" --threads {args.threads}" if args.threads != 1 else "") + (" --kernels" if args.kernels else "")
    print(f"{command}, {time.strftime('%Y-%m-%d %H:%M %Z')}; {code_line()}", flush=True)
    before = matmul_gflops(sizes.matmul_repeats)
    print(f"  matmul before: {before:.0f} GFLOP/s", flush=True)
    result = measure(sizes, fused=args.kernels and fused_kernels_available("fused-kernel rows"))
    after = matmul_gflops(sizes.matmul_repeats)
    print(f"  matmul after: {after:.0f} GFLOP/s", flush=True)
    report(sizes, result["nets"], result["rec"], (before, after))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
