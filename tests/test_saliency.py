"""Saliency: grad x input against its analytic value, and AUROC/AUPR/SNR on hand-built maps."""

import numpy as np
import pytest
import torch

from hybridlens.analysis.saliency import grad_times_input, saliency_metrics, summarize
from hybridlens.models import build


def _pwm(length, motif=(), weak=()):
    """Uniform background with fully informative columns at ``motif`` and 0.05-bit columns at ``weak``."""
    p = np.full((4, length), 0.25)
    for j in motif:
        p[:, j] = [1, 0, 0, 0]
    for j in weak:
        p[:, j] = [0.31, 0.23, 0.23, 0.23]  # about 0.01 bits: neither motif nor background
    return p


def test_perfect_and_inverted_maps():
    length = 40
    pwm = _pwm(length, motif=range(10, 15))[None]
    s = np.linspace(0.0, 0.01, length)[None].copy()
    s[0, 10:15] = 1.0  # every motif position above every background position
    m = saliency_metrics(s, pwm)
    assert m["auroc"][0] == pytest.approx(1.0) and m["aupr"][0] == pytest.approx(1.0)
    m2 = saliency_metrics(-s, pwm)
    assert m2["auroc"][0] == pytest.approx(0.0)


def test_auroc_aupr_by_hand():
    # 2 motif positions (scores 0.9, 0.3), 3 background (0.8, 0.2, 0.1) -> 5 positions in all.
    pwm = _pwm(5, motif=(0, 1))[None]
    s = np.array([[0.9, 0.3, 0.8, 0.2, 0.1]])
    m = saliency_metrics(s, pwm)
    # AUROC: motif > background in 5 of 6 pairs (0.3 < 0.8 only).
    assert m["auroc"][0] == pytest.approx(5 / 6)
    # PR points (recall, precision) by threshold: (0,1), (.5,1), (.5,.5), (1,2/3), (1,.5), (1,.4).
    # sklearn's curve keeps (0,1),(.5,1),(.5,.5),(1,2/3); trapezoid over recall: 0.5*1 + 0.5*(0.5+2/3)/2
    assert m["aupr"][0] == pytest.approx(0.5 + 0.5 * (0.5 + 2 / 3) / 2)


def test_weak_columns_are_neither_motif_nor_background():
    pwm = _pwm(6, motif=(0,), weak=(1,))[None]
    s = np.array([[0.5, 10.0, 0.1, 0.2, 0.3, 0.4]])  # the weak column's huge score must not count
    assert saliency_metrics(s, pwm)["auroc"][0] == pytest.approx(1.0)


def test_snr_by_hand_and_too_few_background_scores():
    length = 60
    pwm = _pwm(length, motif=range(0, 5))[None]
    s = np.zeros((1, length))
    s[0, :5] = 2.0
    s[0, 5:30] = np.arange(1, 26) / 10  # 25 positive background scores: top 20 are 0.6 .. 2.5
    m = saliency_metrics(s, pwm)
    assert m["snr"][0] == pytest.approx(2.0 / np.mean(np.arange(6, 26) / 10))
    s2 = s.copy()
    s2[0, 5:30] = -1.0
    s2[0, 5:15] = 0.5  # only 10 positive background scores: SNR 0 (the reference's NaN -> 0)
    assert saliency_metrics(s2, pwm)["snr"][0] == 0.0
    assert summarize(saliency_metrics(np.vstack([s, s2]), np.vstack([pwm, pwm])))["saliency_snr"] == pytest.approx(
        m["snr"][0] / 2
    )


class _Linear(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32))

    def forward(self, x):
        return (x * self.w).sum(dim=(1, 2))[:, None]


def test_grad_times_input_is_analytic_for_a_linear_model():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 30))
    x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (7, 30))].transpose(0, 2, 1)
    scores = grad_times_input(_Linear(w), x, batch_size=3)
    logit = (x * w).sum(axis=(1, 2))
    sig = 1 / (1 + np.exp(-logit))
    expected = (sig * (1 - sig))[:, None] * (x * w).sum(axis=1)  # d prob / d x at the observed base
    np.testing.assert_allclose(scores, expected, rtol=2e-3, atol=1e-6)  # float32 forward pass


def test_grad_times_input_through_lstm_in_eval_mode():
    model = build("C4-Trans1", "task2", "exp", seed=0)
    x = np.eye(4, dtype=np.float32)[np.random.default_rng(1).integers(0, 4, (5, 200))].transpose(0, 2, 1)
    s = grad_times_input(model, x)
    assert s.shape == (5, 200) and np.isfinite(s).all() and not model.training


def test_shape_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        saliency_metrics(np.zeros((2, 10)), np.full((2, 4, 12), 0.25))
