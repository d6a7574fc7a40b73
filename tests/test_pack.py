"""Packs: every member trains as it would alone, stops and diverges on its own, resumes exactly."""

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


CELLS = [("C24-Att", "exp", 0), ("C24-Att", "relu", 1), ("C24-Att", "exp", 2)]


def _trainer(data, arch, act, seed, **cfg):
    seed_everything(seed)
    return Trainer(build(arch, "task1", act, seed=seed), data, TrainConfig(seed=seed, **cfg))


def _solo(data, cell, epochs, **cfg):
    return _trainer(data, *cell, epochs=epochs, **cfg).fit()


def _pack(data, cells, epochs, **cfg):
    pack = PackTrainer()
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


def test_pack_of_one_is_the_one_model_trainer(tiny):
    assert _history(_pack(tiny, CELLS[:1], 3)) == [_solo(tiny, CELLS[0], 3)]


def test_each_member_trains_exactly_as_alone(tiny):
    """Own data order, own dropout stream: a pack of 3 gives each cell its solo metrics, bit for bit."""
    hist = _history(_pack(tiny, CELLS, 3))
    for cell, h in zip(CELLS, hist):
        assert h == _solo(tiny, cell, 3)
    assert hist[0] != hist[2]  # same activation, other seed: other numbers


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
    for s, h in zip(scripts, hist):
        solo = scripted(s).fit()
        assert [(x["epoch"], x["lr"]) for x in h] == [(x["epoch"], x["lr"]) for x in solo]
    assert [len(h) for h in hist] == [11, 13, 30]  # two stop early, one improves to the end


def test_a_diverging_member_is_set_aside_the_others_finish(tiny):
    pack = PackTrainer()
    pack.add(_trainer(tiny, "C24", "exp", 0, epochs=3))
    pack.add(_trainer(tiny, "C24", "exp", 1, epochs=3, lr=1e4))
    pack.add(_trainer(tiny, "C24", "relu", 2, epochs=3))
    first = pack.step()
    assert isinstance(first[1], Diverged) and "training loss is nan at epoch 1" in str(first[1])
    rest = [pack.step() for _ in range(2)]
    assert all(r[1] is None for r in rest) and all(isinstance(r[0], dict) and isinstance(r[2], dict) for r in rest)
    assert pack.done and pack.members[1].diverged and pack.members[0].trainer.epoch == 3


def test_resume_a_pack_from_its_state(tiny):
    full = _history(_pack(tiny, CELLS, 4))
    a = _pack(tiny, CELLS, 4)
    first = [a.step() for _ in range(2)]
    state = a.state_dict()
    torch.manual_seed(999)  # a new worker's global RNG
    b = _pack(tiny, CELLS, 4)
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


@pytest.mark.slow
def test_every_member_of_a_pack_learns():
    """A pack of 3 on a small Task 1 dataset (the one-model learning test's: 10,000 sequences, 20 epochs,
    exp): validation AUROC clearly above chance for each member."""
    torch.set_num_threads(2)
    data = TensorData(simulate_task1(num_seqs=10000, seed=7))
    cells = [("C24", "exp", 0), ("C24", "exp", 1), ("C24", "exp", 2)]
    pack = _pack(data, cells, 20)
    _history(pack)
    aurocs = [m.trainer.evaluate("valid")["auroc"] for m in pack.members]
    print("pack of 3, val AUROC after 20 epochs:", [f"{a:.3f}" for a in aurocs])
    assert min(aurocs) > 0.7
