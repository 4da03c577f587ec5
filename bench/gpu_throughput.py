"""Training throughput and peak memory of attractor-140m against transformer-140m on one GPU, bf16.

The paper's smallest pair at its own shape (vocabulary 32768, context 2048;
SPEC 2.1), each trained by the library's Trainer (bf16 autocast, Muon for the blocks' matrices
on CUDA, AdamW for the rest) on uniformly random tokens. The two models take turns, one training
step each per round (as bench.yardstick does), a few warm-up rounds, then the median over the
timed rounds; the ratio is the median of the per-round ratios. Peak memory is
torch.cuda.max_memory_allocated over each model's own steps (reset before each), so it counts
that model's weights, optimiser state, activations and its share of the allocator's workspace.

Random tokens keep the models near initialisation, so the Attractor's solver steps are those of
an untrained map (attractor-140m's floor is min_iter 6, so at least 7 evaluations of f); the
table prints them. On a CPU `--tiny` runs the same code at a toy size (a dry run of the script).

Run:  python -m bench.gpu_throughput                 batch 8 x 2048, 3 warm-up rounds, median of 10
      python -m bench.gpu_throughput --tiny --device cpu   a dry run at d 64 (seconds)
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import Tensor

from attractor.models import build
from attractor.train import Trainer, TrainConfig
from bench.common import code_line, median, print_table

PAIR = ("transformer-140m", "attractor-140m")
TINY = dict(d=64, n_head=4, vocab_size=512, seq_len=128)  # --tiny: same families, toy shape


class RandomTokens:
    """Endless seeded batches of uniformly random tokens (B, T) with next-token targets."""

    def __init__(self, batch: int, seq: int, vocab: int, device: torch.device):
        self.gen = torch.Generator(device="cpu").manual_seed(0)
        self.shape, self.vocab, self.device = (batch, seq + 1), vocab, device

    def __iter__(self):
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        tokens = torch.randint(0, self.vocab, self.shape, generator=self.gen).to(self.device)
        return tokens[:, :-1], tokens[:, 1:]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_throughput", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="toy shape (d 64, vocabulary 512, context 128)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no CUDA device (use --device cpu --tiny for a dry run)")
    cfg = TrainConfig(batch_size=args.batch, device=str(device), precision="bfloat16", eval_every=None,
                      checkpoint_every=None, steps=10**6)
    trainers, samples, peaks, evals = {}, {}, {}, {}
    for name in PAIR:
        torch.manual_seed(0)
        model = build(name, **(TINY if args.tiny else {}))
        seq, vocab = model.cfg.seq_len, model.cfg.vocab_size
        trainers[name] = Trainer(model, RandomTokens(args.batch, seq, vocab, device), [], cfg)
        samples[name], peaks[name], evals[name] = [], 0, []
    for i in range(args.warmup + args.rounds):
        for name, trainer in trainers.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            record = trainer.train_step()
            sync(device)
            seconds = time.perf_counter() - start
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
            if i >= args.warmup:
                samples[name].append(seconds)
                evals[name].append(record.get("n_evals", 0))
    tokens = args.batch * seq
    ratios = [t / a for t, a in zip(samples[PAIR[0]], samples[PAIR[1]])]
    results = {name: {"s_per_step": median(samples[name]), "tokens_per_s": tokens / median(samples[name]),
                      "peak_gib": peaks[name] / 2**30, "n_evals": median(evals[name]),
                      "params": trainers[name].model.parameter_counts()["total"]} for name in PAIR}
    results["tokens_per_s_ratio_attractor_over_transformer"] = median(ratios)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    env = f"env: torch {torch.__version__}, {name}, bf16 autocast, batch {args.batch} x {seq}; {code_line()}"
    print_table(f"Training step, {args.rounds} rounds after {args.warmup} warm-up (models take turns)",
                ["model", "params", "s/step", "tokens/s", "peak GiB", "f evals per step"],
                [[n, f"{results[n]['params']:,}", f"{results[n]['s_per_step']:.3f}",
                  f"{results[n]['tokens_per_s']:,.0f}", f"{results[n]['peak_gib']:.1f}", f"{results[n]['n_evals']:.0f}"]
                 for n in PAIR], env=env)
    print(f"\ntokens/s, attractor-140m / transformer-140m: {median(ratios):.2f} (median of per-round ratios)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
