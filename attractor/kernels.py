"""Fused CPU kernels for the block's elementwise parts: the per-model switch, and the C++ they are built from.

`use_fused_kernels(model)` (the trainer's `train.kernels`, `auto` by default) makes RMSNorm,
QK-norm + RoPE and ReLU^2 of that model run, forward and backward, as the C++ kernels of
`kernels_cpu.cpp` (their autograd Functions are in attractor.layers): each one pass over memory
where eager PyTorch makes one per op. The switch is a flag on each module with a fused path (a
`FusedPath`: the block, its attention and MLP, the models that norm their states), so two models
in one process may differ. The kernels give the eager ops' values up to rounding
(tests/test_layers.py holds them to the textbook block), and transformer-1m then trains at the
tokens/s of a classic GPT of its size, where eager it reaches 0.92 of it (docs/benchmarks.md,
"Hot path").

The kernels are built on first use with the system's C++ compiler through
`torch.utils.cpp_extension` (about 15 s; then cached per source, flags, torch version and CPU
vector width under $ATTRACTOR_KERNELS_DIR, default ~/.cache/attractor/kernels). They serve CPU
tensors of float32 and float64 outside torch.compile and functorch transforms; everything else
(half types, other devices, double backward, vmap) takes the eager formulas in attractor.layers,
so the switch never changes what can be differentiated.
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

SOURCE = Path(__file__).with_name("kernels_cpu.cpp")

_LOADED = False  # the library is loaded into this process (a second load would register its ops twice)

ModelT = TypeVar("ModelT", bound=nn.Module)


class FusedPath:
    """Mixin of the modules whose forward has a fused path: `fused_kernels` (False unless
    use_fused_kernels set it on this module) says whether it asks for the fused kernels."""

    fused_kernels: bool = False


def use_fused_kernels(model: ModelT, enabled: bool = True) -> ModelT:
    """Set whether `model`'s RMSNorm, QK-norm + RoPE and ReLU^2 run as the fused C++ kernels
    (where they serve the tensors, see active_for): the flag of every FusedPath module in it,
    other models untouched. Enabling builds the kernels once per process (cached on disk) and
    raises RuntimeError (one line) where they cannot be built, leaving the model as it was.
    Returns the model."""
    if enabled:
        build()
    for module in model.modules():
        if isinstance(module, FusedPath):
            module.fused_kernels = enabled
    return model


def active_for(x: Tensor) -> bool:
    """Whether the fused kernels can serve x now: a CPU float32/float64 tensor, and neither
    torch.compile nor a functorch transform (vmap, grad) tracing it. The caller asks only where
    its module's flag is set."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active())


def plain_backward(g: Tensor) -> bool:
    """Neither create_graph (the backward is differentiated again) nor a batched gradient (vmap:
    torch.func.jacrev, or autograd.functional.jacobian(vectorize=True)'s legacy batching): the
    cases a fused backward, which autograd cannot see into, must leave to the eager formulas."""
    return (not torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active()
            and not torch._C._functorch.is_legacy_batchedtensor(g))


def ops() -> Any:
    """torch.ops.attractor_cpu, the fused kernels, built or loaded on first call."""
    build()
    return torch.ops.attractor_cpu


def _vector_flags() -> list[str]:
    """The widest vector instructions this CPU has that torch itself uses (AVX2, AVX-512): the
    kernels are memory-bound, but at SSE width the per-row arithmetic of QK-norm was not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
    return ["-mavx2", "-mfma"] if capability == "AVX2" else []


def build() -> None:
    """Build (or load from the cache) the kernels; raise RuntimeError, one line, where they cannot
    be built (no C++ compiler or ninja, say). Loads once per process; a failed build is retried."""
    global _LOADED
    if _LOADED:
        return
    from torch.utils import cpp_extension

    # -fno-trapping-math lets gcc vectorize ReLU's select
    flags = ["-O3", "-fno-trapping-math", "-fopenmp", *_vector_flags()]
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), torch.__version__.encode()])).hexdigest()[:12]
    name = f"attractor_cpu_{key}"
    root = Path(os.environ.get("ATTRACTOR_KERNELS_DIR") or Path.home() / ".cache" / "attractor" / "kernels")
    directory = root / name
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # compiler-version notes; a failure raises below
            warnings.simplefilter("ignore")
            cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=flags, build_directory=str(directory),
                               is_python_module=False, verbose=False)
        _LOADED = True
    except Exception as e:  # compiler output runs to pages; say what failed in one line
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "error" in ln.lower() and ln != lines[0]), lines[0] if lines else "")
        raise RuntimeError(f"compiled kernels could not be built from {SOURCE.name} (they need a C++ compiler "
                           f"and ninja): {type(e).__name__}: {detail[:300]}") from None
