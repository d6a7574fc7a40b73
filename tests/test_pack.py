"""Packs: the stacked route is each member's own training (step by step against the lone trainer, and
member-separable), members stop and diverge on their own, a pack resumes exactly; the sequential route
is the lone trainer bit for bit."""

import copy

import pytest
import torch

from hybridlens.models import build
from hybridlens.study.pack import PackTrainer
from hybridlens.study.simulate import simulate_task1
from hybridlens.study.train import Diverged, TensorData, TrainConfig, Trainer, seed_everything
from tests.test_train import ScriptedTrainer


@pytest.fixture(scope="module")
def tiny():
    return TensorData(simulate_task1(num_seqs=600, seed=11))


@pytest.fixture(scope="module")
def seven():
    """700 training rows: an epoch is 7 steps, so 20 steps cross two epoch boundaries."""
    return TensorData(simulate_task1(num_seqs=1000, seed=12))


CELLS = [("C24-Att", "exp", 0), ("C24-Att", "relu", 1), ("C24-Att", "exp", 2)]


def _trainer(data, arch, act, seed, **cfg):
    seed_everything(seed)
    return Trainer(build(arch, "task1", act, seed=seed), data, TrainConfig(seed=seed, **cfg))


def _solo(data, cell, epochs, **cfg):
    return _trainer(data, *cell, epochs=epochs, **cfg).fit()


def _pack(data, cells, epochs, route="auto", **cfg):
    pack = PackTrainer(route)
    for cell in cells:
        pack.add(_trainer(data, *cell, epochs=epochs, **cfg))
    return pack


def _history(pack):
    hist = [[] for _ in pack.members]
    while not pack.done:
        for h, r in zip(hist, pack.step()):
            if isinstance(r, dict):
                h.append(r)
    return hist


def _close(a: dict, b: dict, tol: float):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=tol), (k, a[k], b[k])


# ---------------------------------------------------------------------------------- the stacked route
def _steps_beside_a_lone_trainer(data, cells, steps, batched=None):
    """Train a pack of ``cells`` step by step; after each step a lone one-model trainer per member takes
    the member's state from before it (weights, BatchNorm statistics, Adam moments and step), the same
    batch and the member's dropout masks of that step (:func:`tests.test_stacked.given_masks`: a stack
    draws its members' masks in its own layout, not a lone model's). Yields, per step and member: the
    lone trainer after its step, the member's gradients, first moments and state after the pack's step,
    its loss and the lone one's, and a lone model moved by PyTorch's Adam along the member's own gradient
    from the same state."""
    from hybridlens.study.train_step import TrainStep
    from tests.test_stacked import given_masks

    dtype = data.splits["train"][0].dtype
    pack = PackTrainer(batched=batched)
    for cell in cells:
        tr = _trainer(data, *cell, epochs=3)
        tr.model.to(dtype)
        pack.add(tr)
    st = pack._stack_for(pack.members)
    st.module.keep_masks()
    x, y = data.splits["train"]
    perms = [torch.randperm(x.shape[0], generator=m.trainer.generator) for m in pack.members]
    for step in range(steps):
        start = (step * 100) % (x.shape[0] // 100 * 100)
        idx = torch.stack([p[start : start + 100] for p in perms]).to(x.device)
        before = [(st.module.member(i), st.optimizer.member_state(i, m.trainer.model)) for i, m in enumerate(pack.members)]
        st.module.train()
        st.step.begin_epoch()
        st.step(idx)
        masks = st.module.last_masks
        for i, (cell, (weights, adam)) in enumerate(zip(cells, before)):

            def lone_from_state():
                lone = _trainer(data, *cell, epochs=3)
                lone.model.to(dtype)
                lone.model.load_state_dict(weights)
                lone.optimizer.load_state_dict(copy.deepcopy(adam))
                lone.model.train()
                return lone

            lone = lone_from_state()
            one = TrainStep(lone.model, lone.loss_fn, lone.optimizer, x, y, 100)
            one.begin_epoch()
            with given_masks(lone.model, [m[i] for m in masks]):
                one(idx[i])
            grads = st.optimizer._member_slices(i, st.optimizer.grad)
            adam_only = lone_from_state()
            for name, p in adam_only.model.named_parameters():
                p.grad = grads[name].clone()
            adam_only.optimizer.step()
            yield (
                step,
                i,
                lone,
                {
                    "loss": (float(st.step.loss_sum[i]), float(one.loss_sum)),
                    "grads": grads,
                    "moments": st.optimizer._member_slices(i, st.optimizer.exp_avg),
                    "after": st.module.member(i),
                    "adam_only": adam_only,
                },
            )


def _double(data: TensorData) -> TensorData:
    out = copy.copy(data)
    out.splits = {k: (x.double(), y.double()) for k, (x, y) in data.splits.items()}
    return out


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-member"])
@pytest.mark.parametrize("arch", ["C24-Att", "C4C6-LSTM-Trans1", "C4-Trans2"])
def test_each_stacked_step_is_the_members_own_step_in_float64(seven, arch, batched):
    """In float64, where rounding cannot decide a ReLU's or a max-pool's side, in both forms of the stack
    (batched, the GPU's; per member, the CPU's): 20 steps across two epoch
    boundaries, dropout on, members exp and relu; every step's loss, gradients and first moments, and the
    weights and BatchNorm statistics after it, are the lone trainer's to 1e-9 of their scale (gradients:
    1e-12 absolute at least, the rounding noise of the parameters whose gradient is 0 in exact arithmetic,
    below 1e-10 here: the attention key biases, a softmax being blind to a per-query shift, and biases
    whose shift the dense head's BatchNorm removes (the last LayerNorm's); such a gradient is all noise, which Adam, dividing a gradient by its
    own size, turns into steps either way, so their values are not compared)."""
    check_steps_float64(_steps_beside_a_lone_trainer(_double(seven), [(arch, "exp", 0), (arch, "relu", 1)], 20, batched))


def check_steps_float64(steps) -> None:
    """The float64 checks of :func:`test_each_stacked_step_is_the_members_own_step_in_float64` on
    :func:`_steps_beside_a_lone_trainer`'s steps (the GPU tests run them too)."""
    for step, i, lone, got in steps:
        assert got["loss"][0] == pytest.approx(got["loss"][1], rel=1e-12)
        noise = set()
        for name, p in lone.model.named_parameters():
            scale = float(p.grad.abs().max())
            if scale < 1e-10:
                noise.add(name)
            tol = 1e-9 * scale + 1e-12
            assert float((got["grads"][name] - p.grad).abs().max()) <= tol, f"step {step} member {i} {name} gradient"
            assert float((got["moments"][name] - lone.optimizer.state[p]["exp_avg"]).abs().max()) <= tol, f"{name} moment"
        for name, t in lone.model.state_dict().items():
            if name in noise:
                continue
            tol = 1e-9 * (float(t.double().abs().max()) + 1e-6)
            assert float((got["after"][name].double() - t.double()).abs().max()) <= tol, f"step {step} member {i} {name}"


@pytest.mark.parametrize("arch", ["C24-Att", "C4C6-LSTM-Trans1", "C4-Trans2"])
def test_each_stacked_step_is_the_members_own_step_in_float32(seven, arch):
    """float32, 20 steps across two epoch boundaries, dropout on, members exp and relu. Every step's loss
    is the lone trainer's (1e-6); the whole gradient's relative L2 distance from the lone trainer's is
    at most 1e-5 in the typical (median) step and 5e-2 in any: where a pre-activation sits within 1e-7
    of a ReLU's or a max-pool's kink, the two float32 computations may take different sides, and one
    sequence's share of the batch's gradient moves (seen in C4-Trans2: one step of 20, 6e-3 to 1.4e-2
    depending on the stack's member order). BatchNorm statistics after every
    step match to 1e-5 of their scale, and PyTorch's Adam, given the member's own gradient from the same
    state, moves the weights where the pack moved them (1e-6 of their scale). (Weights are not compared
    across the two gradients: Adam divides a gradient by its own size, so where a gradient is rounding
    noise, as the attention key biases' is, it steps +-lr either way.)"""
    cells = [(arch, "exp", 0), (arch, "relu", 1)]
    distances = []
    for step, i, lone, got in _steps_beside_a_lone_trainer(seven, cells, 20):
        assert got["loss"][0] == pytest.approx(got["loss"][1], rel=1e-6)
        diff = sum(float(((got["grads"][n] - p.grad) ** 2).sum()) for n, p in lone.model.named_parameters())
        norm = sum(float((p.grad**2).sum()) for _, p in lone.model.named_parameters())
        distances.append((diff / norm) ** 0.5)
        for name, t in lone.model.named_buffers():
            tol = 1e-5 * (float(t.float().abs().max()) + 1e-6)
            assert float((got["after"][name].float() - t.float()).abs().max()) <= tol, f"step {step} member {i} {name}"
        for name, p in got["adam_only"].model.named_parameters():
            tol = 1e-6 * float(p.detach().abs().max()) + 1e-12
            assert float((got["after"][name] - p.detach()).abs().max()) <= tol, f"step {step} member {i} {name} Adam"
    assert sorted(distances)[len(distances) // 2] <= 1e-5 and max(distances) <= 5e-2, distances


def _pack64(data, cells, epochs, route="auto", **cfg):
    """:func:`_pack` in float64 (models and data)."""
    pack = PackTrainer(route)
    for cell in cells:
        tr = _trainer(data, *cell, epochs=epochs, **cfg)
        tr.model.double()
        pack.add(tr)
    return pack


def test_a_member_is_what_it_is_in_a_pack_of_its_own(seven):
    """Member-separable: 3 epochs (21 steps) of each member in a stacked pack of 3 equal, metric for
    metric and weight for weight, that member alone in a stacked pack of one (float64, 1e-9: in float32
    the packs' different kernel shapes round differently, and attention amplifies that over epochs)."""
    data = _double(seven)
    three = _pack64(data, CELLS, 3, route="stacked")
    hist = _history(three)
    for i, cell in enumerate(CELLS):
        one = _pack64(data, [cell], 3, route="stacked")
        for a, b in zip(hist[i], _history(one)[0]):
            _close(a, b, 1e-9)
        for name, t in one.members[0].trainer.model.state_dict().items():
            torch.testing.assert_close(three.members[i].trainer.model.state_dict()[name], t, rtol=1e-9, atol=1e-9)


def _without_dropout(trainer: Trainer) -> Trainer:
    for m in trainer.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return trainer


def test_a_stacked_pack_tracks_the_lone_trainers(seven):
    """Without attention (whose early gradients are rounding noise that Adam, dividing by their size,
    turns into different steps) and without dropout (a stack draws its members' masks in its own
    layout, not a lone model's: the step-by-step proofs above give the lone model the member's masks),
    three epochs of a stacked C24 member stay within 1e-4 of the lone trainer's metrics."""
    cells = [("C24", "exp", 0), ("C24", "relu", 1)]
    pack = PackTrainer()
    for cell in cells:
        pack.add(_without_dropout(_trainer(seven, *cell, epochs=3)))
    hist = _history(pack)
    for cell, h in zip(cells, hist):
        for a, b in zip(h, _without_dropout(_trainer(seven, *cell, epochs=3)).fit()):
            _close(a, b, 1e-4)


def test_same_config_same_metrics_twice(tiny):
    assert _history(_pack(tiny, CELLS, 2)) == _history(_pack(tiny, CELLS, 2))


def test_member_schedules_follow_their_own_metrics(tiny):
    """Scripted validation metrics per member: each member's LR drops and early stop are the epochs the
    one-model Trainer chooses for the same sequence."""
    scripts = [[0.8] * 30, [0.5, 0.6, 0.7] + [0.7] * 27, [0.5 + 0.01 * i for i in range(30)]]
    cfg = TrainConfig(epochs=30, monitor="val_auroc", plateau_patience=4, early_stopping_patience=10)

    def scripted(script):
        return ScriptedTrainer(script, build("C24", "task1", "relu", seed=0), tiny, cfg)

    pack = PackTrainer()
    for s in scripts:
        pack.add(scripted(s))
    hist = _history(pack)
    assert pack.stacked
    for s, h in zip(scripts, hist):
        solo = scripted(s).fit()
        assert [(x["epoch"], x["lr"]) for x in h] == [(x["epoch"], x["lr"]) for x in solo]
    assert [len(h) for h in hist] == [11, 13, 30]  # two stop early, one improves to the end


def test_a_stopped_or_diverging_member_leaves_the_others_as_they_were(seven):
    """Member 1's weights are NaN (it diverges in epoch 1) and member 3 stops early after epoch 2 (its
    scripted validation metric falls, patience 1): both are set aside, the stopped one with its weights
    as they were, and members 0 and 2 train as in a pack without them (float64, 1e-9)."""
    data = _double(seven)
    pack = _pack64(data, CELLS, 3)
    with torch.no_grad():
        for p in pack.members[1].trainer.model.parameters():
            p.fill_(float("nan"))
    seed_everything(3)
    cfg = TrainConfig(seed=3, epochs=3, early_stopping_patience=1)
    pack.add(ScriptedTrainer([0.6, 0.5, 0.4], build("C24-Att", "task1", "relu", seed=3).double(), data, cfg))
    assert pack.stacked
    first = pack.step()
    assert isinstance(first[1], Diverged) and "training loss is nan at epoch 1" in str(first[1])
    second = pack.step()
    assert pack.members[3].trainer.stopped_early and not pack.members[3].active
    stopped = {k: v.clone() for k, v in pack.members[3].trainer.model.state_dict().items()}
    third = pack.step()
    assert third[1] is None and third[3] is None and pack.done and pack.members[0].trainer.epoch == 3
    assert all(torch.equal(v, stopped[k]) for k, v in pack.members[3].trainer.model.state_dict().items())
    pair = _history(_pack64(data, [CELLS[0], CELLS[2]], 3))
    for i, p in zip((0, 2), pair):
        for a, b in zip([first[i], second[i], third[i]], p):
            _close(a, b, 1e-9)


def test_resume_a_pack_from_its_state(tiny):
    """A checkpoint round trip after epoch 1 of 3 (through torch.save and back): the resumed pack's
    epochs 2-3 are the uninterrupted pack's, bit for bit, and its members' states are a lone trainer's."""
    import io

    full = _history(_pack(tiny, CELLS, 3))
    a = _pack(tiny, CELLS, 3)
    first = [a.step()]
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(999)  # a new worker's global RNG
    b = _pack(tiny, CELLS, 3)
    state = torch.load(buf, weights_only=True)
    b.load_state_dict(state)
    rest = _history(b)
    for i in range(len(CELLS)):
        assert [f[i] for f in first] + rest[i] == full[i]
    lone = _trainer(tiny, *CELLS[0], epochs=3)
    lone.load_state_dict(state["members"][0])  # a pack member's state is a one-model trainer's
    assert lone.epoch == 1 and float(lone.optimizer.state_dict()["state"][0]["step"]) == 5  # 420 rows: 5 batches


def test_resume_right_after_a_rate_drop_keeps_the_new_rate(tiny):
    """A plateau that drops every member's rate at epoch 2 (no epoch after the first counts as an
    improvement): the checkpoint written then holds the new rate, and the resumed epochs 3-4 are the
    uninterrupted pack's (the stack's optimizer held the epoch's starting rate, and a resume trained
    the next epoch 5x too fast)."""
    import io

    cfg = dict(plateau_patience=1, plateau_min_delta=10.0, early_stopping_patience=None)
    full = _history(_pack(tiny, CELLS, 4, **cfg))
    assert [r["lr"] for r in full[0]] == pytest.approx([1e-3, 1e-3, 2e-4, 4e-5])  # the rate each epoch ran at
    a = _pack(tiny, CELLS, 4, **cfg)
    first = [a.step(), a.step()]
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert [s["optimizer"]["param_groups"][0]["lr"] for s in state["members"]] == pytest.approx([2e-4] * 3)
    b = _pack(tiny, CELLS, 4, **cfg)
    b.load_state_dict(state)
    rest = _history(b)
    for i in range(len(CELLS)):
        assert [f[i] for f in first] + rest[i] == full[i]


def test_a_pack_checkpoint_loads_its_random_states_onto_the_cpu(tiny, tmp_path):
    """``load_pack_state`` (what a resumed trial uses) keeps the random states CPU byte tensors, as
    ``set_rng_state`` needs them, whatever device the pack trains on; the pack resumes exactly."""
    from hybridlens.study.pack import load_pack_state

    full = _history(_pack(tiny, CELLS, 3))
    a = _pack(tiny, CELLS, 3)
    first = [a.step()]
    torch.save(a.state_dict(), tmp_path / "pack.pt")
    state = load_pack_state(tmp_path / "pack.pt")
    for s in state["members"]:
        for key in ("torch_rng", "generator"):
            assert s[key].device.type == "cpu" and s[key].dtype == torch.uint8
    b = _pack(tiny, CELLS, 3)
    b.load_state_dict(state)
    rest = _history(b)
    for i in range(len(CELLS)):
        assert [f[i] for f in first] + rest[i] == full[i]


# ------------------------------------------------------------------------------ the sequential route
def test_pack_of_one_is_the_one_model_trainer(tiny):
    pack = _pack(tiny, CELLS[:1], 3)
    assert not pack.stacked and _history(pack) == [_solo(tiny, CELLS[0], 3)]


def test_the_sequential_route_trains_each_member_exactly_as_alone(tiny):
    """Own data order, own dropout stream: a pack of 3 one after another gives each cell its solo
    metrics, bit for bit (the route of models the stack cannot take)."""
    pack = _pack(tiny, CELLS, 3, route="sequential")
    hist = _history(pack)
    for cell, h in zip(CELLS, hist):
        assert h == _solo(tiny, cell, 3)
    assert hist[0] != hist[2]  # same activation, other seed: other numbers


@pytest.mark.slow
def test_every_member_of_a_pack_learns():
    """A stacked pack of 3 on a small Task 1 dataset (the one-model learning test's: 10,000 sequences,
    20 epochs, exp): validation AUROC clearly above chance for each member."""
    torch.set_num_threads(2)
    data = TensorData(simulate_task1(num_seqs=10000, seed=7))
    cells = [("C24", "exp", 0), ("C24", "exp", 1), ("C24", "exp", 2)]
    pack = _pack(data, cells, 20)
    _history(pack)
    assert pack.stacked
    aurocs = [m.trainer.evaluate("valid")["auroc"] for m in pack.members]
    print("pack of 3, val AUROC after 20 epochs:", [f"{a:.3f}" for a in aurocs])
    assert min(aurocs) > 0.7


def test_pack_mates_with_other_auc_methods_keep_their_own(tiny):
    """train.auc is a grid axis that does not split packs: an exact and a keras member of one stacked
    pack each record the metrics their own method gives (a lone trainer's metrics_from on the member's
    own logits), not the first member's."""
    cells = [("C24", "exp", 0), ("C24", "relu", 1)]
    pack = PackTrainer()
    for cell, auc in zip(cells, ("exact", "keras")):
        pack.add(_trainer(tiny, *cell, epochs=1, auc=auc))
    results = pack.step()
    assert pack.stacked
    for m, r in zip(pack.members, results):
        own = m.trainer.evaluate("valid")  # the member's model holds the epoch's weights; its own method
        assert (r["val_auroc"], r["val_aupr"]) == pytest.approx((own["auroc"], own["aupr"]), abs=1e-6)
    assert results[0]["val_auroc"] != results[1]["val_auroc"]
