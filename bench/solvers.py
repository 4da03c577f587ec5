"""Fixed-point solvers: ours against torchdeq's on identical maps, and implicit vs unrolled memory.

Every forward solve stops once the worst sample's relative residual ||f(z) - z|| / ||f(z)|| is below
1e-4 (torchdeq is given stop_mode="rel", whose eps of 1e-9 is negligible at these state scales).
Four measurements:

  (a) Linear maps z = A z + b, A = Q diag(ev) Q^T with ev evenly spaced on [-rho, rho] and Q a random
      orthogonal matrix; rho = 0.9 and 0.99, and rho = 0.9 with b scaled by 1e-2 (the state-scale
      sensitivity of an absolute Anderson ridge, SPEC section 3). For our picard, anderson (m=5) and
      broyden and torchdeq's fixed_point_iter, anderson (m=5) and broyden: f-evaluations, median wall
      time, worst final residual, and the time ratio ours / torchdeq.
  (b) The same on a randomly initialised gated transformer block H with additive injection x:
      f(z) = H(z + x) - z = x + R(z + x), R the gated residual branches (SPEC section 1). With H's own
      skip connection left in, f(z) = H(z + x) would have Jacobian I + dR and could not contract.
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
      python -m bench.solvers --quick    n = 256, fewer repeats; this is `make demo`
torchdeq is optional (pip install torchdeq==0.1.0): without it, its columns say "not installed".
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import attractor
from attractor import Anderson, Broyden, Implicit, Picard
from bench.common import SavedTensors

try:
    from importlib.metadata import version

    from torchdeq import get_deq
    from torchdeq.solver import get_solver as torchdeq_solver

    TORCHDEQ = version("torchdeq")
except ImportError:
    TORCHDEQ = None

SEED = 0
TOL = 1e-4  # relative residual at which every forward solve stops
BATCH = 8
GRAD_TOL = 1e-10  # forward and adjoint tolerance in the float64 gradient check
GRAD_ITERS = 1000  # generous: the solves stop at GRAD_TOL long before
MEMORY_ITERS = (4, 8, 16, 32, 64)


@dataclass(frozen=True)
class Sizes:
    n: int  # dimension of the linear maps in (a) and (c)
    repeats: int  # timed solves per solver, after one warm-up
    linear_budget: int = 2000  # most f-evaluations per linear solve (Picard at rho 0.99 needs ~430)
    block_budget: int = 300  # most f-evaluations per block solve


FULL = Sizes(n=1024, repeats=5)
QUICK = Sizes(n=256, repeats=3)


# ---------------------------------------------------------------------------------------------
# Helpers: environment line, tables, timing, counting


def env_line(dtype: torch.dtype) -> str:
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"env: torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"{os.cpu_count()} CPUs{load}, device cpu, {str(dtype).removeprefix('torch.')}, "
            f"torchdeq {TORCHDEQ or 'not installed'}")


def code_line() -> str:
    """Which code produced the numbers: the commit, and whether attractor/ or bench/ differ from it."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "attractor", "bench"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "code: not a git checkout"
    changed = sorted({line[3:].strip() for line in dirty if line.strip()})
    return f"code: commit {commit}" + (f", uncommitted: {', '.join(changed)}" if changed else "")


def print_table(title: str, dtype: torch.dtype, header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table (pasteable into docs), text columns left, numbers right."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def line(cells):
        return "| " + " | ".join(
            str(c).ljust(w) if i < 2 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ) + " |"

    print(f"\n### {title}\n{env_line(dtype)}\n")
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    sys.stdout.flush()


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, object]:
    """Median wall time of fn() in seconds over `repeats` calls after `warmup`, and its last result."""
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


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


class GatedBlock(nn.Module):
    """Pre-norm transformer block whose two residual branches are scaled by per-channel gates.

    H(h) = h1 + g_m * MLP(norm(h1)), h1 = h + g_a * Attn(norm(h)): RMSNorm, causal multi-head
    attention through scaled_dot_product_attention, ReLU^2 MLP of width 4d, no biases, gates 0.5
    (SPEC section 1). Weights are N(0, gain^2 / fan_in); `gain` sets how contractive f is.
    """

    def __init__(self, d: int = 256, n_head: int = 4, gate: float = 0.5, gain: float = 1.3):
        super().__init__()
        self.n_head = n_head
        self.norm_a, self.norm_m = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, 4 * d, bias=False)
        self.down = nn.Linear(4 * d, d, bias=False)
        self.gate_a = nn.Parameter(torch.full((d,), gate))
        self.gate_m = nn.Parameter(torch.full((d,), gate))
        for lin in (self.qkv, self.proj, self.up, self.down):
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))

    def forward(self, h: Tensor) -> Tensor:
        b, t, d = h.shape
        qkv = self.qkv(self.norm_a(h)).view(b, t, 3, self.n_head, d // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, d / heads)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, heads, T, d / heads)
        h = h + self.gate_a * self.proj(att.transpose(1, 2).reshape(b, t, d))
        return h + self.gate_m * self.down(F.relu(self.up(self.norm_m(h))).square())


def block_map(dtype: torch.dtype, seq: int = 64, d: int = 256):
    """The block, an injection x (B, T, d) and f(z) = H(z + x) - z; seeded."""
    torch.manual_seed(SEED)
    block = GatedBlock(d).to(dtype)
    x = torch.randn(BATCH, seq, d, dtype=dtype)
    return block, x, (lambda z: block(z + x) - z)


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

    seconds, (z, reported) = timed(once, repeats)
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
                f"z0 = 0, median of {sizes.repeats}", torch.float32, SOLVER_HEADER, rows)
    print(anderson_goal(rows))


def bench_block(sizes: Sizes) -> None:
    block, x, f = block_map(torch.float32)
    with torch.no_grad():
        z, _ = attractor.fixed_point(f, x, solver="anderson", tol=1e-6, max_iter=500, on_fail="raise")
    radius = attractor.spectral_radius(f, z, n_iter=40, generator=torch.Generator().manual_seed(SEED))
    rows = compare("gated block", f, x, sizes.block_budget, sizes.repeats)
    print_table(f"(b) gated block f(z) = H(z + x) - z, d 256, seq 64, batch {BATCH}, 4 heads, "
                f"tol {TOL:g}, z0 = x, median of {sizes.repeats}", torch.float32, SOLVER_HEADER, rows)
    print(f"contraction: spectral radius of df/dz at z* (power iteration) "
          f"{radius.min().item():.2f} to {radius.max().item():.2f} over the batch")


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
    block, x, block_f = block_map(dtype)
    problems = [  # name, f, z0, params, exact solution or None
        (f"linear rho=0.9, n={sizes.n} (A, b)", lambda z: z @ a.T + b, torch.zeros_like(b), [a, b],
         lambda f, z0: torch.linalg.solve(eye - a, b.T).T),
        ("gated block (all 10 parameter tensors)", block_f, x, list(block.parameters()), None),
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
                "max|g1 - g2| / max|g2| per tensor, worst tensor", dtype,
                ["problem", "dtype", "ours vs torchdeq", "ours vs exact", "torchdeq vs exact"], rows)
    print("\n".join(notes))


# ---------------------------------------------------------------------------------------------
# (d) memory of one backward against max_iter


class PeakRSS:
    """Peak resident memory inside the `with` block above its start, in MB (Linux; else nan).

    On entry, free heap pages go back to the OS (malloc_trim) and the kernel's high-water mark is
    reset to the current RSS (/proc/self/clear_refs); on exit the high-water mark VmHWM is read.
    ru_maxrss cannot be reset, and in a child it can include the parent's RSS from before exec.
    """

    def __enter__(self) -> PeakRSS:
        self.mb = float("nan")
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            self.start = self._status_mb("VmRSS")
        except OSError:
            self.start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.start is not None:
            self.mb = self._status_mb("VmHWM") - self.start

    @staticmethod
    def _status_mb(key: str) -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024  # reported in kB
        raise OSError(f"{key} not in /proc/self/status")


def memory_child(mode: str, max_iter: int) -> None:
    """Runs in a fresh interpreter; prints one JSON line for `bench_memory`."""
    block, x, f = block_map(torch.float32)
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
    root = Path(__file__).resolve().parent.parent
    results = {}
    for mode in ("implicit", "unroll"):
        for k in MEMORY_ITERS:
            cmd = [sys.executable, "-m", "bench.solvers", "--memory-child", f"{mode}:{k}",
                   "--threads", str(torch.get_num_threads())]
            child = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
            if child.returncode != 0:
                raise RuntimeError(f"memory child {mode}:{k} failed:\n{child.stderr[-2000:]}")
            results[mode, k] = json.loads(child.stdout.strip().splitlines()[-1])

    def cell(mode, k, key):
        value, first = results[mode, k][key], results[mode, MEMORY_ITERS[0]][key]
        return f"{value:.0f} (x{value / first:.1f})" if first > 0 else f"{value:.0f}"

    rows = [[str(k), str(results["unroll", k]["n_evals"]), cell("implicit", k, "rss_mb"),
             cell("unroll", k, "rss_mb"), cell("implicit", k, "saved_mb"), cell("unroll", k, "saved_mb")]
            for k in MEMORY_ITERS]
    print_table(f"(d) one forward + backward on the gated block (picard, tol 0), MB; (x ratio to "
                f"max_iter={MEMORY_ITERS[0]}); peak RSS above baseline in a fresh process each",
                torch.float32, ["max_iter", "f-evals", "implicit peak RSS", "unroll peak RSS",
                                "implicit saved", "unroll saved"], rows)
    unroll = [results["unroll", k]["rss_mb"] for k in MEMORY_ITERS]
    implicit = [results["implicit", k]["rss_mb"] for k in MEMORY_ITERS]
    grows = all(b > a for a, b in zip(unroll, unroll[1:]))
    flat = max(implicit) - min(implicit) < 0.1 * (unroll[-1] - unroll[0])
    print(f"sanity: unroll grows with max_iter: {'yes' if grows else 'NO'}; implicit flat (spread "
          f"{max(implicit) - min(implicit):.0f} MB < 10% of unroll's growth): {'yes' if flat else 'NO'}")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.solvers", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller linear maps, fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see docstring)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)  # "mode:max_iter", internal
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    if args.memory_child:
        mode, max_iter = args.memory_child.split(":")
        memory_child(mode, int(max_iter))
        return
    sizes = QUICK if args.quick else FULL
    start = time.perf_counter()
    command = "python -m bench.solvers" + (" --quick" if args.quick else "")
    print(f"{command}, {time.strftime('%Y-%m-%d %H:%M %Z')}; {code_line()}")
    for part in (bench_linear, bench_block, bench_gradients, bench_memory):
        part_start = time.perf_counter()
        part(sizes)
        print(f"[{part.__name__}: {time.perf_counter() - part_start:.0f} s]")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
