"""Study throughput, in trial-epochs per second (one epoch of one grid cell: training and validation),
in one process on one device.

    python benchmarks/study_throughput.py [--device cpu|cuda] [--num-seqs 25000] [--pack-sizes 1,5,10,20]
        [--archs C24-Att,C4C6-LSTM-Trans4,C4-Trans4] [--task2-arch C4C6-LSTM-Att] [--epochs 2]
    python benchmarks/study_throughput.py --study configs/quick.yaml [--models-per-trial 1,4]

Model mode: (i) the one-model Trainer in eager mode, as a trial ran before packs and graphs, then the
one-model Trainer with the CUDA-graph step, then (ii) PackTrainer (graph steps) at each pack size, for each architecture (Task 1 shapes) and one Task 2 model, printing each one's ratio to (i).
Study mode: the wall time of a real ``hybridlens study CONFIG --no-analyze`` in a temporary workdir at
each ``resources.models_per_trial``, and the ratio to the first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from hybridlens.models import build
from hybridlens.study.pack import PackTrainer
from hybridlens.study.simulate import simulate
from hybridlens.study.train import TensorData, TrainConfig, Trainer, seed_everything


def _trainer(arch: str, task: str, data: TensorData, seed: int, *, graph: bool = True) -> Trainer:
    seed_everything(seed)
    cfg = TrainConfig(epochs=10**6, seed=seed, cuda_graph=graph)
    return Trainer(build(arch, task, "exp" if seed % 2 else "relu", seed=seed), data, cfg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(step, device: torch.device, epochs: int, cells: int) -> float:
    """Trial-epochs/s of ``step`` (one epoch of ``cells`` cells), after one warm-up epoch."""
    step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(epochs):
        step()
    _sync(device)
    return cells * epochs / (time.perf_counter() - start)


def one_model(arch: str, task: str, data: TensorData, epochs: int, *, graph: bool) -> float:
    """Trial-epochs/s of the one-model Trainer, eager (as a trial ran before this work) or with the graph step."""
    return _rate(_trainer(arch, task, data, 0, graph=graph).step, data.device, epochs, 1)


def pack(arch: str, task: str, data: TensorData, epochs: int, size: int) -> float:
    """Trial-epochs/s of a PackTrainer of ``size`` members."""
    p = PackTrainer()
    for seed in range(size):
        p.add(_trainer(arch, task, data, seed))
    return _rate(p.step, data.device, epochs, size)


def models(args) -> None:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    sizes = [int(s) for s in args.pack_sizes.split(",")]
    print(f"device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    rows = [(a, "task1") for a in args.archs.split(",")] + ([(args.task2_arch, "task2")] if args.task2_arch else [])
    datasets = {}
    print(f"{'model':<22} {'task':<6} {'eager':>10} {'graph':>16} " + " ".join(f"{'pack ' + str(s):>16}" for s in sizes))
    for arch, task in rows:
        if task not in datasets:
            n = args.num_seqs if task == "task1" else args.num_seqs - args.num_seqs % 2
            datasets[task] = TensorData(simulate(task, num_seqs=n), device)
        base = one_model(arch, task, datasets[task], args.epochs, graph=False)
        graph = one_model(arch, task, datasets[task], args.epochs, graph=True)
        cells = [f"{graph:8.2f} ({graph / base:4.2f}x)"]
        for s in sizes:
            rate = pack(arch, task, datasets[task], args.epochs, s)
            cells.append(f"{rate:8.2f} ({rate / base:4.2f}x)")
        print(f"{arch:<22} {task:<6} {base:10.2f} " + " ".join(f"{c:>16}" for c in cells), flush=True)
    print(
        "trial-epochs/s (one epoch of one cell, training + validation); eager = the one-model trainer without"
        " the CUDA-graph step (a trial before issue 12); (Nx) = ratio to it. On a CPU every column is eager."
    )


def study(args) -> None:
    raw = yaml.safe_load(Path(args.study).read_text())
    times = []
    for n in [int(x) for x in args.models_per_trial.split(",")]:
        raw.setdefault("resources", {})["models_per_trial"] = n
        with tempfile.TemporaryDirectory(prefix="hybridlens-bench-") as tmp:
            cfg = Path(tmp) / "study.yaml"
            cfg.write_text(yaml.safe_dump(raw))
            start = time.perf_counter()
            cmd = [
                sys.executable,
                "-m",
                "hybridlens.study.cli",
                "study",
                str(cfg),
                "--workdir",
                str(Path(tmp) / "w"),
                "--no-analyze",
            ]
            r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
            secs = time.perf_counter() - start
            if r.returncode != 0:
                raise SystemExit(f"study failed (models_per_trial {n}):\n{r.stderr[-2000:]}")
        times.append(secs)
        print(f"{args.study} models_per_trial {n}: {secs:.0f} s wall ({times[0] / secs:.2f}x the first)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--num-seqs", type=int, default=25_000)
    ap.add_argument("--pack-sizes", default="1,5,10,20")
    ap.add_argument("--archs", default="C24-Att,C4C6-LSTM-Trans4,C4-Trans4")
    ap.add_argument("--task2-arch", default="C4C6-LSTM-Att")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--study", help="time a real study on this config instead")
    ap.add_argument("--models-per-trial", default="1,4")
    args = ap.parse_args()
    study(args) if args.study else models(args)


if __name__ == "__main__":
    main()
