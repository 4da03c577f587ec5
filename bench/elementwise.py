"""The elementwise parts of the block against their alternatives, forward + backward, side by side.

What docs/benchmarks.md ("Hot path", third session) reports on why transformer-1m stays below
the nanoGPT yardstick: each group times its variants in turns on the same tensors (batch 16 x 256,
transformer-1m's sizes) and prints the median and the ratio to the group's first row.

- rms_norm on (16, 256, 128): ours (`attractor.layers.rms_norm`), PyTorch's fused op
  (`torch.ops.aten._fused_rms_norm`, present on CPU), `F.layer_norm` (the GPT's, for scale).
- the MLP activation on (16, 256, 512): ours (`relu_square`), `F.gelu` (the GPT's), and with
  `--compile` `F.relu(x).square()` through torch.compile (needs a C++ compiler; 5-10 s to compile).
- QK-norm + RoPE on q and k of one block (the (B, T, 2, H, K) slice of qkv): ours, and with
  `--compile` a textbook version through torch.compile.
- With `--compile`, the activation and QK groups also time ours under
  `attractor.layers.compiled_kernels()` (the trainer's `train.kernels=compiled`: a compiled
  forward and a compiled backward per part), and the RMSNorm group `F.rms_norm` compiled.
- causal attention on (16, 4, 256, 32): the default SDPA backend (flash on CPU) against the math
  backend.

Run:  python -m bench.elementwise [--threads 2] [--compile] [--repeats 20]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from attractor.layers import compiled_kernels, norm_rotary, relu_square, rms_norm, rotary
from bench.common import code_line, median, print_table, timed

B, T, D, H = 16, 256, 128, 4


def fwd_bwd(fn: Callable[[Tensor], Tensor], x: Tensor, grad: Tensor, compiled: bool = False) -> Callable[[], None]:
    """One forward of fn(x) and its backward with `grad`, as a thunk; `compiled`: inside
    attractor.layers.compiled_kernels()."""
    def step() -> None:
        x.grad = None
        with compiled_kernels(compiled):
            fn(x).backward(grad)
    return step


def side_by_side(variants: dict[str, Callable[[], None]], repeats: int) -> list[list[object]]:
    """Median ms of each thunk over `repeats` rounds, the variants taking turns every round."""
    for thunk in variants.values():  # warm-up (and compilation)
        thunk()
        thunk()
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, thunk in variants.items():
            times[name].append(timed(thunk)[0])
    first = median(next(iter(times.values())))
    return [[name, f"{median(t) * 1e3:.2f}", f"{median(t) / first:.2f}"] for name, t in times.items()]


def textbook_qk(qk: Tensor) -> Tensor:
    """rms-normed, rotated q and k of a (B, T, 2, H, K) slice, written plainly (for torch.compile)."""
    qk = F.rms_norm(qk.permute(2, 0, 3, 1, 4), (qk.shape[-1],))
    k, t = qk.shape[-1], qk.shape[-2]
    freqs = 10000.0 ** (-torch.arange(0, k, 2, dtype=torch.float32) / k)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = qk[..., : k // 2], qk[..., k // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="add the torch.compile variants")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"python -m bench.elementwise{' --compile' if args.compile else ''}, {code_line()}")
    header = ["variant", "ms fwd+bwd", "vs first"]

    x, g = torch.randn(B, T, D, requires_grad=True), torch.randn(B, T, D)
    eps = torch.finfo(torch.float32).eps
    norm = {
        "ours (rms_norm)": fwd_bwd(rms_norm, x, g),
        "aten._fused_rms_norm": fwd_bwd(lambda t: torch.ops.aten._fused_rms_norm(t, [D], None, eps)[0], x, g),
        "F.layer_norm (GPT)": fwd_bwd(lambda t: F.layer_norm(t, (D,)), x, g),
    }
    if args.compile:  # what compiled_kernels() once did for RMSNorm too: no faster, so it stays eager
        norm["F.rms_norm, compiled"] = fwd_bwd(torch.compile(lambda t: F.rms_norm(t, (D,)), dynamic=False), x, g)
    print_table(f"RMSNorm on ({B}, {T}, {D})", header, side_by_side(norm, args.repeats))

    h, gh = torch.randn(B, T, 4 * D, requires_grad=True), torch.randn(B, T, 4 * D)
    mlp = {"ours (relu_square)": fwd_bwd(relu_square, h, gh), "F.gelu (GPT)": fwd_bwd(F.gelu, h, gh)}
    if args.compile:
        mlp["relu().square(), compiled"] = fwd_bwd(torch.compile(lambda t: F.relu(t).square(), dynamic=False), h, gh)
        mlp["ours, compiled kernels"] = fwd_bwd(relu_square, h, gh, compiled=True)
    print_table(f"MLP activation on ({B}, {T}, {4 * D})", header, side_by_side(mlp, args.repeats))

    qkv = torch.randn(B, T, 3 * D, requires_grad=True)
    gq = torch.randn(2, B, H, T, D // H)
    slice_qk = lambda fn: lambda t: fn(t[..., : 2 * D].view(B, T, 2, H, D // H))  # noqa: E731
    qk = {"ours (rotary(rms_norm))": fwd_bwd(slice_qk(lambda s: rotary(rms_norm(s.permute(2, 0, 3, 1, 4)))), qkv, gq)}
    if args.compile:
        qk["textbook, compiled"] = fwd_bwd(slice_qk(torch.compile(textbook_qk, dynamic=False)), qkv, gq)
        qk["ours, compiled kernels (norm_rotary)"] = fwd_bwd(slice_qk(lambda s: norm_rotary(s.permute(2, 0, 3, 1, 4))),
                                                            qkv, gq, compiled=True)
    print_table(f"QK-norm + RoPE on q and k, ({B}, {T}, 2, {H}, {D // H})", header, side_by_side(qk, args.repeats))

    q, k, v = (torch.randn(B, H, T, D // H, requires_grad=True) for _ in range(3))
    go = torch.randn(B, H, T, D // H)

    def attention(backend: SDPBackend | None) -> Callable[[], None]:
        def step() -> None:
            for t in (q, k, v):
                t.grad = None
            if backend is None:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                with sdpa_kernel(backend):
                    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            out.backward(go)
        return step

    print_table(f"causal attention on ({B}, {H}, {T}, {D // H})", header, side_by_side({
        "default backend (flash on CPU)": attention(None), "math backend": attention(SDPBackend.MATH),
    }, args.repeats))


if __name__ == "__main__":
    main()
