"""Which architectures' training steps capture as CUDA graphs (``benchmarks/gpu_check.py``, the GPU tests).

A failed capture turns CUDA graphs off for the rest of its process (:mod:`.train_step`), so each probe
runs in a child process (``python -m hybridlens.study.capture_check ARCH:TASK ...``), which prints one
JSON line per probe and stops after the first one that does not capture; :func:`capture_check` starts
a new child for the probes left. Needs torch and the models only (no Ray, MLflow or JASPAR).
"""

from __future__ import annotations

import json
import subprocess
import sys

#: Rows of the probe's data: three full batches of 100 and a smaller last one.
PROBE_ROWS = 350


def probe(architecture: str, task: str, *, batch_size: int = 100) -> dict:
    """Train ``architecture`` (``task``'s sizes) for one epoch on a small planted dataset on the GPU;
    its training path (``cuda-graph``, or ``cuda-eager`` and why)."""
    import torch

    from hybridlens.models import TASK_SIZES, build
    from hybridlens.study.simulate import simulate_planted
    from hybridlens.study.train import TensorData, TrainConfig, Trainer, seed_everything

    seed_everything(0)
    rows = int(PROBE_ROWS / 0.7) + 1  # the training split is 70%
    data = TensorData(simulate_planted(num_seqs=rows, num_outputs=TASK_SIZES[task].num_outputs), torch.device("cuda"))
    trainer = Trainer(build(architecture, task, "exp", seed=0), data, TrainConfig(epochs=1, batch_size=batch_size))
    trainer.step()
    path, reason = trainer.train_path
    return {"architecture": architecture, "task": task, "path": path, "reason": reason}


def capture_check(pairs: list[tuple[str, str]], *, timeout: float = 600.0) -> list[dict]:
    """:func:`probe` every ``(architecture, task)`` in child processes, a new one after each probe that
    does not capture (or a child that dies: its probe records the child's last line)."""
    results: list[dict] = []
    todo = list(pairs)
    while todo:
        args = [f"{a}:{t}" for a, t in todo]
        try:
            r = subprocess.run(
                [sys.executable, "-m", "hybridlens.study.capture_check", *args], capture_output=True, text=True, timeout=timeout
            )
            out, err, code = r.stdout, r.stderr, r.returncode
        except subprocess.TimeoutExpired as e:
            out, err, code = (e.stdout or b"").decode(), f"timed out after {timeout:.0f} s", -1
        done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        results += done
        todo = todo[len(done) :]
        if todo and (not done or done[-1]["path"] == "cuda-graph"):  # the child died during the next probe
            last = [ln for ln in err.strip().splitlines() if ln.strip()]
            a, t = todo.pop(0)
            why = last[-1][:300] if last else f"exit code {code}"
            results.append({"architecture": a, "task": t, "path": "error", "reason": f"the probe's process ended: {why}"})
    return results


def main(argv: list[str]) -> None:
    for arg in argv:
        architecture, task = arg.split(":")
        result = probe(architecture, task)
        print(json.dumps(result), flush=True)
        if result["path"] != "cuda-graph":
            return  # graphs are off in this process now: the parent starts a new one


if __name__ == "__main__":
    main(sys.argv[1:])
