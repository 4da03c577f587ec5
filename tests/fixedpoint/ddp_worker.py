"""One rank of the DDP gradient test (run by test_ddp.py; not a test module itself).

usage: python ddp_worker.py RANK WORLD_SIZE INIT_FILE OUT_FILE MODE
Each rank takes its slice of a fixed batch, solves with `fixed_point` inside a DDP-wrapped
module, and saves its parameter gradients. With WORLD_SIZE 1 it is the single-process reference.
"""

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from attractor import fixed_point


class TanhFixedPoint(torch.nn.Module):
    def __init__(self, n: int, mode: str):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        w = torch.randn(n, n, generator=gen, dtype=torch.float64)
        self.w = torch.nn.Parameter(w * 0.8 / torch.linalg.matrix_norm(w, ord=2))
        self.u = torch.nn.Parameter(torch.randn(n, n, generator=gen, dtype=torch.float64) / n**0.5)
        self.mode = mode

    def forward(self, x):
        z, _ = fixed_point(lambda z: torch.tanh(z @ self.w.T + x @ self.u.T), torch.zeros_like(x),
                           grad=self.mode, tol=1e-12, max_iter=300)
        return z


def main() -> None:
    rank, world, init_file, out_file, mode = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = DistributedDataParallel(TanhFixedPoint(6, mode))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = x.chunk(world)[rank]
    loss = (model(x) ** 2).sum(1).mean()  # mean over the local batch; DDP averages over ranks
    loss.backward()
    torch.save({n: p.grad for n, p in model.module.named_parameters()}, out_file)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
