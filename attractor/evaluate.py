"""Evaluation: validation loss at any depth, the depth sweep, and the solve's statistics; for
puzzle models exact and cell accuracy, the sweeps over solver iterations and supervision steps,
and accuracy and iterations by puzzle rating.

The depth sweep is how internalization is measured (SPEC 1.5): loss when decoding the
backbone's proposal (iters=0), after k plain steps, and at the adaptive fixed point. Both tasks
run their forwards through one loop (`forwards`): eval mode, no gradient, the mode restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import math
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from attractor.models.base import IGNORE_INDEX, ModelOutput
from attractor.tasks.parity import parity_metrics
from attractor.tasks.puzzles import cell_metrics, changed_metrics

# Edges of the residual histogram (relative residual per token), decades from 1e-6 to 1.
RESIDUAL_EDGES = [10.0**e for e in range(-6, 1)]


def depth_stats(outs: list[ModelOutput]) -> dict:
    """Mean depth, evaluations and converged share over forwards of a recurrent model ({} else)."""
    if not outs or outs[0].depth is None:
        return {}
    stats = {"depth": sum(o.depth.float().mean().item() for o in outs) / len(outs),
             "n_evals": sum(o.n_evals for o in outs) / len(outs)}
    if outs[0].converged is not None:
        stats["converged"] = sum(o.converged.item() for o in outs) / len(outs)
    return stats


def residual_histogram(outs: list[ModelOutput]) -> dict | None:
    """Counts of per-token relative residuals between RESIDUAL_EDGES (below the first, between
    each pair, at or above the last), over the forwards' solves; None without a solve."""
    residuals = [o.info.residual.flatten().float().cpu() for o in outs if o.info is not None]
    if not residuals:
        return None
    r = torch.cat(residuals)
    bins = torch.bucketize(r, torch.tensor(RESIDUAL_EDGES), right=True)
    counts = torch.bincount(bins, minlength=len(RESIDUAL_EDGES) + 1).tolist()
    labels = [f"<{RESIDUAL_EDGES[0]:.0e}"] + [f"{a:.0e}-{b:.0e}" for a, b in zip(RESIDUAL_EDGES, RESIDUAL_EDGES[1:])]
    return dict(zip(labels + [f">={RESIDUAL_EDGES[-1]:.0e}"], counts))


@torch.no_grad()
def forwards(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, device: torch.device | None = None,
             autocast=contextlib.nullcontext, **depth) -> Iterator[tuple[Tensor, Tensor, ModelOutput]]:
    """(inputs, targets, output) of each batch, moved to the device, in eval mode without
    gradients; the previous mode is restored once the batches are done. `depth`: keywords passed
    on where not None (iters, and steps for the recursive puzzle models)."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    knobs = {k: v for k, v in depth.items() if v is not None}
    try:
        for idx, targets in batches:
            idx, targets = idx.to(device), targets.to(device)
            with autocast():
                yield idx, targets, model(idx, targets, **knobs)
    finally:
        model.train(was_training)


def _stats_only(out: ModelOutput) -> ModelOutput:
    """The output without its logits, kept for depth_stats and residual_histogram (a whole test
    set's logits would not fit in memory)."""
    return dataclasses.replace(out, logits=out.logits[:0])


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, iters: int | None = None,
             device: torch.device | None = None, autocast=contextlib.nullcontext, histogram: bool = False) -> dict:
    """Token-weighted mean loss and perplexity of `model` at depth `iters` (None: the model's
    own rule) over `batches`, with the solve statistics of recurrent models. Runs in eval mode
    and restores the previous mode."""
    total, count, outs = 0.0, 0, []
    for _, targets, out in forwards(model, batches, iters=iters, device=device, autocast=autocast):
        n = int((targets != IGNORE_INDEX).sum())
        total += out.loss.float().item() * n
        count += n
        outs.append(_stats_only(out))
    loss = total / max(count, 1)
    result = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_tokens": count}
    result.update({f"val_{k}": v for k, v in depth_stats(outs).items()})
    if histogram and (hist := residual_histogram(outs)) is not None:
        result["val_residuals"] = hist
    return result


def parse_depths(text: str, *, word: str = "adaptive", flag: str = "--iters") -> list[int | None]:
    """'0,1,2,4,8,adaptive' -> [0, 1, 2, 4, 8, None] (`word` stands for None: 'all' for
    --steps); bad entries raise ValueError."""
    depths = []
    for part in text.split(","):
        part = part.strip()
        if part == word:
            depths.append(None)
        elif part.isdigit():
            depths.append(int(part))
        else:
            raise ValueError(f"{flag}: {part!r} is neither a non-negative integer nor {word!r}")
    if not depths:
        raise ValueError(f"{flag}: give at least one depth")
    return depths


def depth_sweep(model: nn.Module, batches: list[tuple[Tensor, Tensor]], depths: list[int | None], *,
                device: torch.device | None = None) -> list[dict]:
    """One evaluate() per depth ('adaptive' = None), each with its depth and, for adaptive
    solves, the residual histogram. A model without depth (the transformer) gets one row."""
    if not model.has_depth:
        depths = [None]
    rows = []
    for iters in depths:
        row = {"iters": "adaptive" if iters is None else iters}
        row.update(evaluate(model, batches, iters=iters, device=device, histogram=iters is None))
        rows.append(row)
    return rows


# ---- puzzles -------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_puzzles(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, iters: int | None = None,
                     steps: int | None = None, device: torch.device | None = None, autocast=contextlib.nullcontext,
                     histogram: bool = False, ratings: np.ndarray | None = None) -> dict:
    """Exact and cell accuracy of a puzzle model over `batches` (attractor.tasks.puzzles), in
    eval mode, where the recursive models run every supervision step from a fresh state.

    Args:
        iters: solver iterations per solve (AttractorReasoner) or inner cycles (TRM); None: the
            model's own rule.
        steps: supervision steps (recursive models only); None: all (halt_max_steps).
        histogram: add the residual histogram of the solves ("val_residuals"), where there are.
        ratings: (N,) rating of each evaluated puzzle in order: adds "by_rating", accuracy and
            iterations per rating quartile (are harder puzzles slower?).
    Returns:
        val_loss (cell-weighted), val_exact (share of puzzles with every scored cell right),
        val_cell (mean over puzzles of the share of cells right), val_changed (the same over the
        cells the answer changes: Sudoku's blanks, a maze's path), val_puzzles, and for recurrent
        models val_depth, val_n_evals, val_converged (as `evaluate`).
    """
    total, count, outs, exact, cell, changed, depth = 0.0, 0, [], [], [], [], []
    for idx, targets, out in forwards(model, batches, iters=iters, steps=steps, device=device, autocast=autocast):
        n = int((targets != IGNORE_INDEX).sum())
        total += out.loss.float().item() * n
        count += n
        e, c = cell_metrics(out.logits, targets)
        exact.append(e.cpu())
        cell.append(c.cpu())
        changed.append(changed_metrics(out.logits, idx, targets).cpu())
        if out.depth is not None:
            depth.append(out.depth.cpu())
        outs.append(_stats_only(out))
    exact, cell, changed = torch.cat(exact).float(), torch.cat(cell), torch.cat(changed)
    result = {"val_loss": total / max(count, 1), "val_exact": exact.mean().item(), "val_cell": cell.mean().item(),
              "val_changed": changed.mean().item(), "val_puzzles": len(exact)}
    result.update({f"val_{k}": v for k, v in depth_stats(outs).items()})
    if histogram and (hist := residual_histogram(outs)) is not None:
        result["val_residuals"] = hist
    if ratings is not None:
        result["by_rating"] = by_rating(np.asarray(ratings)[: len(exact)], exact.numpy(), cell.numpy(),
                                        torch.cat(depth).float().numpy() if depth else None, changed.numpy())
    return result


def by_rating(ratings: np.ndarray, exact: np.ndarray, cell: np.ndarray, depth: np.ndarray | None,
              changed: np.ndarray | None = None) -> list[dict]:
    """Accuracy (and mean depth) of puzzles grouped by rating quartile, easiest first.

    Args: (N,) arrays per puzzle: rating, exact (0/1), cell accuracy, depth (None: no depth),
        accuracy on the changed cells (None: not given).
    Returns: one dict per group: rating range [lo, hi], puzzles, exact, cell, changed (where
        given) and depth.
    """
    edges = np.unique(np.quantile(ratings, [0.25, 0.5, 0.75], method="lower"))
    bins = np.searchsorted(edges, ratings, side="left")   # bin i: edges[i-1] < rating <= edges[i]
    rows = []
    for b in np.unique(bins):
        mask = bins == b
        row = {"rating": [int(ratings[mask].min()), int(ratings[mask].max())], "puzzles": int(mask.sum()),
               "exact": float(exact[mask].mean()), "cell": float(cell[mask].mean())}
        if changed is not None:
            row["changed"] = float(changed[mask].mean())
        if depth is not None:
            row["depth"] = float(depth[mask].mean())
        rows.append(row)
    return rows


def evaluate_parity(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, iters: int | None = None,
                    device: torch.device | None = None, autocast=contextlib.nullcontext, size=None) -> dict:
    """Exact and bit accuracy of a parity model (attractor.tasks.parity) over batches of several
    lengths, each batch of one length, in eval mode.

    Returns:
        val_loss (bit-weighted, all lengths), val_exact (share of strings with every bit right,
        all lengths), val_strings; per length n: val_exact_n, val_bits_n (share of bits right)
        and, for models with depth, val_depth_n (mean solver steps) and val_converged_n; and
        the solve statistics over all batches (as `evaluate`). `size` maps a batch's length to
        the n of its keys (the length itself when None).
    """
    total, count, outs, by_length = 0.0, 0, [], {}
    for idx, targets, out in forwards(model, batches, iters=iters, device=device, autocast=autocast):
        n = int((targets != IGNORE_INDEX).sum())
        total += out.loss.float().item() * n
        count += n
        exact, bits = parity_metrics(out.logits, targets)
        key = idx.shape[1] if size is None else size(idx.shape[1])
        rows = by_length.setdefault(key, {"exact": [], "bits": [], "outs": []})
        rows["exact"].append(exact.cpu())
        rows["bits"].append(bits.cpu())
        rows["outs"].append(_stats_only(out))
        outs.append(_stats_only(out))
    exact_all = torch.cat([e for r in by_length.values() for e in r["exact"]]).float()
    result = {"val_loss": total / max(count, 1), "val_exact": exact_all.mean().item(), "val_strings": len(exact_all)}
    for length, rows in sorted(by_length.items()):
        result[f"val_exact_{length}"] = torch.cat(rows["exact"]).float().mean().item()
        result[f"val_bits_{length}"] = torch.cat(rows["bits"]).mean().item()
        result.update({f"val_{k}_{length}": v for k, v in depth_stats(rows["outs"]).items() if k != "n_evals"})
    result.update({f"val_{k}": v for k, v in depth_stats(outs).items()})
    return result


def evaluate_grids(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], *, iters: int | None = None,
                   device: torch.device | None = None, autocast=contextlib.nullcontext) -> dict:
    """evaluate_parity on square grids of several sides (attractor.tasks.maze_sizes), keyed by
    the side s of s*s cells: val_exact_s (every cell right), val_bits_s (share of cells right),
    val_depth_s, val_converged_s."""
    return evaluate_parity(model, batches, iters=iters, device=device, autocast=autocast, size=math.isqrt)


def takes_steps(model: nn.Module) -> bool:
    """Whether the model's forward takes steps= (supervision steps: TRM, AttractorReasoner)."""
    return "steps" in inspect.signature(model.forward).parameters


def puzzle_sweep(model: nn.Module, batches, depths: list[int | None], steps: list[int | None], *,
                 ratings: np.ndarray | None = None, device: torch.device | None = None) -> dict:
    """The puzzle evaluation at each solver depth (every supervision step run) and at each
    number of supervision steps (the model's own depth).

    Returns: {"iters": rows, "steps": rows}; each row is evaluate_puzzles' result with its
    "iters" or "steps" ('adaptive' / 'all' for None). The adaptive row carries the residual
    histogram and the by-rating table, and stands for steps 'all' (not repeated). A model
    without depth gets one iters row; one without supervision steps no steps rows.
    """
    if not model.has_depth:
        depths = [None]
    rows = {"iters": [], "steps": []}
    for iters in depths:
        row = {"iters": "adaptive" if iters is None else iters}
        row.update(evaluate_puzzles(model, batches, iters=iters, device=device, histogram=iters is None,
                                    ratings=ratings if iters is None else None))
        rows["iters"].append(row)
    for n in steps if takes_steps(model) else []:
        if n is None and None in depths:
            continue  # every step, the model's own depth: the adaptive row above
        row = {"steps": "all" if n is None else n}
        row.update(evaluate_puzzles(model, batches, steps=n, device=device))
        rows["steps"].append(row)
    return rows
