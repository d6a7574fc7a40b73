"""The GPU machine's tools on the CPU: what gpu_check and the capture probes import without Ray, MLflow,
pydantic, pyjaspar, tangermeme or captum, gpu_check's one line without CUDA, and the process-group end
of a child that times out (the probes and test runs themselves need a GPU: tests/test_gpu.py)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hybridlens.study.capture_check import ROUTES, probe, run_group

ROOT = Path(__file__).resolve().parents[1]
#: What a bare GPU machine has not (README "Checking a GPU machine"): each made unimportable.
ABSENT = ("ray", "mlflow", "pydantic", "pyjaspar", "tangermeme", "captum", "logomaker")


def _without_extras(code: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter where importing any of :data:`ABSENT` fails."""
    block = f"import sys; sys.modules.update(dict.fromkeys({ABSENT!r}))\n"
    return subprocess.run([sys.executable, "-c", block + code, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_what_a_gpu_machine_runs_imports_without_the_study_packages():
    code = (
        "import hybridlens.study.capture_check, hybridlens.study.pack, hybridlens.study.train, hybridlens.models.stacked\n"
        "sys.path.insert(0, 'benchmarks'); import study_throughput, gpu_check\n"
        "import tests.test_gpu\n"
        "print('imported')"
    )
    r = _without_extras(code)
    assert r.returncode == 0 and r.stdout.strip() == "imported", r.stderr[-3000:]


def test_gpu_check_without_cuda_is_one_line_and_exit_0(tmp_path):
    out = tmp_path / "x.json"
    code = "import runpy; sys.argv = ['gpu_check.py', '--out', sys.argv[1]]; runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')"
    r = _without_extras(code, str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(r.stdout.strip().splitlines()) == 1 and r.stdout.startswith("gpu_check: no CUDA device on this machine")
    assert json.loads(out.read_text())["cuda"] is False


def test_a_timed_out_child_takes_its_process_group_with_it(tmp_path):
    """A child that started a grandchild and hangs: past the timeout both are gone (subprocess.run's
    timeout ends the child only, and a grandchild would go on holding the GPU)."""
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(120)\n"
    )
    start = time.monotonic()
    out, err, code_ = run_group([sys.executable, "-c", code], timeout=3)
    assert code_ == -1 and "timed out after 3 s (its process group ended)" in err
    assert time.monotonic() - start < 30
    grandchild = int(pid_file.read_text())
    for _ in range(50):  # reaped by init once killed
        if not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        os.kill(grandchild, 9)
        pytest.fail("the grandchild outlived its group's timeout")


def test_an_unknown_route_is_refused():
    assert ROUTES == ("trainer", "pack")
    with pytest.raises(ValueError, match="unknown route 'stacked'; choose one of trainer, pack"):
        probe("C24", "task1", "stacked")


def test_the_throughput_rows_spend_the_budget_on_the_goal_first():
    """gpu_check's row plan: every row once; the goal architecture's largest packs at every precision
    (bf16 first) before anything else, then its fp32 baselines, the other architectures at fp32 only,
    the goal's small packs at tf32 and bf16 last (a budget that runs out skips what matters least)."""
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import row_plan

    plan = row_plan(["G", "A"], [1, 4, 16, 32], ["fp32", "tf32", "bf16"])
    assert len(plan) == len(set(plan))
    assert plan[:6] == [("G", "pack", s, p) for s in (32, 16) for p in ("bf16", "tf32", "fp32")]
    assert plan[6:10] == [
        ("G", "eager", 2, "fp32"),
        ("G", "graph", 2, "fp32"),
        ("G", "pack", 1, "fp32"),
        ("G", "pack", 4, "fp32"),
    ]
    assert all(p == "fp32" for a, _, _, p in plan if a == "A") and {s for a, k, s, _ in plan if a == "A" and k == "pack"} == {
        1,
        32,
    }
    assert plan[-4:] == [("G", "pack", s, p) for p in ("bf16", "tf32") for s in (1, 4)]


def test_a_probe_whose_process_dies_or_never_starts_is_recorded():
    """Without CUDA every probe's child dies (it cannot put its data on a GPU): each probe is recorded as
    an error with the child's last line, in probe's own fields; past the timeout the rest are 'not run'."""
    from hybridlens.study.capture_check import capture_check

    results = capture_check([("C24", "task1"), ("C24-Att", "task2", "pack", "bf16")], timeout=300)
    assert [(r["architecture"], r["task"], r["route"], r["precision"], r["path"]) for r in results] == [
        ("C24", "task1", "trainer", "fp32", "error"),
        ("C24-Att", "task2", "pack", "bf16", "error"),
    ]
    assert all(r["reason"].startswith("the probe's process ended: ") for r in results)
    assert capture_check([("C24", "task1")], timeout=0) == [
        {
            "architecture": "C24",
            "task": "task1",
            "route": "trainer",
            "precision": "fp32",
            "path": "not run",
            "reason": "out of time",
        }
    ]
