"""A training job that checkpoints and resumes exactly where it was.

    aigrid submit --gpus 2 examples/train_resume.py -- --steps 200 --out /tmp/run

Fixed seeds and deterministic algorithms; dropout draws from torch's RNG and the batches from
a resumable sampler, so a run that is migrated, preempted or killed mid-way computes the same
losses at every step, and the same final weights, as one that never stops. Each step's loss
goes to ``<out>/losses-<rank>.jsonl`` (exact, as float.hex); rank 0 saves the final weights to
``<out>/final.pt``. ``--state-mb`` adds that much extra state to each checkpoint.
"""

import argparse
import json
import os
import time

import torch

from jupyter_aigrid import runtime

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step, to watch it")
parser.add_argument("--out", default=".")
parser.add_argument("--state-mb", type=float, default=0.0)
parser.add_argument("--batch-size", type=int, default=16)
args = parser.parse_args()

torch.use_deterministic_algorithms(True)
torch.manual_seed(0)  # the same data and initial weights on every rank
dist = runtime.init_distributed() if runtime.world_size() > 1 else None
device = runtime.device()
generator = torch.Generator().manual_seed(1234)
x = torch.randn(512, 16, generator=generator)
y = x.sum(1, keepdim=True) + 0.1 * torch.randn(512, 1, generator=generator)
model = torch.nn.Sequential(
    torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 1)
).to(device)
if dist is not None:
    model = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
sampler = runtime.ResumableSampler(len(x), seed=7)

step = 0
state = runtime.restore()
if state is not None:
    step = runtime.resume(state, model=model, optimizer=optimizer, sampler=sampler)["step"]
    ballast = state["extra"].get("ballast")
    print(f"rank {runtime.rank()} resumed at step {step}", flush=True)
else:
    ballast = torch.ones(int(args.state_mb * 2**20) // 4) if args.state_mb else None

os.makedirs(args.out, exist_ok=True)
losses = open(os.path.join(args.out, f"losses-{runtime.rank()}.jsonl"), "a")  # noqa: SIM115


def indices():
    """The sampler's indices, epoch after epoch (each epoch resumes at its position)."""
    while True:
        yield from sampler


stream = indices()

while step < args.steps:
    index = [next(stream) for _ in range(args.batch_size)]
    loss = torch.nn.functional.mse_loss(model(x[index].to(device)), y[index].to(device))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.write(json.dumps({"step": step, "loss": loss.item().hex()}) + "\n")
    losses.flush()
    step += 1
    if runtime.should_checkpoint():
        runtime.checkpoint(
            runtime.capture(
                model=model, optimizer=optimizer, step=step, sampler=sampler, ballast=ballast
            )
        )
    time.sleep(args.sleep)

if runtime.rank() == 0:
    torch.save(model.state_dict(), os.path.join(args.out, "final.pt"))
print(f"rank {runtime.rank()} done at step {step}", flush=True)
