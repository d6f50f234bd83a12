"""torchrun worker for tests/test_training.py: one DDP step's gradients on a fixed global batch.

Each rank takes its half of the batch saved by the test, runs forward + backward through
DistributedDataParallel (gloo), and rank 0 saves the averaged gradients.
"""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from networks.vamoe import VAMoE
from utils import distributed as dist_utils
from utils.YParams import YParams


def main(batch_path, out_path):
    info = dist_utils.init_distributed()
    torch.manual_seed(0)
    model = VAMoE.from_params(YParams("config/vamoe.yaml", "tiny"))
    ddp = DistributedDataParallel(model)
    batch = torch.load(batch_path, weights_only=True)
    per_rank = batch["x"].shape[0] // info.world_size
    part = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    ddp(batch["x"][part], batch["y"][part]).loss.backward()
    if info.is_main:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out_path)
    dist_utils.cleanup()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
