"""Memory and time of one training step against depth: AttractorLM's gradients vs looped backprop.

The Attractor paper (Fein-Ashley and Rashidinejad 2026, arXiv 2605.12466) claims training memory
that is constant in the number of solver iterations, where a looped transformer trained by
backprop through its loops (Parcae, Prairie et al. 2026, arXiv 2604.12946) grows until it no
longer fits. This benchmark measures that claim for one training step (forward, backward, AdamW
step) at T = 4, 8, 16, 32, 64 iterations, batch 16 x 256 random byte tokens, for

    onestep    AttractorLM, Jacobian-free gradient (one differentiable evaluation at y*)
    phantom    AttractorLM, phantom gradient, k = 2 damped steps (Geng et al. 2021, arXiv 2111.05177)
    implicit   AttractorLM, implicit-function-theorem gradient (adjoint solved to 1e-4)
    looped     LoopedLM, backprop through all T loops (backprop_loops=None, iters=T)

all at the same dense size (bench.common: d 192, 4 heads, seven blocks' worth, ~3.1M dense).
The AttractorLMs run tol=0 and max_iter=T, so every solve takes all T steps (T + 1 evaluations
of f, checked); the looped model runs exactly T loops of its one recurrent block.

Peak memory: each configuration runs in a fresh interpreter with MALLOC_MMAP_THRESHOLD_=65536
(every tensor above 64 kB is its own mapping, unmapped when freed, so RSS follows live tensors).
The child does one warm-up step with a cheap configuration (1 iteration), then resets the kernel's
peak-RSS mark (/proc/self/clear_refs), reads VmRSS, runs the measured step and reads VmHWM:
peak growth = VmHWM - VmRSS before. It also totals the distinct tensors autograd saved for
backward (parameters excluded), a machine-independent count.

Time: that allocator setting makes every step pay fresh page faults (~1.5x slower here), so step
times are measured separately, in this process with the default allocator: for each T the four
models take turns on identical batches, one warm-up step each, then the median of `repeats`.

A configuration is skipped (and reported as such) when the trend of the smaller T predicts
more than 18 GB (or more than the machine has free), or a step longer than 3 minutes.

Threads default to 1, as in bench.solvers: the 2-core machine is shared, and two-thread kernels
stall whenever another job holds a core (a T = 8 step took 8-12 s with 2 threads under load,
2 s with 1).

Run:  python -m bench.memory_depth            batch 16, T = 4, 8, 16, 32, 64, 3 timed steps
      python -m bench.memory_depth --quick    batch 2, T = 4 and 64, 1 timed step (~1 minute)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
from torch import nn

from attractor import Implicit, OneStep, Phantom
from bench.common import (
    PEAK_RSS_ENV, ROOT, attractor_lm, available_mb, batches, bench_parser, code_line, looped_lm, median, optimizer,
    PeakRSS, print_table, SavedTensors, seeded, setup, timed, train_step,
)

MODELS = ("onestep", "phantom", "implicit", "looped")
ATTRACTORS = MODELS[:3]
SEQ = 256
LIMIT_MB = 18_000  # skip a configuration predicted to need more
LIMIT_S = 180.0  # or predicted to take longer per step
CHILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Sizes:
    batch: int
    depths: tuple[int, ...]  # T: loops of the looped model, solver steps (max_iter, tol=0) of the attractors
    repeats: int  # timed steps per configuration, after one warm-up step


FULL = Sizes(batch=16, depths=(4, 8, 16, 32, 64), repeats=3)
QUICK = Sizes(batch=2, depths=(4, 64), repeats=1)


# ---------------------------------------------------------------------------------------------
# The configurations


def make(kind: str, iters: int) -> nn.Module:
    """The model of one configuration, seeded so every T starts from the same weights."""
    if kind == "looped":
        return seeded(lambda: looped_lm(backprop_loops=None, mean_loops=min(8, iters), max_loops=iters))
    grad = {"onestep": OneStep(), "phantom": Phantom(k=2), "implicit": Implicit(tol=1e-4)}[kind]
    return seeded(lambda: attractor_lm(tol=0.0, max_iter=iters, min_iter=0, grad=grad))


def forward_kwargs(kind: str, iters: int) -> dict:
    """Looped: exactly `iters` loops for every sequence. Attractor: the solver, to tol=0."""
    return {"iters": iters} if kind == "looped" else {}


def cheap_kwargs(kind: str) -> dict:
    """Forward kwargs of the warm-up step: one loop, or one plain attractor step (`iters=1`) with
    the configured gradient attached (same blocks, gradient and optimiser; no solver)."""
    return {"iters": 1}


def counts(kind: str, out, iters: int) -> dict:
    """Machine-independent counts of the step, read from the forward's ModelOutput."""
    if kind == "looped":
        return {"loops": int(out.depth.max())}
    info = out.info
    result = {"n_evals": out.n_evals, "evals_ok": out.n_evals == iters + 1}
    if kind == "implicit" and info.backward is not None:
        result["adjoint_evals"] = info.backward.n_evals
    return result


# ---------------------------------------------------------------------------------------------
# Memory: one fresh interpreter per configuration


def memory_child(kind: str, iters: int, batch: int) -> dict:
    """Runs in a fresh interpreter (started by `measure_memory`): one JSON line on stdout."""
    model = make(kind, iters)
    opt = optimizer(model)
    (x0, y0), (x, y) = batches(2, batch, SEQ)
    train_step(model, opt, x0, y0, **cheap_kwargs(kind))  # kernels, autograd engine, optimiser state
    opt.zero_grad(set_to_none=True)
    gc.collect()
    saved = SavedTensors(exclude=list(model.parameters()))
    with PeakRSS() as peak:
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            out = model(x, y, **forward_kwargs(kind, iters))
        saved_mb = saved.live_mb()
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        seconds = time.perf_counter() - start
    return {"kind": kind, "iters": iters, "peak_mb": peak.mb, "saved_mb": saved_mb,
            "rss_before_mb": peak.start, "seconds_mmap": seconds, **counts(kind, out, iters)}


def run_child(kind: str, iters: int, batch: int) -> dict:
    cmd = [sys.executable, "-m", "bench.memory_depth", "--child", f"{kind}:{iters}:{batch}",
           "--threads", str(torch.get_num_threads())]
    try:
        child = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S,
                               env={**os.environ, **PEAK_RSS_ENV})
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {CHILD_TIMEOUT_S} s"}
    if child.returncode != 0:
        reason = "killed (out of memory?)" if child.returncode == -9 else f"exit {child.returncode}"
        print(f"WARNING: {kind} T={iters}: child {reason}:\n{child.stderr[-2000:]}", file=sys.stderr)
        return {"skipped": reason}
    return json.loads(child.stdout.strip().splitlines()[-1])


def predicted(points: list[tuple[int, float]], iters: int) -> float:
    """Linear extrapolation from the last two (T, value) points; -inf with fewer than two."""
    if len(points) < 2:
        return float("-inf")
    (t1, v1), (t2, v2) = points[-2:]
    return v2 + (v2 - v1) / (t2 - t1) * (iters - t2)


def measure_memory(sizes: Sizes) -> dict:
    """{(kind, T): child result or {'skipped': reason}}, skipping what the trend says won't fit."""
    results = {}
    for kind in MODELS:
        mem, sec = [], []
        for iters in sizes.depths:
            need_mb, need_s = predicted(mem, iters), predicted(sec, iters)
            room_mb = min(LIMIT_MB, available_mb() - 1024)
            if need_mb > room_mb:
                reason = f"predicted {need_mb / 1024:.1f} GB > {room_mb / 1024:.1f} GB"
                results[kind, iters] = {"skipped": reason}
            elif need_s > LIMIT_S:
                results[kind, iters] = {"skipped": f"predicted {need_s:.0f} s per step > {LIMIT_S:.0f} s"}
            else:
                results[kind, iters] = run_child(kind, iters, sizes.batch)
            r = results[kind, iters]
            if "skipped" in r:
                print(f"  {kind} T={iters}: skipped, {r['skipped']}", flush=True)
                continue
            mem.append((iters, r["peak_mb"]))
            sec.append((iters, r["seconds_mmap"]))
            print(f"  {kind} T={iters}: peak +{r['peak_mb']:.0f} MB, saved {r['saved_mb']:.0f} MB "
                  f"({r['seconds_mmap']:.1f} s under the mmap allocator)", flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# Time: all models in this process, taking turns on identical batches


def measure_time(sizes: Sizes, memory: dict) -> dict:
    """{(kind, T): median seconds per training step}, for the configurations not skipped."""
    times = {}
    data = batches(sizes.repeats + 1, sizes.batch, SEQ)
    for iters in sizes.depths:
        kinds = [k for k in MODELS if "skipped" not in memory[k, iters]]
        models = {k: make(k, iters) for k in kinds}
        opts = {k: optimizer(models[k]) for k in kinds}
        samples = {k: [] for k in kinds}
        for step, (x, y) in enumerate(data):  # step 0 is the warm-up
            for k in kinds:
                seconds, _ = timed(lambda: train_step(models[k], opts[k], x, y, **forward_kwargs(k, iters)))
                if step > 0:
                    samples[k].append(seconds)
        for k in kinds:
            times[k, iters] = median(samples[k])
        print(f"  T={iters}: " + ", ".join(f"{k} {times[k, iters]:.2f} s" for k in kinds), flush=True)
        del models, opts
        gc.collect()
    return times


# ---------------------------------------------------------------------------------------------
# Report


def slope(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of value against T."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    return sum((t - mt) * (v - mv) for t, v in points) / sum((t - mt) ** 2 for t, _ in points)


def report(sizes: Sizes, memory: dict, times: dict) -> None:
    first = sizes.depths[0]
    counts_rows = []
    for kind in MODELS:
        model = make(kind, first)
        c = model.parameter_counts()
        cfg = model.cfg
        desc = (f"6 + 1 blocks, grad {cfg.solve.grad}, {cfg.solve.solver}, tol 0, max_iter T"
                if kind != "looped" else
                "5 prelude + 1 recurrent + 1 coda, backprop through all T loops")
        counts_rows.append([kind, type(model).__name__, desc, f"{c['dense']:,}", f"{c['total']:,}"])
    print_table(f"Models (d 192, 4 heads), batch {sizes.batch} x seq {SEQ}, random byte tokens",
                ["name", "class", "configuration", "dense params", "total params"], counts_rows, left=3)

    def value(kind, iters, get):
        r = memory[kind, iters]
        return None if "skipped" in r else get(kind, iters)

    def table(title, get, fmt):
        rows = []
        for iters in sizes.depths:
            row = [iters]
            for kind in MODELS:
                v, v0 = value(kind, iters, get), value(kind, first, get)
                row.append("skipped" if v is None else f"{fmt(v)} (x{v / v0:.2f})" if v0 else fmt(v))
            loop = value("looped", iters, get)
            for kind in ATTRACTORS:
                a = value(kind, iters, get)
                row.append("-" if loop is None or not a else f"{loop / a:.2f}")
            rows.append(row)
        print_table(title, ["T", *MODELS, *(f"looped/{k}" for k in ATTRACTORS)], rows)

    table(f"Peak memory growth of one training step, MB (x ratio to T={first}); fresh process each, "
          "VmHWM - VmRSS before", lambda k, t: memory[k, t]["peak_mb"], lambda v: f"{v:.0f}")
    table(f"Seconds per training step, median of {sizes.repeats} after 1 warm-up (x ratio to T={first}); "
          "models take turns in one process", lambda k, t: times[k, t], lambda v: f"{v:.2f}")

    rows = []
    for iters in sizes.depths:
        row = [iters]
        for kind in MODELS:
            r = memory[kind, iters]
            if "skipped" in r:
                row += ["-", "skipped"]
                continue
            if kind == "looped":
                evals = f"{r['loops']} loops"
            else:
                evals = f"{r['n_evals']}" + ("" if r["evals_ok"] else f" (expected {iters + 1})")
                if "adjoint_evals" in r:
                    evals += f" + {r['adjoint_evals']} adj"
            row += [evals, f"{r['saved_mb']:.0f}"]
        rows.append(row)
    print_table("Counts: f-evaluations of the forward solve (+ adjoint solve), loops; MB of distinct tensors "
                "saved for backward (parameters excluded)",
                ["T", *(f"{k} {col}" for k in MODELS for col in ("evals", "saved MB"))], rows)
    skipped = [f"{k} T={t}: {memory[k, t]['skipped']}" for k in MODELS for t in sizes.depths
               if "skipped" in memory[k, t]]
    if skipped:
        print("skipped: " + "; ".join(skipped))
    bad = [f"{k} T={t}" for k in ATTRACTORS for t in sizes.depths
           if "skipped" not in memory[k, t] and not memory[k, t]["evals_ok"]]
    print("n_evals == T + 1 for every AttractorLM run: " + ("yes" if not bad else "NO: " + ", ".join(bad)))
    for kind in MODELS:
        pts = [(t, memory[kind, t]["peak_mb"]) for t in sizes.depths if "skipped" not in memory[kind, t]]
        per_iter = round(slope(pts), 1) + 0.0  # no "-0.0"
        line = f"{kind}: peak memory slope {per_iter:.1f} MB per iteration (least squares over T)"
        if kind == "looped" and slope(pts) > 0:
            t_full = pts[-1][0] + (24 * 1024 - pts[-1][1]) / slope(pts)
            line += f"; at that slope 24 GiB is reached near T = {t_full:.0f}"
        print(line)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = bench_parser("memory_depth", __doc__, "batch 2, T = 4 and 64, 1 timed step")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "kind:iters:batch", internal
    args = parser.parse_args(argv)
    setup(args)
    if args.child:
        kind, iters, batch = args.child.split(":")
        print(json.dumps(memory_child(kind, int(iters), int(batch))))
        return
    sizes = QUICK if args.quick else FULL
    start = time.perf_counter()
    command = "python -m bench.memory_depth" + (" --quick" if args.quick else "")
    print(f"{command}, {time.strftime('%Y-%m-%d %H:%M %Z')}; {code_line()}")
    print("memory (one fresh process per configuration):", flush=True)
    memory = measure_memory(sizes)
    print(f"[memory: {time.perf_counter() - start:.0f} s]\ntime (models take turns):", flush=True)
    mid = time.perf_counter()
    times = measure_time(sizes, memory)
    print(f"[time: {time.perf_counter() - mid:.0f} s]")
    report(sizes, memory, times)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
