"""Packs: several grid cells of one architecture trained in one process, their GPU work shared (SPEC.md
"Throughput").

**The route: stacked parameters.** The members become one
:class:`~hybridlens.models.stacked.StackedHybrid`, whose every kernel computes all of them (grouped
convolutions, per-member BatchNorm over side-by-side channels, batched matmuls for the dense, attention,
transformer and BiLSTM weights), trained by one :class:`~hybridlens.study.flat_adam.FlatAdam` over a
flat buffer with a rate per member, and on a GPU captured as one CUDA graph for the whole pack
(:class:`PackStep`). Why this and not one graph per member replayed on its own stream: these models are
launch-bound (a C4C6-LSTM-Trans4 step at batch 100 is ~400 tiny kernels), so what limits a pack is the
number of kernels the GPU front end schedules, not the work in them; streams would keep K times as many
kernels in flight and rely on the hardware's few concurrent queues to overlap them, while stacking
keeps one model's kernel count and makes each kernel K times wider, which a GPU with 132
multiprocessors has room for. Stacking also keeps a member's arithmetic its own (every operation is
member-separable), which is what lets the CPU prove the route: each member's losses, gradients and
weights are those it has alone, to float32 rounding (tested).

Each member keeps everything a one-cell trial has. Its :class:`~hybridlens.study.train.Trainer` holds
its config, its data order (its own generator: each member gathers its own batch), its Keras plateau
(its own rate in the pack's optimizer), early stopping and best weights (the trainer's model receives
the member's weights after every epoch); its dropout stream is a generator of its own that draws its
masks with the shapes and in the order it would draw them alone (the same masks on the CPU). A member
that stops early or diverges leaves the stack at the next epoch (the pack is rebuilt without it, so its
weights stay as they were and a NaN member touches no one); its pack-mates go on.
:meth:`PackTrainer.state_dict` holds, for every member, exactly what a one-model trainer's state holds
(its Adam state in ``torch.optim.Adam``'s format), so a member resumes exactly, in a pack or alone.

A pack of one, or of models the stack cannot take (:func:`~hybridlens.models.stacked.why_not_stackable`),
trains its members one after another with their own trainers (the one-model route: on the CPU bit for
bit the lone trainer); :attr:`PackTrainer.note` says so for a pack of several.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from hybridlens.study.flat_adam import FlatAdam
from hybridlens.study.train import Diverged, Trainer, cpu_rng_state
from hybridlens.study.train_step import CapturedStep, autocast

#: Validation rows per stacked forward, divided among the members (memory grows with the pack).
EVAL_ROWS = 4000


@dataclass(eq=False)  # a member is itself: lists of members compare and search by identity
class Member:
    trainer: Trainer
    rng: torch.Tensor  # the member's CPU dropout stream, between epochs
    cuda_rng: torch.Tensor | None = None  # and on a GPU
    diverged: str | None = None  # the divergence message, once diverged
    adam: dict | None = None  # its Adam state while it is outside a stack
    step: Any = field(default=None, repr=False)  # the stacked step it trains in, if any

    @property
    def active(self) -> bool:
        return self.diverged is None and not self.trainer.done

    @property
    def train_path(self) -> tuple[str, str | None]:
        """How the member trains (``cuda-graph``, ``cuda-eager`` with the reason, ``cpu``)."""
        return self.step.path if self.step is not None else self.trainer.train_path


class MemberBCE(torch.autograd.Function):
    """Each member's mean binary cross-entropy on logits, ``(K, B, T) -> (K,)``, with the gradient a lone
    model's ``BCEWithLogitsLoss`` computes, in its order of operations: ``(sigmoid(x) - y) * g / (B T)``."""

    @staticmethod
    def forward(ctx, logits, y):
        ctx.save_for_backward(logits, y)
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(dim=(1, 2))

    @staticmethod
    def backward(ctx, grad):
        logits, y = ctx.saved_tensors
        return (logits.sigmoid() - y).mul_(grad.view(-1, 1, 1)).div_(logits[0].numel()), None


class PackStep(CapturedStep):
    """One step of every stacked member on its own batch: ``idx`` ``(K, B)`` row indices; the members'
    losses are summed for one backward pass (member-separable, so each gets its own gradient).
    :attr:`loss_sum` ``(K,)`` and :attr:`logits` ``(K, N, T)`` accumulate over an epoch."""

    def __init__(
        self,
        module,
        optimizer: FlatAdam,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        generators,
        *,
        graph: bool,
        precision: str = "fp32",
    ):
        super().__init__(x.device, x.shape[0], batch_size, graph=graph, precision=precision)
        self.module, self.optimizer, self.x, self.y = module, optimizer, x, y
        self.generators = tuple(g for g in generators if g.device.type == "cuda")
        k, n = module.k, x.shape[0]
        self.loss_sum = torch.zeros(k, device=x.device, dtype=y.dtype)
        self.logits = torch.zeros(k, n, y.shape[1], device=x.device, dtype=y.dtype)
        self.offsets = (torch.arange(k, device=x.device) * n).unsqueeze(1)

    def begin_epoch(self) -> None:
        self.loss_sum.zero_()

    def _body(self, idx: torch.Tensor, *, zero_grad: bool = True) -> None:
        k, b = idx.shape
        flat = idx.reshape(-1)
        x = self.x.index_select(0, flat).view(k, b, *self.x.shape[1:])
        y = self.y.index_select(0, flat).view(k, b, -1)
        with autocast(self.precision, self.device):
            logits = self.module(x).to(y.dtype)  # autocast gives bfloat16 logits
        loss = MemberBCE.apply(logits, y)  # (K,): each member's mean loss
        self.optimizer.zero_grad()  # in place: the gradients are views of one buffer, also inside a graph
        loss.sum().backward()
        self.optimizer.step()
        self.loss_sum.add_(loss.detach() * b)
        self.logits.view(-1, self.y.shape[1]).index_copy_(0, (idx + self.offsets).reshape(-1), logits.detach().reshape(k * b, -1))

    def _snapshot(self):
        o = self.optimizer
        return [t.detach().clone() for t in (o.flat, o.exp_avg, o.exp_avg_sq, o.step_count, *self.module.buffers())]

    def _restore(self, snapshot) -> None:
        o = self.optimizer
        with torch.no_grad():
            for t, saved in zip((o.flat, o.exp_avg, o.exp_avg_sq, o.step_count, *self.module.buffers()), snapshot):
                t.copy_(saved)


def _copy_all(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    """``d.copy_(s)`` for every pair, as fused multi-tensor copies (one list per dtype)."""
    for dtype in {t.dtype for t in dst}:
        pairs = [(d, s) for d, s in zip(dst, src) if d.dtype == dtype]
        torch._foreach_copy_([d for d, _ in pairs], [s for _, s in pairs])


class _Stack:
    """The members being trained together: their stacked module, optimizer, generators and step."""

    def __init__(self, members: list[Member], graph: bool, batched: bool | None = None):
        from hybridlens.models.stacked import stack

        first = members[0].trainer
        device, cfg = first.data.device, first.config
        self.members = members
        self.generators = []
        for m in members:
            g = torch.Generator(device=device)
            g.set_state(m.cuda_rng if device.type == "cuda" else m.rng)
            self.generators.append(g)
        self.module = stack([m.trainer.model for m in members], self.generators, batched)
        self.optimizer = FlatAdam(self.module, [m.trainer.lr for m in members], eps=cfg.adam_eps)
        for i, m in enumerate(members):
            if m.adam is not None:
                self.optimizer.load_member_state(i, m.trainer.model, m.adam)
        x, y = first.data.splits["train"]
        self.step = PackStep(
            self.module, self.optimizer, x, y, cfg.batch_size, self.generators, graph=graph, precision=cfg.precision
        )
        for m in members:
            m.step = self.step

    def save_members(self) -> None:
        """Each member's Adam state and dropout stream back on the member (it may leave the stack)."""
        for i, m in enumerate(self.members):
            m.adam = self.optimizer.member_state(i, m.trainer.model)
            self.save_rng(i, m)

    def save_rng(self, i: int, m: Member) -> None:
        state = self.generators[i].get_state()
        if self.generators[i].device.type == "cuda":
            m.cuda_rng = state
        else:
            m.rng = state


class PackTrainer:
    """Train several members epoch by epoch in lockstep; see the module docstring. ``route``: ``"auto"``
    (stacked for two or more members the stack takes, else one after another), ``"stacked"`` (also a
    pack of one) or ``"sequential"``; ``batched``: the stack's form on the CPU
    (:meth:`~hybridlens.models.stacked.StackedHybrid.set_batched`)."""

    def __init__(self, route: str = "auto", *, batched: bool | None = None):
        if route not in ("auto", "stacked", "sequential"):
            raise ValueError(f"unknown pack route {route!r}; choose auto, stacked or sequential")
        self.members: list[Member] = []
        self.route, self.batched = route, batched
        self._stack: _Stack | None = None
        self.note: str | None = None  # why a pack of several trains one after another

    def add(self, trainer: Trainer) -> None:
        """Add a member. Call right after building its model and trainer (after seeding for it): the
        global random state at this moment is where its own dropout stream starts, as it would alone."""
        if self.members and trainer.data is not self.members[0].trainer.data:
            raise ValueError("the members of a pack train on one dataset (one TensorData)")
        cuda = trainer.data.device.type == "cuda"
        self.members.append(
            Member(
                trainer,
                torch.get_rng_state(),
                torch.cuda.get_rng_state(trainer.data.device) if cuda else None,
                adam=trainer.optimizer.state_dict(),
            )
        )

    @property
    def done(self) -> bool:
        return not any(m.active for m in self.members)

    @property
    def stacked(self) -> bool:
        """Whether the members train as one stacked model (decided at the first epoch)."""
        from hybridlens.models.stacked import why_not_stackable

        if self.route == "sequential" or (self.route == "auto" and len(self.members) < 2):
            return False
        reason = why_not_stackable([m.trainer.model for m in self.members])
        if reason and len(self.members) > 1:
            self.note = f"the {len(self.members)} members train one after another: {reason}"
        return reason is None

    def step(self) -> list[dict[str, float] | Diverged | None]:
        """One epoch of every active member: its metrics (:meth:`Trainer.step`'s), the :class:`Diverged`
        it raised (it is then set aside), or None for a member that had already stopped."""
        active = [m for m in self.members if m.active]
        results: dict[int, dict | Diverged] = {}
        if active:
            results = self._stacked_epoch(active) if self.stacked else self._sequential_epoch(active)
        return [results.get(id(m)) for m in self.members]

    # ---------------------------------------------------------------------------------- the routes
    def _sequential_epoch(self, active: list[Member]) -> dict[int, dict | Diverged]:
        out = {}
        for m in active:
            torch.set_rng_state(m.rng)
            if m.cuda_rng is not None:
                torch.cuda.set_rng_state(m.cuda_rng, m.trainer.data.device)
            try:
                out[id(m)] = m.trainer.step()
            except Diverged as e:
                m.diverged = str(e)
                out[id(m)] = e
            m.rng = torch.get_rng_state()
            if m.cuda_rng is not None:
                m.cuda_rng = torch.cuda.get_rng_state(m.trainer.data.device)
        return out

    def _stack_for(self, active: list[Member]) -> _Stack:
        # members by first-layer activation: each activation then acts on one run of channels
        active = sorted(active, key=lambda m: m.trainer.model.activation)
        if self._stack is None or self._stack.members != active:
            if self._stack is not None:
                self._stack.save_members()
                for m in self._stack.members:
                    m.step = None
            self._stack = _Stack(active, graph=active[0].trainer.config.cuda_graph, batched=self.batched)
        return self._stack

    def _stacked_epoch(self, active: list[Member]) -> dict[int, dict | Diverged]:
        st = self._stack_for(active)
        active = st.members
        first = active[0].trainer
        x, y = first.data.splits["train"]
        n, bs, device = x.shape[0], first.config.batch_size, x.device
        lrs = [m.trainer.lr for m in active]
        st.optimizer.set_lrs(lrs)
        perms = torch.stack([torch.randperm(n, generator=m.trainer.generator) for m in active]).to(device)
        st.module.train()
        st.step.begin_epoch()
        for start in range(0, n, bs):
            st.step(perms[:, start : start + bs])
        export = self._export(st)
        metrics = self._metrics(st, first, n)
        out = {}
        for i, m in enumerate(active):
            tr = m.trainer
            train, valid = metrics[i]
            st.save_rng(i, m)
            if not math.isfinite(train["train_loss"]):
                m.diverged = f"training loss is {train['train_loss']} at epoch {tr.epoch + 1}"
                out[id(m)] = Diverged(m.diverged)
                continue
            out[id(m)] = tr.record_epoch(train, valid, lrs[i], best_state=lambda i=i: self._member_copy(export, i))
        # the plateau may have moved a trainer's rate: the stack's optimizer holds it from now on, so a
        # checkpoint (or a member leaving the stack) records the rate the next epoch trains at
        st.optimizer.set_lrs([m.trainer.lr for m in active])
        return out

    @staticmethod
    @torch.no_grad()
    def _export(st: _Stack) -> dict[str, torch.Tensor]:
        """Each trainer's model receives its member's weights (every epoch's end): every member's tensors
        at once (:meth:`~hybridlens.models.stacked.StackedHybrid.export`), copied by fused multi-tensor
        copies (a few launches for all members, not one per member and tensor)."""
        export = st.module.export()
        states = [m.trainer.model.state_dict() for m in st.members]
        _copy_all([state[key] for state in states for key in export], [t[k] for k in range(len(states)) for t in export.values()])
        return export

    @staticmethod
    def _member_copy(export: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s state dict, copied out of an export (its best epoch's weights)."""
        out = {key: torch.empty_like(t[k]) for key, t in export.items()}
        _copy_all(list(out.values()), [t[k] for t in export.values()])
        return out

    def _metrics(self, st: _Stack, first: Trainer, n: int) -> list[tuple[dict, dict]]:
        """Every member's training and validation loss, AUROC and AUPR, computed for all members at once
        (per AUC method: ``train.auc`` may differ between pack-mates) and read in one host sync."""
        from hybridlens.analysis.classification import auc_members

        valid = self._validate(st, first)
        y_train, y_valid = first.data.splits["train"][1], first.data.splits["valid"][1]
        valid_loss = F.binary_cross_entropy_with_logits(valid, y_valid.expand_as(valid), reduction="none").mean(dim=(1, 2))
        aucs = torch.empty(st.module.k, 4, dtype=torch.float64, device=valid.device)
        methods = [m.trainer.config.auc for m in st.members]
        for method in dict.fromkeys(methods):
            rows = torch.tensor([i for i, m in enumerate(methods) if m == method], device=valid.device)
            train = auc_members(y_train, st.step.logits.index_select(0, rows), method)
            aucs[rows] = torch.cat([train, auc_members(y_valid, valid.index_select(0, rows), method)], dim=1)
        columns = [(st.step.loss_sum.double() / n).unsqueeze(1), aucs[:, :2], valid_loss.double().unsqueeze(1), aucs[:, 2:]]
        rows = torch.cat(columns, dim=1).tolist()  # (K, 6), the epoch's one sync (keras: one more, to split the labels)
        return [
            ({"train_loss": r[0], "train_auroc": r[1], "train_aupr": r[2]}, {"loss": r[3], "auroc": r[4], "aupr": r[5]})
            for r in rows
        ]

    @torch.no_grad()
    def _validate(self, st: _Stack, first: Trainer) -> torch.Tensor:
        """Every member's validation logits ``(K, N, T)``: the stacked model in eval mode on shared batches."""
        x = first.data.splits["valid"][0]
        st.module.eval()
        rows = max(1, EVAL_ROWS // st.module.k)
        return torch.cat([st.module(x[i : i + rows]) for i in range(0, x.shape[0], rows)], dim=1)

    @torch.no_grad()
    def fill_nan(self, index: int) -> None:
        """Set member ``index``'s weights to NaN wherever it trains (fault injection: it then diverges)."""
        m = self.members[index]
        for p in m.trainer.model.parameters():
            p.fill_(float("nan"))
        if self._stack is not None and m in self._stack.members:
            self._stack.module.load_member(self._stack.members.index(m), m.trainer.model.state_dict())

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Every member's state in a one-model trainer's format (its Adam state included), its dropout
        streams and its divergence."""
        members = []
        in_stack = {id(m): i for i, m in enumerate(self._stack.members)} if self._stack is not None else {}
        for m in self.members:
            state = m.trainer.state_dict()
            if id(m) in in_stack:
                state["optimizer"] = self._stack.optimizer.member_state(in_stack[id(m)], m.trainer.model)
            elif self.stacked and m.adam is not None:
                state["optimizer"] = m.adam
            state.update(torch_rng=m.rng, cuda_rng=m.cuda_rng, diverged=m.diverged)
            members.append(state)
        return {"members": members}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["members"]) != len(self.members):
            raise ValueError(f"checkpoint holds {len(state['members'])} members, this pack {len(self.members)}")
        for m, s in zip(self.members, state["members"]):
            m.trainer.load_state_dict(s)
            cuda_rng = s.get("cuda_rng")
            m.rng, m.diverged = cpu_rng_state(s["torch_rng"]), s.get("diverged")
            m.cuda_rng = None if cuda_rng is None else cpu_rng_state(cuda_rng)
            m.adam, m.step = s["optimizer"], None
        self._stack = None  # rebuilt from the members at the next epoch


def load_pack_state(path) -> dict[str, Any]:
    """A pack checkpoint written with ``torch.save(pack.state_dict())``, loaded weights-only onto the
    CPU: its random states must stay CPU byte tensors (``map_location="cuda"`` would move them to the
    GPU, where ``set_rng_state`` refuses them), and ``load_state_dict`` copies weights and optimizer
    state to the pack's device."""
    return torch.load(path, weights_only=True, map_location="cpu")
