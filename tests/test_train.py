"""The training recipe: learning, reproducibility, resumable state, divergence, plateau and early stopping."""

import math

import pytest
import torch

from hybridlens.models import build
from hybridlens.study.simulate import simulate_task1
from hybridlens.study.train import Diverged, TensorData, TrainConfig, Trainer, seed_everything


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
        TrainConfig(epochs=50, lr=0.0, plateau_patience=1, early_stopping_patience=3, monitor="val_loss"),
    )
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
    assert tr.plateau.step(0.5) == pytest.approx(1e-3)  # sets best
    assert tr.plateau.step(0.4) == pytest.approx(2e-4)  # worse with patience 0: lr * 0.2


class ScriptedTrainer(Trainer):
    """A Trainer whose epochs do not train and whose validation metric follows a script, so the
    schedule and early stopping can be read off against Keras' callbacks for the same sequence."""

    def __init__(self, script, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = script

    def _train_epoch(self):
        return {"train_loss": 0.5, "train_auroc": 0.5, "train_aupr": 0.5}

    def record_epoch(self, train, valid, lr, best_state=None):  # every epoch, alone or in a pack, ends here
        v = self.script[self.epoch]  # the epoch being finished: record_epoch counts it
        return super().record_epoch(train, {"loss": 1 - v, "auroc": v, "aupr": v}, lr, best_state)


def _keras_reference(script, *, lr=1e-3, factor=0.2, patience=4, stop_patience=10, min_delta=1e-4, min_lr=1e-7):
    """Keras 2.x ReduceLROnPlateau + EarlyStopping (mode max, cooldown 0), transcribed from their
    ``on_epoch_end``: the rate used in each epoch, and the epoch after which training stops."""
    rates, best_lr, wait_lr, best_es, wait_es = [], -math.inf, 0, -math.inf, 0
    for epoch, v in enumerate(script, 1):
        rates.append(lr)
        wait_es += 1  # EarlyStopping: min_delta 0
        if v > best_es:
            best_es, wait_es = v, 0
        if v > best_lr + min_delta:  # ReduceLROnPlateau: min_delta 1e-4
            best_lr, wait_lr = v, 0
        else:
            wait_lr += 1
            if wait_lr >= patience:
                lr, wait_lr = max(lr * factor, min_lr), 0
        if wait_es >= stop_patience:
            return rates, epoch
    return rates, len(script)


def _scripted(script, data):
    cfg = TrainConfig(epochs=len(script), monitor="val_auroc", plateau_patience=4, early_stopping_patience=10)
    return ScriptedTrainer(script, build("C24", "task1", "relu", seed=0), data, cfg)


def test_plateau_drops_after_exactly_patience_epochs_as_keras(tiny):
    # Best at epoch 1, then flat.
    script = [0.8] * 30
    tr = _scripted(script, tiny)
    hist = tr.fit()
    rates = [h["lr"] for h in hist]
    assert rates[:5] == pytest.approx([1e-3] * 5)  # epochs 1-5
    assert rates[5:9] == pytest.approx([2e-4] * 4)  # epochs 6-9
    assert rates[9:] == pytest.approx([4e-5] * 2)  # epochs 10-11
    assert len(hist) == 11 and tr.stopped_early and tr.best_epoch == 1
    keras_rates, keras_stop = _keras_reference(script)
    assert rates == pytest.approx(keras_rates) and len(hist) == keras_stop


def test_plateau_counter_restarts_after_improvement(tiny):
    # Improvements at epochs 4 and 13; gains below min_delta (1e-4) at epochs 8 and 15 reset early
    # stopping (Keras' min_delta 0 there) but not the plateau counter.
    script = [0.5, 0.5, 0.5, 0.6, 0.6, 0.6, 0.6, 0.60005, 0.60005, 0.60005, 0.60005, 0.60005, 0.7, 0.7, 0.70002] + [0.70002] * 12
    tr = _scripted(script, tiny)
    hist = tr.fit()
    keras_rates, keras_stop = _keras_reference(script)
    assert [h["lr"] for h in hist] == pytest.approx(keras_rates)
    assert len(hist) == keras_stop == 25  # early stopping counts from epoch 15
    assert hist[8]["lr"] == pytest.approx(2e-4) and hist[12]["lr"] == pytest.approx(4e-5)


def test_plateau_resume_mid_plateau_gives_same_schedule(tiny):
    script = [0.8] * 30
    full = _scripted(script, tiny).fit()
    a = _scripted(script, tiny)
    first = [a.step() for _ in range(7)]  # 2 epochs after the first drop, mid-plateau
    state = a.state_dict()
    b = _scripted(script, tiny)
    b.load_state_dict(state)
    rest = b.fit()
    assert [h["lr"] for h in first + rest] == [h["lr"] for h in full]
    assert len(first + rest) == len(full) == 11


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
