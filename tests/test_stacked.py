"""StackedHybrid: K hybrids as one module, against the lone models, in both its forms (batched, as on a
GPU, and per member, as on the CPU); members are separable; their weights move in and out exactly."""

import pytest
import torch

from hybridlens.models import GRID, build
from hybridlens.models.stacked import stack, why_not_stackable


def _members(name, task, activations=("relu", "exp", "exp")):
    return [build(name, task, a, seed=s) for s, a in enumerate(activations)]


def _onehot(*shape):
    return torch.nn.functional.one_hot(torch.randint(0, 4, (*shape, 200)), 4).float().transpose(-1, -2)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("task", ["task1", "task2"])
@pytest.mark.parametrize("name", list(GRID))
def test_stacked_forward_and_gradients_are_the_members(name, task, batched):
    """Eval on one shared batch, training on each member's own batch with dropout (each member's masks
    from its own generator, as the lone model draws them from the global one): outputs within 1e-4,
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
    lone = []
    for i, m in enumerate(members):
        torch.manual_seed(100 + i)
        lone.append(m(xs[i]))
    st.set_generators([torch.Generator().manual_seed(100 + i) for i in range(3)])
    out = st(xs)
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
