"""The Jacobian spectrum of the attractor map, and why Anderson does or does not beat Picard on it.

For each map below, in float64 at a size where the full Jacobian is cheap (one sequence of 12
tokens, width 64, 4 heads: 768 unknowns, unless said otherwise), this solves z* = f(z*) to 1e-12, forms J = df/dz at z*
with torch.autograd.functional.jacobian, and reports its eigenvalues: spectral radius rho, the
moduli (median, 90th percentile), how many are real, and how their angles spread (eigenvalues with
modulus above rho / 2, counted in eight 45-degree sectors; |mean e^(i theta)| is near 0 for
angles spread evenly and near 1 when they cluster at one angle).

Maps:
  attractor-1m at init   the preset's own attractor map f(y) = H(y + c) - y (one gated block),
                         c the backbone's proposal for random bytes; width 64 (the size of the
                         first look) and 128 (the preset's own)
  block, model init      bench.common.block_map(gain=None): one gated layers.Block with the models'
                         init_weights and x ~ N(0, 1)
  block, gain g          the same block with weights N(0, g^2 / fan_in), g = 1, 1.3 and 2.5
  solvers (b) block      the map of bench.solvers' table (b) (d 256, gain 1.3), 8 tokens

Then, on each map and on two linear maps with the same spectral radius, f-evaluations of Picard,
Anderson (m=5) and Broyden to a relative residual of 1e-4 and 1e-8 (from z0 = x):
  J z + b (same J)       the linearisation: the spectrum alone, without the nonlinearity
  sym [-rho, rho]        A = Q diag(ev) Q^T, ev evenly spaced on [-rho, rho] (bench.solvers (a))

Theory, for reading the table: on a linear map Anderson(m) is close to restarted GMRES on
(I - J) z = b. Over a disc |lambda| <= rho centred at 0, the best polynomial of degree k with
p(1) = 1 has max modulus rho^k on the disc, which is what Picard's p(lambda) = lambda^k achieves:
no Krylov method can beat plain iteration on a spectrum that fills a disc around 0. On a real
interval [-rho, rho] Chebyshev polynomials converge at about (rho / (1 + sqrt(1 - rho^2)))^k,
far faster than rho^k once rho is near 1.

Run:  python -m bench.spectrum            (~1 minute)
      python -m bench.spectrum --quick    the attractor-1m and gain-1.3 maps only
"""

from __future__ import annotations

import argparse
import cmath
import math
import time

import torch
from torch import Tensor

import attractor
from attractor import Anderson, Broyden, Picard
from attractor.models import build
from bench.common import SEED, block_map, code_line, env_line, print_table

N_HEAD = 4
TOLS = (1e-4, 1e-8)
BUDGET = 2000  # most f-evaluations per solve
SOLVERS = {"picard": Picard(), "anderson m=5": Anderson(m=5), "broyden": Broyden()}
# (label, width, tokens, gain): gain "preset" is the attractor-1m model itself, None the models'
# init_weights, a number N(0, gain^2 / fan_in) weights (bench.common.block_map)
MAPS = (
    ("attractor-1m at init, d 64", 64, 12, "preset"),
    ("attractor-1m at init, d 128", 128, 12, "preset"),
    ("block, model init", 64, 12, None),
    ("block, gain 1", 64, 12, 1.0),
    ("block, gain 1.3", 64, 12, 1.3),
    ("block, gain 2.5", 64, 12, 2.5),
    ("solvers (b) block, gain 1.3, d 256", 256, 8, 1.3),
)
QUICK_MAPS = (MAPS[0], MAPS[4])


def attractor_1m_map(d: int, seq: int):
    """The attractor-1m preset at width d, float64; its map at the proposal for random bytes."""
    torch.manual_seed(SEED)
    model = build("attractor-1m", d=d, n_head=N_HEAD).double().eval()
    idx = torch.randint(0, model.cfg.vocab_size, (1, seq), generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        problem = model.equilibrium(idx)  # start: the proposal c (1, T, D)
    return problem.y0, problem.f


def make_map(d: int, seq: int, gain):
    if gain == "preset":
        return attractor_1m_map(d, seq)
    _, x, f = block_map(d, seq, 1, gain, torch.float64, n_head=N_HEAD)
    return x, f


# ---------------------------------------------------------------------------------------------


def jacobian(f, z: Tensor) -> Tensor:
    """J = df/dz at z (1, T, D), as an (n, n) matrix, n = T * D."""
    n = z.numel()
    with torch.no_grad():
        jac = torch.autograd.functional.jacobian(lambda u: f(u.view_as(z)).flatten(), z.flatten(),
                                                 vectorize=True)
    return jac.reshape(n, n)


def spectrum_row(name: str, ev: Tensor) -> list[str]:
    mod = ev.abs()
    rho = mod.max().item()
    big = ev[mod > rho / 2]
    sectors = [0] * 8
    for lam in big.tolist():
        sectors[int((cmath.phase(lam) % (2 * math.pi)) / (math.pi / 4)) % 8] += 1
    unit = big / big.abs()
    resultant = unit.mean().abs().item() if big.numel() else float("nan")
    real = (ev.imag.abs() < 1e-9 * max(rho, 1e-300)).sum().item()
    return [name, f"{rho:.3f}", f"{mod.median().item():.3f}", f"{mod.quantile(0.9).item():.3f}",
            f"{real}/{ev.numel()}", f"{big.numel()}", " ".join(map(str, sectors)), f"{resultant:.2f}"]


def evals_to(f, z0: Tensor, solver, tol: float) -> str:
    _, info = attractor.fixed_point(f, z0, solver=solver, tol=tol, max_iter=BUDGET - 1, on_fail="ignore")
    return str(info.n_evals) if info.converged.all() else f">{info.n_evals}"


def symmetric_linear(n: int, rho: float) -> Tensor:
    gen = torch.Generator().manual_seed(SEED)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return (q * torch.linspace(-rho, rho, n, dtype=torch.float64)) @ q.T


def ascii_plot(ev: Tensor, rho: float, rows: int = 11, cols: int = 33) -> str:
    """Eigenvalues on the complex plane, scaled to the box [-rho, rho]^2 ('o' = 1, '#' = several)."""
    grid = [[0] * cols for _ in range(rows)]
    for lam in ev.tolist():
        c = round((lam.real / rho + 1) / 2 * (cols - 1))
        r = round((1 - lam.imag / rho) / 2 * (rows - 1))
        grid[r][c] += 1
    lines = ["".join("#" if v > 1 else "o" if v == 1 else ("+" if (i == rows // 2 and j == cols // 2) else
                                                        "-" if i == rows // 2 else "|" if j == cols // 2 else " ")
                     for j, v in enumerate(row)) for i, row in enumerate(grid)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.spectrum", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two maps only")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    print(f"python -m bench.spectrum{' --quick' if args.quick else ''}, {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"{code_line()}", flush=True)
    spec_rows, solve_rows, plots = [], [], []
    for name, d, seq, gain in (QUICK_MAPS if args.quick else MAPS):
        x, f = make_map(d, seq, gain)
        z, info = attractor.fixed_point(f, x, solver="anderson", tol=1e-12, max_iter=500, on_fail="ignore")
        jac = jacobian(f, z)
        ev = torch.linalg.eigvals(jac)
        rho = ev.abs().max().item()
        spec_rows.append(spectrum_row(name, ev))
        plots.append(f"{name}: rho = {rho:.3f} (box [-rho, rho]^2)\n{ascii_plot(ev, rho)}")
        zs = z.flatten()[None]  # (1, n)
        b = zs - zs @ jac.T  # J z + b has the same fixed point z* and the same Jacobian
        x0 = x.flatten()[None]
        sym = symmetric_linear(x.numel(), rho)
        linear = {"nonlinear f": (f, x),
                  "J z + b (same J)": (lambda u, j=jac, b=b: u @ j.T + b, x0),
                  "sym [-rho, rho]": (lambda u, a=sym, b=b: u @ a.T + b, x0)}
        for kind, (g, z0) in linear.items():
            solve_rows.append([name, kind] + [evals_to(g, z0, s, tol) for tol in TOLS for s in SOLVERS.values()])
    print_table(f"Eigenvalues of J = df/dz at z*, one sequence of 12 tokens, d 64, {N_HEAD} heads (768 "
                "unknowns) unless the map says otherwise (d 128: 1536; d 256, 8 tokens: 2048), float64", ["map", "rho", "median |lambda|", "90% |lambda|", "real",
                "|lambda| > rho/2", "sectors 0..315 deg (45 each)", "|mean e^(i theta)|"], spec_rows,
                env=env_line(torch.float64))
    header = ["map", "iterated"] + [f"{s} {tol:g}" for tol in TOLS for s in SOLVERS]
    print_table(f"f-evaluations to a relative residual of {TOLS[0]:g} and {TOLS[1]:g} (budget {BUDGET})",
                header, solve_rows, left=2, env=env_line(torch.float64))
    print("\nEigenvalues in the complex plane:\n")
    print("\n\n".join(plots))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
