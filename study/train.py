"""The training recipe (method.md §2 with SPEC's decisions), as a resumable epoch-by-epoch trainer.

Adam (lr 1e-3, Keras' epsilon 1e-7), batch 100, binary cross-entropy on logits, Keras'
ReduceLROnPlateau (factor 0.2, patience 4, min_lr 1e-7, min_delta 1e-4, cooldown 0; see
:class:`KerasPlateau`) and early stopping (patience 10, always restore the best epoch's weights) on one
validation metric.

The whole dataset lives on the trial's device as tensors; batches are index slices of a per-epoch
permutation. The step (forward, loss, backward, Adam) is :class:`~.train_step.TrainStep`: on a GPU one
CUDA graph replay per batch (``train.cuda_graph``), on the CPU the plain eager loop. Inside the step
loop nothing is copied to the host: the loss and the training logits are accumulated on the device,
AUROC/AUPR are computed there (exactly, or as Keras' 200-threshold AUC with ``auc: keras``), and the
epoch's numbers are read in one host sync per split.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from hybridlens.analysis.classification import AUC_METHODS, auc_torch
from hybridlens.analysis.datasets import Dataset
from hybridlens.analysis.tasks import TASKS
from hybridlens.study.train_step import (
    PRECISIONS,
    TrainStep,
    graphs_disabled,
    make_adam,
    normalise_optimizer,
    precision_problem,
    set_lr,
)

MONITORS = ("val_auroc", "val_aupr", "val_loss")


@dataclass
class TrainConfig:
    """Training hyperparameters; every field is logged as an MLflow param."""

    epochs: int = 100
    batch_size: int = 100
    lr: float = 1e-3
    adam_eps: float = 1e-7
    monitor: str = TASKS["task1"].monitor  # a study sets its task's (analysis.tasks)
    plateau_factor: float = 0.2
    plateau_patience: int = 4
    min_lr: float = 1e-7
    plateau_min_delta: float = 1e-4
    early_stopping_patience: int | None = 10  # None: off
    cuda_graph: bool = True  # replay the training step as a CUDA graph on a GPU (the CPU is always eager)
    precision: str = "fp32"  # fp32, tf32 or bf16 (autocast in the training step); GPU only but fp32 (train_step)
    auc: str = "exact"  # how AUROC/AUPR are computed: exact, or keras (tf.keras.metrics.AUC, as the released code)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.monitor not in MONITORS:
            raise ValueError(f"unknown monitor {self.monitor!r}; choose one of {', '.join(MONITORS)}")
        if self.auc not in AUC_METHODS:
            raise ValueError(f"unknown AUC method {self.auc!r}; choose one of {', '.join(AUC_METHODS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        for k in ("epochs", "batch_size"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")

    @property
    def mode(self) -> str:
        return "min" if self.monitor.endswith("loss") else "max"


class KerasPlateau:
    """Keras' ``ReduceLROnPlateau`` (cooldown 0), the reference's schedule, as a small state machine.

    After each epoch, :meth:`step` compares the monitored value with the best so far: an improvement
    (``value > best + min_delta`` in ``max`` mode, ``value < best - min_delta`` in ``min`` mode) resets
    the wait counter; otherwise the counter grows, and when it reaches ``patience`` the rate is
    multiplied by ``factor`` (not below ``min_lr``) and the counter restarts. So with patience 4 the
    rate drops after exactly the 4th epoch without improvement, and again 4 epochs later. PyTorch's
    ``ReduceLROnPlateau`` drops only when the counter *exceeds* patience: one epoch later than Keras.
    A non-finite value never counts as an improvement.
    """

    def __init__(self, lr: float, *, mode: str, factor: float, patience: int, min_lr: float, min_delta: float):
        if mode not in ("min", "max"):
            raise ValueError(f"unknown mode {mode!r}; choose min or max")
        self.lr, self.mode, self.factor, self.patience = float(lr), mode, factor, patience
        self.min_lr, self.min_delta = min_lr, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.wait = 0

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float) -> float:
        """Record one epoch's monitored value; return the learning rate for the next epoch."""
        if math.isfinite(value) and self._improved(value):
            self.best, self.wait = value, 0
            return self.lr
        self.wait += 1
        if self.wait >= self.patience:
            if self.lr > np.float32(self.min_lr):  # Keras compares against the float32 min_lr
                self.lr = max(self.lr * self.factor, self.min_lr)
            self.wait = 0
        return self.lr

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.best, self.wait = float(state["lr"]), float(state["best"]), int(state["wait"])


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_rng_state(state: torch.Tensor) -> torch.Tensor:
    """A random-number generator state as ``set_state``/``set_rng_state`` take it: a CPU byte tensor
    (``torch.load(..., map_location="cuda")`` moves every tensor of a checkpoint to the GPU, these too)."""
    return state.to(device="cpu", dtype=torch.uint8)


class TensorData:
    """A dataset's splits as float32 tensors on one device: ``x`` ``(N, 4, L)``, ``y`` ``(N, T)``."""

    def __init__(self, dataset: Dataset, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for s in ("train", "valid", "test"):
            sp = dataset.split(s)
            self.splits[s] = (
                torch.as_tensor(sp.x, dtype=torch.float32).to(self.device),
                torch.as_tensor(sp.y, dtype=torch.float32).to(self.device),
            )
        self.num_outputs = dataset.num_outputs


class Trainer:
    """Train ``model`` on ``data`` epoch by epoch; :meth:`state_dict` captures everything needed to
    resume bit for bit on CPU (weights, optimizer, scheduler, best weights, counters, RNG states)."""

    def __init__(self, model: nn.Module, data: TensorData, config: TrainConfig):
        problem = precision_problem(config.precision, data.device)
        if problem:
            raise ValueError(problem)
        self.model = model.to(data.device)
        self.data, self.config = data, config
        self.loss_fn = nn.BCEWithLogitsLoss()
        # on a GPU the step is a CUDA graph: Adam keeps its state and its rate on the device
        self.optimizer = make_adam(
            model.parameters(), lr=config.lr, eps=config.adam_eps, capturable=self._graph_wanted(), device=data.device
        )
        self._train_step: TrainStep | None = None  # built at the first epoch (after any load_state_dict)
        self.plateau = KerasPlateau(
            config.lr,
            mode=config.mode,
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            min_lr=config.min_lr,
            min_delta=config.plateau_min_delta,
        )
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.epoch = 0
        self.best_value: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.stopped_early = False

    def _graph_wanted(self) -> bool:
        """Whether this trainer's step should be a CUDA graph: on a GPU, with ``train.cuda_graph``, in a
        process where no capture has failed."""
        return self.config.cuda_graph and self.data.device.type == "cuda" and graphs_disabled() is None

    # ------------------------------------------------------------------------------------- epochs
    @property
    def train_path(self) -> tuple[str, str | None]:
        """How this trainer trains: ``cuda-graph``, ``cuda-eager`` (with the reason) or ``cpu``
        (:attr:`TrainStep.path`)."""
        return self.train_step().path

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    @property
    def done(self) -> bool:
        return self.stopped_early or self.epoch >= self.config.epochs

    def train_step(self) -> TrainStep:
        """The training step on this trainer's buffers (a CUDA graph on a GPU); see :mod:`.train_step`."""
        if self._train_step is None:
            x, y = self.data.splits["train"]
            self._train_step = TrainStep(
                self.model,
                self.loss_fn,
                self.optimizer,
                x,
                y,
                self.config.batch_size,
                graph=self.config.cuda_graph,
                precision=self.config.precision,
            )
        return self._train_step

    def _train_epoch(self) -> dict[str, float]:
        x, y = self.data.splits["train"]
        n = x.shape[0]
        bs = self.config.batch_size
        self.model.train()
        perm = torch.randperm(n, generator=self.generator).to(x.device)
        step = self.train_step()
        step.begin_epoch()
        for start in range(0, n, bs):
            step(perm[start : start + bs])
        total, logits_all = step.loss_sum, step.logits
        # loss and metrics computed on the device, read in one host sync
        train_loss, auroc, aupr = torch.cat([(total.double() / n).reshape(1), auc_torch(y, logits_all, self.config.auc)]).tolist()
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss is {train_loss} at epoch {self.epoch + 1}")
        return {"train_loss": train_loss, "train_auroc": auroc, "train_aupr": aupr}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Logits ``(N, T)`` in eval mode."""
        self.model.eval()
        return torch.cat([self.model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])

    def evaluate(self, split: str) -> dict[str, float]:
        """Loss, AUROC and AUPR on ``split`` in eval mode."""
        return self.metrics_from(split, self.predict(self.data.splits[split][0]))

    def metrics_from(self, split: str, logits: torch.Tensor) -> dict[str, float]:
        """Loss, AUROC and AUPR of ``logits`` ``(N, T)`` against ``split``'s labels (one host sync)."""
        y = self.data.splits[split][1]
        loss, auroc, aupr = torch.cat(
            [self.loss_fn(logits, y).double().reshape(1), auc_torch(y, logits, self.config.auc)]
        ).tolist()
        return {"loss": loss, "auroc": auroc, "aupr": aupr}

    def _improved(self, value: float) -> bool:
        if self.best_value is None or not math.isfinite(self.best_value):
            return math.isfinite(value)
        return value < self.best_value if self.config.mode == "min" else value > self.best_value

    def step(self) -> dict[str, float]:
        """Train one epoch, validate, update the LR schedule and early stopping.

        Returns the epoch's metrics: ``epoch``, ``train_*``, ``val_*``, ``lr`` (the rate used in this
        epoch) and ``best_epoch``. Raises :class:`Diverged` on a NaN/inf training loss.
        """
        lr = self.lr
        train = self._train_epoch()
        return self.record_epoch(train, self.evaluate("valid"), lr)

    def record_epoch(self, train: dict[str, float], valid: dict[str, float], lr: float, best_state=None) -> dict[str, float]:
        """An epoch trained elsewhere (a pack's stacked step) or by :meth:`step`: count it, and update the
        best epoch, early stopping and the plateau from its ``train`` and ``valid`` metrics (``lr``: the
        rate it trained at). Returns the epoch's metrics, as :meth:`step` does; the model must hold the
        epoch's weights (the best epoch's are copied from it, or taken from ``best_state()``, a copy of
        them made elsewhere)."""
        metrics: dict[str, float] = dict(train)
        self.epoch += 1
        metrics.update({f"val_{k}": v for k, v in valid.items()})
        value = metrics[self.config.monitor]
        if self._improved(value):
            self.best_value, self.best_epoch, self.bad_epochs = value, self.epoch, 0
            self.best_state = best_state() if best_state is not None else copy.deepcopy(self.model.state_dict())
        else:
            self.bad_epochs += 1
            patience = self.config.early_stopping_patience
            if patience is not None and self.bad_epochs >= patience:
                self.stopped_early = True
        set_lr(self.optimizer, self.plateau.step(value))
        metrics.update(epoch=self.epoch, lr=lr, best_epoch=self.best_epoch)
        return metrics

    def restore_best(self) -> None:
        """Load the best epoch's weights (SPEC: always, whether or not early stopping fired)."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def fit(self, callback=None) -> list[dict[str, float]]:
        """Run :meth:`step` until done, then restore the best weights; ``callback(metrics)`` per epoch."""
        history = []
        while not self.done:
            m = self.step()
            history.append(m)
            if callback:
                callback(m)
        self.restore_best()
        return history

    # -------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "plateau": self.plateau.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "config": asdict(self.config),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`, on this trainer's device whatever device wrote it or the
        checkpoint was loaded for (random states are CPU byte tensors, moved back there if need be)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        normalise_optimizer(self.optimizer, capturable=self._graph_wanted(), device=self.data.device)
        self._train_step = None  # a graph would hold the replaced optimizer state: capture again
        self.plateau.load_state_dict(state["plateau"])
        self.generator.set_state(cpu_rng_state(state["generator"]))
        torch.set_rng_state(cpu_rng_state(state["torch_rng"]))
        for k in ("epoch", "best_value", "best_epoch", "best_state", "bad_epochs", "stopped_early"):
            setattr(self, k, state[k])
