"""Do the Attractor paper's language claims hold at CPU scale?

One driver for every run behind docs/results-lm.md. A run is (preset, --set overrides, seed,
steps); the library's own Trainer trains it on KJV bytes (the demo's data) into
runs/claims/<name>/, and at every evaluation (step 0 included) the driver records

    the depth sweep        validation loss decoding after 0, 1, 2, 4, 8 plain steps and at the
                           adaptive fixed point (internalization: how close 0 is to adaptive)
    the adaptive solve     mean depth, evaluations of f, converged share, realised FLOPs/token
    contraction            spectral radius of the map at the proposal and at the fixed point,
                           on a few validation sequences (power iteration, 20 products)
    per-token difficulty   each token's own steps to tolerance (solver trace, no prefix
                           stopping) and the model's prefix-stopped steps, against the token's
                           loss: rank correlations and the mean loss per step bin
    training speed         tokens/s of the training steps alone (evaluation time excluded)

into runs/claims/<name>/claims.json (rewritten atomically after each evaluation) and a final
checkpoint (attractor.run.save) that bench.trained_solvers reads.

Equal wall-clock on a shared 2-core machine: a run's own tokens/s depends on what else the
machine did meanwhile. So `speed` measures the models of a group side by side in one process,
taking turns one training step each on the same batches (as bench.yardstick does), at
initialisation and, when the equal-step runs exist, at their trained weights (iteration counts
rise during training, so the trained step is the dearer one); `group --seconds S` gives each
model S x (its steps per second, the mean of the two) steps. Equal tokens is `group --steps N`.
Peak memory of one training step is measured in a fresh interpreter per model (the PeakRSS
method of bench.memory_depth).

Run (one thread: the machine is shared; each command prints what it did):

    python -m bench.lm_claims run --preset attractor-1m --set grad=phantom --steps 600
    python -m bench.lm_claims group compare-1m --steps 600       # point 1, equal steps
    python -m bench.lm_claims speed compare-1m                    # side-by-side step cost
    python -m bench.lm_claims group compare-1m --seconds 900     # point 1, equal wall-clock
    python -m bench.lm_claims group grad-1m --steps 600          # point 2, gradient modes
    python -m bench.lm_claims report                             # tables, plots, docs/results-lm.md
    python -m bench.lm_claims groups                             # what each group runs
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from attractor import io
from attractor.config import RunConfig, apply_settings, run_config
from attractor.data import TokenBatches, prepare
from attractor.errors import ConfigError
from attractor.evaluate import depth_sweep
from attractor.fixedpoint import fixed_point, spectral_radius
from attractor.models import from_config
from attractor.models.equilibrium import solve_equilibrium
from attractor.models.looped import LoopedLM
from attractor.run import load_run, save, validation
from attractor.train import Callbacks, Trainer
from bench.common import PEAK_RSS_ENV, ROOT, PeakRSS, median
from bench.lm_report import CLAIMS, report, run_label

DEPTHS = [0, 1, 2, 4, 8, None]  # None: adaptive
# Every run of a comparison: batch 16 x 256 bytes (the calibrations'), 4 validation batches
# (16k bytes: the sweep runs six depths at every evaluation, on a shared 2-core machine). The
# eager ops, as the recorded runs of docs/results-lm.md used: the fused kernels round differently.
BASE_SETTINGS = ("train.batch_size=16", "train.eval_batches=4", "train.eval_every=null",
                 "train.checkpoint_every=null", "train.log_every=10", "train.kernels=eager")
SPECTRAL_SEQS = 2  # validation sequences the spectral radius is measured on
TOKEN_BATCHES = 2  # validation batches of the per-token difficulty analysis
ITER_BINS = (0, 1, 2, 3, 5, 9, 17, 33, 65)  # lower edges of the per-token step bins


# ---------------------------------------------------------------------------------------------
# What a run is, and the named groups


@dataclass(frozen=True)
class Spec:
    """One training run: model preset, overrides, seed and length."""

    name: str  # directory under runs/claims/
    preset: str
    settings: tuple[str, ...] = ()  # --set key=value, applied after BASE_SETTINGS
    seed: int = 0
    steps: int = 600
    eval_every: int = 100  # steps between evaluations (and at step 0 and at the end)

    def run_config(self) -> RunConfig:
        return run_config(self.preset, [*BASE_SETTINGS, f"train.seed={self.seed}",
                                        f"train.steps={self.steps}", *self.settings], data="kjv")


FAMILIES = ("transformer", "looped", "deq", "attractor")
GROUPS = ("compare-1m", "compare-5m", "grad-1m", "knobs-1m", "stop-1m")
# Point 2: the knobs, one at a time from attractor-1m's defaults (Anderson, tol 1e-3, u = v).
GRADS = {"onestep": "grad=onestep", "neumann1": "grad=neumann grad.k=1",
         "phantom2": "grad=phantom grad.k=2", "implicit": "grad=implicit"}
KNOBS = {"min-iter6": "min_iter=6", "picard": "solver=picard", "tol3e-4": "tol=3e-4",
         "gate075": "gate_init=0.75", "gamma075": "gamma_max=0.75 gate_init=0.5",
         "jac0.1": "jac_penalty=0.1",
         "paper": "grad=neumann grad.k=1 min_iter=6 tol=3e-4 gamma_max=0.75"}


def group(name: str, steps: int, seeds: list[int]) -> list[Spec]:
    """The runs of a named group at `steps` each, once per seed (`groups` lists them)."""
    def runs(pairs: list[tuple[str, str, str]]) -> list[Spec]:
        return [Spec(f"{name}/{label}-s{seed}-n{steps}", preset, tuple(settings.split()), seed, steps)
                for seed in seeds for label, preset, settings in pairs]

    if name in ("compare-1m", "compare-5m"):
        size = name.removeprefix("compare-")
        return runs([(f"{family}-{size}", f"{family}-{size}", "") for family in FAMILIES])
    if name == "grad-1m":
        return runs([(label, "attractor-1m", s) for label, s in GRADS.items()])
    if name == "knobs-1m":
        return runs([(label, "attractor-1m", s) for label, s in KNOBS.items()])
    if name == "stop-1m":
        return runs([(f"stop-{unit}", "attractor-1m", f"stop={unit}") for unit in ("token", "sample")])
    raise ConfigError(f"unknown group {name!r}; groups: {', '.join(GROUPS)}")


# ---------------------------------------------------------------------------------------------
# Measurements at one evaluation


def realised_flops(model: nn.Module, row: dict) -> float:
    """Forward FLOPs per token at a sweep row's realised depth (mean loops, or evaluations)."""
    if not model.has_depth:
        return model.flops_per_token()
    if isinstance(model, LoopedLM):
        return model.flops_per_token(row["val_depth"])
    return model.flops_per_token(row["val_n_evals"])


def rank_correlation(a: Tensor, b: Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties ranked by order; nan if constant)."""
    ra, rb = a.double().argsort().argsort().double(), b.double().argsort().argsort().double()
    if a.unique().numel() < 2 or b.unique().numel() < 2:
        return float("nan")
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def token_difficulty(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> dict | None:
    """Per-token steps against per-token loss on `batches` (equilibrium models only).

    own: the first step at which the token's own relative residual is below tol (solver trace,
    every token iterated until all stop, no prefix stopping; max_iter + 1 if never) -- its
    difficulty. prefix: the model's own adaptive solve, where a token stops only once every
    earlier one has. loss: cross-entropy of the model's adaptive prediction of that token.
    """
    solve = model.cfg.solve
    own, prefix, losses = [], [], []
    for idx, targets in batches:
        out = model(idx, targets)
        losses.append(nn.functional.cross_entropy(out.logits.flatten(0, 1), targets.flatten(), reduction="none"))
        prefix.append(out.info.depth.flatten() if solve.stop == "token" else
                      out.info.depth.repeat_interleave(idx.shape[1]))
        problem = model.equilibrium(idx)
        _, info = fixed_point(problem.f, problem.y0, solver=solve.solver, grad="onestep", tol=solve.tol,
                              max_iter=solve.max_iter, min_iter=solve.min_iter, on_fail="ignore", trace=True,
                              batch_dims=2)
        below = info.trace.flatten(0, 1) < solve.tol  # (B*T, n_evals); column k: after k steps
        steps = torch.arange(below.shape[1]).clamp(min=solve.min_iter)
        first = torch.where(below, steps, torch.full_like(steps, solve.max_iter + 1)).min(1).values
        own.append(first)
    own, prefix, loss = torch.cat(own), torch.cat(prefix), torch.cat(losses).float()
    bins = []
    for lo, hi in zip(ITER_BINS, [*ITER_BINS[1:], math.inf]):
        mask = (own >= lo) & (own < hi)
        if mask.any():
            bins.append({"own_iters": f"{lo}-{hi - 1}" if hi - lo > 1 else str(lo), "tokens": int(mask.sum()),
                         "mean_loss": float(loss[mask].mean())})
    return {"spearman_own": rank_correlation(own, loss), "spearman_prefix": rank_correlation(prefix, loss),
            "own_mean": float(own.float().mean()), "prefix_mean": float(prefix.float().mean()),
            "never": float((own > solve.max_iter).float().mean()), "bins": bins}


def contraction(model: nn.Module, idx: Tensor) -> dict | None:
    """Spectral radius of the map's Jacobian at the start y0 and at the adaptive fixed point,
    per validation sequence of idx (B, T) (equilibrium models only)."""
    with torch.no_grad():
        problem = model.equilibrium(idx)
        y_star, _ = solve_equilibrium(problem)
    gen = torch.Generator().manual_seed(0)
    return {"rho_start": spectral_radius(problem.f, problem.y0, n_iter=20, generator=gen).tolist(),
            "rho_fixed": spectral_radius(problem.f, y_star, n_iter=20, generator=gen).tolist()}


@torch.no_grad()
def measure(model: nn.Module, val: list[tuple[Tensor, Tensor]]) -> dict:
    """Everything recorded at one evaluation (see the module docstring), model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        sweep = depth_sweep(model, val, DEPTHS)
        adaptive = next(r for r in sweep if r["iters"] == "adaptive")
        record = {"sweep": {str(r["iters"]): r["val_loss"] for r in sweep},
                  "adaptive": {k.removeprefix("val_"): v for k, v in adaptive.items() if k != "iters"},
                  "flops_per_token": realised_flops(model, adaptive)}
        if hasattr(model, "equilibrium"):  # the equilibrium models publish their map and start
            record["contraction"] = contraction(model, val[0][0][:SPECTRAL_SEQS])
            record["per_token"] = token_difficulty(model, val[:TOKEN_BATCHES])
        return record
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------------------------
# One run


def train_run(spec: Spec, *, threads: int = 1, root: Path = CLAIMS, log=print) -> dict:
    """Train `spec` into root/<name>/ and return its record (also in claims.json there).

    Refuses a directory that already holds a finished record (delete it to redo the run).
    """
    torch.set_num_threads(threads)
    out = root / spec.name
    if (out / "claims.json").exists() and json.loads((out / "claims.json").read_text()).get("done"):
        raise ConfigError(f"{out} already holds a finished run; delete it to run again")
    run = spec.run_config()
    torch.manual_seed(run.train.seed)
    model = from_config(run.model)
    data = prepare(run.data, progress=False)
    batches = run.task.batches(run, data)  # micro-batches of batch_size // grad_accum rows
    val = validation(run, data)
    record = {"spec": asdict(spec), "config": run.to_dict(), "params": model.parameter_counts(),
              "threads": threads, "started": time.strftime("%Y-%m-%d %H:%M %Z"), "train": [], "evals": [],
              "done": False}
    clock = {"train_s": 0.0, "mark": 0.0}

    def evaluate(step: int, tokens: int) -> None:
        start = time.perf_counter()
        result = {"step": step, "tokens": tokens, "train_s": clock["train_s"],
                  "tokens_per_s": tokens / clock["train_s"] if clock["train_s"] else None, **measure(model, val)}
        result["eval_s"] = time.perf_counter() - start
        record["evals"].append(result)
        io.atomic_write_json(out / "claims.json", record)
        log(f"{spec.name} step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in result["sweep"].items())
            + f" ({result['eval_s']:.0f} s)")

    def progress(r: dict) -> None:
        now = time.perf_counter()
        clock["train_s"] += now - clock["mark"]
        if r["step"] % spec.eval_every == 0 or r["step"] == spec.steps:
            evaluate(r["step"], r["tokens"])
        clock["mark"] = time.perf_counter()

    trainer = Trainer(model, batches, val, run.train,
                      Callbacks(log=lambda r: record["train"].append(r), progress=progress))
    out.mkdir(parents=True, exist_ok=True)
    evaluate(0, 0)
    clock["mark"] = time.perf_counter()
    trainer.fit()
    save(trainer, run, data.tokenizer, out)
    record.update(done=True, train_s=clock["train_s"], tokens_per_s=trainer.tokens / clock["train_s"],
                  finished=time.strftime("%Y-%m-%d %H:%M %Z"))
    io.atomic_write_json(out / "claims.json", record)
    return record


# ---------------------------------------------------------------------------------------------
# Side-by-side step cost and peak memory


def peak_child(spec: Spec) -> dict:
    """In a fresh interpreter with PEAK_RSS_ENV: peak RSS growth of one training step (after a
    warm-up step), the Trainer's optimisers on a real batch."""
    run = spec.run_config()
    torch.manual_seed(0)
    model = from_config(run.model)
    data = prepare(run.data, progress=False)
    batches = TokenBatches(data.train, run.train.micro_batch, run.model.seq_len, seed=0)
    trainer = Trainer(model, batches, [], run.train)
    trainer.train_step()
    gc.collect()
    with PeakRSS() as peak:
        trainer.train_step()
    return {"peak_mb": peak.mb}


def peak_memory(spec: Spec, threads: int) -> float:
    cmd = [sys.executable, "-m", "bench.lm_claims", "--threads", str(threads), "_peak", json.dumps(asdict(spec))]
    child = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **PEAK_RSS_ENV})
    if child.returncode != 0:
        raise RuntimeError(f"peak-memory child for {spec.name} failed:\n{child.stderr[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])["peak_mb"]


def step_seconds(specs: list[Spec], rounds: int, warmup: int, trained: bool) -> dict[str, float]:
    """Median seconds per training step of each spec, taking turns one step each per round on
    the same batches; trained=True starts from each spec's finished equal-step run."""
    trainers = {}
    for spec in specs:
        run = spec.run_config()
        torch.manual_seed(0)
        model = load_run(CLAIMS / spec.name, device="cpu")[0].train() if trained else from_config(run.model)
        data = prepare(run.data, progress=False)
        trainers[spec.name] = Trainer(model, TokenBatches(data.train, run.train.micro_batch, run.model.seq_len, seed=1),
                                      [], replace(run.train, lr=1e-9))  # tiny lr: the weights stay the trained ones
    samples = {name: [] for name in trainers}
    for i in range(warmup + rounds):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.train_step()
            if i >= warmup:
                samples[name].append(time.perf_counter() - start)
    return {name: median(s) for name, s in samples.items()}


def speed(name: str, steps: int, seed: int, threads: int, rounds: int) -> dict:
    """runs/claims/<group>/speed.json: side-by-side s/step (init, and trained for each model
    whose equal-step run exists) and each model's peak training-step memory."""
    torch.set_num_threads(threads)
    specs = group(name, steps, [seed])
    result = {"steps_of_trained": steps, "threads": threads, "rounds": rounds, "models": {}}
    init = step_seconds(specs, rounds, warmup=2, trained=False)
    print("s/step at initialisation: " + json.dumps(init), flush=True)
    finished = [s for s in specs if (CLAIMS / s.name / "latest").exists()]
    trained = step_seconds(finished, rounds, warmup=2, trained=True) if finished else {}
    if trained:
        print("s/step trained: " + json.dumps(trained), flush=True)
    for spec in specs:
        label, run = label_of(spec), spec.run_config()
        mean = (init[spec.name] + trained[spec.name]) / 2 if spec.name in trained else init[spec.name]
        result["models"][label] = {"s_per_step_init": init[spec.name], "s_per_step_trained": trained.get(spec.name),
                                   "s_per_step": mean, "tokens_per_s": run.train.batch_size * run.model.seq_len / mean,
                                   "peak_mb": peak_memory(spec, threads)}
        print(f"{label}: {json.dumps(result['models'][label])}", flush=True)
    (CLAIMS / name).mkdir(parents=True, exist_ok=True)  # atomic writes create no directories
    io.atomic_write_json(CLAIMS / name / "speed.json", result)
    return result


def label_of(spec: Spec) -> str:
    """'compare-1m/attractor-1m-s0-n600' -> 'attractor-1m': the model's label in its group."""
    return run_label(spec.name)


def wallclock_group(name: str, seconds: float, seeds: list[int]) -> list[Spec]:
    """The group with each model's steps set to `seconds` of its side-by-side step cost."""
    path = CLAIMS / name / "speed.json"
    if not path.exists():
        raise ConfigError(f"{path} is missing: run `python -m bench.lm_claims speed {name}` first")
    models = json.loads(path.read_text())["models"]
    specs = []
    for spec in group(name, 1, seeds):
        label = label_of(spec)
        steps = max(1, round(seconds / models[label]["s_per_step"]))
        specs.append(replace(spec, name=f"{name}/{label}-s{spec.seed}-t{seconds:g}", steps=steps,
                             eval_every=max(1, steps // 6)))
    return specs


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lm_claims", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    sub = parser.add_subparsers(dest="command", required=True)
    one = sub.add_parser("run", help="train one configuration")
    one.add_argument("--preset", required=True)
    one.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE")
    one.add_argument("--seed", type=int, default=0)
    one.add_argument("--steps", type=int, default=600)
    one.add_argument("--eval-every", type=int, default=100)
    one.add_argument("--name", help="directory under runs/claims/ (default: preset-seed-steps)")
    grp = sub.add_parser("group", help="train a named group, one run after another")
    grp.add_argument("group", choices=GROUPS)
    budget = grp.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="equal steps (equal tokens)")
    budget.add_argument("--seconds", type=float, help="equal wall-clock, from `speed`'s side-by-side step cost")
    grp.add_argument("--seeds", default="0", help="comma-separated seeds")
    grp.add_argument("--only", help="comma-separated labels of the group to run, in this order (e.g. attractor-1m)")
    grp.add_argument("--eval-every", type=int, default=100)
    spd = sub.add_parser("speed", help="side-by-side step cost and peak memory of a group's models")
    spd.add_argument("group", choices=GROUPS)
    spd.add_argument("--steps", type=int, default=600, help="the equal-step runs whose trained weights to time")
    spd.add_argument("--rounds", type=int, default=8)
    sub.add_parser("groups", help="list the groups' runs")
    rep = sub.add_parser("report", help="rewrite docs/results-lm.md's generated sections from the records")
    rep.add_argument("--doc", default=str(ROOT / "docs" / "results-lm.md"))
    peak = sub.add_parser("_peak")  # internal: peak memory of one step, in a fresh interpreter
    peak.add_argument("spec")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.command == "run":
        apply_settings(run_config(args.preset), list(args.settings))  # a bad key fails before any work
        name = args.name or f"{args.preset}-s{args.seed}-n{args.steps}"
        train_run(Spec(name, args.preset, tuple(args.settings), args.seed, args.steps, args.eval_every),
                  threads=args.threads)
    elif args.command == "group":
        seeds = [int(s) for s in args.seeds.split(",")]
        specs = (group(args.group, args.steps, seeds) if args.steps is not None
                 else wallclock_group(args.group, args.seconds, seeds))
        if args.steps is not None:
            specs = [replace(s, eval_every=args.eval_every) for s in specs]
        if args.only:
            order = {label: i for i, label in enumerate(args.only.split(","))}
            specs = sorted((s for s in specs if label_of(s) in order), key=lambda s: order[label_of(s)])
        for spec in specs:
            print(f"== {spec.name}: {spec.preset} {' '.join(spec.settings)} seed {spec.seed}, {spec.steps} steps",
                  flush=True)
            start = time.perf_counter()
            train_run(spec, threads=args.threads)
            print(f"== {spec.name}: {time.perf_counter() - start:.0f} s", flush=True)
    elif args.command == "speed":
        speed(args.group, args.steps, 0, args.threads, args.rounds)
    elif args.command == "groups":
        for name in GROUPS:
            for spec in group(name, 600, [0]):
                print(f"{spec.name}: {spec.preset} {' '.join(spec.settings)}")
    elif args.command == "report":
        report(Path(args.doc))
    elif args.command == "_peak":
        fields = json.loads(args.spec)
        print(json.dumps(peak_child(Spec(**{**fields, "settings": tuple(fields["settings"])}))))


if __name__ == "__main__":
    try:
        main()
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
