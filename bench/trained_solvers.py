"""Picard, Anderson and Broyden on a trained attractor's map: evaluations and wall time to tolerance.

bench.solvers compares the solvers on one block at initialisation, where the
map is nearly constant; a trained map is what a deployed model solves. This loads an equilibrium
language model's checkpoint (by default the equal-step attractor-1m run of bench.lm_claims; a
DEQLM's works too), takes validation batches of its own data, and solves the model's own problem,
`model.equilibrium(idx)` (an Attractor's f(y) = H(y + c) - y from y0 = c), one problem per token
with prefix stopping, as its adaptive forward does with stop="token", with each solver:

    evals      evaluations of f over the batch (each costs a whole batch through H)
    ms         median wall time of one solve (no gradient)
    ms/eval    wall time per evaluation: the solver's own per-step overhead shows here
    converged  share of tokens below tol
    ratios     against Picard: evaluations and time. Anderson pays for its per-step cost
               where its time ratio is below 1.

Threads default to 1 (a shared 2-core machine).

Run:  python -m bench.trained_solvers [--checkpoint RUN] [--tols 1e-3,1e-4] [--max-iter 100]
"""

from __future__ import annotations

import argparse
import time

import torch

from attractor.data import prepare
from attractor.fixedpoint import Anderson, Broyden, Picard, fixed_point
from attractor.models.equilibrium import Equilibrium
from attractor.run import load_run, validation
from bench.common import code_line, env_line, median, print_table
from bench.lm_report import CLAIMS

DEFAULT_RUN = CLAIMS / "compare-1m" / "attractor-1m-s0-n300"
SOLVERS = {"picard": Picard(), "anderson m=5": Anderson(m=5), f"broyden m={Broyden().m}": Broyden()}


@torch.no_grad()
def solve_once(problem: Equilibrium, solver, tol: float, max_iter: int):
    """One per-token, prefix-stopped solve of a model's problem (its map, from its start)."""
    return fixed_point(problem.f, problem.y0, solver=solver, grad="onestep", tol=tol, max_iter=max_iter,
                       on_fail="ignore", batch_dims=2, prefix_stop=problem.causal)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.trained_solvers", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_RUN),
                        help="an AttractorLM or DEQLM run or checkpoint directory")
    parser.add_argument("--tols", default="1e-3,1e-4", help="comma-separated tolerances (relative, per token)")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--batches", type=int, default=1, help="validation batches (the run's batch shape)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _, run, step = load_run(args.checkpoint)
    if not run.task.continues_text or not hasattr(model, "equilibrium"):
        raise SystemExit(f"error: {args.checkpoint} holds a {type(model).__name__}, not an equilibrium language model")
    batches = validation(run, prepare(run.data, progress=False))[: args.batches]
    with torch.no_grad():
        problems = [model.equilibrium(idx) for idx, _ in batches]
    print(f"python -m bench.trained_solvers --checkpoint {args.checkpoint} (step {step}), "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {code_line()}")
    rows = []
    for tol in (float(t) for t in args.tols.split(",")):
        results = {}
        for label, solver in SOLVERS.items():
            evals, seconds, converged = 0, 0.0, []
            for problem in problems:
                solve_once(problem, solver, tol, args.max_iter)  # warm-up
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    _, info = solve_once(problem, solver, tol, args.max_iter)
                    times.append(time.perf_counter() - start)
                evals += info.n_evals
                seconds += median(times)
                converged.append(info.converged.float().mean().item())
            results[label] = (evals, seconds, sum(converged) / len(converged))
        base_evals, base_s, _ = results["picard"]
        for label, (evals, seconds, conv) in results.items():
            rows.append([f"{tol:.0e}", label, evals, f"{seconds * 1e3:.0f}", f"{seconds * 1e3 / evals:.1f}",
                         f"{conv:.3f}", f"{evals / base_evals:.2f}", f"{seconds / base_s:.2f}"])
    b, t, _ = problems[0].y0.shape
    print_table(f"Solvers on the trained map ({len(problems)} validation batch(es) of {b} x {t}, per-token "
                f"prefix-stopped solves, max_iter {args.max_iter}, median of {args.repeats})",
                ["tol", "solver", "evals", "ms", "ms/eval", "converged", "evals / picard", "time / picard"],
                rows, left=2, env=env_line())


if __name__ == "__main__":
    main()
