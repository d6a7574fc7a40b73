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

If capture fails (an operation CUDA graphs cannot record, an old driver), the step trains eagerly
from then on, with Adam back in its plain form, and :attr:`TrainStep.path` says why. A failed capture
can leave the CUDA caching allocator or the driver in a state where later captures in the process fail
or misbehave, so after one failure nothing in the process captures again (:func:`graphs_disabled`;
one log line says so, the first time). The capture itself is :func:`capture`: unlike
``torch.cuda.graph``, whose ``__exit__`` ends the capture before it puts the stream back (so a failed
capture leaves the thread on the capture stream and replaces the original error with "operation
failed due to a previous error during capture"), it always restores the stream, ends the allocator's
routing into the graph's memory pool, and raises the error that broke the capture.

On the CPU there is nothing to capture: the step is eager, and it is exactly the loop the trainer
always ran (same operations, same order).

**Precision** (``train.precision``, :data:`PRECISIONS`): ``fp32`` computes matmuls and convolutions in
full float32 (cuDNN's own default would take TF32 for convolutions); ``tf32`` lets cuBLAS and cuDNN
use TF32 (10-bit mantissa inputs, float32 accumulation); ``bf16`` runs the step's forward pass and loss
under ``torch.autocast(dtype=torch.bfloat16, cache_enabled=False)`` (the cache must be off inside a
CUDA graph) on top of TF32, with the weights and Adam's state kept in float32. Validation, test
metrics and everything the analysis computes run without autocast. On the CPU only ``fp32`` trains
(:func:`precision_problem`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

#: Eager iterations on a side stream before capture (PyTorch's whole-network capture example uses 3).
WARMUP_STEPS = 3

#: The training paths a run records (tag ``hybridlens.train_path``).
PATH_GRAPH, PATH_EAGER, PATH_CPU = "cuda-graph", "cuda-eager", "cpu"

_capture_failure: str | None = None  # the first capture failure in this process, if any

#: ``train.precision``'s values; see the module docstring.
PRECISIONS = ("fp32", "tf32", "bf16")


def precision_problem(precision: str, device: torch.device | str) -> str | None:
    """Why ``precision`` cannot train on ``device`` (None when it can)."""
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
    if precision != "fp32" and torch.device(device).type != "cuda":
        return f"precision {precision} needs a CUDA device (TF32 and bfloat16 autocast are GPU settings); use fp32 on the CPU"
    return None


def apply_precision(precision: str) -> None:
    """Set the process's matmul and convolution precision for ``precision`` (TF32 on or off; a trial is
    one process, and a pack's members share their precision)."""
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def autocast(precision: str, device: torch.device):
    """The context a step's forward pass and loss run in: bfloat16 autocast for ``bf16`` (no cache:
    cached casts would be stale across CUDA graph replays), else nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def graphs_disabled() -> str | None:
    """Why nothing in this process captures CUDA graphs any more (an earlier capture failed), or None."""
    return _capture_failure


def _disable_graphs(reason: str) -> None:
    global _capture_failure
    if _capture_failure is None:
        _capture_failure = reason
        log.warning("CUDA graph capture failed (%s); this process trains eagerly from now on", reason)


def describe(e: BaseException) -> str:
    """``Type: first line of the message``: a one-line reason."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def capture(fn: Callable[[], None], device: torch.device, *, generators=()) -> torch.cuda.CUDAGraph:
    """Capture ``fn()`` as a CUDA graph on a side stream of ``device`` (capture mode ``thread_local``:
    Ray runs the trainable beside threads of its own) and return it.

    If ``fn`` or the end of the capture fails, the error that broke the capture is raised, with the
    thread back on the stream it was on and the caching allocator no longer routing this thread's
    allocations into the graph's private pool (which is released). ``torch.cuda.graph`` does neither
    on a failure (its ``__exit__`` calls ``capture_end`` first, which raises). ``generators``: CUDA
    generators besides the default one that ``fn`` draws from (each replay then advances them).
    """
    graph = torch.cuda.CUDAGraph()
    for g in generators:
        graph.register_generator_state(g)
    pool = torch.cuda.graph_pool_handle()
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.synchronize(device)
    with torch.cuda.device(index), torch.cuda.stream(torch.cuda.Stream(device)):  # the stream is put back on any exit
        try:
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            fn()
        except BaseException:
            _abandon(graph, pool, index)
            raise
        try:
            graph.capture_end()
        except BaseException:
            _release(graph, pool, index)
            raise
    return graph


def _abandon(graph: torch.cuda.CUDAGraph, pool, index: int) -> None:
    """End a capture whose body failed, keeping quiet about what ending it raises (the body's error is
    the one worth reporting), and undo what ``capture_end`` could not."""
    try:
        graph.capture_end()  # ends the capture and the pool routing when it succeeds
    except Exception:  # noqa: BLE001 - an invalidated capture: cudaStreamEndCapture fails before the pool is ended
        pass
    _release(graph, pool, index)


def _release(graph: torch.cuda.CUDAGraph, pool, index: int) -> None:
    """After a failed capture: stop routing this thread's allocations into the graph's pool, and release
    the pool unless the graph owns it. ``CUDAGraph::capture_end`` marks the capture ended (and the pool
    the graph's, which its destructor releases) before it instantiates, so an instantiation that fails
    leaves a pool that must not be released twice (a second release aborts the process); ``pool()``
    answers only for a graph whose capture ended. (Torch's host-memory routing, also begun by
    ``capture_begin``, has no Python binding to end; its filter matches only a capturing stream.)"""
    try:
        torch._C._cuda_endAllocateToPool(index, pool)
    except Exception:  # noqa: BLE001 - already ended by capture_end, or never begun
        pass
    try:
        graph.pool()
        return  # the capture ended: the graph owns the pool and releases it
    except RuntimeError:
        pass
    try:
        torch._C._cuda_releasePool(index, pool)
    except Exception:  # noqa: BLE001 - never begun: nothing to release
        pass


def _reset_graph_rng(device: torch.device, generators=()) -> None:
    """After an invalidated capture, give the device's default generator, and every other generator
    the capture registered (``generators``), a fresh copy of its state: in torch 2.11 and 2.12 a state
    that began a capture stays marked as capturing until the capture's epilogue, which a failed capture
    never reaches, and every eager dropout after it then fails ("Offset increment outside graph
    capture"); the clone keeps the seed and offset."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    for gen in (torch.cuda.default_generators[index], *generators):
        try:
            gen.graphsafe_set_state(gen.clone_state())
        except (AttributeError, RuntimeError):  # a torch without graph-safe generator states: nothing to reset
            pass


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
    """Make the optimizer's groups and state fit one mode, whatever mode wrote them: after
    ``load_state_dict`` (a GPU checkpoint resumed on a CPU, or the other way round), or after a failed
    capture (back to the plain form: a float rate, steps on the CPU)."""
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["capturable"] = capturable
        group["lr"] = torch.tensor(lr, device=device) if capturable else lr
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and "step" in state:
                step = state["step"]
                state["step"] = step.to(device=device, dtype=torch.float32) if capturable else step.to("cpu")


def is_capturable(optimizer: torch.optim.Optimizer) -> bool:
    return bool(optimizer.param_groups[0].get("capturable", False))


class CapturedStep:
    """What a training step on fixed buffers needs to be replayed as a CUDA graph, whatever it trains (one
    model: :class:`TrainStep`; a pack's stacked members: ``study.pack.PackStep``).

    Call :meth:`begin_epoch`, then the step once per batch of row indices (``(..., B)``, B <=
    ``batch_size``). A full-size batch on a CUDA device is captured once (after the warm-up, which is
    undone) and then replayed; a smaller one runs eagerly on the same buffers. A subclass provides
    :meth:`_body` (the step, the same code eagerly and under capture), :meth:`_snapshot` and
    :meth:`_restore` (everything the warm-up changes), :meth:`_before_capture` and :meth:`_to_plain`
    (the optimizer's eager form after a fallback), and may register random generators with the graph
    (:attr:`generators`).
    """

    #: CUDA generators (besides the default one) the step draws from inside the graph.
    generators: tuple = ()

    def __init__(self, device: torch.device, rows: int, batch_size: int, *, graph: bool, precision: str = "fp32"):
        if precision not in PRECISIONS:  # which device may train at it is the trainer's call (precision_problem)
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        if device.type == "cuda":
            apply_precision(precision)
        self.device, self.rows, self.batch_size, self.precision = device, rows, batch_size, precision
        self.want_graph = graph and device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_idx: torch.Tensor | None = None
        self.fallback_reason: str | None = None
        if device.type == "cuda" and not graph:
            self.fallback_reason = "train.cuda_graph is false"

    @property
    def uses_graph(self) -> bool:
        return self.graph is not None

    @property
    def path(self) -> tuple[str, str | None]:
        """The training path, ``cuda-graph``, ``cuda-eager`` or ``cpu``, and why a GPU step is eager (None
        otherwise)."""
        if self.device.type != "cuda":
            return PATH_CPU, None
        if self.graph is not None:
            return PATH_GRAPH, None
        if self.fallback_reason is not None:
            return PATH_EAGER, self.fallback_reason
        if self.rows < self.batch_size:
            return PATH_EAGER, f"the training split ({self.rows} rows) is smaller than one batch"
        return PATH_EAGER, "not captured yet (no full-size batch trained)"

    def begin_epoch(self) -> None:
        raise NotImplementedError

    def _body(self, idx: torch.Tensor, *, zero_grad: bool = True) -> None:
        raise NotImplementedError

    def _snapshot(self):
        raise NotImplementedError

    def _restore(self, snapshot) -> None:
        raise NotImplementedError

    def _before_capture(self) -> None:
        """Right before the capture (after the warm-up)."""

    def _to_plain(self) -> None:
        """After a fallback: the optimizer in its eager form."""

    def __call__(self, idx: torch.Tensor) -> None:
        """Train on the rows ``idx`` (a device long tensor whose last dimension is the batch)."""
        full = idx.shape[-1] == self.batch_size
        if self.want_graph and self.graph is None and self.fallback_reason is None and full:
            self._capture(idx.shape)
        if self.graph is not None and full:
            self.static_idx.copy_(idx)
            self.graph.replay()
        else:
            self._body(idx)

    def fall_back(self, reason: str) -> None:
        """Train eagerly from now on: no graph, the optimizer in its eager form; :attr:`path` gives ``reason``."""
        self.graph, self.static_idx, self.fallback_reason = None, None, reason
        self._to_plain()

    def _rng(self):
        return [torch.cuda.get_rng_state(self.device)] + [g.get_state() for g in self.generators]

    def _set_rng(self, states) -> None:
        torch.cuda.set_rng_state(states[0], self.device)
        for g, state in zip(self.generators, states[1:]):
            g.set_state(state)

    def _capture(self, shape: tuple[int, ...]) -> None:
        earlier = graphs_disabled()
        if earlier is not None:
            self.fall_back(f"no CUDA graphs in this process after a failed capture ({earlier})")
            return
        device = self.device
        snapshot, rng = self._snapshot(), self._rng()
        static_idx = torch.arange(self.batch_size, device=device).expand(shape).contiguous()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # an error here is the step's own: eager training would raise it too
            for _ in range(WARMUP_STEPS):
                self._body(static_idx)
        torch.cuda.current_stream(device).wait_stream(side)
        self._before_capture()
        try:
            graph = capture(lambda: self._body(static_idx, zero_grad=False), device, generators=self.generators)
        except Exception as e:  # noqa: BLE001 - any capture failure means: train eagerly
            reason = describe(e)
            _disable_graphs(reason)
            _reset_graph_rng(device, self.generators)
            self._restore(snapshot)
            self._set_rng(rng)
            self.fall_back(reason)
            self.begin_epoch()
            return
        self._restore(snapshot)
        self._set_rng(rng)
        self.begin_epoch()
        self.graph, self.static_idx = graph, static_idx


class TrainStep(CapturedStep):
    """One training step of ``model`` on rows of ``x`` ``(N, 4, L)`` / ``y`` ``(N, T)``; see the module docstring.

    Call :meth:`begin_epoch`, then the step once per batch of row indices ``(B,)``, then read
    :attr:`loss_sum` (the sum of batch loss x batch size, a 0-d device tensor) and :attr:`logits` ``(N, T)``.

    Parameters
    ----------
    graph : bool
        Capture the full-size step as a CUDA graph (on a CUDA device only, and unless
        :func:`graphs_disabled`; needs a capturable optimizer).
    precision : str
        :data:`PRECISIONS` (module docstring); ``bf16`` puts the forward pass and loss under autocast.
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
        precision: str = "fp32",
    ):
        super().__init__(x.device, x.shape[0], batch_size, graph=graph, precision=precision)
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.x, self.y = x, y
        self.loss_sum = torch.zeros((), device=x.device, dtype=y.dtype)
        self.logits = torch.empty_like(y)

    def begin_epoch(self) -> None:
        self.loss_sum.zero_()

    def _body(self, idx: torch.Tensor, *, zero_grad: bool = True) -> None:
        """The step itself: the same code runs eagerly and under capture."""
        with autocast(self.precision, self.device):
            logits = self.model(self.x.index_select(0, idx)).to(self.y.dtype)  # autocast gives bfloat16 logits
            loss = self.loss_fn(logits, self.y.index_select(0, idx))
        if zero_grad:
            # eagerly beside a graph, gradients are zeroed in place: the graph holds their memory
            self.optimizer.zero_grad(set_to_none=self.graph is None)
        loss.backward()
        self.optimizer.step()
        self.loss_sum.add_(loss.detach() * idx.numel())
        self.logits.index_copy_(0, idx, logits.detach())

    def _snapshot(self) -> tuple[list[torch.Tensor], dict]:
        weights = [t.detach().clone() for t in self.model.state_dict().values()]
        opt = {
            id(p): {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)} for p, s in self.optimizer.state.items()
        }
        return weights, opt

    def _restore(self, snapshot) -> None:
        weights, opt = snapshot
        with torch.no_grad():
            for t, saved in zip(self.model.state_dict().values(), weights):
                t.copy_(saved)
            for p, state in self.optimizer.state.items():
                saved = opt.get(id(p))
                for k, v in state.items():
                    if isinstance(v, torch.Tensor):
                        # state the warm-up created starts at zero (Adam: step, both moments)
                        v.copy_(saved[k]) if saved is not None else v.zero_()

    def _before_capture(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool

    def _to_plain(self) -> None:
        """Adam in its plain form (a float rate, steps on the CPU), gradients dropped."""
        self.optimizer.zero_grad(set_to_none=True)
        if is_capturable(self.optimizer):
            normalise_optimizer(self.optimizer, capturable=False, device=self.device)
