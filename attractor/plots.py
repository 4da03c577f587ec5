"""Figures of runs: training curves, the depth sweep, solver depth over training (matplotlib).

matplotlib is optional (`pip install attractor-models[plot]`); without it these raise a
ConfigError saying so. Files are written atomically, like everything else.
"""

from __future__ import annotations

import io as _bytes_io
import json
from pathlib import Path

from attractor.errors import ConfigError
from attractor.io import atomic_write_bytes


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend; a ConfigError (one line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plots need matplotlib: pip install matplotlib (or the package's [plot] extra)") from None
    return plt


def save_figure(fig, path: str | Path) -> None:
    """Write a figure atomically, in the format of the path's suffix (png by default)."""
    buffer = _bytes_io.BytesIO()
    fig.savefig(buffer, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_sweep(sweeps: dict[str, list[dict]], path: str | Path) -> None:
    """Validation loss against depth, one line per model; 'adaptive' drawn as a marker at its
    mean depth, depth-free models as a horizontal line. sweeps: {label: depth_sweep rows}."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, rows in sweeps.items():
        fixed = [r for r in rows if r["iters"] != "adaptive"]
        adaptive = [r for r in rows if r["iters"] == "adaptive"]
        if fixed:
            ax.plot([r["iters"] for r in fixed], [r["val_loss"] for r in fixed], "o-", label=f"{label}, k steps")
        for r in adaptive:
            if "val_depth" in r:
                ax.plot([r["val_depth"]], [r["val_loss"]], "*", markersize=12, label=f"{label}, adaptive (mean depth)")
            else:
                ax.axhline(r["val_loss"], linestyle="--", color="gray", label=label)
    ax.set_xlabel("solver iterations at evaluation (0 = backbone proposal)")
    ax.set_ylabel("validation loss (nats per token)")
    ax.set_title("Depth sweep")
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def plot_training(runs: dict[str, str | Path], path: str | Path) -> None:
    """Training loss (left) and, for recurrent models, mean solver depth (right) against tokens,
    from each run directory's metrics.jsonl; validation losses as markers."""
    plt = pyplot()
    fig, (loss_ax, depth_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, run_dir in runs.items():
        metrics, evals = read_jsonl(Path(run_dir) / "metrics.jsonl"), read_jsonl(Path(run_dir) / "eval.jsonl")
        line, = loss_ax.plot([m["tokens"] for m in metrics], [m["loss"] for m in metrics], label=f"{label} train", alpha=0.8)
        loss_ax.plot([e["tokens"] for e in evals], [e["val_loss"] for e in evals], "o", color=line.get_color(),
                     label=f"{label} validation")
        if metrics and "depth" in metrics[0]:
            depth_ax.plot([m["tokens"] for m in metrics], [m["depth"] for m in metrics], color=line.get_color(), label=label)
    loss_ax.set_xlabel("training tokens")
    loss_ax.set_ylabel("loss (nats per token)")
    loss_ax.legend(fontsize=8)
    depth_ax.set_xlabel("training tokens")
    depth_ax.set_ylabel("solver steps of the slowest token (mean over the batch)")
    depth_ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)
