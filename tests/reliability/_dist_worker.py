"""One rank of the multi-process training test (run as a script by test_distributed.py).

Usage: python _dist_worker.py RANK WORLD PORT OUT
Joins a gloo process group, then trains a small model containing HandLSTM for a few SGD steps in
float64 on a fixed batch, once wrapped in DistributedDataParallel and once sharded with FSDP2
``fully_shard``; each rank takes its contiguous share of the batch. Writes, per mode, the final
parameters or the error torch raised, to OUT. ``train("single", 0, 1)`` is the one-process run
over the full batch.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from handlstm import HandLSTM

BATCH, LENGTH, STEPS, LR = 8, 5, 4, 0.3


class Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = HandLSTM(3, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.head = nn.Linear(10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)  # (N, L, 2*H)
        return self.head(out.mean(1)).squeeze(-1)  # (N,)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, LENGTH, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(BATCH, generator=gen, dtype=torch.float64)
    return x, y


def train(mode: str, rank: int, world: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = Model().double()
    x, y = data()
    share = BATCH // world
    x, y = x[rank * share : (rank + 1) * share], y[rank * share : (rank + 1) * share]
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    elif mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model.lstm)
        fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()  # mean: DDP's gradient average = full-batch mean
        loss.backward()
        optimizer.step()
    if mode == "fsdp":
        return {k: v.full_tensor().detach().clone() for k, v in model.state_dict().items()}
    module = model.module if mode == "ddp" else model
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def main(argv: list[str]) -> int:
    rank, world, port, out = int(argv[0]), int(argv[1]), argv[2], argv[3]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=60))
    result: dict[str, dict] = {}
    try:
        for mode in ("ddp", "fsdp"):
            try:
                result[mode] = {"params": train(mode, rank, world)}
            except Exception as error:  # noqa: BLE001 - the test reads and asserts on the error
                result[mode] = {
                    "error": f"{type(error).__name__}: {error}",
                    "trace": traceback.format_exc(),
                }
            dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
