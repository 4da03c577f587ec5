"""Where an adaptive token's decoding time goes: the blocks it evaluates against the solver's own work.

An Attractor token decoded with the KV cache runs the backbone once and the attractor's map once
per solver step plus once at the start; an adaptive solve of depth D evaluates the map D + 1 times.
The same D + 1 evaluations without any solver are the fixed depth iters=D+1 (f applied D + 1 times
from the proposal), so, timed side by side on the same model, prompt and cache:

- backbone + decode: iters=0 (the solver skipped, the proposal decoded);
- the map's D + 1 evaluations: iters=D+1 minus iters=0;
- the solver's own work (residuals, Anderson's history and least squares, stopping, the best
  iterate): adaptive minus iters=D+1;
- the ceiling of adaptive decoding: the transformer's tokens/s over iters=D+1's, which a solver
  that cost nothing would reach.

D is the adaptive run's median depth per token (measured in a first pass, then fixed). Greedy
`attractor.generate.stream_depth` on random weights (seeded), the presets of bench.generate (seq_len
raised to the length), G tokens after a prompt of L - G: ms per token after the first, medians over
rounds in which the configurations take turns (rotated order), ratios taken per round.

Run:  python -m bench.decode_cost            1M and 5M presets at 1024 tokens, 5 rounds (about 3 minutes)
      python -m bench.decode_cost --quick    1M only, 2 rounds
      --lengths 128,512,1024 --sizes 1m
"""

from __future__ import annotations

import sys
import time

from bench.common import bench_parser, code_line, median, print_table, setup
from bench.generate import Model, make, prompt_of, run_once

NEW_TOKENS = 32


def configurations(depth: int) -> list[tuple[str, Model]]:
    """(row label, model) in table order; `depth` D is the adaptive solve's median depth."""
    return [("transformer, cached", Model("transformer", "transformer", None)),
            ("attractor iters=0: backbone + decode", Model("attractor-0", "attractor", 0)),
            (f"attractor iters={depth + 1}: + {depth + 1} map evaluations", Model("attractor-f", "attractor", depth + 1)),
            (f"attractor adaptive (depth {depth}), exact cache", Model("attractor-adaptive", "attractor", None)),
            ("attractor adaptive, converged cache", Model("attractor-converged", "attractor", None, "converged"))]


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("decode_cost", __doc__, "1M only, 2 rounds")
    parser.add_argument("--lengths", default="1024", help="prompt + generated tokens, comma-separated")
    parser.add_argument("--sizes", default=None, help="presets, comma-separated (default 1m,5m; --quick 1m)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds in turns (default 5; --quick 2)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    setup(args)
    sizes = (args.sizes or ("1m" if args.quick else "1m,5m")).split(",")
    rounds = args.rounds or (2 if args.quick else 5)
    start = time.perf_counter()
    print(f"python -m bench.decode_cost {' '.join(argv)}".rstrip() + f"; {code_line()}")
    for size in sizes:
        for length in [int(x) for x in args.lengths.split(",")]:
            table(size, length, rounds)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


def table(size: str, length: int, rounds: int) -> None:
    prompt = prompt_of(length, NEW_TOKENS)
    adaptive = make(Model("attractor-adaptive", "attractor", None), size, length)
    depth = round(run_once(adaptive, None, prompt, NEW_TOKENS, "exact")[2])
    rows = configurations(depth)
    nets = {m.key: make(m, size, length) for _, m in rows}
    for _, m in rows:  # warm-up: every path once, short
        run_once(nets[m.key], m.iters, prompt_of(16, 3), 3, m.cache)
    ms: dict[str, list[float]] = {m.key: [] for _, m in rows}
    depths: dict[str, list[float]] = {m.key: [] for _, m in rows}
    for r in range(rounds):
        for _, m in rows[r % len(rows):] + rows[:r % len(rows)]:
            _, tokens_per_s, d = run_once(nets[m.key], m.iters, prompt, NEW_TOKENS, m.cache)
            ms[m.key].append(1e3 / tokens_per_s)
            if d is not None:
                depths[m.key].append(d)

    def per_round(a: str, b: str, op) -> float:
        return median([op(x, y) for x, y in zip(ms[a], ms[b])])

    ceiling = per_round("transformer", "attractor-f", lambda t, f: t / f)
    out = []
    for label, m in rows:
        vs = per_round("transformer", m.key, lambda t, x: t / x)
        extra = {"attractor-f": f"map: {per_round('attractor-f', 'attractor-0', lambda f, z: f - z):.2f} ms",
                 "attractor-adaptive": f"solver: {per_round('attractor-adaptive', 'attractor-f', lambda a, f: a - f):.2f} ms",
                 "attractor-converged": f"ceiling at depth {depth}: {ceiling:.2f}"}.get(m.key, "")
        out.append([label, f"{median(depths[m.key]):.2f}" if depths[m.key] else "-", f"{median(ms[m.key]):.2f}", f"{vs:.2f}", extra])
    print_table(f"{size} presets, {length} tokens ({length - NEW_TOKENS} prompt + {NEW_TOKENS} generated), "
                f"median of {rounds} rounds in turns",
                ["configuration", "steps per token", "ms per token", "vs transformer", "split"], out)


if __name__ == "__main__":
    main()
