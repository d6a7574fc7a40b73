"""Training throughput: the project's Trainer (data resident on the device, index-sliced batches, one
host sync per epoch; on a GPU the CUDA-graph step, and the eager step beside it) against a
well-written DataLoader loop on the same model, in the same process.

    python benchmarks/train_throughput.py [--arch C24] [--num-seqs 10000 | --data FILE.h5] [--epochs 3] [--device cpu|cuda]

Each loop is built once and runs one warm-up epoch before its timed epochs (allocator, cuDNN's
algorithm choice and, for the graph step, the capture stay outside the timed window). The DataLoader
baseline copies pinned batches without blocking and sums the loss on the device (no ``.item()`` per
batch). Prints training epochs per second (best of two rounds) and each loop's ratio to the baseline.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from hybridlens.models import build
from hybridlens.study.train import TensorData, TrainConfig, Trainer, seed_everything


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dataloader_epoch(model, ds, device: torch.device, batch_size: int = 100):
    """One epoch of a textbook loop done well: pinned batches copied without blocking, the loss summed
    on the device; returns the epoch function."""
    cuda = device.type == "cuda"
    loader = DataLoader(
        TensorDataset(torch.as_tensor(ds.train.x), torch.as_tensor(ds.train.y)),
        batch_size=batch_size,
        shuffle=True,
        pin_memory=cuda,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.to(device).train()

    def epoch() -> None:
        total = torch.zeros((), device=device)
        for x, y in loader:
            x, y = x.to(device, non_blocking=cuda), y.to(device, non_blocking=cuda)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(x)

    return epoch


def trainer_epoch(model, ds, device: torch.device, *, graph: bool):
    """One training epoch of the project's Trainer (validation is timed by neither loop)."""
    tr = Trainer(model, TensorData(ds, device), TrainConfig(epochs=10**6, cuda_graph=graph))
    return tr._train_epoch


def rate(epoch, device: torch.device, epochs: int) -> float:
    """Epochs per second of ``epoch()`` over ``epochs`` timed epochs, after one warm-up epoch."""
    epoch()
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    _sync(device)
    return epochs / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="C24")
    ap.add_argument("--num-seqs", type=int, default=10_000, help="Task 1 sequences to simulate")
    ap.add_argument("--data", help="a dataset file to use instead of simulating")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.data:
        from hybridlens.analysis.datasets import load_dataset

        ds = load_dataset(args.data)
    else:
        from hybridlens.study.simulate import simulate_planted

        ds = simulate_planted(num_seqs=args.num_seqs, num_outputs=12, seed=0)
    loops = {
        "dataloader": lambda m: dataloader_epoch(m, ds, device),
        "trainer": lambda m: trainer_epoch(m, ds, device, graph=False),
    }
    if device.type == "cuda":
        loops["trainer (graph)"] = lambda m: trainer_epoch(m, ds, device, graph=True)
    results: dict[str, list[float]] = {}
    for _ in range(2):
        for label, make in loops.items():
            seed_everything(0)
            model = build(args.arch, "task1", "exp", seed=0, num_outputs=ds.num_outputs).to(device)
            results.setdefault(label, []).append(rate(make(model), device, args.epochs))
    print(f"device={device} arch={args.arch} train_seqs={len(ds.train)} threads={torch.get_num_threads()}")
    base = max(results["dataloader"])
    for label, values in results.items():
        print(f"{label + ':':18s} {max(values):8.3f} epochs/s ({max(values) / base:.2f}x the DataLoader loop)")


if __name__ == "__main__":
    main()
