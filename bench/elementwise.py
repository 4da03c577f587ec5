"""The elementwise parts of the block against their alternatives, forward + backward, side by side.

What docs/benchmarks.md ("Hot path") reports on transformer-1m against the nanoGPT yardstick: each
group times its variants in turns on the same tensors (batch 16 x 256, transformer-1m's sizes)
and prints the median and the ratio to the group's first row.

- rms_norm on (16, 256, 128): ours eager (`attractor.layers.rms_norm`), ours as the fused C++
  kernel (`rms_norm(x, fused=True)`, what the trainer's default `train.kernels=auto` runs on a CPU),
  PyTorch's fused op (`torch.ops.aten._fused_rms_norm`, present on CPU), `F.layer_norm` (the
  GPT's, for scale).
- the MLP activation on (16, 256, 512): ours eager (`relu_square`), ours fused, `F.gelu` (the
  GPT's).
- q, k and v of one block from its (16, 256, 384) qkv projection (`qkv_heads`: QK-norm and RoPE
  on q and k, the gradient back into qkv): ours eager, ours fused, and the GPT's plain split into
  heads (no norm, no rotation: what the fused kernel's extra work is measured against).
- causal attention on (16, 4, 256, 32): the default SDPA backend (flash on CPU) against the math
  backend.
- `--compile` adds torch.compile'd textbook versions (inductor's C++ backend; needs a C++
  compiler, 5-10 s each to compile): `F.rms_norm`, `F.relu(x).square()`, QK-norm + RoPE.

The fused rows are left out, with a note, where the kernels cannot be built.

Run:  python -m bench.elementwise [--threads 2] [--compile] [--repeats 20]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from attractor.layers import qkv_heads, relu_square, rms_norm
from bench.common import code_line, fused_kernels_available, median, print_table, timed

B, T, D, H = 16, 256, 128, 4


def fwd_bwd(fn: Callable[[Tensor], Tensor | tuple[Tensor, ...]], x: Tensor, grad: Tensor | tuple[Tensor, ...],
            fused: bool = False) -> Callable[[], None]:
    """One forward of fn(x) and its backward with `grad` (one per output), as a thunk; fn takes
    `fused` as a keyword where given (the fused kernel's rows)."""
    def step() -> None:
        x.grad = None
        torch.autograd.backward(fn(x, fused=True) if fused else fn(x), grad)
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


def textbook_qk(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """rms-normed, rotated q and k and plain v of a (B, T, 3D) projection, written plainly (for
    torch.compile)."""
    q, k, v = qkv.view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
    qk = F.rms_norm(torch.stack([q, k]), (D // H,))
    kk, t = qk.shape[-1], qk.shape[-2]
    freqs = 10000.0 ** (-torch.arange(0, kk, 2, dtype=torch.float32) / kk)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos(), angles.sin()
    x1, x2 = qk[..., : kk // 2], qk[..., kk // 2:]
    q, k = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return q, k, v


def split_heads(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The GPT's q, k and v: a split and views, no norm, no rotation."""
    return tuple(u.view(B, T, H, D // H).transpose(1, 2) for u in qkv.split(D, dim=-1))


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

    fused = fused_kernels_available("fused-kernel rows")
    x, g = torch.randn(B, T, D, requires_grad=True), torch.randn(B, T, D)
    eps = torch.finfo(torch.float32).eps
    norm = {"ours (rms_norm)": fwd_bwd(rms_norm, x, g)}
    if fused:
        norm["ours, fused kernel"] = fwd_bwd(rms_norm, x, g, fused=True)
    norm["aten._fused_rms_norm"] = fwd_bwd(lambda t: torch.ops.aten._fused_rms_norm(t, [D], None, eps)[0], x, g)
    norm["F.layer_norm (GPT)"] = fwd_bwd(lambda t: F.layer_norm(t, (D,)), x, g)
    if args.compile:
        norm["F.rms_norm, compiled"] = fwd_bwd(torch.compile(lambda t: F.rms_norm(t, (D,)), dynamic=False), x, g)
    print_table(f"RMSNorm on ({B}, {T}, {D})", header, side_by_side(norm, args.repeats))

    h, gh = torch.randn(B, T, 4 * D, requires_grad=True), torch.randn(B, T, 4 * D)
    mlp = {"ours (relu_square)": fwd_bwd(relu_square, h, gh)}
    if fused:
        mlp["ours, fused kernel"] = fwd_bwd(relu_square, h, gh, fused=True)
    mlp["F.gelu (GPT)"] = fwd_bwd(F.gelu, h, gh)
    if args.compile:
        mlp["relu().square(), compiled"] = fwd_bwd(torch.compile(lambda t: F.relu(t).square(), dynamic=False), h, gh)
    print_table(f"MLP activation on ({B}, {T}, {4 * D})", header, side_by_side(mlp, args.repeats))

    qkv = torch.randn(B, T, 3 * D, requires_grad=True)
    g_heads = tuple(torch.randn(B, T, H, D // H).transpose(1, 2) for _ in range(3))  # as attention's backward gives them
    heads = {"ours (qkv_heads)": fwd_bwd(lambda t: qkv_heads(t, H), qkv, g_heads)}
    if fused:
        heads["ours, fused kernel"] = fwd_bwd(lambda t, fused: qkv_heads(t, H, fused=fused), qkv, g_heads, fused=True)
    heads["split into heads (GPT)"] = fwd_bwd(split_heads, qkv, g_heads)
    if args.compile:
        heads["textbook, compiled"] = fwd_bwd(torch.compile(textbook_qk, dynamic=False), qkv, g_heads)
    print_table(f"q, k, v from qkv ({B}, {T}, {3 * D}): QK-norm + RoPE on q and k", header,
                side_by_side(heads, args.repeats))

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
