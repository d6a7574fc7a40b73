"""Study throughput, in trial-epochs per second (one epoch of one grid cell: training and validation),
in one process on one device.

    python benchmarks/study_throughput.py [--device cpu|cuda] [--num-seqs 25000] [--pack-sizes 1,4,16,32]
        [--archs C24-Att,C4C6-LSTM-Trans4,C4-Trans4] [--task2-arch C4C6-LSTM-Att] [--epochs 2]
    python benchmarks/study_throughput.py --study configs/quick.yaml [--models-per-trial 1,4]
    python benchmarks/study_throughput.py --row C4C6-LSTM-Trans4:task1:pack:16:bf16   # one row, one JSON line

Model mode: (i) the one-model Trainer in eager mode, as a trial ran before packs and graphs, then the
one-model Trainer with the CUDA-graph step, then (ii) PackTrainer at each pack size, for each
architecture (Task 1 shapes) and one Task 2 model, printing each one's ratio to (i), its training path
and, on a GPU, its peak memory. The data is a planted-k-mer stand-in with the task's shapes
(``simulate_planted``: no JASPAR needed; throughput depends on shapes, not on which motifs). Only the
epochs a member really trained count (a diverged or stopped member's do not).
Study mode: the wall time of a real ``hybridlens study CONFIG --no-analyze`` in a temporary workdir at
each ``resources.models_per_trial``, and the ratio to the first.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from hybridlens.models import TASK_SIZES, build
from hybridlens.study.pack import PackTrainer
from hybridlens.study.simulate import simulate_planted
from hybridlens.study.train import TensorData, TrainConfig, Trainer, seed_everything


def _trainer(arch: str, task: str, data: TensorData, seed: int, *, graph: bool = True, precision: str = "fp32") -> Trainer:
    seed_everything(seed)
    cfg = TrainConfig(epochs=10**6, seed=seed, cuda_graph=graph, early_stopping_patience=None, precision=precision)
    return Trainer(build(arch, task, "exp" if seed % 2 else "relu", seed=seed), data, cfg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def task_data(task: str, num_seqs: int, device: torch.device, cache: Path | None = None) -> TensorData:
    """The planted stand-in with ``task``'s shapes (Task 2: an even number of sequences), on ``device``;
    with ``cache`` (a folder), simulated once and read back by later processes."""
    n = num_seqs if task == "task1" else num_seqs - num_seqs % 2
    path = cache / f"{task}-{n}.pt" if cache is not None else None
    if path is not None and path.exists():
        data = TensorData.__new__(TensorData)
        saved = torch.load(path, weights_only=True)
        data.device, data.num_outputs = device, saved["num_outputs"]
        data.splits = {k: (x.to(device), y.to(device)) for k, (x, y) in saved["splits"].items()}
        return data
    data = TensorData(simulate_planted(num_seqs=n, num_outputs=TASK_SIZES[task].num_outputs), device)
    if path is not None:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save({"num_outputs": data.num_outputs, "splits": {k: (x.cpu(), y.cpu()) for k, (x, y) in data.splits.items()}}, tmp)
        tmp.replace(path)
    return data


def measure(step, device: torch.device, epochs: int) -> float:
    """Trial-epochs/s of ``step`` (one epoch; it returns how many trial-epochs it trained), after one
    warm-up epoch (capture, allocator, cuDNN's algorithm choice)."""
    step()
    _sync(device)
    start = time.perf_counter()
    done = sum(step() for _ in range(epochs))
    _sync(device)
    return done / (time.perf_counter() - start)


def _timed(make, device: torch.device, epochs: int) -> dict:
    """``make()`` -> (step, trainers): the rate, the trainers' training paths and the peak GPU memory."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step, trainers = make()
    rate = measure(step, device, epochs)
    paths = sorted({"%s (%s)" % p if p[1] else p[0] for p in (t.train_path for t in trainers)})  # trainers or pack members
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"rate": rate, "path": "; ".join(paths), "peak_mib": peak}


def one_model(arch: str, task: str, data: TensorData, epochs: int, *, graph: bool, precision: str = "fp32") -> dict:
    """One-model Trainers, eager (as a trial ran before this work) or with the graph step: a relu and an
    exp cell, one after another (a pack's members are half relu, half exp)."""

    def make():
        trainers = [_trainer(arch, task, data, seed, graph=graph, precision=precision) for seed in (0, 1)]

        def step() -> int:
            for tr in trainers:
                tr.step()
            return len(trainers)

        return step, trainers

    return _timed(make, data.device, epochs)


def pack(arch: str, task: str, data: TensorData, epochs: int, size: int, precision: str = "fp32") -> dict:
    """A PackTrainer of ``size`` members, stacked (a pack of one too); only the members that trained an
    epoch count."""

    def make():
        p = PackTrainer("stacked")
        for seed in range(size):
            p.add(_trainer(arch, task, data, seed, precision=precision))
        return (lambda: sum(isinstance(r, dict) for r in p.step())), p.members

    return _timed(make, data.device, epochs)


def model_rows(
    archs: list[tuple[str, str]],
    sizes: list[int],
    *,
    device: torch.device,
    num_seqs: int,
    epochs: int,
    deadline: float | None = None,
    echo=print,
):
    """Every (architecture, task): eager, graph and pack results, each a dict with ``rate`` (trial-epochs/s),
    ``ratio`` (to eager), ``path`` and ``peak_mib``; printed as a table while measured. A measurement
    that would start after ``deadline`` (``time.monotonic()``) is skipped: ``{"skipped": "out of time"}``."""
    datasets: dict[str, TensorData] = {}
    rows = []
    skipped = {"skipped": "out of time"}
    echo(f"{'model':<22} {'task':<6} {'eager':>10} {'graph':>16} " + " ".join(f"{'pack ' + str(s):>16}" for s in sizes))

    def timed(measure, *args, **kwargs):
        return skipped if deadline is not None and time.monotonic() > deadline else measure(*args, **kwargs)

    for arch, task in archs:
        if task not in datasets:
            datasets[task] = task_data(task, num_seqs, device)
        data = datasets[task]
        row = {"architecture": arch, "task": task, "eager": timed(one_model, arch, task, data, epochs, graph=False)}
        row["graph"] = timed(one_model, arch, task, data, epochs, graph=True)
        for s in sizes:
            row[f"pack{s}"] = timed(pack, arch, task, data, epochs, s)
        base = row["eager"].get("rate")
        for k, v in row.items():
            if isinstance(v, dict) and "rate" in v:
                v["ratio"] = v["rate"] / base if base else float("nan")
        cells = [
            f"{row[k]['rate']:8.2f} ({row[k]['ratio']:4.2f}x)" if "rate" in row[k] else "skipped"
            for k in ["graph"] + [f"pack{s}" for s in sizes]
        ]
        echo(f"{arch:<22} {task:<6} {base if base else float('nan'):10.2f} " + " ".join(f"{c:>16}" for c in cells))
        rows.append(row)
    return rows


#: A measurement in a process of its own (``--row``): ``ARCH:TASK:KIND:SIZE:PRECISION``, KIND one of
#: ``eager``, ``graph`` (one-model trainers; SIZE 2, a relu and an exp cell) or ``pack`` (SIZE members).
ROW_KINDS = ("eager", "graph", "pack")


def row(spec: str, *, device: torch.device, num_seqs: int, epochs: int, cache: Path | None = None) -> dict:
    """One measurement (:data:`ROW_KINDS`) as a dict: the spec's fields and ``rate``, ``path``, ``peak_mib``."""
    arch, task, kind, size, precision = spec.split(":")
    if kind not in ROW_KINDS:
        raise SystemExit(f"--row: unknown kind {kind!r}; choose one of {', '.join(ROW_KINDS)}")
    data = task_data(task, num_seqs, device, cache)
    if kind == "pack":
        result = pack(arch, task, data, epochs, int(size), precision)
    else:
        result = one_model(arch, task, data, epochs, graph=kind == "graph", precision=precision)
    return {"architecture": arch, "task": task, "kind": kind, "size": int(size), "precision": precision, **result}


def models(args) -> None:
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    sizes = [int(s) for s in args.pack_sizes.split(",")]
    print(f"device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    archs = [(a, "task1") for a in args.archs.split(",")] + ([(args.task2_arch, "task2")] if args.task2_arch else [])
    rows = model_rows(archs, sizes, device=device, num_seqs=args.num_seqs, epochs=args.epochs)
    print(
        "trial-epochs/s (one epoch of one cell, training + validation); eager = the one-model trainer without"
        " the CUDA-graph step (a trial before issue 12); (Nx) = ratio to it, so a pack's ratio compares it with"
        " as many one-model trainers run one after another; packs are stacked (one module for all members)."
    )
    for row in rows:
        paths = sorted({v["path"] for v in row.values() if isinstance(v, dict)})
        print(f"  {row['architecture']} {row['task']}: training paths {', '.join(paths)}")


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
    ap.add_argument("--pack-sizes", default="1,4,16,32")
    ap.add_argument("--archs", default="C24-Att,C4C6-LSTM-Trans4,C4-Trans4")
    ap.add_argument("--task2-arch", default="C4C6-LSTM-Att")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--study", help="time a real study on this config instead")
    ap.add_argument("--models-per-trial", default="1,4")
    ap.add_argument("--row", help="one measurement, ARCH:TASK:KIND:SIZE:PRECISION, printed as one JSON line (gpu_check)")
    ap.add_argument("--data-cache", type=Path, help="a folder where the planted data is simulated once for --row runs")
    args = ap.parse_args()
    if args.row:
        device = torch.device(args.device)
        print(
            json.dumps(row(args.row, device=device, num_seqs=args.num_seqs, epochs=args.epochs, cache=args.data_cache)),
            flush=True,
        )
    else:
        study(args) if args.study else models(args)


if __name__ == "__main__":
    main()
