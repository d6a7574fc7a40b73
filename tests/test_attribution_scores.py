"""Scoring attribution and attention maps against planted motifs, on toy models with known answers."""

import numpy as np
import pytest
import torch
from torch import nn

from hybridlens.analysis.attribution_scores import (
    attention_scores,
    class_motif_positions,
    motif_mass_ratio,
    motif_windows,
    score_method,
)
from hybridlens.analysis.datasets import PLACEMENT_DTYPE, Split
from hybridlens.models import build

MOTIFS = [[0, 1, 2, 3, 3, 2, 1, 0], [2, 2, 0, 0, 3, 1, 3, 1]]
L = 200


class TwoScanners(nn.Module):
    """Output c is a max-pooled scan for motif c (its consensus scores 2 per position, others -1)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 2, 8, bias=False)
        w = -torch.ones(2, 4, 8)
        for c, m in enumerate(MOTIFS):
            w[c, m, range(8)] = 2.0
        self.conv.weight.data = w
        self.act = nn.ReLU()
        self.pool = nn.MaxPool1d(L - 7)

    def forward(self, x):
        return self.pool(self.act(self.conv(x))).flatten(1) - 8.0


def _task1_split(n=30, seed=0) -> Split:
    """Every sequence carries motif 0 and motif 1 once (non-overlapping), with the simulators' PWMs
    (one-hot motif columns, uniform elsewhere), labels and placements."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 4, (n, L))
    pwm = np.full((n, 4, L), 0.25, dtype=np.float32)
    rows = []
    for i in range(n):
        starts = [int(rng.integers(0, 90)), int(rng.integers(100, 190))]
        rng.shuffle(starts)
        for c, s in enumerate(starts):
            idx[i, s : s + 8] = MOTIFS[c]
            pwm[i, :, s : s + 8] = np.eye(4)[MOTIFS[c]].T
            rows.append((i, c, s, 8, 1))
    x = np.eye(4, dtype=np.float32)[idx].transpose(0, 2, 1).copy()
    return Split(x, np.ones((n, 2), np.float32), pwm, np.array(rows, dtype=PLACEMENT_DTYPE))


def test_class_positions_by_hand():
    plc = np.array([(0, 0, 5, 3, 1), (0, 1, 20, 2, -1), (2, 0, 0, 2, 1)], dtype=PLACEMENT_DTYPE)
    mask = class_motif_positions((4, 30), plc, np.array([2, 0]), 0)
    assert mask.shape == (2, 30)
    assert np.flatnonzero(mask[0]).tolist() == [0, 1] and np.flatnonzero(mask[1]).tolist() == [5, 6, 7]


@pytest.mark.parametrize("method", ["saliency", "saliency_corrected", "ism"])
def test_task1_scores_each_class_on_its_own_motif(method):
    """Class c's output only sees motif c: scored on motif c's positions (the other motif's positions
    count as neither) every method is near perfect; scored the other way round it would not be."""
    test = _task1_split()
    m = score_method(method, TwoScanners(), test, "task1", max_sequences=20)
    assert set(m) == {f"attr_{method}_auroc", f"attr_{method}_aupr", f"attr_{method}_snr"}
    assert m[f"attr_{method}_auroc"] > 0.95
    swapped = Split(test.x, test.y, test.model, test.placements.copy())
    swapped.placements["motif"] = 1 - swapped.placements["motif"]
    assert score_method(method, TwoScanners(), swapped, "task1", max_sequences=20)[f"attr_{method}_auroc"] < 0.8


def test_motif_windows_and_mass_ratio_by_hand():
    info = np.zeros((1, 50))
    info[0, 12] = 1.0  # window 1 of 4 (width 12; positions 48-49 dropped by the pooling)
    info[0, 49] = 1.0
    assert motif_windows(info, 4).tolist() == [[False, True, False, False]]
    m = np.array([True, True, False, False])
    assert motif_mass_ratio(np.full((4, 4), 0.25), m) == pytest.approx(1.0)
    w = np.zeros((4, 4))
    w[:, :2] = 0.5  # everything attends to the motif windows
    assert motif_mass_ratio(w, m) == pytest.approx((2 * 1.0 / 4) / (4 / 16))


def test_attention_scores_of_an_attention_model():
    torch.manual_seed(0)
    test = _task1_split(12)
    test = Split(test.x, np.concatenate([test.y, np.zeros((12, 10), np.float32)], axis=1), test.model, test.placements)
    att = attention_scores(build("C4C6-LSTM-Trans2", "task1", "relu", seed=0), test, "task1", max_sequences=12)
    assert set(att) == {"attn_auroc_l0", "attn_auroc_l1", "attn_auroc", "attn_motif_mass_ratio"}
    assert 0 <= att["attn_auroc"] <= 1 and att["attn_motif_mass_ratio"] > 0
    assert att["attn_auroc"] == pytest.approx((att["attn_auroc_l0"] + att["attn_auroc_l1"]) / 2)
    assert attention_scores(build("C4C6", "task1", "relu", seed=0), test, "task1") == {}
