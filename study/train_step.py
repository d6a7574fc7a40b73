"""The training step (forward, loss, backward, Adam) on fixed buffers, replayed as one CUDA graph on a GPU.

These models are launch-bound: a batch-100 step of the heaviest one is a few hundred small kernels,
and in eager mode the host spends longer launching them than the GPU spends running them. Captured
once as a CUDA graph (``torch.cuda.graph``), the whole step is one launch (SPEC.md "Throughput").

What makes the graph replayable:

- **Static inputs.** The training split stays on the device; the only per-step input is the batch's
  row indices, copied into a fixed ``(batch_size,)`` index buffer before each replay. The step gathers
  its batch with ``index_select`` inside the graph.
- **A capturable optimizer** (``Adam(capturable=True)``) whose learning rate is a 0-d device tensor: the
  Keras plateau writes the new rate into it in place (:func:`set_lr`), so a rate drop needs no recapture.
- **Epoch accumulators in the graph**: the loss sum and the training logits (scattered to their rows)
  are written by the graph itself; the epoch's metrics are read once at its end.
- **Warm-up undone.** PyTorch asks for a few eager iterations on a side stream before capture (they
  allocate the optimizer state and pick the cuDNN algorithms). They change the weights, the Adam
  moments, BatchNorm statistics and the random stream; all of that is put back in place afterwards, so
  the first replayed step is the step the eager trainer would take.
- **The last, smaller batch** of an epoch runs eagerly on the same parameters, optimizer and
  accumulators: it is trained, never dropped.

If capture fails (an operation CUDA graphs cannot record, an old driver), the step says so in one log
line and runs eagerly from then on. On the CPU there is nothing to capture: the step is eager, and it
is exactly the loop the trainer always ran (same operations, same order).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Eager iterations on a side stream before capture (PyTorch's whole-network capture example uses 3).
WARMUP_STEPS = 3


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate, in place where it is a device tensor (a captured graph reads
    the tensor's memory, so the tensor must stay the same object)."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def make_adam(params, *, lr: float, eps: float, capturable: bool, device: torch.device) -> torch.optim.Adam:
    """Adam as the recipe wants it; ``capturable`` gives the CUDA-graph form (state and rate on the device)."""
    if capturable:
        return torch.optim.Adam(params, lr=torch.tensor(lr, device=device), eps=eps, capturable=True)
    return torch.optim.Adam(params, lr=lr, eps=eps)


def normalise_optimizer(optimizer: torch.optim.Adam, *, capturable: bool, device: torch.device) -> None:
    """After ``load_state_dict``: make the loaded groups and state fit this optimizer's mode, whatever
    mode wrote the checkpoint (a GPU checkpoint resumed on a CPU, or the other way round)."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["capturable"] = capturable
        group["lr"] = torch.tensor(lr, device=device) if capturable else lr
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                step = state["step"]
                state["step"] = step.to(device=device, dtype=torch.float32) if capturable else step.to("cpu")


class TrainStep:
    """One training step of ``model`` on rows of ``x`` ``(N, 4, L)`` / ``y`` ``(N, T)``; see the module docstring.

    Call :meth:`begin_epoch`, then the step once per batch of row indices, then read :attr:`loss_sum`
    (the sum of batch loss x batch size, a 0-d device tensor) and :attr:`logits` ``(N, T)``.

    Parameters
    ----------
    graph : bool
        Capture the full-size step as a CUDA graph (on a CUDA device only; needs a capturable optimizer).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        graph: bool = False,
    ):
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.x, self.y, self.batch_size = x, y, batch_size
        self.loss_sum = torch.zeros((), device=x.device)
        self.logits = torch.empty_like(y)
        self.want_graph = graph and x.device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_idx: torch.Tensor | None = None
        self.fallback_reason: str | None = None

    @property
    def uses_graph(self) -> bool:
        return self.graph is not None

    def begin_epoch(self) -> None:
        self.loss_sum.zero_()

    def _body(self, idx: torch.Tensor, *, zero_grad: bool = True) -> None:
        """The step itself: the same code runs eagerly and under capture."""
        logits = self.model(self.x.index_select(0, idx))
        loss = self.loss_fn(logits, self.y.index_select(0, idx))
        if zero_grad:
            # eagerly beside a graph, gradients are zeroed in place: the graph holds their memory
            self.optimizer.zero_grad(set_to_none=self.graph is None)
        loss.backward()
        self.optimizer.step()
        self.loss_sum.add_(loss.detach() * idx.numel())
        self.logits.index_copy_(0, idx, logits.detach())

    def __call__(self, idx: torch.Tensor) -> None:
        """Train on the rows ``idx`` ``(B,)`` (a device long tensor), ``B <= batch_size``."""
        if self.want_graph and self.graph is None and self.fallback_reason is None and idx.numel() == self.batch_size:
            self._capture()
        if self.graph is not None and idx.numel() == self.batch_size:
            self.static_idx.copy_(idx)
            self.graph.replay()
        else:
            self._body(idx)

    # ----------------------------------------------------------------------------------- capture
    def _snapshot(self) -> tuple[list[torch.Tensor], dict, torch.Tensor]:
        weights = [t.detach().clone() for t in self.model.state_dict().values()]
        opt = {
            id(p): {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)} for p, s in self.optimizer.state.items()
        }
        return weights, opt, torch.cuda.get_rng_state(self.x.device)

    def _restore(self, snapshot) -> None:
        weights, opt, rng = snapshot
        with torch.no_grad():
            for t, saved in zip(self.model.state_dict().values(), weights):
                t.copy_(saved)
            for p, state in self.optimizer.state.items():
                saved = opt.get(id(p))
                for k, v in state.items():
                    if isinstance(v, torch.Tensor):
                        # state the warm-up created starts at zero (Adam: step, both moments)
                        v.copy_(saved[k]) if saved is not None else v.zero_()
        torch.cuda.set_rng_state(rng, self.x.device)

    def _capture(self) -> None:
        device = self.x.device
        snapshot = self._snapshot()
        static_idx = torch.arange(self.batch_size, device=device)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._body(static_idx)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
            # thread_local: Ray runs the trainable beside other threads of its own
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._body(static_idx, zero_grad=False)
        except Exception as e:  # noqa: BLE001 - any capture failure means: train eagerly
            self.fallback_reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            log.warning("CUDA graph capture failed (%s); training this model eagerly", self.fallback_reason)
            self.optimizer.zero_grad(set_to_none=True)
            self._restore(snapshot)
            self.begin_epoch()
            return
        self._restore(snapshot)
        self.begin_epoch()
        self.graph, self.static_idx = graph, static_idx
