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


# ----------------------------------------------------------------------------- the CUDA-graph step
def _twin_steps(name, data, *, graph_a, graph_b):
    """Two identical models (dropout off, so no random stream is involved) with capturable Adam."""
    from hybridlens.study.train_step import TrainStep, make_adam

    x, y = data.splits["train"]
    steps = []
    for graph in (graph_a, graph_b):
        model = build(name, "task2", "relu", seed=0).cuda().train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        opt = make_adam(model.parameters(), lr=1e-3, eps=1e-7, capturable=True, device=x.device)
        steps.append(TrainStep(model, torch.nn.BCEWithLogitsLoss(), opt, x, y, 100, graph=graph))
    return steps


@pytest.mark.parametrize("name", ["C24-Att", "C4C6-LSTM-Trans4", "C4-Trans4"])
def test_graph_step_matches_eager_for_20_steps(name, monkeypatch):
    """Same losses within 1e-4 for 20 steps (one of them a smaller, eager batch), TF32 off."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    data = TensorData(_planted_dataset(), "cuda")
    graph, eager = _twin_steps(name, data, graph_a=True, graph_b=False)
    n = data.splits["train"][0].shape[0]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0)).cuda()
    losses = {"graph": [], "eager": []}
    for i in range(20):
        size = 37 if i == 10 else 100
        idx = order[i * 100 : i * 100 + size]
        for key, step in (("graph", graph), ("eager", eager)):
            step.begin_epoch()
            step(idx)
            losses[key].append(float(step.loss_sum) / size)
    assert graph.uses_graph and not eager.uses_graph
    np.testing.assert_allclose(losses["graph"], losses["eager"], rtol=0, atol=1e-4)
    assert losses["graph"][-1] < losses["graph"][0]


def test_graph_step_reads_the_rate_from_the_device_tensor():
    """The plateau's new rate reaches the captured graph without recapture: at rate 0 a replay leaves
    the weights where they were."""
    from hybridlens.study.train_step import set_lr

    data = TensorData(_planted_dataset(), "cuda")
    (step,) = _twin_steps("C24", data, graph_a=True, graph_b=True)[:1]
    idx = torch.arange(100, device="cuda")
    step(idx)
    assert step.uses_graph
    before = [p.detach().clone() for p in step.model.parameters()]
    set_lr(step.optimizer, 0.0)
    step(idx + 100)
    assert all(torch.equal(a, b) for a, b in zip(before, step.model.parameters()))
    set_lr(step.optimizer, 1e-3)
    step(idx + 200)
    assert not all(torch.equal(a, b) for a, b in zip(before, step.model.parameters()))


class _Syncs(torch.nn.Module):
    """A model that reads a value back to the host in its forward pass: CUDA graphs cannot record that."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(800, 1)

    def forward(self, x):
        out = self.lin(x.flatten(1))
        if out.sum().item() > 1e30:  # a host sync
            out = out * 0
        return out


def test_capture_failure_falls_back_to_eager_with_one_line(caplog):
    data = TensorData(_planted_dataset(), "cuda")
    tr = Trainer(_Syncs(), data, TrainConfig(epochs=2, monitor="val_auroc"))
    with caplog.at_level("WARNING"):
        hist = tr.fit()
    warnings = [r for r in caplog.records if "CUDA graph capture failed" in r.getMessage()]
    assert len(warnings) == 1 and "training this model eagerly" in warnings[0].getMessage()
    assert not tr.train_step().uses_graph
    assert all(math.isfinite(h["train_loss"]) for h in hist)


def test_pack_learns_on_gpu_with_graphs():
    from hybridlens.study.pack import PackTrainer

    data = TensorData(_planted_dataset(), "cuda")
    pack = PackTrainer()
    for seed, name in enumerate(["C24", "C4-Trans2", "C24-LSTM-Att"]):
        seed_everything(seed)
        pack.add(Trainer(build(name, "task2", "relu", seed=seed), data, TrainConfig(epochs=8, seed=seed, monitor="val_auroc")))
    while not pack.done:
        pack.step()
    for m in pack.members:
        assert m.trainer.train_step().uses_graph
        assert m.diverged is None
        assert m.trainer.evaluate("valid")["auroc"] > 0.8
