"""GPU checks (marked ``gpu``; skipped without CUDA): every model on the device, CPU/GPU agreement, the
CUDA-graph training step against the eager one, checkpoints, capture failures and packs.

A failed capture turns CUDA graphs off for the rest of its process (``study/train_step.py``), so every
test that captures runs its body (a ``_case_*`` function) in a fresh interpreter: one failure cannot
decide the tests after it. These tests need torch, numpy and the models only (no Ray, MLflow or JASPAR),
so ``benchmarks/gpu_check.py`` runs them on a bare GPU machine.
"""

import logging
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridlens.models import ARCHITECTURES, GRID, build
from hybridlens.study.simulate import simulate_planted
from hybridlens.study.train import TensorData, TrainConfig, Trainer, seed_everything

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


def _isolated(case: str, *args, timeout: float = 900) -> None:
    """Run ``_case_*`` function ``case(*args)`` of this file in its own Python process; fail with its output."""
    code = f"import tests.test_gpu as t; t.{case}(*{args!r})"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{case}{args} failed in its own process:\n{r.stdout[-2000:]}\n{r.stderr[-6000:]}"


def _full_float32() -> None:
    """cuDNN and cuBLAS may use TF32 on Ampere and newer (about 1e-3 relative error), and cuDNN's weight
    gradients may sum with atomics; comparisons between two ways of computing the same thing need full,
    deterministic float32."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True  # no atomics in cuDNN's weight gradients


def _cuda_data(num_seqs: int = 3000, num_outputs: int = 1) -> TensorData:
    """The planted stand-in on the GPU (no JASPAR on a bare GPU machine)."""
    return TensorData(simulate_planted(num_seqs=num_seqs, num_outputs=num_outputs, seed=1), "cuda")


def _trainer(name, data, seed=0, act="relu", task="task2", **cfg) -> Trainer:
    seed_everything(seed)
    return Trainer(build(name, task, act, seed=seed), data, TrainConfig(seed=seed, monitor="val_auroc", **cfg))


def _assert_close_histories(a: list[dict], b: list[dict], atol: float = 1e-4) -> None:
    """Epoch metrics equal to ``atol`` (default 1e-4: float32 losses and AUCs of two computations of the
    same steps, whose kernels may round differently, after a few epochs; float64 comparisons pass 1e-9)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k] == pytest.approx(y[k], abs=atol), (k, x, y)


# ------------------------------------------------------------------------------ models on the device
@pytest.mark.parametrize("task", ["task1", "task2"])
@pytest.mark.parametrize("name", list(GRID))
def test_model_on_gpu_matches_cpu(name, task, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = build(name, task, "exp", seed=0).eval()
    gpu = build(name, task, "exp", seed=0).cuda().eval()
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (16, 200)), 4).float().transpose(1, 2)
    with torch.no_grad():  # TF32 off: float32 on both, in other summation orders, through ~10 layers: 1e-4
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), rtol=1e-4, atol=1e-4)
    gpu.train()
    gpu(x.cuda()).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in gpu.parameters())


def test_saliency_through_lstm_on_gpu_matches_cpu(monkeypatch):
    """cuDNN refuses the backward pass through an LSTM in eval mode; grad_times_input turns cuDNN
    off for it, and then agrees with the CPU."""
    from hybridlens.analysis.saliency import grad_times_input

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu = build("C4-Trans2", "task2", "exp", seed=0).eval()
    gpu = build("C4-Trans2", "task2", "exp", seed=0).cuda().eval()
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (64, 200)), 4).float().transpose(1, 2)
    with pytest.raises(RuntimeError, match="cudnn RNN backward can only be called in training mode"):
        xg = x.cuda().requires_grad_(True)
        torch.autograd.grad(torch.sigmoid(gpu(xg)).sum(), xg)
    # a gradient through a BiLSTM and two transformer blocks, float32 on both in other orders: 1e-3 relative
    np.testing.assert_allclose(grad_times_input(gpu, x), grad_times_input(cpu, x), rtol=1e-3, atol=1e-6)


def test_every_architecture_captures_on_both_tasks():
    """Both routes a study trains by: the one-model trainer for every architecture (the hybrids and the
    lab's CNNs) and a stacked pack of two for every hybrid (the lab's CNNs have no stacked form)."""
    from hybridlens.study.capture_check import capture_check

    probes = [(a, t, "trainer") for t in ("task1", "task2") for a in ARCHITECTURES]
    probes += [(a, t, "pack") for t in ("task1", "task2") for a in GRID]
    results = capture_check(probes)
    failed = [
        f"{r['architecture']} {r['task']} {r['route']}: {r['path']} ({r['reason']})" for r in results if r["path"] != "cuda-graph"
    ]
    assert len(results) == len(probes) and not failed, "\n".join(failed)


# ------------------------------------------------------------------------------ the CUDA-graph step
def _case_trainer_learns(name):
    tr = _trainer(name, _cuda_data(), epochs=10)
    hist = tr.fit()
    assert all(math.isfinite(h["train_loss"]) for h in hist)
    assert tr.train_path == ("cuda-graph", None)
    assert tr.evaluate("valid")["auroc"] > 0.8


@pytest.mark.parametrize("name", ["C24", "C4-Trans2"])
def test_trainer_learns_on_gpu(name):
    _isolated("_case_trainer_learns", name)


def _steps(name, data, graph, *, rows, lr=1e-3):
    """A TrainStep with capturable Adam, after ``torch.manual_seed(0)`` (the dropout stream), stepping
    through ``rows`` (lists of row indices); its losses and model."""
    from hybridlens.study.train_step import TrainStep, make_adam

    x, y = data.splits["train"]
    model = build(name, "task2", "relu", seed=0).cuda().train()
    torch.manual_seed(0)
    opt = make_adam(model.parameters(), lr=lr, eps=1e-7, capturable=True, device=x.device)
    step = TrainStep(model, torch.nn.BCEWithLogitsLoss(), opt, x, y, 100, graph=graph)
    losses = []
    for idx in rows:
        step.begin_epoch()
        step(idx)
        losses.append(float(step.loss_sum) / idx.numel())
    assert step.uses_graph == graph
    return losses, step


def _case_graph_matches_eager(name):
    """Dropout on: the same losses and weights within 1e-4 for 20 steps (one of them a smaller batch,
    trained eagerly beside the graph), TF32 off; the weights but those whose true gradient is 0."""
    _full_float32()
    data = _cuda_data()
    order = torch.randperm(data.splits["train"][0].shape[0], generator=torch.Generator().manual_seed(0)).cuda()
    rows = [order[i * 100 : i * 100 + (37 if i == 10 else 100)] for i in range(20)]
    g_losses, g = _steps(name, data, True, rows=rows)
    e_losses, e = _steps(name, data, False, rows=rows)
    # the same kernels and the same (capturable) Adam on both sides, TF32 off, deterministic cuDNN: what is
    # left is float32 rounding wherever the replay and the eager launch may not run one kernel (cuBLAS
    # chooses per call), over 20 steps: 1e-4 on losses, 1e-3 relative on weights; the parameters whose
    # true gradient is 0 step by rounding noise in both and are left out (_noise_gradients)
    np.testing.assert_allclose(g_losses, e_losses, rtol=0, atol=1e-4)
    noise = _noise_gradients(name, data)
    for (k, a), b in zip(g.model.state_dict().items(), e.model.state_dict().values()):
        if k not in noise:
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-4, msg=k)
    assert g_losses[-1] < g_losses[0]


@pytest.mark.parametrize("name", ["C24-Att", "C4C6-LSTM-Trans4", "C4-Trans4"])
def test_graph_step_matches_eager_with_dropout(name):
    _isolated("_case_graph_matches_eager", name)


def _case_replays_draw_new_masks():
    """Two replays on the same rows at rate 0: the weights stay, the training logits differ (each replay
    draws new dropout masks from the graph-safe random stream)."""
    from hybridlens.study.train_step import set_lr

    data = _cuda_data()
    idx = torch.arange(100, device="cuda")
    _, step = _steps("C24-Att", data, True, rows=[idx])
    set_lr(step.optimizer, 0.0)
    before = [p.detach().clone() for p in step.model.parameters()]
    step(idx)
    first = step.logits[:100].clone()
    step(idx)
    assert all(torch.equal(a, b) for a, b in zip(before, step.model.parameters()))
    assert not torch.equal(first, step.logits[:100])


def test_two_replays_draw_different_dropout_masks():
    _isolated("_case_replays_draw_new_masks")


def _noise_gradients(name: str, data) -> set[str]:
    """The parameters whose true gradient is 0 (the attention key biases: a softmax is blind to a
    per-query shift; a bias whose shift the dense head's BatchNorm removes, such as the last LayerNorm's):
    their float32 gradients are rounding noise, which Adam, dividing a gradient by its own size, turns
    into steps of +-lr and either sign. Found as on the CPU: float64 gradients below 1e-10 of the
    largest, on a training batch with dropout."""
    model = build(name, "task2", "relu", seed=0).double().train()
    x, y = (t[:100].cpu().double() for t in data.splits["train"])
    torch.nn.BCEWithLogitsLoss()(model(x), y).backward()
    scale = max(float(p.grad.abs().max()) for p in model.parameters())
    return {n for n, p in model.named_parameters() if float(p.grad.abs().max()) < 1e-10 * scale}


def _case_trainer_state_equal(name):
    """Trainer with the graph step against the eager Trainer for 8 steps over two epochs (350 training
    rows: 3 full batches and one of 50 per epoch), both with the capturable Adam the graph needs (plain
    and capturable Adam round differently), TF32 off and deterministic cuDNN: the full state_dict, Adam
    state and validation outputs agree. Tolerances: the two run the same kernels on the same inputs, so
    they differ only where the graph's replay and the eager launch may pick another cuBLAS kernel
    (float32 rounding, 1e-6 relative), which 8 Adam steps at lr 1e-3 cannot move past rtol 1e-3 and
    atol 1e-5 (weights), 1e-6 (moments), 1e-4 (logits). Left out: the parameters whose true gradient
    is 0 (:func:`_noise_gradients`), whose steps are noise in both."""
    from hybridlens.study.train_step import make_adam

    _full_float32()
    data = _cuda_data(num_seqs=500)
    assert data.splits["train"][0].shape[0] == 350
    trainers = []
    for graph in (True, False):
        tr = _trainer(name, data, epochs=2, cuda_graph=graph)
        if not graph:  # the eager trainer with the graph trainer's optimizer form
            tr.optimizer = make_adam(
                tr.model.parameters(), lr=tr.config.lr, eps=tr.config.adam_eps, capturable=True, device=data.device
            )
        tr.fit()
        trainers.append(tr)
    g, e = trainers
    assert g.train_path == ("cuda-graph", None) and e.train_path == ("cuda-eager", "train.cuda_graph is false")
    noise = _noise_gradients(name, data)
    assert any(k.endswith("wk.bias") for k in noise), noise  # every architecture here has attention
    for (k, a), b in zip(g.model.state_dict().items(), e.model.state_dict().values()):
        if k not in noise:
            torch.testing.assert_close(a.float(), b.float(), rtol=1e-3, atol=1e-5, msg=k)
    names = [n for n, _ in g.model.named_parameters()]
    for i, (sa, sb) in enumerate(zip(g.optimizer.state_dict()["state"].values(), e.optimizer.state_dict()["state"].values())):
        assert float(sa["step"]) == float(sb["step"]) == 8
        if names[i] not in noise:
            for k in ("exp_avg", "exp_avg_sq"):
                torch.testing.assert_close(sa[k], sb[k], rtol=1e-3, atol=1e-6, msg=f"{names[i]} {k}")
    torch.testing.assert_close(g.predict(data.splits["valid"][0]), e.predict(data.splits["valid"][0]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", ["C24-Att", "C4C6-LSTM-Trans4", "C4-Trans4"])
def test_graph_trainer_state_equals_eager_across_an_epoch_boundary(name):
    _isolated("_case_trainer_state_equal", name)


def _case_rate_from_device_tensor():
    """The plateau's new rate reaches the captured graph without recapture: at rate 0 a replay leaves
    the weights where they were."""
    from hybridlens.study.train_step import set_lr

    data = _cuda_data()
    idx = torch.arange(100, device="cuda")
    _, step = _steps("C24", data, True, rows=[idx])
    graph = step.graph
    before = [p.detach().clone() for p in step.model.parameters()]
    set_lr(step.optimizer, 0.0)
    step(idx + 100)
    assert all(torch.equal(a, b) for a, b in zip(before, step.model.parameters()))
    set_lr(step.optimizer, 1e-3)
    step(idx + 200)
    assert not all(torch.equal(a, b) for a, b in zip(before, step.model.parameters()))
    assert step.graph is graph


def test_graph_step_reads_the_rate_from_the_device_tensor():
    _isolated("_case_rate_from_device_tensor")


def _case_plateau_in_fit():
    """A plateau drop inside Trainer.fit (min_delta 10: every epoch after the first is 'no better',
    patience 1): the graph trainer's rates and losses are the eager trainer's."""
    _full_float32()
    data = _cuda_data(num_seqs=1000)
    hists = []
    for graph in (True, False):
        tr = _trainer("C24-Att", data, epochs=4, cuda_graph=graph, plateau_patience=1, plateau_min_delta=10.0,
                      early_stopping_patience=None)  # fmt: skip
        hists.append(tr.fit())
    assert [h["lr"] for h in hists[0]] == pytest.approx([1e-3, 1e-3, 2e-4, 4e-5])
    _assert_close_histories(*hists)


def test_plateau_drop_inside_fit_equals_eager():
    _isolated("_case_plateau_in_fit")


# ------------------------------------------------------------------------------ checkpoints and packs
CELLS = [("C24-Att", "relu", 0), ("C24-Att", "exp", 1)]


def _pack(data, epochs=4, cells=CELLS, route="auto"):
    from hybridlens.study.pack import PackTrainer

    pack = PackTrainer(route)
    for name, act, seed in cells:
        pack.add(_trainer(name, data, seed=seed, act=act, epochs=epochs))
    return pack


def _run(pack, epochs):
    hist = [[] for _ in pack.members]
    for _ in range(epochs):
        for h, r in zip(hist, pack.step()):
            if isinstance(r, dict):
                h.append(r)
    return hist


def _case_checkpoint_round_trip(tmp):
    """A GPU pack saved with torch.save, loaded with map_location="cuda" (random states and all on the
    GPU), into a fresh pack through PackTrainer.load_state_dict, then trained on: the last two epochs
    are those of the uninterrupted pack, with graphs again."""
    _full_float32()
    data = _cuda_data()
    full = _run(_pack(data), 4)
    a = _pack(data)
    first = _run(a, 2)
    path = Path(tmp) / "pack.pt"
    torch.save(a.state_dict(), path)
    torch.manual_seed(999)
    b = _pack(data)
    state = torch.load(path, weights_only=True, map_location="cuda")
    assert state["members"][0]["torch_rng"].is_cuda  # what map_location does, and load_state_dict must undo
    b.load_state_dict(state)
    rest = _run(b, 2)
    for i in range(len(CELLS)):
        _assert_close_histories(first[i] + rest[i], full[i])
    assert all(m.train_path == ("cuda-graph", None) for m in b.members)


def test_gpu_checkpoint_loaded_for_cuda_resumes(tmp_path):
    _isolated("_case_checkpoint_round_trip", str(tmp_path))


def _case_stacked_steps_are_the_members_own(arch):
    """The CPU's float64 proof on the GPU, the stack batched and captured as a CUDA graph: 12 steps,
    dropout on (each lone model given its member's masks), every step's loss, gradients, moments,
    weights and BatchNorm statistics are a lone trainer's (1e-9)."""
    from tests.test_pack import _double, _steps_beside_a_lone_trainer, check_steps_float64

    data = _double(_cuda_data(num_seqs=1000, num_outputs=12))
    check_steps_float64(_steps_beside_a_lone_trainer(data, [(arch, "exp", 0), (arch, "relu", 1)], 12))


@pytest.mark.parametrize("arch", ["C24-Att", "C4C6-LSTM-Trans4", "C4-Trans4"])
def test_each_stacked_step_on_the_gpu_is_the_members_own(arch):
    _isolated("_case_stacked_steps_are_the_members_own", arch)


def _case_member_of_a_pack_equals_it_alone():
    """Separable on the GPU: each member of a stacked pack of 3, dropout on (per-member streams), equals
    that member in a stacked pack of one, epoch for epoch (float64, 1e-9); the packs train with graphs."""
    from tests.test_pack import _double

    data = _double(_cuda_data())
    cells = CELLS + [("C24-Att", "exp", 2)]

    def pack(cells):
        p = _pack(data, epochs=3, cells=cells, route="stacked")
        for m in p.members:
            m.trainer.model.double()
        return p

    three = pack(cells)
    hist = _run(three, 3)
    assert all(m.train_path == ("cuda-graph", None) for m in three.members)
    for i, cell in enumerate(cells):
        _assert_close_histories(hist[i], _run(pack([cell]), 3)[0], atol=1e-9)


def test_a_pack_member_on_the_gpu_equals_it_in_a_pack_of_its_own():
    _isolated("_case_member_of_a_pack_equals_it_alone")


def _case_stacked_graph_equals_eager():
    """Dropout inside the captured pack step: the same stacked pack of 3 (float64, dropout on, each
    member its own stream) with and without CUDA graphs, 4 epochs, one member ending after 2 (the stack
    is rebuilt, its generators carried over): every epoch agrees to 1e-9. Both draw from the same
    member generators, so a graph that did not advance them per replay, or restored them wrongly after
    its warm-up, would differ."""
    from hybridlens.study.pack import PackTrainer
    from tests.test_pack import _double

    data = _double(_cuda_data())
    cells = CELLS + [("C24-Att", "exp", 2)]

    def pack(graph):
        p = PackTrainer("stacked")
        for (name, act, seed), epochs in zip(cells, (2, 4, 4)):
            tr = _trainer(name, data, seed=seed, act=act, epochs=epochs, cuda_graph=graph)
            tr.model.double()
            p.add(tr)
        return p

    graph, eager = pack(True), pack(False)
    a, b = _run(graph, 4), _run(eager, 4)
    assert [len(h) for h in a] == [2, 4, 4]
    assert all(m.train_path == ("cuda-graph", None) for m in graph.members)
    assert all(m.train_path[0] == "cuda-eager" for m in eager.members)
    for i in range(len(cells)):
        _assert_close_histories(a[i], b[i], atol=1e-9)


def test_the_captured_pack_step_draws_the_eager_steps_dropout():
    _isolated("_case_stacked_graph_equals_eager")


def _case_pack_learns():
    from hybridlens.study.pack import PackTrainer

    data = _cuda_data()
    pack = PackTrainer()
    for seed in range(3):
        pack.add(_trainer("C4-Trans2", data, seed=seed, epochs=8))
    while not pack.done:
        pack.step()
    assert pack.stacked
    for m in pack.members:
        assert m.train_path == ("cuda-graph", None)
        assert m.diverged is None
        assert m.trainer.evaluate("valid")["auroc"] > 0.8


def test_a_stacked_pack_learns_on_gpu_with_graphs():
    _isolated("_case_pack_learns")


# ------------------------------------------------------------------------------ a capture that fails
class _Syncs(torch.nn.Module):
    """A model that reads a value back to the host in its forward pass: CUDA graphs cannot record that."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(800, 1)

    def forward(self, x):
        out = self.lin(x.flatten(1))
        if out.sum().item() > 1e30:  # a host sync
            out = out * 0
        return out


def _case_capture_failure():
    """After a forced capture failure: the thread is back on the default stream, the allocator works
    (empty_cache), training goes on eagerly and equals an eager trainer, Adam is in its plain form, the
    reason is the error that broke the capture, one warning says so, and a later model in the same
    process does not try to capture (it says why)."""
    from hybridlens.study.train_step import is_capturable

    _full_float32()
    data = _cuda_data()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("hybridlens.study.train_step").addHandler(handler)
    seed_everything(0)
    broken = Trainer(_Syncs(), data, TrainConfig(epochs=3, monitor="val_auroc"))
    hist = broken.fit()
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    torch.cuda.empty_cache()
    path, reason = broken.train_path
    assert path == "cuda-eager" and "not permitted when stream is capturing" in reason, reason
    assert "previous error during capture" not in reason
    assert not is_capturable(broken.optimizer) and isinstance(broken.optimizer.param_groups[0]["lr"], float)
    seed_everything(0)
    eager = Trainer(_Syncs(), data, TrainConfig(epochs=3, monitor="val_auroc", cuda_graph=False))
    _assert_close_histories(hist, eager.fit(), atol=1e-6)
    later = _trainer("C24", data, epochs=1)
    later.fit()
    path, reason = later.train_path
    assert path == "cuda-eager" and reason.startswith("no CUDA graphs in this process after a failed capture"), reason
    assert len([r for r in records if "CUDA graph capture failed" in r.getMessage()]) == 1


def test_a_failed_capture_leaves_the_process_clean_and_training_eager():
    _isolated("_case_capture_failure")
