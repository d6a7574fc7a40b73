"""The training recipe: learning, reproducibility, resumable state, divergence, plateau and early stopping."""

import math

import pytest
import torch

from models import build
from study.simulate import simulate_task1
from study.train import Diverged, TensorData, TrainConfig, Trainer, seed_everything


@pytest.fixture(scope="module")
def tiny():
    return TensorData(simulate_task1(num_seqs=600, seed=11))


def _run(data, epochs=3, name="C24", **cfg):
    seed_everything(5)
    tr = Trainer(build(name, "task1", "exp", seed=5), data, TrainConfig(epochs=epochs, seed=5, **cfg))
    return tr, tr.fit()


def test_same_seed_same_metrics_on_cpu(tiny):
    _, h1 = _run(tiny)
    _, h2 = _run(tiny)
    assert h1 == h2
    assert [m["epoch"] for m in h1] == [1, 2, 3]
    for key in ("train_loss", "train_auroc", "train_aupr", "val_loss", "val_auroc", "val_aupr", "lr"):
        assert math.isfinite(h1[-1][key])


def test_resume_from_state_equals_uninterrupted(tiny):
    _, full = _run(tiny, epochs=4, name="C4C6-Att")
    seed_everything(5)
    a = Trainer(build("C4C6-Att", "task1", "exp", seed=5), tiny, TrainConfig(epochs=4, seed=5))
    first = [a.step(), a.step()]
    state = a.state_dict()
    torch.manual_seed(999)  # disturb the global RNG, as a new worker process would
    b = Trainer(build("C4C6-Att", "task1", "exp", seed=0), tiny, TrainConfig(epochs=4, seed=5))
    b.load_state_dict(state)
    rest = [b.step(), b.step()]
    assert first + rest == full


def test_nan_loss_raises_diverged(tiny):
    tr = Trainer(build("C24", "task1", "exp", seed=0), tiny, TrainConfig(epochs=2, lr=1e4))
    with pytest.raises(Diverged, match="training loss is nan at epoch 1"):
        tr.step()


def test_plateau_and_early_stopping_restore_best(tiny):
    # lr 0 and frozen batch-norm statistics: every epoch's validation metrics equal epoch 1's, which
    # stays the best (improvement must be strict), so early stopping fires after its patience.
    seed_everything(0)
    tr = Trainer(
        build("C24", "task1", "relu", seed=0),
        tiny,
        TrainConfig(epochs=50, lr=1e-3, plateau_patience=1, early_stopping_patience=3, monitor="val_loss"),
    )
    for g in tr.optimizer.param_groups:
        g["lr"] = 0.0
    for m in tr.model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.momentum = 0.0
    hist = tr.fit()
    assert len({h["val_loss"] for h in hist}) == 1
    assert tr.stopped_early and len(hist) == 4  # epoch 1 best, then 3 bad epochs
    assert tr.best_epoch == 1
    assert tr.evaluate("valid")["loss"] == pytest.approx(hist[0]["val_loss"], rel=1e-6)


def test_reduce_on_plateau_factor():
    seed_everything(0)
    data = TensorData(simulate_task1(num_seqs=200, seed=1))
    tr = Trainer(build("C24", "task1", "relu", seed=0), data, TrainConfig(epochs=3, plateau_patience=0))
    tr.scheduler.step(0.5)  # sets best
    tr.scheduler.step(0.4)  # worse with patience 0: lr * 0.2
    assert tr.lr == pytest.approx(2e-4)


def test_unknown_monitor():
    with pytest.raises(ValueError, match="unknown monitor 'val_acc'; choose one of val_auroc"):
        TrainConfig(monitor="val_acc")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["C24", "C4C6"])
def test_models_learn_task1(name):
    """C24 and C4C6 (exp) on a small Task 1 dataset reach a validation AUROC clearly above chance."""
    torch.set_num_threads(2)
    data = TensorData(simulate_task1(num_seqs=10000, seed=7))
    seed_everything(0)
    tr = Trainer(build(name, "task1", "exp", seed=0), data, TrainConfig(epochs=20, seed=0))
    tr.fit()
    auroc = tr.evaluate("valid")["auroc"]
    print(f"{name}: val AUROC {auroc:.3f} after 20 epochs")
    assert auroc > 0.7
