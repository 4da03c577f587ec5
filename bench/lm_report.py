"""Tables, plots and docs/results-lm.md from the records bench.lm_claims writes.

Every run leaves runs/claims/<group>/<run>/claims.json (see bench.lm_claims). docs/results-lm.md
holds hand-written text and generated blocks

    <!-- generated: KIND:PREFIX -->
    ...
    <!-- end -->

which `python -m bench.lm_claims report` rewrites from the records whose run name starts with
PREFIX, or matches it where it holds a `*` (several joined by '+'; `compare-1m/*-n300` selects
one budget's runs of a group): KIND is `table` (point 1: loss, FLOPs, speed, memory), `sweep` (point 2: the depth sweep
at the last evaluation, the gap proposal - fixed point, spectral radii), `gaps` (point 2 over
training: that gap, evaluations per forward and spectral radius at every evaluation), `tokens` (point 3:
per-token steps against loss) or `plots` (internalization and iterations over training, loss
against iterations; PNGs written beside the document, named after PREFIX, or after NAME when the
block says `plots:PREFIX=NAME`).
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from pathlib import Path

from attractor import io
from attractor.errors import ConfigError
from bench.common import ROOT, median

CLAIMS = ROOT / "runs" / "claims"


def run_label(name: str) -> str:
    """'compare-1m/attractor-1m-s0-n600' -> 'attractor-1m' (seed and budget dropped)."""
    return re.sub(r"-s\d+-[nt][\d.]+$", "", name.split("/")[-1])


def load_records(prefix: str = "", root: Path = CLAIMS) -> dict[str, dict]:
    """{run name: record} of every claims.json under root whose run name starts with prefix, or,
    where prefix holds a `*`, matches it as a pattern (`compare-1m/*-n300`: one budget's runs)."""
    records = {}
    for path in sorted(root.glob("**/claims.json")):
        name = str(path.parent.relative_to(root))
        if fnmatch.fnmatchcase(name, prefix) if "*" in prefix else name.startswith(prefix):
            records[name] = json.loads(path.read_text())
    return records


def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def comparison_table(records: dict[str, dict], speed_file: Path | None = None) -> str:
    """Point 1: final validation loss and perplexity, FLOPs/token, tokens/s, peak memory."""
    speeds = json.loads(speed_file.read_text())["models"] if speed_file and speed_file.exists() else {}
    rows = []
    for name, rec in records.items():
        last = rec["evals"][-1]
        label = run_label(name)
        sp = speeds.get(label, {})
        rows.append([name, f"{rec['params']['dense']:,}", last["step"], f"{last['tokens']:,}",
                     last["sweep"]["adaptive"],
                     math.exp(last["sweep"]["adaptive"]), _fmt(last["adaptive"].get("depth"), 1),
                     f"{last['flops_per_token'] / 1e6:.1f}M", _fmt(rec.get("tokens_per_s") or last["tokens_per_s"], 0),
                     _fmt(sp.get("tokens_per_s"), 0), _fmt(sp.get("peak_mb"), 0),
                     _fmt(rec.get("train_s") or last["train_s"], 0) + ("" if rec.get("done") else " (unfinished)")])
    return markdown(["run", "dense params", "steps", "tokens", "val loss (nats/byte)", "val ppl",
                     "depth", "FLOPs/token", "tok/s (own run)", "tok/s (side by side)", "peak MB / step",
                     "train s"], rows)


def sweep_table(records: dict[str, dict]) -> str:
    """Point 2: the depth sweep at the last evaluation, and the gap proposal - fixed point."""
    rows = []
    for name, rec in records.items():
        last = rec["evals"][-1]
        s = last["sweep"]
        if "0" not in s:
            continue
        con = last.get("contraction") or {}
        rows.append([name, last["step"], *(s.get(k) for k in ("0", "1", "2", "4", "8", "adaptive")),
                     s["0"] - s["adaptive"], _fmt(last["adaptive"].get("depth"), 1),
                     _fmt(last["adaptive"].get("n_evals"), 1), _fmt(last["adaptive"].get("converged"), 2),
                     _fmt(median(con.get("rho_start", [])), 2), _fmt(median(con.get("rho_fixed", [])), 2)])
    return markdown(["run", "step", "T=0", "T=1", "T=2", "T=4", "T=8", "adaptive", "gap T=0 - adaptive",
                     "depth", "f evals", "converged", "rho at c", "rho at y*"], rows)


def proposes(rec: dict) -> bool:
    """Whether the run's T=0 decodes a proposal (an AttractorLM). A DEQ's T=0 decodes its zero
    start, uniform logits, so its T=0 - adaptive gap says nothing about internalization."""
    return rec["config"]["model"]["family"] == "attractor"


def gap_table(records: dict[str, dict]) -> str:
    """Point 2 over training, Attractor runs: at each evaluation step, T=0 - adaptive loss / f
    evaluations per forward / spectral radius at y* (median over the measured sequences)."""
    shown = {name: rec for name, rec in records.items() if proposes(rec)}
    steps = sorted({e["step"] for rec in shown.values() for e in rec["evals"]})  # the shown runs' steps only
    rows = []
    for name, rec in shown.items():
        at = {e["step"]: e for e in rec["evals"]}
        cells = []
        for step in steps:
            e = at.get(step)
            cells.append("-" if e is None else
                         f"{e['sweep']['0'] - e['sweep']['adaptive']:+.4f} / {e['adaptive']['n_evals']:.1f} / "
                         f"{median(e['contraction']['rho_fixed']):.2f}")
        rows.append([name, *cells])
    return markdown(["run", *(f"step {s}" for s in steps)], rows)


def token_table(records: dict[str, dict]) -> str:
    """Point 3: per-token steps against per-token loss at the last evaluation."""
    rows = []
    for name, rec in records.items():
        tok = rec["evals"][-1].get("per_token")
        if not tok:
            continue
        bins = "; ".join(f"{b['own_iters']}: {b['mean_loss']:.2f} ({b['tokens']})" for b in tok["bins"])
        rows.append([name, tok["own_mean"], tok["prefix_mean"], tok["never"], tok["spearman_own"],
                     tok["spearman_prefix"], bins])
    return markdown(["run", "own steps (mean)", "prefix-stopped steps (mean)", "never below tol",
                     "Spearman(own, loss)", "Spearman(prefix, loss)", "own steps: mean loss (tokens)"], rows)


def training_depth(rec: dict) -> list[tuple[int, float]]:
    """(step, f-evaluations per training step) from the logged records."""
    return [(r["step"], r["n_evals"]) for r in rec["train"] if "n_evals" in r]


def plots(records: dict[str, dict], folder: Path, stem: str) -> list[str]:
    """folder/<stem>-internalization.png (Attractor runs: T=0 - adaptive and T=1 - adaptive over training),
    <stem>-iterations.png (f evaluations per training step), <stem>-loss-vs-iters.png
    (final validation loss against evaluations per token). Returns the file names."""
    from attractor.plots import pyplot, save_figure

    plt = pyplot()
    names = []

    def finish(fig, suffix: str) -> None:
        names.append(f"{stem}-{suffix}.png")
        save_figure(fig, folder / names[-1])
        plt.close(fig)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rec in records.items():
        evals = [e for e in rec["evals"] if proposes(rec)]
        steps = [e["step"] for e in evals]
        for ax, k in ((ax0, "0"), (ax1, "1")):
            if evals:
                ax.plot(steps, [e["sweep"][k] - e["sweep"]["adaptive"] for e in evals], "o-", label=name.split("/")[-1])
    for ax, k in ((ax0, 0), (ax1, 1)):
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"val loss, T={k} minus adaptive (nats/byte)")
        ax.legend(fontsize=7)
    fig.suptitle("Internalization over training: 0 means the proposal is the fixed point")
    fig.tight_layout()
    finish(fig, "internalization")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rec in records.items():
        pts = training_depth(rec)
        if pts:
            ax.plot(*zip(*pts), label=name.split("/")[-1])
    ax.set_xlabel("training step")
    ax.set_ylabel("evaluations of f per training step")
    ax.legend(fontsize=7)
    finish(fig, "iterations")

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rec in records.items():
        last = rec["evals"][-1]
        ax.plot([last["adaptive"].get("n_evals", 0)], [last["sweep"]["adaptive"]], "o", label=name.split("/")[-1])
    ax.set_xlabel("evaluations of f per forward at validation (adaptive)")
    ax.set_ylabel("validation loss (nats/byte)")
    ax.legend(fontsize=7)
    finish(fig, "loss-vs-iters")
    return names


GENERATED = re.compile(r"(<!-- generated: (\S+) -->\n).*?(<!-- end -->)", re.S)


def section(spec_text: str, root: Path, folder: Path) -> str:
    """A generated block's text for 'KIND:PREFIX' (see the module docstring); plots go to folder.
    PREFIX may join several prefixes with '+' (compare-1m/attractor+grad-1m/)."""
    kind, _, prefix = spec_text.partition(":")
    prefix, _, stem_name = prefix.partition("=")
    records = {name: rec for p in prefix.split("+") for name, rec in load_records(p, root).items()}
    if not records:
        return f"(no records under runs/claims/{prefix} yet)"
    if kind == "table":
        return comparison_table(records, root / prefix.split("/")[0] / "speed.json")
    if kind == "sweep":
        return sweep_table(records)
    if kind == "gaps":
        return gap_table(records)
    if kind == "tokens":
        return token_table(records)
    if kind == "plots":
        stem = "results-lm-" + re.sub(r"[^A-Za-z0-9.]+", "-", stem_name or prefix).strip("-")
        return "\n".join(f"![{n}]({n})" for n in plots(records, folder, stem))
    raise ConfigError(f"unknown generated section {spec_text!r}")


def report(path: Path, root: Path = CLAIMS) -> None:
    """Rewrite every generated block of the document at `path` from the records under root."""
    text = path.read_text()
    new = GENERATED.sub(lambda m: m.group(1) + section(m.group(2), root, path.parent) + "\n" + m.group(3), text)
    io.atomic_write_text(path, new)
    print(f"{path}: {len(GENERATED.findall(text))} generated sections rewritten")
