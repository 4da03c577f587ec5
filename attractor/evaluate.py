"""Evaluation: validation loss at any depth, the depth sweep, and the solve's statistics.

The depth sweep is how internalization is measured (SPEC 1.5): loss when decoding the
backbone's proposal (iters=0), after k plain steps, and at the adaptive fixed point.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from attractor.models.base import IGNORE_INDEX, ModelOutput

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
def evaluate(model: nn.Module, batches: list[tuple[Tensor, Tensor]], *, iters: int | None = None,
             device: torch.device | None = None, autocast=contextlib.nullcontext, histogram: bool = False) -> dict:
    """Token-weighted mean loss and perplexity of `model` at depth `iters` (None: the model's
    own rule) over `batches`, with the solve statistics of recurrent models. Runs in eval mode
    and restores the previous mode."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    total, count, outs = 0.0, 0, []
    try:
        for idx, targets in batches:
            idx, targets = idx.to(device), targets.to(device)
            with autocast():
                out = model(idx, targets) if iters is None else model(idx, targets, iters=iters)
            n = int((targets != IGNORE_INDEX).sum())
            total += out.loss.float().item() * n
            count += n
            outs.append(out)
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    result = {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_tokens": count}
    result.update({f"val_{k}": v for k, v in depth_stats(outs).items()})
    if histogram and (hist := residual_histogram(outs)) is not None:
        result["val_residuals"] = hist
    return result


def parse_depths(text: str) -> list[int | None]:
    """'0,1,2,4,8,adaptive' -> [0, 1, 2, 4, 8, None]; bad entries raise ValueError."""
    depths = []
    for part in text.split(","):
        part = part.strip()
        if part == "adaptive":
            depths.append(None)
        elif part.isdigit():
            depths.append(int(part))
        else:
            raise ValueError(f"--iters: {part!r} is neither a non-negative integer nor 'adaptive'")
    if not depths:
        raise ValueError("--iters: give at least one depth")
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
