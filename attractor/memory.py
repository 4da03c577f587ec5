"""Will a training step fit? A lower bound on one step's activation memory, from the config
alone, against the memory the device has free: a run whose first step cannot fit is refused
before anything is built, instead of swapping the machine to a halt or being killed mid-step.

The bound counts what every training step must hold at once for its backward pass: the input of
each transformer block for every token of the micro-batch (batch x seq_len x d values per block,
4 bytes each, 2 under bf16 autocast) and the float32 logits with the log-softmax the loss keeps
of them (2 x batch x seq_len x vocab values, 4 bytes each). It leaves out everything else a
real step holds (each block's inner tensors, attention scores among them; the recurrent models'
extra iterations; weights and optimiser state), so it never refuses a step that could fit,
while a step it lets through may still not fit.

    need = step_bytes(run, micro_batch=16)     # bytes, a lower bound
    check_step_memory(run)                     # ConfigError when `need` exceeds what is free
"""

from __future__ import annotations

import os

import torch

from attractor.errors import ConfigError


def count_blocks(model_config) -> int:
    """Transformer blocks (attractor.layers.Block) in the model a config describes, each counted
    once however often it runs; built on the meta device, so no memory is used."""
    from attractor.layers import Block
    from attractor.models import meta_model

    model = meta_model(model_config)
    return sum(isinstance(module, Block) for module in model.modules())


def step_bytes(run, micro_batch: int, bf16: bool = False) -> int:
    """A lower bound on the activation memory of one training step of `run` (a RunConfig) with
    `micro_batch` sequences in a process: the module docstring's count. The blocks' inputs take
    2 bytes a value under bf16 autocast, the logits 4 (the models return them in float32)."""
    model = run.model
    per_token = count_blocks(model) * model.d * (2 if bf16 else 4) + 2 * model.vocab_size * 4
    return micro_batch * model.seq_len * per_token


def available_bytes(device: torch.device) -> tuple[int, str] | None:
    """(bytes free, where the number comes from) on `device`: torch.cuda.mem_get_info on CUDA,
    MemAvailable of /proc/meminfo on the CPU; None where neither tells (macOS, MPS)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device}"
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024, "available on this machine (MemAvailable)"
        except OSError:
            return None
    return None


def check_step_memory(run, world: int | None = None, local_world: int | None = None) -> None:
    """ConfigError, before anything is built, when the first training step of `run` cannot fit
    in the memory its device has free: step_bytes' lower bound for this process's share of the
    batch, times the processes that share the machine's memory (torchrun on a CPU). `world` and
    `local_world` default to torchrun's WORLD_SIZE and LOCAL_WORLD_SIZE."""
    from attractor.train import pick_device

    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if local_world is None else local_world
    device = pick_device(run.train.device, int(os.environ.get("LOCAL_RANK", "0")))
    free = available_bytes(device)
    if free is None:
        return
    micro_batch = max(1, run.train.micro_batch // world)
    bf16 = run.train.precision == "bfloat16" or (run.train.precision == "auto" and device.type == "cuda")
    per_process = step_bytes(run, micro_batch, bf16)
    need = per_process * (local_world if device.type == "cpu" else 1)
    if need > free[0]:
        sharing = f" for {local_world} processes" if need != per_process else ""
        raise ConfigError(
            f"the first training step needs at least {_gb(need)} of memory{sharing} (activations of "
            f"{micro_batch} sequences x model.seq_len={run.model.seq_len} tokens x "
            f"({count_blocks(run.model)} blocks x d={run.model.d} + 2 x {run.model.vocab_size} logits)), more than "
            f"the {_gb(free[0])} {free[1]}; lower model.seq_len or train.batch_size, or raise train.grad_accum")


def _gb(n: int) -> str:
    return f"{n / 1e9:,.1f} GB"
