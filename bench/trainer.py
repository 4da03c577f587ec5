"""The trainer's cost, torch.compile, and how much of the machine the 5M models use.

Three measurements, each side by side in one process on identical batches (the byte-level KJV
stream, batch 16 x 256), models or variants taking turns one step each per round, several
warm-up rounds, then the median of the per-round ratios (each round measures both within seconds,
so load from other jobs cancels out better than in a ratio of medians):

  (a) `attractor.train.Trainer` (AdamW only, clipping at 1.0, the schedule, logging statistics)
      against a bare 20-line loop (forward, backward, AdamW) on transformer-5m: the trainer must
      cost almost nothing (goal: >= 0.9x the bare loop's tokens/s).
  (b) torch.compile against eager, for transformer-5m and attractor-5m, each in the bare loop.
  (c) transformer-5m and attractor-5m (matched dense parameters) in the trainer: tokens/s, the
      Attractor's relative to the transformer's (goal >= 0.8x), and the fraction of the machine's
      fp32 matmul peak (a 2048^3 matmul timed in the same run) that the realised training FLOPs
      reach (goal >= 0.5). Training FLOPs per token: the forward's executed evaluations
      (model.flops_per_token(out)), plus the gradient's extra evaluation of f for the Attractor,
      plus twice the forward FLOPs of everything backpropagated through (the backbone, the head
      and one evaluation of f under the one-step gradient).
  (d) torch's Muon against AdamW for the blocks' matrices, in the trainer, for the 1M models
      (why `train.matrix_optimizer=auto` picks AdamW on the CPU).

Run:  python -m bench.trainer            (a) 20 rounds, (b) 10, (c) 20, (d) 10  (~12 minutes)
      python -m bench.trainer --quick    fewer rounds (~3 minutes)
      python -m bench.trainer --only d   one section (a, b, c or d; repeatable)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from attractor.config import run_config
from attractor.data import TokenBatches, prepare
from attractor.models import from_config
from attractor.train import Trainer, TrainConfig
from bench.common import code_line, env_line, print_table

BATCH, SEQ = 16, 256


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an n^3 matmul: the machine's practical peak (best of `repeats`)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def model(preset: str):
    torch.manual_seed(0)
    return from_config(run_config(preset).model)


def bare_step(net, opt, x, y):
    """The 20-line loop's body."""
    out = net(x, y)
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    opt.step()
    return out


def train_flops(m, out) -> float:
    """Training FLOPs per token of one step (see the module docstring)."""
    fwd = m.flops_per_token(out)
    if out.n_evals == 0:  # transformer: forward + 2 x forward for the backward
        return 3 * fwd
    per_eval = m.flops_per_token(1) - m.flops_per_token(0)
    differentiated = m.flops_per_token(0) + per_eval  # backbone, head and one evaluation of f
    return fwd + per_eval + 2 * differentiated


def rounds(variants: dict, n: int, warmup: int) -> dict[str, list[float]]:
    """Time one step of every variant per round; {name: seconds per round}."""
    times = {k: [] for k in variants}
    for r in range(warmup + n):
        for name, step in variants.items():
            seconds = _seconds(step)
            if r >= warmup:
                times[name].append(seconds)
    return times


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of time(b) / time(a): a's speed relative to b."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", action="append", choices=list("abcd"), help="run only these sections")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sections = set(args.only or "abcd")
    n_a, n_b, n_c, n_d = (5, 3, 5, 3) if args.quick else (20, 10, 20, 10)
    data = prepare(run_config("transformer-5m").data, progress=False)
    stream = TokenBatches(data.train, BATCH, SEQ, seed=0)
    fixed = [next(stream) for _ in range(4)]
    print(code_line())
    x, y = fixed[0]
    if "a" in sections:
        trainer_against_bare(fixed, n_a)
    if "b" in sections:
        compiled_against_eager(x, y, n_b)
    if "c" in sections:
        models_in_the_trainer(fixed, n_c)
    if "d" in sections:
        muon_against_adamw(fixed, n_d)


def trainer_against_bare(fixed, n_a: int) -> None:
    """(a) the trainer against a bare loop."""
    cfg = TrainConfig(steps=10_000, matrix_optimizer="adamw", warmup=0, lr=3e-4, kernels="eager")
    bare_model, trainer_model = model("transformer-5m"), model("transformer-5m")
    bare_opt = torch.optim.AdamW(bare_model.parameters(), lr=3e-4, betas=cfg.betas, weight_decay=cfg.weight_decay)
    trainer = Trainer(trainer_model, _Batches(fixed), [], cfg)
    x, y = fixed[0]
    tok = BATCH * SEQ
    times = rounds({"bare": lambda: bare_step(bare_model, bare_opt, x, y), "trainer": trainer.train_step}, n_a, 3)
    print_table("(a) Trainer against a bare AdamW loop, transformer-5m, batch 16 x 256", [
        "loop", "median s/step", "tokens/s", "speed vs bare"], [
        ["bare (forward, backward, AdamW)", f"{statistics.median(times['bare']):.3f}",
         f"{tok / statistics.median(times['bare']):.0f}", "1.00"],
        ["attractor.train.Trainer", f"{statistics.median(times['trainer']):.3f}",
         f"{tok / statistics.median(times['trainer']):.0f}", f"{ratio(times, 'trainer', 'bare'):.3f}"]],
        env=env_line(extra=f"{n_a} rounds after 3 warm-up"))



def compiled_against_eager(x, y, n_b: int) -> None:
    """(b) torch.compile against eager."""
    tok = BATCH * SEQ
    rows = []
    for preset in ("transformer-5m", "attractor-5m"):
        eager, comp = model(preset), model(preset)
        comp.load_state_dict(eager.state_dict())
        compiled = torch.compile(comp)
        opt_e = torch.optim.AdamW(eager.parameters(), lr=3e-4)
        opt_c = torch.optim.AdamW(comp.parameters(), lr=3e-4)
        start = time.perf_counter()
        bare_step(compiled, opt_c, x, y)  # compiles
        compile_s = time.perf_counter() - start
        t = rounds({"eager": lambda: bare_step(eager, opt_e, x, y),
                    "compiled": lambda: bare_step(compiled, opt_c, x, y)}, n_b, 2)
        rows.append([preset, f"{compile_s:.0f}", f"{tok / statistics.median(t['eager']):.0f}",
                     f"{tok / statistics.median(t['compiled']):.0f}", f"{ratio(t, 'compiled', 'eager'):.3f}"])
    print_table("(b) torch.compile against eager, bare AdamW loop, batch 16 x 256", [
        "model", "first step s", "eager tokens/s", "compiled tokens/s", "compiled / eager"], rows,
        env=env_line(extra=f"{n_b} rounds after 2 warm-up"))


def models_in_the_trainer(fixed, n_c: int) -> None:
    """(c) the 5M models in the trainer: tokens/s, Attractor / transformer, fraction of peak."""
    x, y = fixed[0]
    tok = BATCH * SEQ
    peak_before = matmul_peak()
    trainers = {}
    for preset in ("transformer-5m", "attractor-5m"):
        m = model(preset)
        trainers[preset] = (m, Trainer(m, _Batches(fixed), [], TrainConfig(steps=10_000, warmup=0, kernels="eager")))
    t = rounds({p: trainers[p][1].train_step for p in trainers}, n_c, 3)
    peak = max(peak_before, matmul_peak())
    rows = []
    for preset, (m, _) in trainers.items():
        with torch.no_grad():
            out = m.eval()(x, y)
            m.train()
        sec = statistics.median(t[preset])
        flops = train_flops(m, out)
        achieved = flops * tok / sec / 1e9
        rows.append([preset, f"{m.parameter_counts()['dense'] / 1e6:.2f}M", f"{tok / sec:.0f}",
                     f"{out.n_evals}", f"{flops / 1e6:.1f}", f"{achieved:.0f}", f"{achieved / peak:.2f}"])
    rel = ratio(t, "attractor-5m", "transformer-5m")
    print_table("(c) 5M models in the trainer (its defaults: AdamW on the CPU), batch 16 x 256", [
        "model", "dense", "tokens/s", "evals of f", "train MFLOP/token", "GFLOP/s", "of fp32 peak"], rows,
        env=env_line(extra=f"{n_c} rounds after 3 warm-up; fp32 matmul peak {peak:.0f} GFLOP/s (2048^3)"))
    print(f"\nAttractor / transformer tokens/s (median of per-round ratios): {rel:.3f}")


def muon_against_adamw(fixed, n_d: int) -> None:
    """(d) Muon against AdamW for the matrices, the 1M models, in the trainer."""
    tok = BATCH * SEQ
    rows = []
    for preset in ("transformer-1m", "attractor-1m"):
        steps = {choice: Trainer(model(preset), _Batches(fixed), [], TrainConfig(steps=10_000, matrix_optimizer=choice, kernels="eager")).train_step
                 for choice in ("muon", "adamw")}
        t = rounds(steps, n_d, 2)
        rows.append([preset, f"{tok / statistics.median(t['muon']):.0f}", f"{tok / statistics.median(t['adamw']):.0f}",
                     f"{ratio(t, 'adamw', 'muon'):.2f}"])
    print_table("(d) torch.optim.Muon against AdamW for the blocks' matrices, in the trainer, batch 16 x 256", [
        "model", "Muon tokens/s", "AdamW tokens/s", "AdamW speed / Muon"], rows,
        env=env_line(extra=f"{n_d} rounds after 2 warm-up"))


class _Batches:
    """Cycle through fixed batches; the Trainer's data protocol (next, state_dict)."""

    def __init__(self, fixed):
        self.fixed, self.n = fixed, 0

    def __next__(self):
        self.n += 1
        return self.fixed[self.n % len(self.fixed)]

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


if __name__ == "__main__":
    main()
