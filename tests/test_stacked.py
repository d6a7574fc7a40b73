"""StackedHybrid: K hybrids as one module, against the lone models, in both its forms (batched, as on a
GPU, and per member, as on the CPU); members are separable; their weights move in and out exactly."""

import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hybridlens.models import GRID, build
from hybridlens.models.blocks import BiLSTM
from hybridlens.models.stacked import StackedBiLSTM, _Recurrence, stack, why_not_stackable


@contextlib.contextmanager
def given_masks(model: torch.nn.Module, masks: list[torch.Tensor]):
    """Inside, every call of one of ``model``'s ``nn.Dropout`` modules multiplies its input by the next
    of ``masks`` (a stack member's, in forward order: :attr:`StackedHybrid.last_masks`) instead of its own."""
    queue = list(masks)

    def hook(module, inputs, output):
        return inputs[0] * queue.pop(0)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    try:
        yield
        assert not queue, f"{len(queue)} masks left over: the lone model has fewer dropout calls than the stack"
    finally:
        for h in handles:
            h.remove()


def _members(name, task, activations=("relu", "exp", "exp")):
    return [build(name, task, a, seed=s) for s, a in enumerate(activations)]


def _onehot(*shape):
    return torch.nn.functional.one_hot(torch.randint(0, 4, (*shape, 200)), 4).float().transpose(-1, -2)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("task", ["task1", "task2"])
@pytest.mark.parametrize("name", list(GRID))
def test_stacked_forward_and_gradients_are_the_members(name, task, batched):
    """Eval on one shared batch, training on each member's own batch with dropout (each lone model given
    its member's masks, call by call): outputs within 1e-4,
    gradients within 1e-4 of each tensor's scale (1e-5 absolute for the gradients that are 0 in exact
    arithmetic and rounding noise, up to about 1e-6, in either computation)."""
    torch.manual_seed(0)
    members = _members(name, task)
    st = stack(members, batched=batched)
    x = _onehot(6)
    for m in members:
        m.eval()
    st.eval()
    with torch.no_grad():
        torch.testing.assert_close(st(x), torch.stack([m(x) for m in members]), rtol=0, atol=1e-4)
    for m in members:
        m.train()
    st.train()
    xs = _onehot(3, 5)
    st.set_generators([torch.Generator().manual_seed(100 + i) for i in range(3)])
    st.keep_masks()
    out = st(xs)
    assert st.last_masks and all(m.shape[:2] == (3, 5) for m in st.last_masks)
    lone = []
    for i, m in enumerate(members):
        with given_masks(m, [mask[i] for mask in st.last_masks]):
            lone.append(m(xs[i]))
    torch.testing.assert_close(out, torch.stack(lone), rtol=0, atol=1e-4)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    (torch.stack(lone) * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    for key, t, slicer in st.slots():
        if not t.requires_grad:
            continue
        for i, m in enumerate(members):
            ref = m.get_parameter(key).grad
            scale = float(ref.abs().max())
            # a gradient this small is 0 in exact arithmetic (the attention key biases: a softmax is blind
            # to a per-query shift; the last LayerNorm's bias: the dense head's BatchNorm removes its shift)
            tol = 1e-5 if scale < 1e-4 else 1e-4 * scale
            assert float((slicer(t.grad, i) - ref).abs().max()) <= tol, (key, i)


def test_members_move_in_and_out_exactly_and_alone():
    """member(k) is member k's state dict, bit for bit (BatchNorm statistics after training steps too);
    load_member writes one member without touching the others; a NaN member leaves the others' outputs
    as they were (every operation is member-separable)."""
    members = _members("C4C6-LSTM-Trans2", "task1")
    st = stack(members, batched=True)
    st.set_generators([torch.Generator().manual_seed(i) for i in range(3)])
    st(_onehot(3, 4))  # a training forward: BatchNorm statistics move
    before = [st.member(i) for i in range(3)]
    fresh = build("C4C6-LSTM-Trans2", "task1", "exp", seed=9).state_dict()
    st.load_member(1, fresh)
    after = [st.member(i) for i in range(3)]
    assert all(torch.equal(after[1][k], v) for k, v in fresh.items())
    assert all(torch.equal(after[i][k], before[i][k]) for i in (0, 2) for k in fresh)
    st.eval()
    x = _onehot(5)
    with torch.no_grad():
        clean = st(x)
        st.load_member(1, {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in fresh.items()})
        poisoned = st(x)
    assert torch.isnan(poisoned[1]).all() and torch.equal(poisoned[0], clean[0]) and torch.equal(poisoned[2], clean[2])
    lone = build("C4C6-LSTM-Trans2", "task1", "relu", seed=0)
    lone.load_state_dict(st.member(0))  # a member is a plain Hybrid, as the analysis loads it


def test_what_cannot_be_stacked_says_why():
    assert why_not_stackable(_members("C24", "task1")) is None
    assert "differ in architecture or sizes" in why_not_stackable([build("C24", "task1"), build("C4C6", "task1")])
    assert "differ in architecture or sizes" in why_not_stackable([build("C24", "task1"), build("C24", "task1", filters=16)])
    assert "no stacked form" in why_not_stackable([torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)])


def test_dropout_masks_are_each_members_own_stream():
    """A member's masks come from its own generator only: the same in a stack of 3 as in a stack of its
    own (separable) and again from the same generator state (reproducible); the kept fraction is 1 - p
    (within 5 binomial standard deviations at every site, a false alarm in about 1 of 300,000 runs of 10
    sites; over 200 site draws of other seeds the deviations measured 0.96 standard deviations wide, as
    independent draws are) and kept entries are 1 / (1 - p)."""
    members = _members("C4C6-LSTM-Trans2", "task1")
    xs = _onehot(3, 64)

    def masks(models, seeds, x):
        st = stack(models, [torch.Generator().manual_seed(s) for s in seeds])
        st.keep_masks()
        st(x)
        return st.last_masks, st.dropout_sites(x)

    three, sites = masks(members, [10, 11, 12], xs)
    alone, _ = masks(members[1:2], [11], xs[1:2])
    again, _ = masks(members[1:2], [11], xs[1:2])
    assert len(three) == len(sites) == 10  # stage 1 twice, the BiLSTM's, 2 blocks x 3, the head
    for m3, m1, m1b, (p, shape) in zip(three, alone, again, sites):
        assert torch.equal(m3[1], m1[0]) and torch.equal(m1[0], m1b[0])
        assert m3.shape[2:] == shape
        kept = m3 != 0
        n = kept.numel()
        assert abs(float(kept.double().mean()) - (1 - p)) <= 5 * (p * (1 - p) / n) ** 0.5
        torch.testing.assert_close(m3[kept], torch.full_like(m3[kept], 1 / (1 - p)))
    assert not torch.equal(three[0][0], three[0][1])  # other generators, other masks


def test_the_batched_recurrence_is_autograds():
    """The recurrence's written-out backward pass against autograd's numerical Jacobian (float64)."""
    torch.manual_seed(0)
    gates = torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(2, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(_Recurrence.apply, (gates, w_hh))


class _Counts(TorchDispatchMode):
    """Every aten op dispatched (views included), and the bytes of every output that is not a view."""

    def __init__(self):
        super().__init__()
        self.ops, self.bytes = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        if not func.is_view:
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor):
                    self.bytes += t.numel() * t.element_size()
        return out


def _lstm_traffic(steps: int) -> tuple[int, int]:
    """Ops and bytes written by a forward and backward pass of the batched stacked BiLSTM (4 members,
    batch 100, 128 inputs, 64 units per direction) over ``steps`` positions."""
    torch.manual_seed(0)
    st = StackedBiLSTM([BiLSTM(128, 64) for _ in range(4)])
    st.batched = True
    x = torch.randn(4, 100, steps, 128, requires_grad=True)
    with _Counts() as counts:
        st(x).sum().backward()
    return counts.ops, counts.bytes


def test_the_batched_bilstm_moves_bytes_linear_in_its_positions():
    """Forward and backward, every aten op counted: bytes written grow linearly with the positions (50
    over 8 positions: 6.25 for a purely linear cost; the loop through autograd wrote a full-size gradient
    of the gate inputs at every step, 24.8x), and each position costs fewer ops than the 44 it did."""
    ops8, bytes8 = _lstm_traffic(8)
    ops50, bytes50 = _lstm_traffic(50)
    per_step = (ops50 - ops8) / 42
    print(f"stacked BiLSTM: {per_step:.1f} ops per position, bytes T=50 / T=8 = {bytes50 / bytes8:.2f}")
    assert bytes50 / bytes8 <= 8
    assert per_step < 44


@pytest.mark.parametrize("name", ["C24-Att", "C4C6-LSTM-Trans2", "C4-Trans1"])
def test_export_is_every_members_state_at_once(name):
    """export()[key][k] is member(k)[key], bit for bit, for every key and member (after a training
    forward, so BatchNorm statistics and counts have moved), contiguous as a saved state dict must be."""
    members = _members(name, "task1")
    st = stack(members, [torch.Generator().manual_seed(i) for i in range(3)], batched=True)
    st(_onehot(3, 4))
    export = st.export()
    for k in range(3):
        own = st.member(k)
        assert export.keys() == own.keys()
        for key, t in own.items():
            assert export[key][k].is_contiguous() and torch.equal(export[key][k], t), (k, key)


def test_the_batched_bilstm_under_bfloat16_autocast_keeps_a_float32_state():
    """The batched stacked BiLSTM inside bfloat16 autocast (the CPU's own: the trainer uses it on a GPU):
    matmuls in bfloat16, outputs bfloat16, the weights' gradients float32, and outputs and gradients the
    float32 computation's to bfloat16's rounding (8 mantissa bits; the state itself stays float32, so
    the error does not grow along the 50 positions: 3e-2 of the largest value at any position)."""
    torch.manual_seed(0)
    st = StackedBiLSTM([BiLSTM(32, 16) for _ in range(2)])
    st.batched = True
    x = torch.randn(2, 8, 50, 32)
    ref = st(x)
    ref_grads = torch.autograd.grad((ref * torch.linspace(-1, 1, ref.numel()).view_as(ref)).sum(), list(st.parameters()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = st(x)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad((out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), list(st.parameters()))
    assert all(g.dtype == torch.float32 for g in grads)
    err = ((out.float() - ref).abs().amax(dim=(0, 1, 3)) / ref.abs().max()).detach()  # per position
    assert float(err.max()) < 3e-2 and float(err[-10:].mean()) < 3 * float(err[:10].mean()) + 1e-3
    for g, r in zip(grads, ref_grads):
        assert float((g - r).abs().max()) <= 5e-2 * float(r.abs().max())
