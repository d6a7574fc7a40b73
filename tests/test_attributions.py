"""Attribution methods on toy models whose answer is known, and which architectures each supports."""

import numpy as np
import pytest
import torch
from torch import nn

from hybridlens.analysis.attributions import METHODS, NotSupported, attribute, parse_methods, unsupported_reason
from hybridlens.analysis.errors import UserError
from hybridlens.analysis.saliency import grad_times_input, saliency_metrics
from hybridlens.models import build

MOTIF = [0, 1, 2, 3, 3, 2, 1, 0, 2, 2]  # ACGTTGCAGG
L = 100


class MotifScanner(nn.Module):
    """One first-layer filter that is the motif's log-odds PWM (consensus 2, others -1), ReLU, a max
    over positions (a module, as DeepLIFT needs) and a linear read-out: the logit is high exactly
    when the motif is present, and only its positions can move it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 1, len(MOTIF), bias=False)
        w = -torch.ones(1, 4, len(MOTIF))
        w[0, MOTIF, range(len(MOTIF))] = 2.0
        self.conv.weight.data = w
        self.act = nn.ReLU()
        self.pool = nn.MaxPool1d(L - len(MOTIF) + 1)
        self.out = nn.Linear(1, 1)
        self.out.weight.data.fill_(0.5)
        self.out.bias.data.fill_(-4.0)

    def forward(self, x):
        return self.out(self.pool(self.act(self.conv(x))).flatten(1))


def _planted(n=40, seed=0):
    """Random sequences with the motif planted once; the generating 'PWMs' as the simulators store
    them (one-hot motif columns, uniform background) for the metrics."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 4, (n, L))
    pwm = np.full((n, 4, L), 0.25)
    for i in range(n):
        s = rng.integers(5, L - len(MOTIF) - 5)
        idx[i, s : s + len(MOTIF)] = MOTIF
        pwm[i, :, s : s + len(MOTIF)] = np.eye(4)[MOTIF].T
    x = np.eye(4, dtype=np.float32)[idx].transpose(0, 2, 1).copy()
    return x, pwm


@pytest.mark.parametrize("method", METHODS)
def test_every_method_finds_the_planted_motif(method):
    torch.manual_seed(0)
    x, pwm = _planted()
    kwargs = {"n_shuffles": 8} if method == "deep_lift_shap" else {}
    attr = attribute(method, MotifScanner(), x, 0, **kwargs)
    assert attr.shape == x.shape
    auroc = np.nanmean(saliency_metrics(attr.sum(axis=1), pwm)["auroc"])
    print(f"{method}: per-sequence AUROC {auroc:.3f}")
    assert auroc > 0.95


def test_every_method_attributes_the_logit_even_where_the_sigmoid_saturates():
    """A scanner whose logit is 4 + 10 x (its ReLU'd match score) - 4: about 100 on the motif, so the
    sigmoid saturates and the probability's gradient (the paper's saliency) is exactly 0, scoring every
    position alike (AUROC 0.5); every attribution method, on the logit, still finds the motif."""
    from hybridlens.analysis.attributions import logit_gradients
    from hybridlens.analysis.saliency import probability_saliency

    torch.manual_seed(0)
    loud = MotifScanner()
    loud.out.weight.data.fill_(10.0)
    x, pwm = _planted(20)
    g, logits = logit_gradients(loud, x, 0)
    assert (logits > 16).all()
    paper = probability_saliency(g, logits, x)
    assert (paper == 0).all() and np.nanmean(saliency_metrics(paper, pwm)["auroc"]) == pytest.approx(0.5)
    for method in METHODS:
        kwargs = {"n_shuffles": 4} if method == "deep_lift_shap" else {"samples": 4} if "smoothgrad" in method else {}
        attr = attribute(method, loud, x, 0, **kwargs)
        assert np.nanmean(saliency_metrics(attr.sum(axis=1), pwm)["auroc"]) > 0.95, method


def test_saliency_is_grad_times_input_of_the_logit_and_gives_the_papers_saliency():
    """attribute('saliency') is the logit's gradient times the input; the paper's probability saliency
    derived from that one gradient pass equals grad_times_input's own backward pass."""
    from hybridlens.analysis.attributions import logit_gradients
    from hybridlens.analysis.saliency import probability_saliency

    x, _ = _planted(8)
    x = np.concatenate([x, x], axis=2)  # length 200, as the models take
    model = build("C24", "task2", "exp", seed=1).eval()
    xt = torch.tensor(x, requires_grad=True)
    model(xt)[:, 0].sum().backward()
    np.testing.assert_allclose(attribute("saliency", model, x), xt.grad.numpy() * x, rtol=1e-5, atol=1e-7)
    g, logits = logit_gradients(model, x, 0)
    np.testing.assert_allclose(probability_saliency(g, logits, x), grad_times_input(model, x), rtol=1e-5, atol=1e-8)


def test_saliency_corrected_by_hand():
    """(g - mean over the 4 nucleotides of g) * x, with g the logit's gradient taken by hand."""
    x, _ = _planted(6)
    x = np.concatenate([x, x], axis=2)
    model = build("C4C6", "task2", "relu", seed=2).eval()
    xt = torch.tensor(x, requires_grad=True)
    model(xt)[:, 0].sum().backward()
    g = xt.grad.numpy()
    expected = (g - g.mean(axis=1, keepdims=True)) * x
    np.testing.assert_allclose(attribute("saliency_corrected", model, x), expected, rtol=1e-5, atol=1e-8)
    # the correction moves the scores: not plain saliency
    assert not np.allclose(attribute("saliency", model, x), expected)


def test_smoothgrad_and_its_correction_by_hand():
    """The logit's gradient averaged over 3 noisy copies (the same seeded noise), times the input; the
    corrected variant subtracts each position's mean averaged gradient first."""
    x, _ = _planted(4)
    x = np.concatenate([x, x], axis=2)
    model = build("C24", "task2", "exp", seed=3).eval()
    gen, xt, total = torch.Generator().manual_seed(5), torch.tensor(x), torch.zeros(x.shape)
    for _ in range(3):
        noisy = (xt + 0.1 * torch.randn(x.shape, generator=gen)).requires_grad_(True)
        model(noisy)[:, 0].sum().backward()
        total += noisy.grad
    g = (total / 3).numpy()
    np.testing.assert_allclose(attribute("smoothgrad", model, x, samples=3, seed=5), g * x, rtol=1e-5, atol=1e-8)
    corrected = (g - g.mean(axis=1, keepdims=True)) * x
    np.testing.assert_allclose(attribute("smoothgrad_corrected", model, x, samples=3, seed=5), corrected, rtol=1e-5, atol=1e-8)


def test_integrated_gradients_with_shuffled_baselines_averages_them():
    """The shuffled baseline's IG is the mean of the IG from each of its shuffles: with one shuffle,
    positions where the shuffle kept the base score exactly 0; averaged over 10, far fewer do."""
    x, _ = _planted(6)
    x = np.concatenate([x, x], axis=2)
    model = build("C24", "task2", "exp", seed=4).eval()
    one = attribute("integrated_gradients", model, x, baseline="shuffle", shuffles=1, steps=8).sum(axis=1)
    ten = attribute("integrated_gradients", model, x, baseline="shuffle", shuffles=10, steps=8).sum(axis=1)
    assert (one == 0).mean() > 0.15 and (ten == 0).mean() < 0.02
    named = attribute("integrated_gradients_shuffle", model, x, steps=8).sum(axis=1)  # what a study names
    np.testing.assert_array_equal(named, ten)


def test_ism_of_a_linear_model_is_its_centred_weights():
    """For y = sum(W * x) + b, a substitution at position l changes y by W[c', l] - W[c, l]; centred over
    the 4 nucleotides and read at the observed base, that is W[c, l] - mean(W[:, l])."""
    torch.manual_seed(3)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(4 * 30, 1))
    x, _ = _planted(5)
    x = x[:, :, :30].copy()
    x[:, :, :] = np.eye(4, dtype=np.float32)[np.random.default_rng(1).integers(0, 4, (5, 30))].transpose(0, 2, 1)
    w = lin[1].weight.detach().numpy().reshape(4, 30)
    expected = (w - w.mean(axis=0, keepdims=True))[None] * x
    np.testing.assert_allclose(attribute("ism", lin, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["C24", "C4C6-LSTM-Trans1", "C4-Att"])
def test_every_method_runs_on_each_family_or_says_why_not(name):
    """The support table: DeepLIFT/SHAP has no rules for the BiLSTM or attention; everything else
    attributes every family."""
    model = build(name, "task2", "exp", seed=0).eval()
    x, _ = _planted(3, seed=5)
    x = np.concatenate([x, x], axis=2)  # length 200, as the models take
    support = {}
    for method in METHODS:
        reason = unsupported_reason(method, model)
        if reason:
            with pytest.raises(NotSupported, match="no DeepLIFT rule"):
                attribute(method, model, x)
            support[method] = "not supported"
        else:
            kwargs = {"n_shuffles": 4} if method == "deep_lift_shap" else {"samples": 3} if "smoothgrad" in method else {}
            attr = attribute(method, model, x, **kwargs)
            assert attr.shape == x.shape and np.isfinite(attr).all()
            support[method] = "ok"
    expected_dls = "ok" if name == "C24" else "not supported"
    assert support == {**dict.fromkeys(METHODS, "ok"), "deep_lift_shap": expected_dls}
    if name != "C24":
        reason = unsupported_reason("deep_lift_shap", model)
        has_lstm = "LSTM" in name or name.startswith("C4-")  # the C4 baseline is conv -> BiLSTM
        assert ("BiLSTM" in reason) == has_lstm and ("attention" in reason)


def test_method_names_are_checked():
    assert parse_methods("saliency, ism,saliency") == ("saliency", "ism")
    with pytest.raises(UserError, match="unknown attribution method 'shap'; choose from saliency, saliency_corrected"):
        parse_methods("saliency,shap")
