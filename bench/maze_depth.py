"""Test-time depth on mazes of any side: accuracy against an iteration budget, path independence
across random starts, and the solvers' cost to converge, for a maze-sizes checkpoint of the local
equilibrium map (attractor/models/local.py, e.g. examples/maze).

The model's own problem at each side (`model.equilibrium(idx)`: its map, its start, its solve)
is solved on the first `--mazes` test mazes of each side of a maze-sizes dataset, all in one batch:

    budget   the solver's step cap set to K for K in --budgets (max_iter_per_position=0,
             max_iter=K: `attractor eval --set max_iter_per_position=0 --set max_iter=K` does the
             same), with Anderson (the trained solver) and Picard: exact share, mean steps,
             share converged. The answer is the solver's lowest-residual iterate within K steps.
    starts   Anderson at the model's own cap from z0 = 0 and from --starts random starts
             (start=random, start_seed=1..k: uniform in [-1, 1]): exact share per start, the share
             of mazes whose answer (every cell's token) is the same from every start, and the
             distance of each start's fixed point from the zero start's, ||z_k - z_0|| / ||z_0||
             per maze (max over starts), its mean and max over mazes.
    cost     Picard and Anderson at the model's own cap (max(32, s*s) by default) from z0 = 0:
             mean steps, converged and exact share, and the wall-clock of the batch's solve.

Threads default to 1 (a shared 2-core machine); wall-clock is of one batch of --mazes mazes,
which runs until its slowest maze stops.

Run:  python -m bench.maze_depth --checkpoint examples/maze --data DIR [--sides 9,17,33] [--json FILE]
      python -m bench.maze_depth --quick --checkpoint examples/maze --data DIR   (4 mazes, budgets 8,32, 1 start)
"""

from __future__ import annotations

import json
import time

import torch

from attractor.data.maze_sizes import load_maze_sizes
from attractor.models import from_config
from attractor.models.equilibrium import solve_equilibrium
from attractor.models.registry import override
from attractor.run import load_run
from bench.common import bench_parser, code_line, env_line, print_table, setup

BUDGETS = (16, 32, 64, 128, 256, 512)
SOLVERS = ("anderson", "picard")


def variant(model, **changes):
    """The checkpoint's model with its config changed (solver, cap, start; not the weights' shapes)."""
    other = from_config(override(model.cfg, **changes))
    other.load_state_dict(model.state_dict())
    return other.eval()


def test_mazes(data: dict, side: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` test mazes of a side: questions and answers, (count, side*side) int64."""
    split = data["test"][side]
    return (torch.from_numpy(split.inputs[:count].astype("int64")),
            torch.from_numpy(split.labels[:count].astype("int64")))


@torch.no_grad()
def solve(model, inputs: torch.Tensor, labels: torch.Tensor) -> dict:
    """The model's own solve on a batch: z (B, n, C), answers (B, n), exact (B,), depth (B,),
    converged (B,), seconds."""
    problem = model.equilibrium(inputs)
    started = time.perf_counter()
    z, report = solve_equilibrium(problem, None)
    seconds = time.perf_counter() - started
    answers = model.head(z).argmax(-1)
    return {"z": z, "answers": answers, "exact": (answers == labels).all(-1), "depth": report.depth.float(),
            "converged": report.converged_per_sample(), "seconds": seconds}


def budget_rows(model, inputs, labels, side: int, budgets) -> list[dict]:
    rows = []
    for solver in SOLVERS:
        for k in budgets:
            out = solve(variant(model, solver=solver, max_iter_per_position=0.0, max_iter=k), inputs, labels)
            rows.append({"side": side, "solver": solver, "budget": k, "exact": out["exact"].float().mean().item(),
                         "steps": out["depth"].mean().item(), "converged": out["converged"].float().mean().item()})
    return rows


def start_row(model, inputs, labels, side: int, starts: int) -> tuple[dict, dict]:
    """(the starts row, the zero start's Anderson solve for the cost table)."""
    zero = solve(variant(model, solver="anderson", start="zero"), inputs, labels)
    outs = [solve(variant(model, solver="anderson", start="random", start_seed=k), inputs, labels)
            for k in range(1, starts + 1)]
    same = torch.stack([(o["answers"] == zero["answers"]).all(-1) for o in outs]).all(0)  # (B,)
    scale = zero["z"].flatten(1).norm(dim=1).clamp(min=1e-12)
    dist = torch.stack([(o["z"] - zero["z"]).flatten(1).norm(dim=1) / scale for o in outs]).max(0).values  # (B,)
    every = [zero, *outs]
    row = {"side": side, "starts": starts + 1, "exact_by_start": [o["exact"].float().mean().item() for o in every],
           "converged_by_start": [o["converged"].float().mean().item() for o in every],
           "same_answers": same.float().mean().item(), "dist_mean": dist.mean().item(), "dist_max": dist.max().item()}
    return row, zero


def cost_rows(model, inputs, labels, side: int, anderson: dict) -> list[dict]:
    picard = solve(variant(model, solver="picard", start="zero"), inputs, labels)
    cap = variant(model).max_iter(inputs.shape[1])
    return [{"side": side, "solver": name, "cap": cap, "steps": out["depth"].mean().item(),
             "converged": out["converged"].float().mean().item(), "exact": out["exact"].float().mean().item(),
             "seconds": out["seconds"]} for name, out in (("anderson", anderson), ("picard", picard))]


def run(checkpoint: str, data_dir: str, sides, mazes: int, budgets, starts: int) -> dict:
    model, _, _, step = load_run(checkpoint)
    data = load_maze_sizes(data_dir)
    result = {"checkpoint": checkpoint, "step": step, "data": data_dir, "mazes": mazes,
              "env": env_line(), "code": code_line(), "budget": [], "starts": [], "cost": []}
    for side in sides:
        inputs, labels = test_mazes(data, side, mazes)
        result["budget"] += budget_rows(model, inputs, labels, side, budgets)
        row, zero = start_row(model, inputs, labels, side, starts)
        result["starts"].append(row)
        result["cost"] += cost_rows(model, inputs, labels, side, zero)
    return result


def report(result: dict) -> None:
    env = (f"{result['env']}; {result['code']}; {result['checkpoint']} step {result['step']}, "
           f"{result['mazes']} mazes per side")
    budgets = sorted({r["budget"] for r in result["budget"]})
    sides = sorted({r["side"] for r in result["budget"]})
    rows = []
    for solver in SOLVERS:
        for side in sides:
            by = {r["budget"]: r for r in result["budget"] if r["side"] == side and r["solver"] == solver}
            rows.append([solver, side, *(f"{by[k]['exact']:.3f}" for k in budgets)])
    print_table("Exact share against the step cap", ["solver", "side", *budgets], rows, left=1, env=env)
    rows = [[r["side"], r["starts"], " / ".join(f"{e:.3f}" for e in r["exact_by_start"]), f"{r['same_answers']:.3f}",
             f"{r['dist_mean']:.2e}", f"{r['dist_max']:.2e}"] for r in result["starts"]]
    print_table("Path independence (Anderson; zero start, then random starts 1..k)",
                ["side", "starts", "exact by start", "same answers", "fixed-point distance mean", "max"], rows,
                left=0, env=env)
    rows = [[r["solver"], r["side"], r["cap"], f"{r['steps']:.1f}", f"{r['converged']:.3f}", f"{r['exact']:.3f}",
             f"{r['seconds']:.1f}"] for r in result["cost"]]
    print_table("Cost to converge (zero start, the model's own cap)",
                ["solver", "side", "cap", "mean steps", "converged", "exact", "seconds per batch"], rows, env=env)


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("maze_depth", __doc__, "4 mazes per side, budgets 8 and 32, one random start")
    parser.add_argument("--checkpoint", default="examples/maze", help="a maze-sizes run or checkpoint of the local map")
    parser.add_argument("--data", required=True, help="a maze-sizes dataset folder (attractor data maze-sizes)")
    parser.add_argument("--sides", default="9,17,33", help="test sides, comma-separated")
    parser.add_argument("--mazes", type=int, default=64, help="test mazes per side (one batch)")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="step caps, comma-separated")
    parser.add_argument("--starts", type=int, default=4, help="random starts besides the zero start")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    setup(args)
    if args.quick:
        args.mazes, args.budgets, args.starts = 4, "8,32", 1
    result = run(args.checkpoint, args.data, [int(s) for s in args.sides.split(",")], args.mazes,
                 [int(k) for k in args.budgets.split(",")], args.starts)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
