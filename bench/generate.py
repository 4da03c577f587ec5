"""Generation speed and memory, cached and uncached, every language-model family side by side.

What is timed is `attractor.generate.stream` (what `attractor generate` runs), greedy, one prompt,
on random weights (seeded; speed does not depend on what the weights learned, except the adaptive
solves' depth, which on random weights is what random weights give). For each total length L
(prompt + generated tokens: 128, 512, 1024) the prompt is L - G random byte tokens and G tokens are
generated (G = 32, 8 with --quick), so the last token sees a context of L. Two numbers per run:
- first token ms: the prompt's forward and the first new token (the cache's prefill);
- tokens/s: the G - 1 tokens after the first, per second (decoding at a context near L).
Every configuration runs with its cache (the default of `attractor generate`: "exact", or
"converged" where the row says so, `--cache converged`) and with `cache=False` (`--no-cache`: the
whole context re-run for each token). An adaptive solve's exact cache holds every solver step's
keys and values and continues its prefix's solve, so a token takes at least its prefix's steps
(prefix stopping); the converged cache holds each position's last iterate only and lets a token
stop on its own residual (attractor.kvcache).

The presets' seq_len is 256; where L is longer the model is built with seq_len = L (the byte
models use rotary positions, so only the cache's capacity changes), so that no run slides its
window. Models take turns: every round runs each configuration once, cached and uncached, in an
order rotated each round, so that load from other jobs falls on all of them alike; the numbers are
medians over the rounds, and the ratios medians of the per-round ratios: cached / uncached per
model and length, and each model's cached tokens/s over the transformer's cached in the same round.

Peak memory is measured per configuration in a fresh subprocess (bench.common.PeakRSS: the
high-water mark of resident memory above the loaded model, with MALLOC_MMAP_THRESHOLD_ set so
that freed tensors leave RSS), around one `stream` of the same length after a short warm-up.

Start-up (--startup, on by default): median wall time of `python -c "import torch"`, `python -m
attractor models` and `python -m attractor generate RUN --prompt a --max-new-tokens 0` on a tiny
run trained for it in a temporary directory, in turns.

Run:  python -m bench.generate            1M presets, 3 rounds after a warm-up (5 to 9 minutes)
      python -m bench.generate --full     also the 5M presets
      python -m bench.generate --quick    1 round of 8 tokens, memory at the longest length only (<2 min)
      --models transformer,attractor-0 --lengths 128 --no-memory --no-startup  (a subset)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch
from torch import nn

from attractor.generate import stream, stream_depth
from attractor.models import build
from bench.common import PEAK_RSS_ENV, ROOT, PeakRSS, bench_parser, code_line, median, print_table, setup

LENGTHS = (128, 512, 1024)
PRESET_SEQ_LEN = 256


@dataclass(frozen=True)
class Model:
    key: str  # what --models names
    family: str  # preset family: family-1m, family-5m
    iters: int | None  # None: the model's own rule (adaptive solve; the looped model's mean_loops)
    cache: str = "exact"  # the cache mode of the cached runs (attractor.kvcache.MODES)

    def label(self, size: str) -> str:
        if self.iters is not None:
            depth = f"iters={self.iters}"
        else:
            depth = "adaptive" if self.family in ("attractor", "deq") else "mean_loops"
        mode = "" if self.cache == "exact" else f", {self.cache} cache"
        return f"{self.family}-{size}" + ("" if self.family == "transformer" else f", {depth}") + mode


MODELS = [Model("transformer", "transformer", None), Model("attractor-0", "attractor", 0),
          Model("attractor-1", "attractor", 1), Model("attractor-adaptive", "attractor", None),
          Model("attractor-converged", "attractor", None, "converged"), Model("deq-1", "deq", 1),
          Model("deq-adaptive", "deq", None), Model("looped", "looped", None)]


def make(model: Model, size: str, length: int) -> nn.Module:
    torch.manual_seed(0)
    return build(f"{model.family}-{size}", seq_len=max(PRESET_SEQ_LEN, length)).eval()


def prompt_of(length: int, new: int) -> list[int]:
    gen = torch.Generator().manual_seed(length)
    return torch.randint(0, 256, (length - new,), generator=gen).tolist()


def run_once(net: nn.Module, iters: int | None, prompt: list[int], new: int, cache: bool | str):
    """(first-token seconds, tokens/s after the first, mean depth of the new tokens or None)."""
    start = time.perf_counter()
    first, depths = None, []
    for _, depth in stream_depth(net, prompt, max_new_tokens=new, iters=iters, temperature=0, cache=cache):
        depths.append(depth)
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    mean_depth = None if depths[0] is None else sum(depths) / len(depths)
    return first - start, (new - 1) / (end - first), mean_depth


def memory_child(argv: list[str]) -> None:
    """In a fresh interpreter: peak MB of one stream (prints JSON)."""
    key, size, length, cache, new, threads = argv
    torch.set_num_threads(int(threads))
    model = next(m for m in MODELS if m.key == key)
    length, new, cache = int(length), int(new), cache == "1" and model.cache
    net = make(model, size, length)
    list(stream(net, prompt_of(16, 2), max_new_tokens=2, iters=model.iters, temperature=0, cache=cache))  # warm-up
    prompt = prompt_of(length, new)
    with PeakRSS() as peak:
        list(stream(net, prompt, max_new_tokens=new, iters=model.iters, temperature=0, cache=cache))
    print(json.dumps({"mb": peak.mb}))


def peak_mb(model: Model, size: str, length: int, cache: bool, new: int, threads: int) -> float:
    env = {**os.environ, **PEAK_RSS_ENV}
    out = subprocess.run([sys.executable, "-m", "bench.generate", "--memory-child", model.key, size, str(length),
                          "1" if cache else "0", str(new), str(threads)], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["mb"]


def measure(models: list[Model], size: str, lengths: list[int], new: int, rounds: int):
    """{(key, length, cached): [(first s, tokens/s, depth), ...]} over the rounds, models taking turns."""
    nets = {(m.key, n): make(m, size, n) for m in models for n in lengths}
    for (key, n), net in nets.items():  # warm-up: every path once, short
        m = next(x for x in models if x.key == key)
        for cache in (True, False):
            run_once(net, m.iters, prompt_of(16, 3), 3, cache and m.cache)
    results: dict[tuple[str, int, bool], list] = {}
    for r in range(rounds):
        for n in lengths:
            order = models[r % len(models):] + models[:r % len(models)]
            for m in order:
                for cache in ((True, False) if r % 2 == 0 else (False, True)):
                    results.setdefault((m.key, n, cache), []).append(
                        run_once(nets[(m.key, n)], m.iters, prompt_of(n, new), new, cache and m.cache))
    return results


def report(models: list[Model], size: str, lengths: list[int], new: int, rounds: int, results, memory) -> None:
    base = "transformer" if any(m.key == "transformer" for m in models) else None
    for n in lengths:
        rows = []
        for m in models:
            c, u = results[(m.key, n, True)], results[(m.key, n, False)]
            cached_tps = [x[1] for x in c]
            speedup = median([a[1] / b[1] for a, b in zip(c, u)])
            vs = (median([a[1] / t[1] for a, t in zip(c, results[(base, n, True)])]) if base else float("nan"))
            depths = [x[2] for x in c if x[2] is not None]
            has_cache = make_cache_flag(m, size)
            mem = memory.get((m.key, n))
            rows.append([m.label(size) + ("" if has_cache else " (no cache)"),
                         "-" if not depths else f"{median(depths):.1f}",
                         f"{median(cached_tps):,.0f}", f"{median([x[1] for x in u]):,.0f}", f"{speedup:.1f}x",
                         f"{vs:.2f}", f"{median([x[0] for x in c]) * 1e3:.0f}",
                         f"{median([x[0] for x in u]) * 1e3:.0f}",
                         "-" if mem is None else f"{mem[0]:.1f}", "-" if mem is None else f"{mem[1]:.1f}"])
        seq = max(PRESET_SEQ_LEN, n)
        print_table(f"{size} presets, {n} tokens ({n - new} prompt + {new} generated), seq_len {seq}, greedy: "
                    f"median of {rounds} round(s)",
                    ["model", "depth", "cached tok/s", "uncached tok/s", "cached/uncached", "cached vs transformer",
                     "first token ms cached", "uncached", "peak MB cached", "uncached"], rows)


def make_cache_flag(m: Model, size: str) -> bool:
    net = build(f"{m.family}-{size}", d=32, n_head=2).eval()  # tiny: only can_cache is asked
    return bool(getattr(net, "can_cache", lambda i: False)(m.iters))


def startup(repeats: int) -> None:
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        run = os.path.join(tmp, "run")
        subprocess.run([py, "-m", "attractor", "train", "transformer-1m", "--out", run, "--steps", "2", "--set",
                        "model.d=32", "--set", "model.n_head=2", "--set", "model.seq_len=32", "--set",
                        "train.batch_size=2", "--quiet"], cwd=ROOT, check=True, capture_output=True)
        commands = {"python -c 'import torch'": ["-c", "import torch"],
                    "python -m attractor models": ["-m", "attractor", "models"],
                    "python -m attractor generate RUN --prompt a --max-new-tokens 0":
                        ["-m", "attractor", "generate", run, "--prompt", "a", "--max-new-tokens", "0"]}
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(repeats):
            for name, args in commands.items():
                start = time.perf_counter()
                subprocess.run([py, *args], cwd=ROOT, check=True, capture_output=True)
                times[name].append(time.perf_counter() - start)
    torch_s = median(times["python -c 'import torch'"])
    print_table(f"Start-up, wall seconds, median of {repeats} in turns",
                ["command", "seconds", "beyond import torch"],
                [[k, f"{median(v):.2f}", f"{median(v) - torch_s:+.2f}"] for k, v in times.items()])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--memory-child":
        return memory_child(argv[1:])
    parser = bench_parser("generate", __doc__, "1 round of 8 new tokens, memory at the longest length only")
    parser.add_argument("--full", action="store_true", help="also the 5M presets")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3; --quick 1)")
    parser.add_argument("--models", default=None, help=f"comma-separated subset of {','.join(m.key for m in MODELS)}")
    parser.add_argument("--lengths", default=None, help="comma-separated total lengths (default 128,512,1024)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-startup", action="store_true", help="skip the start-up timings")
    args = parser.parse_args(argv)
    setup(args)
    models = MODELS if args.models is None else [next(m for m in MODELS if m.key == k) for k in args.models.split(",")]
    lengths = list(LENGTHS) if args.lengths is None else [int(x) for x in args.lengths.split(",")]
    new = 8 if args.quick else 32
    rounds = args.rounds or (1 if args.quick else 3)
    start = time.perf_counter()
    print(f"python -m bench.generate {' '.join(argv)}".rstrip() + f", {time.strftime('%Y-%m-%d %H:%M %Z')}; "
          f"{code_line()}", flush=True)
    for size in (("1m", "5m") if args.full else ("1m",)):
        results = measure(models, size, lengths, new, rounds)
        memory = {}
        if not args.no_memory:
            for n in (lengths[-1:] if args.quick else lengths):
                for m in models:
                    memory[(m.key, n)] = tuple(peak_mb(m, size, n, cache, new, args.threads) for cache in (True, False))
        report(models, size, lengths, new, rounds, results, memory)
    if not args.no_startup:
        startup(3 if args.quick else 5)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
