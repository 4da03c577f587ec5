"""`attractor solve parity BITS`: run a trained parity model on a bit string of any length, print
its prefix parities, whether they are right, and the iterations it used.

    from attractor.parity_solve import read_bits, solve_bits
    bits = read_bits("0110100")                       # or a file holding the bits
    result = solve_bits(model, bits)
    result.answer, result.right, result.depth         # '0100111', True, 9

Reading is independent of models: the bits are 0 and 1, whitespace ignored (a file may wrap
them over lines); anything else is one ConfigError line that names the first bad character.
The check is exact: y_t = x_1 xor ... xor x_t at every position (attractor.data.parity).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from attractor.data.parity import prefix_parity
from attractor.errors import ConfigError


def read_bits(source: str) -> str:
    """The bits of `source`: a string of 0 and 1, or a file (or '-' for stdin) holding one;
    whitespace is ignored. ConfigError (one line) for no bits or another character."""
    from attractor.puzzle_solve import read_text

    text = read_text(source) if source == "-" or _is_file(source) else source
    bits = "".join(text.split())
    if not bits:
        raise ConfigError("parity: no bits given (a string of 0 and 1, or a file holding one)")
    bad = next((i for i, ch in enumerate(bits) if ch not in "01"), None)
    if bad is not None:
        raise ConfigError(f"parity: bad character {bits[bad]!r} at bit {bad + 1} (bits are 0 and 1)")
    return bits


def _is_file(source: str) -> bool:
    try:
        return Path(source).is_file()
    except OSError:  # a string of bits longer than a file name may be
        return False


@dataclass(frozen=True)
class ParitySolution:
    bits: str  # the input
    answer: str  # the model's prefix parities, one character per bit
    expected: str  # the true prefix parities
    depth: int | None  # solver steps (or loops) the model took
    n_evals: int  # evaluations of the map
    converged: bool | None  # whether the solve met its tolerance (None: no solve)

    @property
    def wrong(self) -> list[int]:
        """0-based positions where the answer differs from the true parity."""
        return [i for i, (a, e) in enumerate(zip(self.answer, self.expected)) if a != e]

    @property
    def right(self) -> bool:
        return not self.wrong


def solve_bits(model: nn.Module, bits: str) -> ParitySolution:
    """Run `model` (a parity model: attractor/models/local.py's contract) on `bits` in eval mode."""
    ids = torch.tensor([[int(ch) for ch in bits]], dtype=torch.long)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        out = model(ids.to(device))
    answer = "".join(str(int(t)) for t in out.logits[0].argmax(-1).cpu().tolist())
    expected = "".join(map(str, prefix_parity(np.frombuffer(bits.encode(), np.uint8) - ord("0")).tolist()))
    depth = None if out.depth is None else int(out.depth[0])
    converged = None if out.converged is None else bool(out.converged.item() == 1.0)
    return ParitySolution(bits, answer, expected, depth, int(out.n_evals), converged)


def verdict_line(solution: ParitySolution) -> str:
    n = len(solution.bits)
    if solution.right:
        return f"right: all {n} prefix parities"
    wrong = solution.wrong
    return f"wrong: {len(wrong)} of {n} prefix parities, the first at bit {wrong[0] + 1}"


def iterations_line(solution: ParitySolution, model: nn.Module) -> str:
    if solution.depth is None:
        return "iterations: none (a model without depth)"
    if solution.converged is None:
        return f"iterations: {solution.depth} (a fixed depth)"
    how = "converged" if solution.converged else "stopped at the step cap without converging"
    cap = getattr(model, "max_iter", None)
    cap_text = f", cap {cap(len(solution.bits))}" if callable(cap) else ""
    return f"iterations: {solution.depth} ({how}{cap_text})"


def parity_command(source: str, checkpoint: str | Path, *, settings: list[str] = (), out=None) -> int:
    """`attractor solve parity BITS --checkpoint DIR`: print the bits, the model's prefix parities,
    the check and the iterations. Returns 0 when every parity is right, 1 otherwise."""
    import sys

    from attractor.run import load_run

    out = sys.stdout if out is None else out
    bits = read_bits(source)  # before loading the model: bad input fails at once
    model, _, run, step = load_run(checkpoint, settings=list(settings))
    name = f"{type(model).__name__} at step {step}"
    if run.task.name != "parity":
        raise ConfigError(f"{checkpoint} holds a {run.task.model_kind} ({name}), not a parity model")
    solution = solve_bits(model, bits)
    out.write(f"{name} on {len(bits)} bits\nbits:     {bits}\nparities: {solution.answer}\n"
              f"{verdict_line(solution)}\n{iterations_line(solution, model)}\n")
    return 0 if solution.right else 1
