"""Fixed-point solvers: ours against torchdeq's on identical maps, and implicit vs unrolled memory.

Every forward solve stops once the worst sample's relative residual ||f(z) - z|| / ||f(z)|| is below
1e-4 (torchdeq is given stop_mode="rel", whose eps of 1e-9 is negligible at these state scales).
Four measurements:

  (a) Linear maps z = A z + b, A = Q diag(ev) Q^T with ev evenly spaced on [-rho, rho] and Q a random
      orthogonal matrix; rho = 0.9 and 0.99, and rho = 0.9 with b scaled by 1e-2 (the state-scale
      sensitivity of an absolute Anderson ridge, SPEC section 3). For our picard, anderson (m=5) and
      broyden and torchdeq's fixed_point_iter, anderson (m=5) and broyden: f-evaluations, median wall
      time, worst final residual, and the time ratio ours / torchdeq.
  (b) The same on the attractor's own map with one block: H = attractor.layers.Block with gates
      0.5 (bench.common.block_map), additive injection x, f(z) = H(z + x) - z = x + R(z + x), R the
      gated residual branches (SPEC section 1). Weights are N(0, 1.3^2 / fan_in): the models'
      init_weights makes f nearly constant (spectral radius ~0.02, 3 evaluations for any solver),
      which tests nothing. (b') then times each solver's own work per step (history, least squares)
      against one evaluation of f, per sample and per token (bench.spectrum explains the counts).
  (c) Implicit gradients of a scalar loss w.z* in float64: ours (grad=Implicit) against torchdeq's
      default exact backward (IFT, fixed_point_iter adjoint), both solved to 1e-10, and on the linear
      map both against the exact gradient through torch.linalg.solve.
  (d) Memory of one forward + backward against max_iter, grad="implicit" vs grad="unroll", on the
      block with tol=0 (every iteration runs), each configuration in a fresh interpreter: peak RSS
      above the warmed-up start (the kernel's high-water mark, reset first), and the distinct
      tensors autograd saved for backward (parameters and input excluded).

f-evaluations are counted by wrapping f in a counter for both libraries (ours must also agree with
info.n_evals). Times are medians of several repeats after one warm-up; read the ratios, since absolute
times drift. The default is one thread: the 2-core machine is shared with other jobs, and whenever
one of them holds a core, two-thread OpenMP kernels stall on each other (a loop of 1024 x 1024
matmuls ran 10 to 40x slower); one thread gives repeatable numbers (see docs/benchmarks.md). The
load average is printed with each table.

Run:  python -m bench.solvers            full sizes (n = 1024 linear maps)
      python -m bench.solvers --quick    n = 256, 2 repeats, max_iter 4 and 64 in (d); about 2 minutes
torchdeq is optional (pip install torchdeq==0.1.0): without it, its columns say "not installed".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

import attractor
from attractor import Anderson, Broyden, Implicit, Picard
from bench.common import (
    PEAK_RSS_ENV, ROOT, SEED, bench_parser, block_map, code_line, env_line, median, median_time, PeakRSS,
    print_table, SavedTensors, setup,
)

try:
    from importlib.metadata import version

    from torchdeq import get_deq
    from torchdeq.solver import get_solver as torchdeq_solver

    TORCHDEQ = version("torchdeq")
except ImportError:
    TORCHDEQ = None

TOL = 1e-4  # relative residual at which every forward solve stops
BATCH = 8
GRAD_TOL = 1e-10  # forward and adjoint tolerance in the float64 gradient check
GRAD_ITERS = 1000  # generous: the solves stop at GRAD_TOL long before
BLOCK_D, BLOCK_SEQ = 256, 64
BLOCK_GAIN = 1.3  # weights N(0, 1.3^2 / fan_in): rho(df/dz) ~ 0.7; the models' init gives ~0.02
COST_STEPS = 16  # solver steps timed per solve in the per-step cost table


@dataclass(frozen=True)
class Sizes:
    n: int  # dimension of the linear maps in (a) and (c)
    repeats: int  # timed solves per solver, after one warm-up
    linear_budget: int = 2000  # most f-evaluations per linear solve (Picard at rho 0.99 needs ~430)
    block_budget: int = 300  # most f-evaluations per block solve
    memory_max_iter: tuple[int, ...] = (4, 8, 16, 32, 64)  # max_iter values of (d)


FULL = Sizes(n=1024, repeats=5)
QUICK = Sizes(n=256, repeats=2, memory_max_iter=(4, 64))


# ---------------------------------------------------------------------------------------------
# Helpers: environment line, tables, timing, counting


def env(dtype: torch.dtype) -> str:
    return env_line(dtype, f"torchdeq {TORCHDEQ or 'not installed'}")


class Counted:
    """f with a call counter, so both libraries' f-evaluations are counted the same way."""

    def __init__(self, f: Callable[[Tensor], Tensor]):
        self.f, self.calls = f, 0

    def __call__(self, z: Tensor) -> Tensor:
        self.calls += 1
        return self.f(z)


def worst_residual(f: Callable[[Tensor], Tensor], z: Tensor) -> float:
    """max over the batch of ||f(z) - z|| / ||f(z)||, computed here rather than trusted."""
    with torch.no_grad():
        fz = f(z)
    return ((fz - z).flatten(1).norm(dim=1) / fz.flatten(1).norm(dim=1)).max().item()


def max_rel_diff(got: list[Tensor], ref: list[Tensor]) -> float:
    """max over tensors of max|got - ref| / max|ref|: relative to each tensor's largest entry."""
    return max(((g - r).abs().max() / r.abs().max()).item() for g, r in zip(got, ref))


# ---------------------------------------------------------------------------------------------
# The maps


def linear_map(n: int, rho: float, scale: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A = Q diag(ev) Q^T, ev evenly spaced on [-rho, rho], Q random orthogonal; b ~ scale N(0, I)."""
    gen = torch.Generator().manual_seed(SEED)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    ev = torch.linspace(-rho, rho, n, dtype=torch.float64)
    a = (q * ev) @ q.T  # (n, n)
    b = scale * torch.randn(BATCH, n, generator=gen, dtype=torch.float64)  # (B, n)
    return a.to(dtype), b.to(dtype)


def solver_block(dtype: torch.dtype):
    """The map of (b), (c) and (d): bench.common.block_map, one gated attractor.layers.Block."""
    return block_map(BLOCK_D, BLOCK_SEQ, BATCH, BLOCK_GAIN, dtype)


# ---------------------------------------------------------------------------------------------
# (a) and (b): solver comparison


@dataclass(frozen=True)
class Method:
    """One solver family as each library spells it."""

    label: str
    ours: object
    theirs: str
    theirs_kwargs: dict = field(default_factory=dict)


METHODS = (  # each library's defaults, except Anderson's history: m=5 in both (torchdeq's default is 6)
    Method("picard / fixed_point_iter", Picard(), "fixed_point_iter"),
    Method("anderson m=5", Anderson(m=5), "anderson", {"m": 5}),
    # torchdeq keeps every Broyden update (LBFGS_thres defaults to max_iter); ours restarts at m
    Method(f"broyden (ours m={Broyden().m})", Broyden(), "broyden"),
)


@dataclass(frozen=True)
class Run:
    evals: int  # counted calls of f in one solve
    seconds: float  # median wall time of one solve
    residual: float  # worst sample's relative residual at the returned z
    count_ok: bool  # ours: info.n_evals equals the counted calls


def solve_ours(method: Method, f, z0: Tensor, budget: int):
    z, info = attractor.fixed_point(f, z0, solver=method.ours, tol=TOL, max_iter=budget - 1,
                                    on_fail="ignore")
    return z, info.n_evals


def solve_theirs(method: Method, f, z0: Tensor, budget: int):
    # torchdeq's broyden evaluates f at x0 and then once per step; the others at most max_iter times.
    max_iter = budget - 1 if method.theirs == "broyden" else budget
    z, _, _ = torchdeq_solver(method.theirs)(f, z0, max_iter=max_iter, tol=TOL, stop_mode="rel",
                                             **method.theirs_kwargs)
    return z, None


def measure(solve, method: Method, f, z0: Tensor, budget: int, repeats: int) -> Run:
    counted = Counted(f)

    def once():
        counted.calls = 0
        with torch.no_grad():
            return solve(method, counted, z0, budget)

    seconds, (z, reported) = median_time(once, repeats)
    return Run(counted.calls, seconds, worst_residual(f, z), reported in (None, counted.calls))


def compare(problem: str, f, z0: Tensor, budget: int, repeats: int) -> list[list[str]]:
    """One table row per method: ours and torchdeq's side by side on the identical f and z0."""

    def ok(run: Run) -> str:
        return "yes" if run.residual < TOL else f"NO ({run.residual:.1e})"

    rows = []
    for method in METHODS:
        ours = measure(solve_ours, method, f, z0, budget, repeats)
        if not ours.count_ok:
            print(f"WARNING: {problem}, ours {method.label}: info.n_evals differs from counted calls")
        cells = [problem, method.label, ours.evals, f"{ours.seconds * 1e3:.1f}", ok(ours)]
        if TORCHDEQ is None:
            cells += ["not installed", "-", "-", "-", "-"]
        else:
            theirs = measure(solve_theirs, method, f, z0, budget, repeats)
            cells += [theirs.evals, f"{theirs.seconds * 1e3:.1f}", ok(theirs),
                      f"{ours.seconds / theirs.seconds:.2f}", f"{ours.evals / theirs.evals:.2f}"]
        rows.append(cells)
    return rows


SOLVER_HEADER = ["map", "method", "ours f-evals", "ours ms", "ours conv", "torchdeq f-evals",
                 "torchdeq ms", "torchdeq conv", "time ours/td", "evals ours/td"]


def anderson_goal(rows: list[list[str]]) -> str:
    ratios = [float(r[8]) for r in rows if r[1].startswith("anderson") and r[8] != "-"]
    if not ratios:
        return "Anderson time ratio: torchdeq not installed"
    met = sum(r <= 0.5 for r in ratios)
    return (f"Anderson time ours/torchdeq: {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"goal <= 0.5 met on {met} of {len(ratios)} maps")


def bench_linear(sizes: Sizes) -> None:
    rows = []
    for rho, scale in ((0.9, 1.0), (0.99, 1.0), (0.9, 1e-2)):
        a, b = linear_map(sizes.n, rho, scale, torch.float32)
        name = f"rho={rho}" + (f", b x {scale:g}" if scale != 1.0 else "")
        rows += compare(name, lambda z, a=a, b=b: z @ a.T + b, torch.zeros_like(b),
                        sizes.linear_budget, sizes.repeats)
    print_table(f"(a) linear maps z = Az + b, n = {sizes.n}, batch {BATCH}, tol {TOL:g} (relative), "
                f"z0 = 0, median of {sizes.repeats}", SOLVER_HEADER, rows, left=2, env=env(torch.float32))
    print(anderson_goal(rows))


def bench_block(sizes: Sizes) -> None:
    block, x, f = solver_block(torch.float32)
    with torch.no_grad():
        z, _ = attractor.fixed_point(f, x, solver="anderson", tol=1e-6, max_iter=500, on_fail="raise")
    radius = attractor.spectral_radius(f, z, n_iter=40, generator=torch.Generator().manual_seed(SEED))
    rows = compare("gated block", f, x, sizes.block_budget, sizes.repeats)
    print_table(f"(b) gated block f(z) = H(z + x) - z (attractor.layers.Block, gates 0.5, weights N(0, "
                f"{BLOCK_GAIN:g}^2 / fan_in)), d {BLOCK_D}, seq {BLOCK_SEQ}, batch {BATCH}, 4 heads, tol {TOL:g}, "
                f"z0 = x, median of {sizes.repeats}", SOLVER_HEADER, rows, left=2, env=env(torch.float32))
    print(f"contraction: spectral radius of df/dz at z* (power iteration) "
          f"{radius.min().item():.2f} to {radius.max().item():.2f} over the batch")


# ---------------------------------------------------------------------------------------------
# (b') what a solver step costs besides its evaluation of f


def bench_step_cost(sizes: Sizes) -> None:
    """Each solver's own work per step, in units of one evaluation of f, on the block of (b).

    tol=0, so every solve runs COST_STEPS steps (COST_STEPS + 1 evaluations); the overhead per
    step is (solve time - evaluations x time of one bare f) / COST_STEPS. Per sample: BATCH
    problems of seq x d unknowns; per token (batch_dims=2, as the language models solve): one
    problem of d unknowns for every position.
    """
    _, x, f = solver_block(torch.float32)
    with torch.no_grad():
        f_time, _ = median_time(lambda: f(x), 2 * sizes.repeats)
    rows = []
    for name, solver in (("picard", Picard()), ("anderson m=5", Anderson(m=5)), ("broyden", Broyden())):
        for batch_dims, unit in ((1, f"per sample: {BATCH} x {BLOCK_SEQ * BLOCK_D}"),
                                 (2, f"per token: {BATCH * BLOCK_SEQ} x {BLOCK_D}")):
            def once():
                with torch.no_grad():
                    return attractor.fixed_point(f, x, solver=solver, tol=0.0, max_iter=COST_STEPS,
                                                 on_fail="ignore", batch_dims=batch_dims)

            seconds, (_, info) = median_time(once, max(1, sizes.repeats - 2))
            per_step = (seconds - info.n_evals * f_time) / COST_STEPS
            rows.append([name, unit, info.n_evals, f"{seconds * 1e3:.0f}", f"{per_step * 1e3:.1f}",
                         f"{per_step / f_time:.2f}"])
    print_table(f"(b') solver overhead per step on the block of (b), {COST_STEPS} steps (tol 0); one bare "
                f"evaluation of f takes {f_time * 1e3:.1f} ms; median of {max(1, sizes.repeats - 2)}",
                ["solver", "problems x unknowns", "f-evals", "ms per solve", "overhead ms / step",
                 "overhead / f-eval"], rows, left=2, env=env(torch.float32))


# ---------------------------------------------------------------------------------------------
# (c) gradient agreement


def ours_solution(f, z0: Tensor) -> Tensor:
    z, _ = attractor.fixed_point(f, z0, solver="anderson", tol=GRAD_TOL, max_iter=GRAD_ITERS,
                                 grad=Implicit(tol=GRAD_TOL, max_iter=GRAD_ITERS), on_fail="raise")
    return z


def torchdeq_solution(f, z0: Tensor) -> Tensor:
    deq = get_deq(core="indexing", ift=True, f_solver="fixed_point_iter", b_solver="fixed_point_iter",
                  f_max_iter=GRAD_ITERS, b_max_iter=GRAD_ITERS, f_tol=GRAD_TOL, b_tol=GRAD_TOL,
                  f_stop_mode="rel", b_stop_mode="rel")
    z_out, _ = deq(f, z0)
    return z_out[-1]


def loss_grads(solution: Callable[[Callable, Tensor], Tensor], f, z0: Tensor, params: list[Tensor]):
    """Gradients of L = sum(w * z*) (w fixed, seeded) and the forward's worst residual."""
    z = solution(f, z0)
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(SEED + 1), dtype=z.dtype)
    return torch.autograd.grad((w * z).sum(), params), worst_residual(f, z.detach())


def bench_gradients(sizes: Sizes) -> None:
    dtype = torch.float64
    a, b = linear_map(sizes.n, 0.9, 1.0, dtype)
    a.requires_grad_()
    b.requires_grad_()
    eye = torch.eye(sizes.n, dtype=dtype)
    block, x, block_f = solver_block(dtype)
    problems = [  # name, f, z0, params, exact solution or None
        (f"linear rho=0.9, n={sizes.n} (A, b)", lambda z: z @ a.T + b, torch.zeros_like(b), [a, b],
         lambda f, z0: torch.linalg.solve(eye - a, b.T).T),
        (f"gated block (all {len(list(block.parameters()))} parameter tensors)", block_f, x,
         list(block.parameters()), None),
    ]
    rows, notes = [], []
    for name, f, z0, params, exact in problems:
        ours, res_ours = loss_grads(ours_solution, f, z0, params)
        cells = [name, "float64"]
        if TORCHDEQ is None:
            cells.append("not installed")
        else:
            theirs, res_theirs = loss_grads(torchdeq_solution, f, z0, params)
            cells.append(f"{max_rel_diff(ours, theirs):.1e}")
            notes.append(f"{name}: forward residual ours {res_ours:.1e}, torchdeq {res_theirs:.1e}")
        if exact is None:
            cells += ["-", "-"]
        else:
            ref, _ = loss_grads(exact, f, z0, params)
            cells += [f"{max_rel_diff(ours, ref):.1e}",
                      "-" if TORCHDEQ is None else f"{max_rel_diff(theirs, ref):.1e}"]
        rows.append(cells)
    print_table(f"(c) implicit gradient of sum(w * z*), forward and adjoint tol {GRAD_TOL:g}; "
                "max|g1 - g2| / max|g2| per tensor, worst tensor",
                ["problem", "dtype", "ours vs torchdeq", "ours vs exact", "torchdeq vs exact"], rows, left=2,
                env=env(dtype))
    print("\n".join(notes))


# ---------------------------------------------------------------------------------------------
# (d) memory of one backward against max_iter


def _child_spec(spec: str) -> tuple[str, int]:
    """'mode:max_iter' -> (mode, max_iter), as bench_memory passes them."""
    mode, max_iter = spec.split(":")
    return mode, int(max_iter)


def memory_child(mode: str, max_iter: int) -> None:
    """Runs in a fresh interpreter; prints one JSON line for `bench_memory`."""
    block, x, f = solver_block(torch.float32)
    f(x).sum().backward()  # warm up kernels, their buffers and the autograd engine at full size
    block.zero_grad(set_to_none=True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED + 1))
    saved = SavedTensors(exclude=[*block.parameters(), x])
    with PeakRSS() as peak:
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            z, info = attractor.fixed_point(f, x, solver="picard", grad=mode, tol=0.0, max_iter=max_iter,
                                            on_fail="ignore")
        saved_mb = saved.live_mb()
        (w * z).sum().backward()
    print(json.dumps({"rss_mb": peak.mb, "saved_mb": saved_mb, "n_evals": info.n_evals}))


def bench_memory(sizes: Sizes) -> None:
    results = {}
    for mode in ("implicit", "unroll"):
        for k in sizes.memory_max_iter:
            cmd = [sys.executable, "-m", "bench.solvers", "--memory-child", f"{mode}:{k}",
                   "--threads", str(torch.get_num_threads())]
            child = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                   env={**os.environ, **PEAK_RSS_ENV})
            if child.returncode != 0:
                raise RuntimeError(f"memory child {mode}:{k} failed:\n{child.stderr[-2000:]}")
            results[mode, k] = json.loads(child.stdout.strip().splitlines()[-1])

    def cell(mode, k, key):
        value, first = results[mode, k][key], results[mode, sizes.memory_max_iter[0]][key]
        return f"{value:.0f} (x{value / first:.1f})" if first > 0 else f"{value:.0f}"

    rows = [[str(k), str(results["unroll", k]["n_evals"]), cell("implicit", k, "rss_mb"),
             cell("unroll", k, "rss_mb"), cell("implicit", k, "saved_mb"), cell("unroll", k, "saved_mb")]
            for k in sizes.memory_max_iter]
    print_table(f"(d) one forward + backward on the gated block (picard, tol 0), MB; (x ratio to "
                f"max_iter={sizes.memory_max_iter[0]}); peak RSS above baseline in a fresh process each",
                ["max_iter", "f-evals", "implicit peak RSS", "unroll peak RSS", "implicit saved", "unroll saved"],
                rows, env=env(torch.float32))
    unroll = [results["unroll", k]["rss_mb"] for k in sizes.memory_max_iter]
    implicit = [results["implicit", k]["rss_mb"] for k in sizes.memory_max_iter]
    grows = all(b > a for a, b in zip(unroll, unroll[1:]))
    flat = max(implicit) - min(implicit) < 0.1 * (unroll[-1] - unroll[0])
    print(f"sanity: unroll grows with max_iter: {'yes' if grows else 'NO'}; implicit flat (spread "
          f"{max(implicit) - min(implicit):.0f} MB < 10% of unroll's growth): {'yes' if flat else 'NO'}")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("solvers", __doc__, "smaller linear maps, fewer repeats")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # "mode:max_iter", internal
    args = parser.parse_args(argv)
    setup(args)
    if args.memory_child:  # one probe in this fresh interpreter (bench_memory starts it)
        return memory_child(*_child_spec(args.memory_child))
    sizes = QUICK if args.quick else FULL
    start = time.perf_counter()
    command = "python -m bench.solvers" + (" --quick" if args.quick else "")
    print(f"{command}, {time.strftime('%Y-%m-%d %H:%M %Z')}; {code_line()}")
    for part in (bench_linear, bench_block, bench_step_cost, bench_gradients, bench_memory):
        part_start = time.perf_counter()
        part(sizes)
        print(f"[{part.__name__}: {time.perf_counter() - part_start:.0f} s]")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
