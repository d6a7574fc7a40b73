"""Adam over a stacked module's parameters held in one flat buffer, with a learning rate per member.

The members of a pack keep their own Keras plateau, so their rates differ; and on a GPU a step must stay a
few launches. So every parameter of a :class:`~hybridlens.models.stacked.StackedHybrid` becomes a view
into one flat buffer, and so does its gradient (autograd accumulates into the existing ``.grad`` in
place); Adam is then a dozen element-wise kernels over the whole buffer whatever the number of layers,
with each element's member looked up once (:attr:`FlatAdam.member_of`). The arithmetic is PyTorch's
``Adam`` (Keras' epsilon, no weight decay, no amsgrad), with the step count (the members of a stack
step together) and the rates as device tensors: nothing reads back to the host, so a CUDA graph can
replay it, and the rates are changed in place (:meth:`FlatAdam.set_lrs`), each element's gathered once
per change rather than per step.

A member's state moves in and out in ``torch.optim.Adam``'s own ``state_dict`` format for that member's
lone model (:meth:`FlatAdam.member_state`, :meth:`FlatAdam.load_member_state`), so a pack's checkpoint
holds for each member exactly what a one-model trainer's holds.
"""

from __future__ import annotations

import torch

BETAS = (0.9, 0.999)


class FlatAdam:
    """Adam for ``stacked`` (a ``StackedHybrid``) with ``lrs`` per member; see the module docstring."""

    def __init__(self, stacked, lrs: list[float], *, eps: float = 1e-7, betas: tuple[float, float] = BETAS):
        self.stacked, self.eps, self.betas = stacked, eps, betas
        params = list(stacked.parameters())
        device = params[0].device
        total = sum(p.numel() for p in params)
        self.dtype = params[0].dtype
        self.flat = torch.zeros(total, device=device, dtype=self.dtype)
        self.grad = torch.zeros(total, device=device, dtype=self.dtype)
        self.exp_avg = torch.zeros(total, device=device, dtype=self.dtype)
        self.exp_avg_sq = torch.zeros(total, device=device, dtype=self.dtype)
        self.member_of = torch.empty(total, dtype=torch.long, device=device)
        self.views: dict[int, tuple[int, int]] = {}  # id(param) -> (offset, numel)
        slicers: dict[int, list] = {}
        for _, t, slicer in stacked.slots():
            slicers.setdefault(id(t), []).append(slicer)
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                self.flat[offset : offset + n].copy_(p.reshape(-1))
                owner = torch.full(p.shape, -1, dtype=torch.long, device=device)
                for slicer in slicers[id(p)]:  # an LSTM tensor holds each member twice (both directions)
                    for k in range(stacked.k):
                        slicer(owner, k).fill_(k)
                if (owner < 0).any():
                    raise ValueError(f"a stacked parameter of shape {tuple(p.shape)} has elements of no member")
                self.member_of[offset : offset + n] = owner.reshape(-1)
                p.data = self.flat[offset : offset + n].view_as(p)
                p.grad = self.grad[offset : offset + n].view_as(p)
                self.views[id(p)] = (offset, n)
                offset += n
        self.params = params
        # per-member factors in float64, cast to the parameters' type where they meet them: PyTorch's
        # Adam computes them in Python floats the same way
        self.lr = torch.tensor(lrs, dtype=torch.float64, device=device)
        self.lr_flat = self.lr.to(self.dtype)[self.member_of]  # each element's rate
        # one step count: the members of a stack step together
        self.step_count = torch.zeros((), dtype=torch.float64, device=device)

    def zero_grad(self) -> None:
        """Gradients to 0 in place (they stay views of :attr:`grad`)."""
        self.grad.zero_()

    def set_lrs(self, lrs: list[float]) -> None:
        """Every member's rate, written in place where it changed (a captured graph reads these tensors'
        memory); each element's rate is gathered again only then."""
        new = torch.tensor(lrs, dtype=torch.float64)
        if not torch.equal(new, self.lr.cpu()):
            self.lr.copy_(new)
            self.lr_flat.copy_(self.lr.to(self.dtype)[self.member_of])

    @torch.no_grad()
    def step(self) -> None:
        """PyTorch's single-tensor Adam, member by member: ``m = lerp(m, g, 1 - b1)``, ``v = b2 v + (1 - b2)
        g^2``, ``p -= lr m / ((1 - b1^t) (sqrt(v) / sqrt(1 - b2^t) + eps))``."""
        beta1, beta2 = self.betas
        self.step_count.add_(1)
        bc1 = (1 - torch.pow(beta1, self.step_count)).to(self.dtype)
        bc2_sqrt = torch.sqrt(1 - torch.pow(beta2, self.step_count)).to(self.dtype)
        self.exp_avg.lerp_(self.grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(self.grad, self.grad, value=1 - beta2)
        denom = self.exp_avg_sq.sqrt().div_(bc2_sqrt).add_(self.eps).mul_(bc1)  # bc1 (sqrt(v) / bc2 + eps)
        self.flat.addcdiv_(self.exp_avg * self.lr_flat, denom, value=-1)

    # -------------------------------------------------------------------------------- members
    def _member_slices(self, k: int, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
        """Member ``k``'s view of ``buffer`` (flat, laid out as the parameters) per parameter key."""
        out = {}
        for key, t, slicer in self.stacked.slots():
            if id(t) in self.views:
                offset, n = self.views[id(t)]
                out[key] = slicer(buffer[offset : offset + n].view_as(t), k)
        return out

    def member_state(self, k: int, model: torch.nn.Module) -> dict:
        """Member ``k``'s state as ``torch.optim.Adam(model.parameters()).state_dict()`` would hold it
        (``model``: the member's lone model, which fixes the parameters' order)."""
        names = [name for name, _ in model.named_parameters()]
        m, v = self._member_slices(k, self.exp_avg), self._member_slices(k, self.exp_avg_sq)
        step = self.step_count.detach().to(device="cpu", dtype=torch.float32).clone()
        state = {
            i: {"step": step.clone(), "exp_avg": m[n].detach().clone(), "exp_avg_sq": v[n].detach().clone()}
            for i, n in enumerate(names)
        }
        group = {
            "lr": float(self.lr[k]),
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": 0,
            "amsgrad": False,
            "maximize": False,
            "foreach": None,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": False,
            "params": list(range(len(names))),
        }
        return {"state": state if float(step) > 0 else {}, "param_groups": [group]}

    @torch.no_grad()
    def load_member_state(self, k: int, model: torch.nn.Module, state: dict) -> None:
        """Member ``k``'s moments, step count and rate from a ``torch.optim.Adam`` state dict of its lone model."""
        names = [name for name, _ in model.named_parameters()]
        m, v = self._member_slices(k, self.exp_avg), self._member_slices(k, self.exp_avg_sq)
        steps = set()
        for i, name in enumerate(names):
            s = state["state"].get(i) or state["state"].get(str(i))
            if s is None:  # no step taken yet
                m[name].zero_()
                v[name].zero_()
                steps.add(0.0)
                continue
            m[name].copy_(s["exp_avg"])
            v[name].copy_(s["exp_avg_sq"])
            steps.add(float(s["step"]))
        if len(steps) > 1:
            raise ValueError(f"member {k}'s parameters have taken different numbers of steps: {sorted(steps)}")
        step = steps.pop() if steps else 0.0
        if k > 0 and float(self.step_count) != step:
            raise ValueError(
                f"member {k} has taken {step:.0f} steps, member 0 {float(self.step_count):.0f}: a stack steps its members together"
            )
        self.step_count.fill_(step)
        lrs = self.lr.tolist()
        lrs[k] = float(state["param_groups"][0]["lr"])
        self.set_lrs(lrs)
