"""Adaptive depth in generation on trained models: which tokens take more iterations, what the
exact and the converged caches cost, and how far the converged one strays.

Two trained runs, an Attractor and a transformer of the same size (by default those of `attractor
demo`, runs/demo), continue the same prompts. Three measurements, side by side in one run:

1. Speed: greedy `attractor.generate.stream` tokens/s after the first, in turns (each round runs
   every configuration once, in a rotated order; medians of the rounds, ratios to the
   transformer's cached speed taken per round): the transformer cached, the Attractor at iters=0
   cached, adaptive with the exact cache, adaptive with the converged cache, adaptive uncached.
2. The converged cache against the exact one, teacher-forced on the exact cache's greedy
   continuation: the largest logit difference per token (median and max), the share of tokens
   whose greedy choice differs, the mean steps per token, and the caches' bytes at the end.
3. Which tokens take more iterations: the text each prompt continues (sampled at --temperature)
   is run once through the full adaptive forward; per position its own depth (`first_met`: the
   steps after which its own residual met tol) and its depth under prefix stopping (what the
   exact cache takes), against the next token's loss and the entropy of its distribution
   (Spearman), and the mean own depth by the class of the input token (letter, space,
   punctuation, newline) and the next token's.

Run:  python -m bench.generate_depth --attractor runs/demo/attractor-1m --transformer runs/demo/transformer-1m
      --solver picard: also the adaptive caches with Picard in place of the trained solver
      --quick: 1 round, 48 new tokens (about a minute)
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

from attractor.generate import Context, stream, stream_depth
from attractor.run import load_run
from bench.common import bench_parser, code_line, median, print_table, setup

PROMPTS = ["And God said, Let there be", "The LORD is my shepherd;", "In the beginning was the",
           "And it came to pass, when", "Blessed are they that", "Now the serpent was more"]


def speed(net: nn.Module, prompt: list[int], new: int, iters: int | None, cache) -> tuple[float, float | None]:
    """(tokens/s after the first, mean depth of the new tokens or None)."""
    first, depths = None, []
    for _, depth in stream_depth(net, prompt, max_new_tokens=new, iters=iters, temperature=0, cache=cache):
        depths.append(depth)
        if first is None:
            first = time.perf_counter()
    tps = (new - 1) / (time.perf_counter() - first)
    return tps, None if depths[0] is None else sum(depths) / len(depths)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two 1-d tensors (ties ranked by order; both have many distinct values
    or few classes, where this is a fair first look)."""
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def char_class(text: str) -> str:
    if text == "\n":
        return "newline"
    if text == " ":
        return "space"
    if text.isalpha():
        return "letter"
    return "punctuation/digit"


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("generate_depth", __doc__, "1 round, 48 new tokens")
    parser.add_argument("--attractor", default="runs/demo/attractor-1m", help="a trained Attractor run")
    parser.add_argument("--transformer", default="runs/demo/transformer-1m", help="a trained transformer run")
    parser.add_argument("--new", type=int, default=None, help="new tokens per prompt (default 192; --quick 48)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3; --quick 1)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling for the depth study")
    parser.add_argument("--solver", default=None, help="also time the adaptive caches with this solver instead of "
                        "the trained one (picard, anderson, broyden: the same fixed point, up to tol)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    setup(args)
    new = args.new or (48 if args.quick else 192)
    rounds = args.rounds or (1 if args.quick else 3)
    attractor, tokenizer, _, a_step = load_run(args.attractor)
    transformer, _, _, t_step = load_run(args.transformer)
    prompts = [tokenizer.encode(p) for p in PROMPTS]
    print(f"python -m bench.generate_depth {' '.join(argv)}".rstrip()
          + f", {time.strftime('%Y-%m-%d %H:%M %Z')}; {code_line()}; attractor {args.attractor} step {a_step}, "
          f"transformer {args.transformer} step {t_step}", flush=True)

    # 1. speed, in turns
    configs = [("transformer, cached", transformer, None, True), ("attractor iters=0, cached", attractor, 0, True),
               ("attractor adaptive, exact cache", attractor, None, True),
               ("attractor adaptive, converged cache", attractor, None, "converged"),
               ("attractor adaptive, no cache", attractor, None, False)]
    if args.solver:  # the same weights, another root solver (load_run's solver= setting)
        other, *_ = load_run(args.attractor, settings=[f"solver={args.solver}"])
        configs += [(f"attractor adaptive, exact cache, {args.solver}", other, None, True),
                    (f"attractor adaptive, converged cache, {args.solver}", other, None, "converged")]
    for _, net, iters, cache in configs:  # warm-up
        speed(net, prompts[0], 4, iters, cache)
    runs: dict[str, list[tuple[float, float | None]]] = {c[0]: [] for c in configs}
    for r in range(rounds):
        for name, net, iters, cache in configs[r % len(configs):] + configs[:r % len(configs)]:
            for prompt in prompts[:2]:
                runs[name].append(speed(net, prompt, new, iters, cache))
    base = [x[0] for x in runs[configs[0][0]]]
    rows = []
    for name, *_ in configs:
        tps = [x[0] for x in runs[name]]
        depth = [x[1] for x in runs[name] if x[1] is not None]
        rows.append([name, f"{median(tps):,.0f}", f"{median([a / b for a, b in zip(tps, base)]):.2f}",
                     "-" if not depth else f"{median(depth):.2f}"])
    print_table(f"Speed: greedy, {new} new tokens after each of 2 prompts, medians of {rounds} round(s)",
                ["configuration", "tok/s", "vs transformer", "mean steps per token"], rows)

    # 2. converged against exact, teacher-forced on the exact cache's greedy continuation
    diffs, flips, steps, nbytes = [], 0, {"exact": [], "converged": []}, {}
    for prompt in prompts:
        tokens = list(stream(attractor, prompt, max_new_tokens=new, temperature=0))
        contexts = {mode: Context(attractor, prompt, None, cache=mode) for mode in ("exact", "converged")}
        for token in tokens:
            logits = {mode: ctx.logits() for mode, ctx in contexts.items()}
            diffs.append(float((logits["exact"] - logits["converged"]).abs().max()))
            flips += int(logits["exact"].argmax() != logits["converged"].argmax())
            for mode, ctx in contexts.items():
                steps[mode].append(ctx.depth[0])
                ctx.append(token)
        for mode, ctx in contexts.items():
            nbytes.setdefault(mode, []).append(ctx.kv.nbytes())
    n = len(diffs)
    print_table(f"Converged cache against exact: {len(prompts)} prompts x {new} tokens, teacher-forced",
                ["cache", "mean steps per token", "cache MB at the end (median)", "max |logit diff| median / max",
                 "greedy choice differs"],
                [["exact", f"{sum(steps['exact']) / n:.2f}", f"{median(nbytes['exact']) / 2**20:.2f}", "0 (reference)", "-"],
                 ["converged", f"{sum(steps['converged']) / n:.2f}", f"{median(nbytes['converged']) / 2**20:.2f}",
                  f"{median(diffs):.4f} / {max(diffs):.4f}", f"{flips}/{n} ({flips / n:.1%})"]])

    # 3. which tokens take more iterations
    own, held, loss, entropy, inputs, targets = [], [], [], [], [], []
    with torch.no_grad():
        for i, prompt in enumerate(prompts):
            tokens = list(stream(attractor, prompt, max_new_tokens=new, temperature=args.temperature, seed=i))
            ids = torch.tensor([prompt + tokens])
            out = attractor(ids[:, :-1])
            logp = torch.log_softmax(out.logits[0].float(), -1)
            span = slice(len(prompt) - 1, ids.shape[1] - 1)  # positions that predict a generated token
            own.append(out.info.first_met[0, span])
            held.append(out.info.depth[0, span])
            loss.append(-logp[span].gather(1, ids[0, 1:][span, None])[:, 0])
            entropy.append(-(logp[span].exp() * logp[span]).sum(-1))
            inputs += [char_class(tokenizer.decode([t])) for t in ids[0, :-1][span].tolist()]
            targets += [char_class(tokenizer.decode([t])) for t in ids[0, 1:][span].tolist()]
    own, held, loss, entropy = (torch.cat(x) for x in (own, held, loss, entropy))
    print_table(f"Depth of {own.numel()} sampled tokens (temperature {args.temperature}), full adaptive forward",
                ["measure", "mean", "min", "max", "Spearman with next-token loss", "with entropy"],
                [[name, f"{float(x.float().mean()):.2f}", int(x.min()), int(x.max()),
                  f"{spearman(x.float(), loss):+.2f}", f"{spearman(x.float(), entropy):+.2f}"]
                 for name, x in (("own depth (first_met)", own), ("depth under prefix stopping", held))])
    classes = sorted(set(inputs) | set(targets))
    rows = []
    for c in classes:
        by_input = [float(d) for d, k in zip(own, inputs) if k == c]
        by_target = [float(d) for d, k in zip(own, targets) if k == c]
        rows.append([c, len(by_input), f"{sum(by_input) / len(by_input):.2f}" if by_input else "-",
                     len(by_target), f"{sum(by_target) / len(by_target):.2f}" if by_target else "-"])
    print_table("Own depth by token class", ["class", "as input: tokens", "mean own depth",
                                             "as the next token: tokens", "mean own depth"], rows)


if __name__ == "__main__":
    main()
