"""A small data-parallel training job: run it with `aigrid submit --gpus 2 examples/train_ddp.py`.

Every replica trains the same model on its shard of a synthetic regression set; DDP averages
the gradients, so all ranks end with identical weights. Runs on real GPUs (nccl) and on
simulated ones (gloo on the CPU) alike.
"""

import argparse

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from jupyter_aigrid import runtime

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--batch-size", type=int, default=64)
args = parser.parse_args()

dist = runtime.init_distributed()
device = runtime.device()
torch.manual_seed(0)  # same data and initial weights on every rank
true_w = torch.randn(16, 1)
x = torch.randn(4096, 16)
data = TensorDataset(x, x @ true_w + 0.01 * torch.randn(4096, 1))
sampler = DistributedSampler(data, num_replicas=runtime.world_size(), rank=runtime.rank())
loader = DataLoader(data, batch_size=args.batch_size, sampler=sampler)

model = DistributedDataParallel(torch.nn.Linear(16, 1).to(device))
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
for epoch in range(args.epochs):
    sampler.set_epoch(epoch)
    total = 0.0
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(xb.to(device)), yb.to(device))
        loss.backward()
        optimizer.step()
        total += loss.item() * len(xb)
    mean = torch.tensor([total / len(sampler)], device=device)
    dist.all_reduce(mean)
    mean = mean.item() / runtime.world_size()
    if runtime.rank() == 0:
        print(f"epoch {epoch}: loss {mean:.5f}", flush=True)
    runtime.report(epoch=epoch, loss=mean)

checksum = sum(p.detach().double().sum().item() for p in model.parameters())
print(f"rank {runtime.rank()} weights checksum {checksum:.12f}", flush=True)
