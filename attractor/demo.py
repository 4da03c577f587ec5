"""`attractor demo` (`make demo`): the main job on the embedded default, in minutes on a laptop.

Trains an AttractorLM and a TransformerLM of matched dense size (about 1M parameters each,
byte-level, context 256) on the embedded KJV corpus for the same number of steps, then prints
validation perplexity side by side, the Attractor's depth sweep (decoding the backbone's
proposal, k solver steps, the adaptive fixed point), a few generated lines from each, and writes
the figures into the output directory. Runs that already exist there are resumed (or reused if
finished), so an interrupted demo continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

from attractor.config import run_config
from attractor.data import prepare
from attractor.errors import ConfigError
from attractor.evaluate import depth_sweep
from attractor.generate import sample
from attractor.io import atomic_write_json, check_writable_dir
from attractor.run import holds_run, load_run, train, validation

MODELS = ("attractor-1m", "transformer-1m")
DEFAULT_OUT = "runs/demo"
PROMPTS = ("And God said", "The LORD is my")


def demo(out: str | Path = DEFAULT_OUT, *, steps: int = 300, depths=(0, 1, 2, 4, 8, None), new_tokens: int = 120,
         progress: bool = True) -> dict:
    """Train, compare, sweep, sample and plot; returns (and writes) the summary. `out` is created
    if missing; a missing parent is a ConfigError (except runs/ of the default, created here)."""
    out = Path(out)
    if out == Path(DEFAULT_OUT):
        out.parent.mkdir(exist_ok=True)  # the default's runs/ is ours to create; a caller's path is theirs
    check_writable_dir(out).mkdir(exist_ok=True)  # each model's run goes in a directory inside it
    summary = {"steps": steps, "models": {}}
    for preset in MODELS:
        run = run_config(preset, ["train.eval_every=100", "train.checkpoint_every=100", "train.log_every=10"],
                         steps=steps)
        print(f"== {preset}: {steps} steps of batch {run.train.batch_size} x {run.model.seq_len} bytes")
        start = time.perf_counter()
        trainer = train(run, out / preset, resume=holds_run(out / preset), progress=progress)
        summary["models"][preset] = {"train_seconds": round(time.perf_counter() - start, 1), "tokens": trainer.tokens}

    print("\n== evaluation on the validation split")
    sweeps, samples = {}, {}
    for preset in MODELS:
        model, tokenizer, run, step = load_run(out / preset)
        data = prepare(run.data, progress=False)
        batches = validation(run, data)
        sweeps[preset] = depth_sweep(model, batches, list(depths))
        samples[preset] = [p + tokenizer.decode(sample(model, tokenizer.encode(p), max_new_tokens=new_tokens,
                                                       temperature=0.8, seed=i)) for i, p in enumerate(PROMPTS)]
        entry = summary["models"][preset]
        entry.update({"params": model.parameter_counts(), "sweep": sweeps[preset], "samples": samples[preset]})

    print(f"\n{'model':<16} {'dense':>7} {'train s':>8} {'val loss':>9} {'val ppl':>8}")
    for preset in MODELS:
        entry, final = summary["models"][preset], sweeps[preset][-1]
        print(f"{preset:<16} {entry['params']['dense'] / 1e6:6.2f}M {entry['train_seconds']:8.0f} "
              f"{final['val_loss']:9.4f} {final['val_ppl']:8.3f}")
    print("\nAttractor depth sweep (iters 0 decodes the backbone's proposal; adaptive solves to tol):")
    print(f"{'iters':>9} {'val loss':>9} {'val ppl':>8} {'mean depth':>11}")
    for r in sweeps["attractor-1m"]:
        print(f"{r['iters']!s:>9} {r['val_loss']:9.4f} {r['val_ppl']:8.3f} {r.get('val_depth', float('nan')):11.2f}")
    for preset in MODELS:
        print(f"\n== samples from {preset}")
        for text in samples[preset]:
            print("  " + " ".join(text.split())[:200])

    try:
        from attractor.plots import plot_sweep, plot_training

        plot_training({p: out / p for p in MODELS}, out / "training.png")
        plot_sweep(sweeps, out / "depth_sweep.png")
        print(f"\nfigures: {out / 'training.png'}, {out / 'depth_sweep.png'}")
    except ConfigError as err:  # matplotlib missing: the numbers above still stand
        print(f"\nno figures ({err})")
    atomic_write_json(out / "summary.json", summary)
    print(f"summary: {out / 'summary.json'}")
    return summary
