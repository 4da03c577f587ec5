"""The maze figures of docs/results-reasoning.md: exact accuracy and iterations against the side
for several models (from `attractor eval --json` files), and exact accuracy against the solver's
step cap at each side (from `python -m bench.maze_depth --json`).

Run:  python -m bench.maze_plots --eval "maze-local=FILE" --eval "maze-looped, s*s/2 loops=FILE@adaptive" \
          --budget BENCH.json --out docs/figures
      (LABEL=FILE takes the file's 'adaptive' rows; LABEL=FILE@K its rows of iters K; a
      bench.maze_depth file its cost rows, @anderson or @picard; each row one side. Writes
      OUT/maze_sides.png and, with --budget, OUT/maze_budget.png.)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attractor.plots import pyplot, save_figure


def eval_rows(spec: str) -> tuple[str, list[dict]]:
    """'LABEL=FILE[@ITERS]' -> (label, the eval rows of that iters, by side). A bench.maze_depth
    file gives its cost rows instead, @anderson or @picard (the solve at the model's own cap)."""
    label, _, rest = spec.partition("=")
    path, _, iters = rest.partition("@")
    data = json.loads(Path(path).read_text())
    if "cost" in data:
        rows = [{**r, "depth": r["steps"]} for r in data["cost"] if r["solver"] == (iters or "anderson")]
    else:  # the local maps' depth is their map's evaluations; TRM's 'depth' (inner cycles) is not: left out
        local = data["family"] == "LocalEquilibrium"
        rows = [{**r, "depth": r["depth"] if local else None} for r in data["sweep"]
                if str(r["iters"]) == (iters or "adaptive")]
    if not rows:
        raise SystemExit(f"{path} has no rows of {iters or 'the default'}")
    return label, sorted(rows, key=lambda r: r["side"])


def plot_sides(models: list[tuple[str, list[dict]]], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rows) in enumerate(models):
        sides = [r["side"] for r in rows]
        color = colors[i % len(colors)]  # one colour a model in both panels (the right skips some)
        left.plot(sides, [r["exact"] for r in rows], "o-", label=label, color=color)
        if rows[0].get("depth") is not None:
            right.plot(sides, [r["depth"] for r in rows], "o-", label=label, color=color)
    left.axvline(9, color="gray", linestyle=":", linewidth=1)
    left.set_xlabel("maze side (trained on 9)")
    left.set_ylabel("exact (share of 64 mazes)")
    left.set_ylim(-0.03, 1.03)
    right.set_xlabel("maze side")
    right.set_ylabel("iterations (map evaluations, mean)")
    right.set_yscale("log")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3, fontsize=7)
    fig.subplots_adjust(wspace=0.3)
    fig.suptitle("Mazes larger than any trained on: accuracy and depth", fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


def plot_budget(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    sides = sorted({r["side"] for r in result["budget"]})
    colors = dict(zip(sides, ["C0", "C1", "C2", "C3", "C4"]))
    for solver, style in (("anderson", "o-"), ("picard", "s--")):
        for side in sides:
            rows = sorted((r for r in result["budget"] if r["side"] == side and r["solver"] == solver),
                          key=lambda r: r["budget"])
            ax.plot([r["budget"] for r in rows], [r["exact"] for r in rows], style, color=colors[side],
                    label=f"side {side}, {solver}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("step cap (solver iterations allowed)")
    ax.set_ylabel("exact (share of mazes)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"maze-local ({result['checkpoint']}): exact against the step cap", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.maze_plots", description=__doc__.split("\n")[0])
    parser.add_argument("--eval", action="append", default=[], help="LABEL=FILE[@ITERS] (repeatable)")
    parser.add_argument("--budget", help="a bench.maze_depth --json file")
    parser.add_argument("--out", default="docs/figures", help="folder for the PNGs")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.eval:
        plot_sides([eval_rows(spec) for spec in args.eval], out / "maze_sides.png")
    if args.budget:
        plot_budget(json.loads(Path(args.budget).read_text()), out / "maze_budget.png")


if __name__ == "__main__":
    main()
