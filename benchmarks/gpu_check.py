"""Check a GPU machine in one command: the GPU tests, which architectures capture as CUDA graphs, and
training throughput.

    pip install --no-deps -e .        # on a machine with torch, numpy, h5py, pandas, scikit-learn,
    python benchmarks/gpu_check.py --out results.json     # pyyaml, typer, numba, matplotlib, pytest

Needs no Ray, MLflow, pydantic, pyjaspar, tangermeme or captum: the data is the planted-k-mer stand-in
with Task 1's shapes (``simulate_planted``: 25,000 sequences, 17,500 training rows, 12 outputs).

1. Every one of the 17 architectures on both tasks: does its training step capture as a CUDA graph, or
   why not (``hybridlens.study.capture_check``: one child process per failure, so one failure cannot
   decide the others).
2. ``pytest -m gpu tests/test_gpu.py`` (every test there needs torch and the models only), in a child
   process, but the all-architectures capture test (part 1 reports the same, per architecture).
3. Trial-epochs/s (training + validation of one cell, batch 100) of C24-Att, C4C6-LSTM-Trans4 and
   C4-Trans4: the one-model trainer eager and with the graph step, and packs of 1, 4, 16 and 32, with
   the ratio to eager, the training path and the peak GPU memory (``benchmarks/study_throughput.py``).

Prints each part as it ends and writes everything to ``--out`` (JSON). Exit code 0 when every test
passed and every architecture captured, 1 otherwise; without a CUDA device, one line and exit 0.
A stage that would start after ``--budget`` seconds is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # study_throughput, beside this file


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    return {
        "device": torch.cuda.get_device_name(0),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run_tests(timeout: float) -> dict:
    """The GPU tests but the all-architectures capture test (part 1 reports the same, per architecture)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfE", "tests/test_gpu.py",
           "--deselect", "tests/test_gpu.py::test_every_architecture_captures_on_both_tasks"]  # fmt: skip
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        out, code = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:
        out, code = (e.stdout or b"").decode() + f"\ntimed out after {timeout:.0f} s", -1
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", out)}
    failed = [ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    return {"exit_code": code, "counts": counts, "failed": failed, "tail": out[-6000:] if code else out[-800:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results here (JSON)")
    ap.add_argument("--budget", type=float, default=480, help="seconds; a stage that would start later is skipped")
    ap.add_argument("--archs", default="C24-Att,C4C6-LSTM-Trans4,C4-Trans4")
    ap.add_argument("--pack-sizes", default="1,4,16,32")
    ap.add_argument("--num-seqs", type=int, default=25_000)
    ap.add_argument("--epochs", type=int, default=1, help="timed epochs per measurement (after one warm-up epoch)")
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args()
    start = time.monotonic()
    results: dict = {"cuda": torch.cuda.is_available()}

    def write() -> None:
        results["seconds"] = round(time.monotonic() - start, 1)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2))

    if not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(f"gpu_check: no CUDA device on this machine (torch {torch.__version__}, {built}); nothing to check")
        write()
        return

    def left() -> float:
        return args.budget - (time.monotonic() - start)

    results["environment"] = env = environment()
    print(
        f"gpu_check on {env['device']} ({env['memory_gib']} GiB, {env['multiprocessors']} SMs); torch {env['torch']}, CUDA {env['cuda']}",
        flush=True,
    )

    from hybridlens.models import ARCHITECTURES
    from hybridlens.study.capture_check import capture_check

    t0 = time.monotonic()
    captures = capture_check([(a, t) for a in ARCHITECTURES for t in ("task1", "task2")], timeout=max(60.0, left()))
    results["captures"] = captures
    by = {(c["architecture"], c["task"]): c for c in captures}
    print(
        f"\n1. CUDA-graph capture, {len(ARCHITECTURES)} architectures (the hybrids and the lab's CNNs) x 2 tasks ({time.monotonic() - t0:.0f} s)"
    )
    for a in ARCHITECTURES:
        cells = [by.get((a, t), {"path": "not probed", "reason": None}) for t in ("task1", "task2")]
        shown = ["captures" if c["path"] == "cuda-graph" else f"{c['path']}: {c['reason']}" for c in cells]
        print(f"   {a:<18} task1 {shown[0]:<10} task2 {shown[1]}")
    write()

    print("\n2. GPU tests (pytest -m gpu tests/test_gpu.py)", flush=True)
    if args.skip_tests:
        results["tests"] = "skipped (--skip-tests)"
        print("   skipped (--skip-tests)")
    elif left() > 60:
        t0 = time.monotonic()
        results["tests"] = tests = run_tests(max(60.0, left() - 150))  # leave time for part 3
        print(f"   {tests['counts']} ({time.monotonic() - t0:.0f} s)")
        for name in tests["failed"]:
            print(f"   FAILED {name}")
        if tests["exit_code"] not in (0,):
            print(tests["tail"])
    else:
        results["tests"] = "skipped: out of time"
        print("   skipped: out of time")
    write()

    from study_throughput import model_rows

    sizes = [int(s) for s in args.pack_sizes.split(",")]
    print(
        f"\n3. trial-epochs/s, Task 1 shapes ({args.num_seqs:,} sequences, batch 100, {args.epochs} timed epoch(s))", flush=True
    )
    if left() > 60:
        t0 = time.monotonic()
        rows = model_rows(
            [(a, "task1") for a in args.archs.split(",")],
            sizes,
            device=torch.device("cuda"),
            num_seqs=args.num_seqs,
            epochs=args.epochs,
            deadline=start + args.budget,
            echo=lambda m: print("   " + m, flush=True),
        )
        results["throughput"] = rows
        print("   peak GPU memory (MiB) and training path:")
        for row in rows:
            for k, v in row.items():
                if isinstance(v, dict) and "rate" in v:
                    print(
                        f"   {row['architecture']:<18} {k:<7} {v['rate']:8.2f} /s {v['ratio']:6.2f}x  {v['peak_mib']:8.0f} MiB  {v['path']}"
                    )
                elif isinstance(v, dict):
                    print(f"   {row['architecture']:<18} {k:<7} skipped: {v['skipped']}")
        print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
    else:
        results["throughput"] = "skipped: out of time"
        print("   skipped: out of time")
    write()

    not_captured = [c for c in captures if c["path"] != "cuda-graph"]
    tests_ok = isinstance(results.get("tests"), dict) and results["tests"]["exit_code"] == 0
    print(
        f"\ngpu_check: {len(captures) - len(not_captured)}/{len(captures)} captured; tests "
        + ("passed" if tests_ok else "NOT all passed" if isinstance(results.get("tests"), dict) else "not run")
        + f"; {time.monotonic() - start:.0f} s"
        + (f"; results in {args.out}" if args.out else "")
    )
    sys.exit(0 if tests_ok and not not_captured else 1)


if __name__ == "__main__":
    main()
