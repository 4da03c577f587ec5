"""DistributedDataParallel: 2 gloo ranks on CPU give the gradients of one process on the batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def run_ranks(tmp_path: Path, world: int, mode: str) -> list[dict[str, torch.Tensor]]:
    init = tmp_path / f"init-{world}-{mode}"
    outs = [tmp_path / f"grads-{world}-{mode}-{r}.pt" for r in range(world)]
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(r), str(world), str(init), str(o), mode],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r, o in enumerate(outs)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    return [torch.load(o) for o in outs]


@pytest.mark.ddp
@pytest.mark.parametrize("mode", ["implicit", "onestep", "neumann", "phantom", "unroll"])
def test_ddp_gradients_match_single_process(tmp_path, mode):
    (single,) = run_ranks(tmp_path, 1, mode)
    ranks = run_ranks(tmp_path, 2, mode)
    for name, ref in single.items():
        assert ref.abs().max() > 0
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][name], ref, rtol=1e-10, atol=1e-12)
