"""Which architectures' training steps capture as CUDA graphs (``benchmarks/gpu_check.py``, the GPU tests),
on both routes a study trains by: the one-model :class:`~hybridlens.study.train.Trainer` (``trainer``:
cuDNN's LSTM, ``nn.Dropout``) and a stacked pack's :class:`~hybridlens.study.pack.PackStep` (``pack``:
two members, relu and exp, the stacked model's own BiLSTM and per-member dropout streams).

A failed capture turns CUDA graphs off for the rest of its process (:mod:`.train_step`), so each probe
runs in a child process (``python -m hybridlens.study.capture_check ARCH:TASK:ROUTE:PRECISION ...``), which prints
one JSON line per probe and stops after the first one that does not capture; :func:`capture_check`
starts a new child for the probes left. Needs torch and the models only (no Ray, MLflow or JASPAR).
"""

from __future__ import annotations

import json
import subprocess
import sys

#: Rows of the probe's data: three full batches of 100 and a smaller last one.
PROBE_ROWS = 350

#: The routes a probe can take: the one-model trainer, or a stacked pack of two members.
ROUTES = ("trainer", "pack")


def probe(architecture: str, task: str, route: str = "trainer", *, batch_size: int = 100, precision: str = "fp32") -> dict:
    """Train ``architecture`` (``task``'s sizes) for one epoch on a small planted dataset on the GPU, by
    ``route`` (:data:`ROUTES`); its training path (``cuda-graph``, or ``cuda-eager`` and why)."""
    import torch

    from hybridlens.models import TASK_SIZES, build
    from hybridlens.study.pack import PackTrainer
    from hybridlens.study.simulate import simulate_planted
    from hybridlens.study.train import TensorData, TrainConfig, Trainer, seed_everything

    if route not in ROUTES:
        raise ValueError(f"unknown route {route!r}; choose one of {', '.join(ROUTES)}")
    rows = int(PROBE_ROWS / 0.7) + 1  # the training split is 70%
    data = TensorData(simulate_planted(num_seqs=rows, num_outputs=TASK_SIZES[task].num_outputs), torch.device("cuda"))
    cfg = TrainConfig(epochs=1, batch_size=batch_size, precision=precision)
    pack = PackTrainer("stacked" if route == "pack" else "sequential")
    for seed, activation in enumerate(("exp", "relu")[: 2 if route == "pack" else 1]):
        seed_everything(seed)
        pack.add(Trainer(build(architecture, task, activation, seed=seed), data, cfg))
    pack.step()
    paths = {m.train_path for m in pack.members}
    (path, reason), *_ = sorted(paths, key=lambda p: p[0] == "cuda-graph")  # a member that did not capture first
    return {"architecture": architecture, "task": task, "route": route, "precision": precision, "path": path, "reason": reason}


def capture_check(probes: list[tuple[str, ...]], *, timeout: float = 600.0) -> list[dict]:
    """:func:`probe` every ``(architecture, task[, route[, precision]])`` (route ``trainer`` and ``fp32``
    where left out) in child processes,
    a new one after each probe that does not capture (or a child that dies: its probe records the
    child's last line). ``timeout``: for all of them (a child still running then is ended, its process
    group with it, and the probes left are recorded as not run)."""
    import time

    results: list[dict] = []
    todo = [(tuple(p) + ("trainer", "fp32")[len(p) - 2 :])[:4] for p in probes]
    deadline = time.monotonic() + timeout
    while todo:
        left = deadline - time.monotonic()
        if left <= 0:
            results += [_record(p, "not run", "out of time") for p in todo]
            break
        args = [":".join(p) for p in todo]
        out, err, code = run_group([sys.executable, "-m", "hybridlens.study.capture_check", *args], timeout=left)
        done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        results += done
        todo = todo[len(done) :]
        if todo and (not done or done[-1]["path"] == "cuda-graph"):  # the child died during the next probe
            last = [ln for ln in err.strip().splitlines() if ln.strip()]
            why = last[-1][:300] if last else f"exit code {code}"
            results.append(_record(todo.pop(0), "error", f"the probe's process ended: {why}"))
    return results


def _record(probe_args: tuple[str, str, str, str], path: str, reason: str) -> dict:
    """A probe's result as :func:`probe` records one, for a probe that could not run or report."""
    architecture, task, route, precision = probe_args
    return {"architecture": architecture, "task": task, "route": route, "precision": precision, "path": path, "reason": reason}


def run_group(cmd: list[str], *, timeout: float, cwd=None) -> tuple[str, str, int]:
    """Run ``cmd`` in a process group of its own; past ``timeout`` seconds end the whole group (its
    children too, which ``subprocess.run``'s timeout leaves running). ``(stdout, stderr, exit code)``,
    the code -1 and stderr ending in a line that says so after a timeout."""
    import os
    import signal

    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return out, err, proc.returncode
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # the group ended between the timeout and the kill
            pass
        out, err = proc.communicate()
        return out, (err or "") + f"\ntimed out after {timeout:.0f} s (its process group ended)", -1


def main(argv: list[str]) -> None:
    for arg in argv:
        architecture, task, route, precision = arg.split(":")
        result = probe(architecture, task, route, precision=precision)
        print(json.dumps(result), flush=True)
        if result["path"] != "cuda-graph":
            return  # graphs are off in this process now: the parent starts a new one


if __name__ == "__main__":
    main(sys.argv[1:])
