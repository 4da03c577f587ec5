"""The library on a CUDA device: every family in bf16 autocast, fixed-point gradients against the
CPU's, a few trainer steps, and a checkpoint written there loaded on the CPU.

All skip without CUDA; `pytest -m cuda` (or scripts/gpu_check.sh) runs them on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from attractor import fixed_point
from attractor.config import run_config
from attractor.models import build
from attractor.run import load_run, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# The four families at about 1M, shrunk to a quick size; their depth knobs stay the presets'.
FAMILIES = {"transformer-1m": dict(n_layer=2), "looped-1m": dict(n_prelude=1, n_recur=1, n_coda=1),
            "deq-1m": dict(n_prelude=1), "attractor-1m": dict(n_backbone=1)}


@pytest.mark.parametrize("preset", sorted(FAMILIES))
def test_forward_backward_in_bf16_autocast(preset):
    torch.manual_seed(0)
    model = build(preset, d=64, seq_len=64, **FAMILIES[preset]).cuda().train()
    idx = torch.randint(0, 256, (4, 64), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(idx, idx.roll(-1, 1))
    assert out.logits.dtype == torch.float32 and out.logits.device.type == "cuda"
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("grad", ["implicit", "onestep", "phantom", "unroll"])
def test_fixed_point_gradients_on_cuda_match_the_cpu(grad):
    """A contractive tanh map in float64: the same solution and parameter gradient on both devices."""
    gen = torch.Generator().manual_seed(0)
    w0 = 0.4 * torch.randn(16, 16, generator=gen, dtype=torch.float64) / 4
    x0 = torch.randn(8, 16, generator=gen, dtype=torch.float64)
    results = []
    for device in ("cpu", "cuda"):
        w = w0.to(device).requires_grad_()
        x = x0.to(device)
        z, info = fixed_point(lambda z: torch.tanh(z @ w.T + x), torch.zeros_like(x), solver="anderson",
                              grad=grad, tol=1e-10, max_iter=200)
        assert bool(info.converged.all())
        z.square().sum().backward()
        results.append((z.detach().cpu(), w.grad.cpu()))
    (z_cpu, g_cpu), (z_gpu, g_gpu) = results
    torch.testing.assert_close(z_gpu, z_cpu, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(g_gpu, g_cpu, rtol=1e-6, atol=1e-8)


def _tiny_run(tmp_path, preset: str):
    return run_config(preset, ["model.d=64", "model.seq_len=64", "train.batch_size=4", "train.steps=4",
                               "train.eval_every=2", "train.eval_batches=2", "train.device=cuda",
                               "data.max_chars=60000", f"data.cache_dir={tmp_path / 'cache'}",
                               *(f"model.{k}={v}" for k, v in FAMILIES[preset].items())], data="kjv")


@pytest.mark.parametrize("preset", ["attractor-1m", "transformer-1m"])
def test_trainer_steps_on_cuda_and_the_checkpoint_loads_on_cpu(tmp_path, preset):
    run = _tiny_run(tmp_path, preset)
    trainer = train(run, tmp_path / "run", progress=False, log=lambda line: None)
    assert trainer.device.type == "cuda" and trainer.step == 4
    assert trainer.optimizers  # Muon for the matrices on CUDA under matrix_optimizer=auto
    model, _, saved, step = load_run(tmp_path / "run", device="cpu")
    assert step == 4 and saved == run
    assert all(p.device.type == "cpu" for p in model.parameters())
    idx = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        cpu = model(idx).logits
        gpu = trainer.model.eval()(idx.cuda()).logits.cpu()  # fp32, no autocast: same weights
    torch.testing.assert_close(cpu, gpu, rtol=2e-3, atol=2e-3)
