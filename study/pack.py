"""Packs: several grid cells of one architecture trained in one process (SPEC.md "Throughput").

Each member is a :class:`~hybridlens.study.train.Trainer` with its own model, optimizer, Keras
plateau, early stopping, best weights and data order (its own generator), and its own torch random
stream for dropout, swapped in around its step: on the CPU a member trains bit for bit as it would
alone, whatever its pack-mates do. A member that stops early stops stepping; a member that diverges is
set aside with its reason; the others go on. :meth:`PackTrainer.state_dict` holds the whole pack.

Members step one after another in one process. That is what the CPU wants (one core set, no process
per cell); on a GPU it removes a process per cell, but each step is still launch-bound: the
CUDA-graph step of issue 12 is what turns packs into throughput there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from hybridlens.study.train import Diverged, Trainer, cpu_rng_state


@dataclass
class Member:
    trainer: Trainer
    rng: torch.Tensor  # torch's CPU random state between this member's steps
    cuda_rng: torch.Tensor | None = None
    diverged: str | None = None  # the divergence message, once diverged

    @property
    def active(self) -> bool:
        return self.diverged is None and not self.trainer.done


class PackTrainer:
    """Train several members epoch by epoch in lockstep; see the module docstring."""

    def __init__(self):
        self.members: list[Member] = []

    def add(self, trainer: Trainer) -> None:
        """Add a member. Call right after building its model and trainer (after seeding for it): the
        global random state at this moment is where its own dropout stream starts, as it would alone."""
        cuda = trainer.data.device.type == "cuda"
        self.members.append(
            Member(trainer, torch.get_rng_state(), torch.cuda.get_rng_state(trainer.data.device) if cuda else None)
        )

    @property
    def done(self) -> bool:
        return not any(m.active for m in self.members)

    def step(self) -> list[dict[str, float] | Diverged | None]:
        """One epoch of every active member: its metrics (:meth:`Trainer.step`), the :class:`Diverged`
        it raised (it is then set aside), or None for a member that had already stopped."""
        out: list[dict[str, float] | Diverged | None] = []
        for m in self.members:
            if not m.active:
                out.append(None)
                continue
            torch.set_rng_state(m.rng)
            if m.cuda_rng is not None:
                torch.cuda.set_rng_state(m.cuda_rng, m.trainer.data.device)
            try:
                out.append(m.trainer.step())
            except Diverged as e:
                m.diverged = str(e)
                out.append(e)
            m.rng = torch.get_rng_state()
            if m.cuda_rng is not None:
                m.cuda_rng = torch.cuda.get_rng_state(m.trainer.data.device)
        return out

    def state_dict(self) -> dict[str, Any]:
        members = []
        for m in self.members:
            state = m.trainer.state_dict()
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


def load_pack_state(path) -> dict[str, Any]:
    """A pack checkpoint written with ``torch.save(pack.state_dict())``, loaded weights-only onto the
    CPU: its random states must stay CPU byte tensors (``map_location="cuda"`` would move them to the
    GPU, where ``set_rng_state`` refuses them), and ``load_state_dict`` copies weights and optimizer
    state to the pack's device."""
    return torch.load(path, weights_only=True, map_location="cpu")
