"""The training step on fixed buffers: on the CPU it is the plain eager loop, bit for bit; the rate
lives where the optimizer wants it; checkpoints cross between the CPU and the GPU forms."""

import pytest
import torch
from torch import nn

from hybridlens.models import build
from hybridlens.study.simulate import simulate_task1
from hybridlens.study.train import TensorData, TrainConfig, Trainer, seed_everything
from hybridlens.study.train_step import TrainStep, make_adam, normalise_optimizer, set_lr


@pytest.fixture(scope="module")
def tiny():
    return TensorData(simulate_task1(num_seqs=450, seed=4))


def _plain_loop(model, x, y, perm, bs, lr, eps):
    """The training loop as it was written before the step existed: advanced indexing, a fresh
    zero_grad per batch, float learning rate."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=eps)
    loss_fn = nn.BCEWithLogitsLoss()
    total, logits_all = torch.zeros(()), torch.empty_like(y)
    model.train()
    for start in range(0, x.shape[0], bs):
        idx = perm[start : start + bs]
        logits = model(x[idx])
        loss = loss_fn(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * idx.numel()
        logits_all[idx] = logits.detach()
    return total, logits_all


@pytest.mark.parametrize("name", ["C24", "C4C6-LSTM-Trans1"])
def test_cpu_step_is_the_plain_loop_bit_for_bit(tiny, name):
    """With a last batch of 15 (315 training rows, batch 100): weights, loss sum and logits identical."""
    x, y = tiny.splits["train"]
    assert x.shape[0] % 100 != 0
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(1))
    seed_everything(3)
    a = build(name, "task1", "exp", seed=3)
    seed_everything(3)
    total_a, logits_a = _plain_loop(a, x, y, perm, 100, 1e-3, 1e-7)

    seed_everything(3)
    b = build(name, "task1", "exp", seed=3)
    seed_everything(3)
    opt = make_adam(b.parameters(), lr=1e-3, eps=1e-7, capturable=False, device=torch.device("cpu"))
    b.train()
    step = TrainStep(b, nn.BCEWithLogitsLoss(), opt, x, y, 100, graph=True)  # graph is ignored on the CPU
    step.begin_epoch()
    for start in range(0, x.shape[0], 100):
        step(perm[start : start + 100])
    assert not step.uses_graph
    assert torch.equal(step.loss_sum, total_a)
    assert torch.equal(step.logits, logits_a)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_set_lr_in_place_for_a_tensor_rate_and_by_value_for_a_float():
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=torch.tensor(1e-3), foreach=False)  # a tensor rate, as the capturable form
    tensor = opt.param_groups[0]["lr"]
    set_lr(opt, 2e-4)
    assert opt.param_groups[0]["lr"] is tensor and float(tensor) == pytest.approx(2e-4)
    opt = make_adam([p], lr=1e-3, eps=1e-7, capturable=False, device=torch.device("cpu"))
    set_lr(opt, 4e-5)
    assert opt.param_groups[0]["lr"] == 4e-5


def test_a_gpu_form_checkpoint_resumes_on_the_cpu(tiny):
    """A checkpoint whose optimizer has a tensor rate, ``capturable`` set and device-side steps (what
    the GPU trainer writes) loads into a CPU trainer as the CPU form, and training goes on."""
    seed_everything(0)
    tr = Trainer(build("C24", "task1", "relu", seed=0), tiny, TrainConfig(epochs=3, seed=0))
    tr.step()
    state = tr.state_dict()
    for g in state["optimizer"]["param_groups"]:
        g["lr"], g["capturable"] = torch.tensor(g["lr"]), True
    for s in state["optimizer"]["state"].values():
        s["step"] = s["step"].to(torch.float32)
    seed_everything(0)
    again = Trainer(build("C24", "task1", "relu", seed=0), tiny, TrainConfig(epochs=3, seed=0))
    again.load_state_dict(state)
    group = again.optimizer.param_groups[0]
    assert group["capturable"] is False and isinstance(group["lr"], float)
    assert again.lr == pytest.approx(1e-3)
    m = again.step()
    assert m["epoch"] == 2 and m["train_loss"] == m["train_loss"]


def test_normalise_to_the_capturable_form_puts_rate_and_steps_on_the_device():
    p = nn.Parameter(torch.zeros(3))
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.ones(3)
    opt.step()
    normalise_optimizer(opt, capturable=True, device=torch.device("cpu"))
    g = opt.param_groups[0]
    assert g["capturable"] is True and isinstance(g["lr"], torch.Tensor) and float(g["lr"]) == pytest.approx(1e-3)
    assert opt.state[p]["step"].dtype == torch.float32 and float(opt.state[p]["step"]) == 1


def test_the_cpu_path_is_cpu_and_never_captures(tiny):
    seed_everything(0)
    tr = Trainer(build("C24", "task1", "relu", seed=0), tiny, TrainConfig(epochs=1, seed=0))
    tr.step()
    assert tr.train_path == ("cpu", None) and not tr.train_step().uses_graph


def test_a_fallback_leaves_adam_in_its_plain_form(tiny):
    """A step that falls back (a failed capture) puts Adam back in its plain form, whatever form it was
    in: float rate, ``capturable`` off, steps on the CPU; training then goes on exactly as a trainer
    whose Adam was never capturable (a rate exact in float32, as a device-tensor rate is)."""
    import copy

    cfg = TrainConfig(epochs=3, seed=0, lr=2**-10)
    seed_everything(0)
    a = Trainer(build("C24", "task1", "relu", seed=0), tiny, cfg)
    a.step()
    state = copy.deepcopy(a.state_dict())  # a's state dict holds its live tensors
    expected = a.step()
    seed_everything(0)
    b = Trainer(build("C24", "task1", "relu", seed=0), tiny, cfg)
    b.load_state_dict(state)
    normalise_optimizer(b.optimizer, capturable=True, device=torch.device("cpu"))  # the form a GPU trainer has
    b.train_step().fall_back("a capture failed")
    group = b.optimizer.param_groups[0]
    assert group["capturable"] is False and isinstance(group["lr"], float)
    assert all(s["step"].device.type == "cpu" for s in b.optimizer.state.values())
    assert all(p.grad is None for p in b.model.parameters())
    assert b.step() == expected


def test_precision_beyond_fp32_is_refused_on_the_cpu_in_one_line():
    """A trainer on the CPU trains at fp32 only: tf32 and bf16 are refused where it is built (the config
    refuses them for a CPU study before anything starts); an unknown precision is refused anywhere."""
    from hybridlens.study.simulate import simulate_planted
    from hybridlens.study.train import TensorData, TrainConfig, Trainer

    data = TensorData(simulate_planted(num_seqs=200, num_outputs=1))
    for precision in ("tf32", "bf16"):
        with pytest.raises(ValueError, match=f"^precision {precision} needs a CUDA device .*; use fp32 on the CPU$"):
            Trainer(build("C24", "task2", "relu", seed=0), data, TrainConfig(precision=precision))
    with pytest.raises(ValueError, match="unknown precision 'fp16'; choose one of fp32, tf32, bf16"):
        TrainConfig(precision="fp16")


@pytest.mark.parametrize("packed", [False, True], ids=["one-model", "pack"])
def test_a_bf16_step_autocasts_the_forward_and_keeps_float32_weights(packed):
    """The bf16 step's wiring, on the CPU's own bfloat16 autocast (the trainer allows it on a GPU only):
    the step trains (its loss falls over 30 steps on one batch, where the fp32 step's falls, to within
    2e-2), its weights and gradients stay float32, its accumulated logits are float32, and its first loss
    is the fp32 step's to bfloat16's rounding (8 mantissa bits: 2e-2 relative) but not equal to it."""
    from hybridlens.models.stacked import stack
    from hybridlens.study.flat_adam import FlatAdam
    from hybridlens.study.pack import PackStep
    from hybridlens.study.simulate import simulate_planted
    from hybridlens.study.train import TensorData

    x, y = TensorData(simulate_planted(num_seqs=300, num_outputs=1, seed=2)).splits["train"]
    idx = torch.arange(100)

    def losses(precision):
        torch.manual_seed(0)
        model = build("C24-Att", "task2", "relu", seed=0).train()
        if packed:
            module = stack(
                [model, build("C24-Att", "task2", "exp", seed=1)], [torch.Generator().manual_seed(i) for i in range(2)]
            )
            opt = FlatAdam(module, [1e-3, 1e-3])
            step = PackStep(module, opt, x, y, 100, (), graph=False, precision=precision)
            rows, params = idx.expand(2, -1), list(module.parameters())
        else:
            opt = make_adam(model.parameters(), lr=1e-3, eps=1e-7, capturable=False, device=x.device)
            step = TrainStep(model, torch.nn.BCEWithLogitsLoss(), opt, x, y, 100, precision=precision)
            rows, params = idx, list(model.parameters())
        out = []
        for _ in range(30):
            step.begin_epoch()
            step(rows)
            out.append(float(step.loss_sum.sum()) / 100)
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
        assert step.logits.dtype == torch.float32
        return out

    bf16, fp32 = losses("bf16"), losses("fp32")
    assert bf16[0] == pytest.approx(fp32[0], rel=2e-2) and bf16[0] != fp32[0]
    assert bf16[-1] < 0.95 * bf16[0] and bf16[-1] == pytest.approx(fp32[-1], rel=2e-2)  # measured: 0.787 and 0.789
