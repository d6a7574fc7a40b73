"""Training throughput: the project's Trainer (data resident on the device, index-sliced batches, one
host sync per epoch) against a plain DataLoader loop on the same model, in the same process.

    python benchmarks/train_throughput.py [--arch C24] [--num-seqs 10000 | --data FILE.h5] [--epochs 3] [--device cpu|cuda]

Prints epochs per second for both and their ratio (trainer / DataLoader).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from hybridlens.models import build
from hybridlens.study.train import TensorData, TrainConfig, Trainer, seed_everything


def plain_loop(model, ds, device, epochs: int, batch_size: int = 100) -> float:
    """A textbook loop: DataLoader over CPU tensors, per-batch transfer and loss.item()."""
    loader = DataLoader(
        TensorDataset(torch.as_tensor(ds.train.x), torch.as_tensor(ds.train.y)), batch_size=batch_size, shuffle=True
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.to(device).train()
    start = time.perf_counter()
    for _ in range(epochs):
        total = 0.0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs / (time.perf_counter() - start)


def trainer_loop(model, ds, device, epochs: int) -> float:
    tr = Trainer(model, TensorData(ds, device), TrainConfig(epochs=epochs))
    start = time.perf_counter()
    for _ in range(epochs):
        tr._train_epoch()  # training only, as the plain loop (validation is timed by neither)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return epochs / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="C24")
    ap.add_argument("--num-seqs", type=int, default=10_000, help="Task 1 sequences to simulate")
    ap.add_argument("--data", help="a dataset file to use instead of simulating")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", choices=["trainer", "dataloader"], help="time one loop (e.g. to run several processes on one GPU)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.data:
        from hybridlens.analysis.datasets import load_dataset

        ds = load_dataset(args.data)
    else:
        from hybridlens.study.simulate import simulate_task1

        ds = simulate_task1(num_seqs=args.num_seqs, seed=0)
    results = {}
    loops = (("dataloader", plain_loop), ("trainer", trainer_loop)) * 2
    if args.only:
        loops = [(label, fn) for label, fn in loops if label == args.only]
    for label, fn in loops:
        seed_everything(0)
        model = build(args.arch, "task1", "exp", seed=0, num_outputs=ds.num_outputs).to(device)
        fn(model, ds, device, 1)  # warm-up epoch (allocator, kernels)
        results.setdefault(label.strip(), []).append(fn(model, ds, device, args.epochs))
    print(f"device={device} arch={args.arch} train_seqs={len(ds.train)} threads={torch.get_num_threads()}")
    best = {k: max(v) for k, v in results.items()}
    for k, v in best.items():
        print(f"{k + ':':16s} {v:.3f} epochs/s")
    if len(best) == 2:
        print(f"ratio trainer/dataloader: {best['trainer'] / best['dataloader']:.2f}x")


if __name__ == "__main__":
    main()
