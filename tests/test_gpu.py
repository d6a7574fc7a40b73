"""GPU checks (marked ``gpu``; skipped without CUDA): every model on the device, CPU/GPU agreement,
and the trainer with its data resident on the GPU."""

import math

import numpy as np
import pytest
import torch

from hybridlens.analysis.datasets import Dataset, Split
from hybridlens.models import GRID, build
from hybridlens.study.train import TensorData, TrainConfig, Trainer, seed_everything

pytestmark = pytest.mark.gpu


def _planted_dataset(n=3000, seed=0) -> Dataset:
    """Random one-hot sequences; label 1 when the k-mer ACGTTGCA was planted (three times, in half of them)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 4, (n, 200))
    y = np.zeros((n, 1), np.float32)
    for i in range(0, n, 2):
        for s in rng.choice(np.arange(0, 192, 8), 3, replace=False):
            idx[i, s : s + 8] = [0, 1, 2, 3, 3, 2, 1, 0]
        y[i] = 1
    x = np.eye(4, dtype=np.float32)[idx].transpose(0, 2, 1).copy()
    cut = [int(n * 0.7), int(n * 0.8)]
    parts = [slice(0, cut[0]), slice(cut[0], cut[1]), slice(cut[1], n)]
    return Dataset(*[Split(x[p], y[p], None) for p in parts])


@pytest.mark.parametrize("task", ["task1", "task2"])
@pytest.mark.parametrize("name", list(GRID))
def test_model_on_gpu_matches_cpu(name, task, monkeypatch):
    # cuDNN may use TF32 for LSTMs and convolutions on Ampere and newer (about 1e-3 relative error);
    # full float32 is what makes the comparison with the CPU meaningful.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = build(name, task, "exp", seed=0).eval()
    gpu = build(name, task, "exp", seed=0).cuda().eval()
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (16, 200)), 4).float().transpose(1, 2)
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-4)
    gpu.train()
    gpu(x.cuda()).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters())


@pytest.mark.parametrize("name", ["C24", "C4-Trans2"])
def test_trainer_learns_on_gpu(name):
    data = TensorData(_planted_dataset(), "cuda")
    assert data.splits["train"][0].is_cuda
    seed_everything(0)
    tr = Trainer(build(name, "task2", "relu", seed=0), data, TrainConfig(epochs=10, monitor="val_auroc"))
    hist = tr.fit()
    assert all(math.isfinite(h["train_loss"]) for h in hist)
    assert tr.evaluate("valid")["auroc"] > 0.8


def test_saliency_through_lstm_on_gpu_matches_cpu(monkeypatch):
    """cuDNN refuses the backward pass through an LSTM in eval mode; grad_times_input turns cuDNN
    off for it, and then agrees with the CPU."""
    from hybridlens.analysis.saliency import grad_times_input

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = build("C4-Trans2", "task2", "exp", seed=0).eval()
    gpu = build("C4-Trans2", "task2", "exp", seed=0).cuda().eval()
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (64, 200)), 4).float().transpose(1, 2)
    with pytest.raises(RuntimeError, match="cudnn RNN backward can only be called in training mode"):
        xg = x.cuda().requires_grad_(True)
        torch.autograd.grad(torch.sigmoid(gpu(xg)).sum(), xg)
    np.testing.assert_allclose(grad_times_input(gpu, x), grad_times_input(cpu, x), rtol=1e-3, atol=1e-6)
