"""Check a GPU machine in one command: which architectures capture as CUDA graphs on both training routes,
the GPU tests, and training throughput by pack size and precision.

    pip install --no-deps --no-build-isolation -e .    # torch >= 2.11, numpy, h5py, pandas, scikit-learn,
    python benchmarks/gpu_check.py --out results.json  # pyyaml, typer, numba, matplotlib, pytest

Needs no Ray, MLflow, pydantic, pyjaspar, tangermeme or captum: the data is the planted-k-mer stand-in
with Task 1's shapes (``simulate_planted``: 25,000 sequences, 17,500 training rows, 12 outputs).

1. CUDA-graph capture on both routes a study trains by (``hybridlens.study.capture_check``; a child
   process per failure, so one failure cannot decide the others): the one-model trainer for every one
   of the 17 hybrids and the lab's CNNs, and a stacked pack of two (``PackStep``) for every hybrid, on
   both tasks (and on Task 1 at bf16: autocast inside the captured step).
2. ``pytest -m gpu tests/test_gpu.py`` in a child process, but the all-architectures capture test
   (part 1 reports the same, per architecture and route).
3. Trial-epochs/s (training + validation of one cell, batch 100), each row in a process of its own (a
   failed capture turns graphs off for its whole process, so it cannot make a later row eager), in the
   order the budget should reach them (:func:`row_plan`): the goal architecture (C4C6-LSTM-Trans4) in
   stacked packs of 32 and 16 at bf16, tf32 and fp32, then eager, with the graph step and in packs of 1
   and 4 at fp32; C24-Att and C4-Trans4 eager, graph and packs of 1 and 32 at fp32; the goal's small
   packs at tf32 and bf16 last. Each row prints its rate, its peak GPU memory and the training path it
   was measured on, then its ratio to the one-model eager trainer.

Every part runs in process groups of its own, ended whole on a timeout. Prints each part as it ends and
writes everything to ``--out`` (JSON). Exit code 0 when every test passed and every probe captured, 1
otherwise; without a CUDA device, one line and exit 0. A part or row that would start after ``--budget``
seconds is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

#: Seconds each part may take at most, of the budget (the throughput part takes what is left, about 210 s
#: of the default 480: a row is a process of its own, 10-20 s).
CAPTURE_SECONDS, TEST_SECONDS = 120.0, 150.0


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


def captures(timeout: float) -> list[dict]:
    from hybridlens.models import ARCHITECTURES, GRID
    from hybridlens.study.capture_check import capture_check

    probes = [(a, t, "trainer", "fp32") for a in ARCHITECTURES for t in ("task1", "task2")]
    probes += [(a, t, "pack", "fp32") for a in GRID for t in ("task1", "task2")]
    probes += [(a, "task1", "pack", "bf16") for a in GRID]  # autocast inside the captured pack step
    return capture_check(probes, timeout=timeout)


def print_captures(results: list[dict], seconds: float) -> None:
    by = {(c["architecture"], c["task"], c["route"], c.get("precision", "fp32")): c for c in results}
    columns = [("task1", "trainer", "fp32"), ("task2", "trainer", "fp32"), ("task1", "pack", "fp32"), ("task2", "pack", "fp32"),
               ("task1", "pack", "bf16")]  # fmt: skip
    print(
        f"\n1. CUDA-graph capture ({seconds:.0f} s): one-model trainer task1, task2; stacked pack of 2 task1, task2, task1 bf16"
    )
    for a in dict.fromkeys(c["architecture"] for c in results):
        cells = []
        for t, route, precision in columns:
            c = by.get((a, t, route, precision))
            cells.append("-" if c is None else "captures" if c["path"] == "cuda-graph" else f"{c['path']}: {c['reason']}")
        print(f"   {a:<18} " + " ".join(f"{c:<9}" for c in cells))


def run_tests(timeout: float) -> dict:
    """The GPU tests but the all-architectures capture test (part 1 reports the same, per architecture)."""
    from hybridlens.study.capture_check import run_group

    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rfE", "tests/test_gpu.py",
           "--deselect", "tests/test_gpu.py::test_every_architecture_captures_on_both_tasks"]  # fmt: skip
    out, err, code = run_group(cmd, timeout=timeout, cwd=ROOT)
    out += err
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", out)}
    failed = [ln.split(" ", 1)[1] for ln in out.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    return {"exit_code": code, "counts": counts, "failed": failed, "tail": out[-6000:] if code else out[-800:]}


def row_plan(archs: list[str], sizes: list[int], precisions: list[str]) -> list[tuple[str, str, int, str]]:
    """``(architecture, kind, size, precision)`` in the order the budget should spend itself on them: the
    first architecture's (the goal's) largest packs at every precision (best first), its eager and
    graph baselines and smaller packs at fp32, then each other architecture eager, graph and its
    smallest and largest pack at fp32, then the goal's smaller packs at the other precisions."""
    goal, big = archs[0], sorted(sizes)[-2:]
    order = sorted(precisions, key=lambda p: ("bf16", "tf32", "fp32").index(p) if p in ("bf16", "tf32", "fp32") else 3)
    rows = [(goal, "pack", s, p) for s in sorted(big, reverse=True) for p in order]
    rows += [(goal, "eager", 2, "fp32"), (goal, "graph", 2, "fp32")]
    rows += [(goal, "pack", s, "fp32") for s in sizes if s not in big]
    for arch in archs[1:]:
        rows += [(arch, "eager", 2, "fp32"), (arch, "graph", 2, "fp32")]
        rows += [(arch, "pack", s, "fp32") for s in dict.fromkeys([min(sizes), max(sizes)])]
    rows += [(goal, "pack", s, p) for p in order if p != "fp32" for s in sizes if s not in big]
    return rows


def throughput(plan, *, num_seqs: int, epochs: int, deadline: float, cache: Path) -> list[dict]:
    """Each row of ``plan`` in a process of its own (``study_throughput.py --row``), printed as it ends."""
    from hybridlens.study.capture_check import run_group

    rows = []
    print(f"   {'model':<18} {'kind':<6} {'size':>4} {'precision':<9} {'rate':>10} {'peak MiB':>9}  training path")
    for arch, kind, size, precision in plan:
        left = deadline - time.monotonic()
        spec = f"{arch}:task1:{kind}:{size}:{precision}"
        if left < 20:
            rows.append({"architecture": arch, "kind": kind, "size": size, "precision": precision, "skipped": "out of time"})
            print(f"   {arch:<18} {kind:<6} {size:>4} {precision:<9} skipped: out of time")
            continue
        cmd = [sys.executable, str(HERE / "study_throughput.py"), "--device", "cuda", "--row", spec, "--num-seqs", str(num_seqs),
               "--epochs", str(epochs), "--data-cache", str(cache)]  # fmt: skip
        out, err, code = run_group(cmd, timeout=min(left, 150.0), cwd=ROOT)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if code != 0 or not lines:
            last = [ln for ln in err.strip().splitlines() if ln.strip()]
            why = last[-1][:300] if last else f"exit code {code}"
            rows.append({"architecture": arch, "kind": kind, "size": size, "precision": precision, "error": why})
            print(f"   {arch:<18} {kind:<6} {size:>4} {precision:<9} failed: {why}")
            continue
        r = json.loads(lines[-1])
        rows.append(r)
        print(
            f"   {arch:<18} {kind:<6} {size:>4} {precision:<9} {r['rate']:8.2f}/s {r['peak_mib']:9.0f}  {r['path']}", flush=True
        )
    eager = {r["architecture"]: r["rate"] for r in rows if r.get("kind") == "eager" and "rate" in r}
    for r in rows:
        if "rate" in r:
            r["ratio"] = r["rate"] / eager[r["architecture"]] if r["architecture"] in eager else float("nan")
    print("   ratio to the one-model trainer, eager, fp32 (a pack's: to as many of them one after another):")
    for r in rows:
        if "rate" in r:
            print(f"   {r['architecture']:<18} {r['kind']:<6} {r['size']:>4} {r['precision']:<9} {r['ratio']:6.2f}x")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results here (JSON)")
    ap.add_argument("--budget", type=float, default=480, help="seconds; a part or row that would start later is skipped")
    ap.add_argument("--archs", default="C4C6-LSTM-Trans4,C24-Att,C4-Trans4", help="the first one gets every precision")
    ap.add_argument("--pack-sizes", default="1,4,16,32")
    ap.add_argument("--precisions", default="fp32,tf32,bf16")
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
    print(f"gpu_check on {env['device']} ({env['memory_gib']} GiB, {env['multiprocessors']} SMs); torch {env['torch']}, CUDA {env['cuda']}",
          flush=True)  # fmt: skip

    t0 = time.monotonic()
    results["captures"] = caught = captures(timeout=min(CAPTURE_SECONDS, max(30.0, left() - 60)))
    print_captures(caught, time.monotonic() - t0)
    write()

    print("\n2. GPU tests (pytest -m gpu tests/test_gpu.py)", flush=True)
    if args.skip_tests:
        results["tests"] = "skipped (--skip-tests)"
    elif left() > 90:
        t0 = time.monotonic()
        results["tests"] = tests = run_tests(min(TEST_SECONDS, left() - 60))  # leave time for part 3
        print(f"   {tests['counts']} ({time.monotonic() - t0:.0f} s)")
        for name in tests["failed"]:
            print(f"   FAILED {name}")
        if tests["exit_code"] != 0:
            print(tests["tail"])
    else:
        results["tests"] = "skipped: out of time"
    if not isinstance(results["tests"], dict):
        print(f"   {results['tests']}")
    write()

    sizes = [int(s) for s in args.pack_sizes.split(",")]
    plan = row_plan(args.archs.split(","), sizes, args.precisions.split(","))
    print(f"\n3. trial-epochs/s, Task 1 shapes ({args.num_seqs:,} sequences, batch 100, {args.epochs} timed epoch(s)), a process per row",
          flush=True)  # fmt: skip
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-data-") as cache:
        results["throughput"] = rows = throughput(
            plan, num_seqs=args.num_seqs, epochs=args.epochs, deadline=start + args.budget, cache=Path(cache)
        )
    print(f"   ({time.monotonic() - t0:.0f} s)", flush=True)
    write()

    not_captured = [c for c in caught if c["path"] != "cuda-graph"]
    tests_ok = isinstance(results.get("tests"), dict) and results["tests"]["exit_code"] == 0
    measured = [r for r in rows if "rate" in r and r["kind"] == "pack" and r["architecture"] == plan[0][0]]  # the goal's
    best = max(measured, key=lambda r: r["rate"], default=None)
    print(
        f"\ngpu_check: {len(caught) - len(not_captured)}/{len(caught)} probes captured; tests "
        + ("passed" if tests_ok else "NOT all passed" if isinstance(results.get("tests"), dict) else "not run")
        + (
            f"; best pack {best['rate']:.1f} trial-epochs/s ({best['architecture']}, {best['size']} members, {best['precision']}, "
            f"{best['path']})"
            if best
            else ""
        )  # fmt: skip
        + f"; {time.monotonic() - start:.0f} s"
        + (f"; results in {args.out}" if args.out else "")
    )
    sys.exit(0 if tests_ok and not not_captured else 1)


if __name__ == "__main__":
    main()
