"""Step time of the CPU puzzle presets: one training step (one supervision step for the
reasoners) and one eval forward (every supervision step) on a batch of 9x9 Sudoku, in one run.

    python -m bench.puzzle_models            # about 5 minutes at one thread
    python -m bench.puzzle_models --quick    # seconds: tiny widths, to check that it runs

Random token batches stand in for puzzles: the cost of a step does not depend on the values (an
adaptive solve's iteration count does, slightly; it is printed beside the time).
"""

from __future__ import annotations

import argparse

import torch
from bench.common import code_line, median_time, optimizer, print_table, seeded, timed, train_step

from attractor.models import build

# (label, preset, overrides)
MODELS = [
    ("puzzle-transformer-cpu", "puzzle-transformer-cpu", {}),
    ("trm-cpu", "trm-cpu", {}),
    ("attractor-reasoner-cpu", "attractor-reasoner-cpu", {}),
    ("attractor-reasoner-cpu, joint", "attractor-reasoner-cpu", dict(joint=True)),
    ("trm-cpu, published 3 x (6 + 1)", "trm-cpu", dict(h_cycles=3, l_cycles=6)),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny widths and one repeat")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shrink = dict(d=32, n_head=2) if args.quick else {}
    repeats = 1 if args.quick else args.repeats
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, 11, (args.batch, 81), generator=gen)  # blanks and digits
    labels = torch.randint(2, 11, (args.batch, 81), generator=gen)  # digits

    rows, base = [], None
    for label, preset, overrides in MODELS:
        model = seeded(lambda: build(preset, **overrides, **shrink)).train()
        opt = optimizer(model)
        step_s, out = median_time(lambda: train_step(model, opt, inputs, labels), repeats)
        model.eval()
        with torch.no_grad():
            eval_s, evaluated = timed(lambda: model(inputs, labels))
        base = base or step_s
        rows.append([label, f"{step_s:.2f}", f"{step_s / base:.1f}", out.n_evals, f"{eval_s:.2f}",
                     evaluated.n_evals, f"{3600 / step_s:.0f}"])
    print(code_line())
    print_table(f"Puzzle presets, batch {args.batch} of 9x9 Sudoku (median of {repeats} steps after one warm-up)",
                ["model", "train step s", "x transformer", "net evals / step", "eval s", "net evals (eval)",
                 "steps / hour"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
