"""Scoring attribution and attention maps against planted motifs, on toy models with known answers."""

import numpy as np
import pytest
import torch
from torch import nn

from hybridlens.analysis.attribution_scores import (
    Unavailable,
    attention_scores,
    class_motif_positions,
    floor_scores,
    motif_mass_ratio,
    motif_windows,
    score_attributions,
    scoring_targets,
    window_width,
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


def _score(method, model, test, task="task1", max_sequences=20):
    scores, unsupported = score_attributions([method], model, test, scoring_targets(test, task, max_sequences=max_sequences))
    assert not unsupported
    return scores


@pytest.mark.parametrize("method", ["saliency", "saliency_corrected", "smoothgrad_corrected", "ism"])
def test_task1_scores_each_class_on_its_own_motif(method):
    """Class c's output only sees motif c: scored on motif c's positions (the other motif's positions
    count as neither) every method is near perfect; scored the other way round it would not be."""
    test = _task1_split()
    m = _score(method, TwoScanners(), test)
    assert set(m) == {f"attr_{method}_auroc", f"attr_{method}_aupr", f"attr_{method}_snr", "attr_n", "attr_saturated"}
    assert m[f"attr_{method}_auroc"] > 0.95
    assert m["attr_n"] == 40  # 20 sequences for each of the 2 classes
    swapped = Split(test.x, test.y, test.model, test.placements.copy())
    swapped.placements["motif"] = 1 - swapped.placements["motif"]
    assert _score(method, TwoScanners(), swapped)[f"attr_{method}_auroc"] < 0.8


def test_every_method_scores_the_same_sequences_in_file_order():
    test = _task1_split()
    targets = scoring_targets(test, "task1", max_sequences=7)
    assert [t.rows.tolist() for t in targets] == [list(range(7)), list(range(7))]
    scores, _ = score_attributions(["saliency", "ism"], TwoScanners(), test, targets)
    alone = [score_attributions([m], TwoScanners(), test, targets)[0] for m in ("saliency", "ism")]
    assert scores["attr_n"] == alone[0]["attr_n"] == alone[1]["attr_n"] == 14
    assert scores["attr_ism_auroc"] == alone[1]["attr_ism_auroc"]


def test_task1_without_placements_is_unavailable_with_its_reason():
    test = _task1_split()
    with pytest.raises(Unavailable, match="no motif placements"):
        scoring_targets(Split(test.x, test.y, test.model, None), "task1")


def test_saturated_logits_are_counted():
    """TwoScanners' logits are (matches x 2 - mismatches) - 8 = 8 on a full match: scaled by 3, 24 > 16."""
    test = _task1_split(10)

    class Loud(TwoScanners):
        def forward(self, x):
            return 3 * super().forward(x)

    targets = scoring_targets(test, "task1", max_sequences=10)
    assert score_attributions(["saliency"], TwoScanners(), test, targets)[0]["attr_saturated"] == 0
    loud = score_attributions(["saliency"], Loud(), test, targets)[0]
    assert loud["attr_saturated"] == 20 and loud["attr_saliency_auroc"] > 0.95  # the logit's gradient is not saturated


def test_floors_are_near_chance_for_random_maps_and_weights():
    test = _task1_split()
    targets = scoring_targets(test, "task1", max_sequences=20)
    torch.manual_seed(0)
    scrambled = TwoScanners()
    scrambled.conv.weight.data = torch.randn_like(scrambled.conv.weight)
    f = floor_scores(["saliency", "ism"], scrambled, test, targets)
    assert set(f) == {"floor_weights_saliency_auroc", "floor_weights_saliency_aupr", "floor_weights_ism_auroc",
                      "floor_weights_ism_aupr", "floor_map_auroc", "floor_map_aupr"}  # fmt: skip
    assert abs(f["floor_map_auroc"] - 0.5) < 0.05
    motif_share = np.mean([t.motif.sum() / (t.motif | t.background).sum() for t in targets])
    assert abs(f["floor_map_aupr"] - motif_share) < 0.05  # a random ranking's precision: the motif share
    assert f["floor_weights_saliency_auroc"] < 0.8


def _window_extents(model) -> list[tuple[int, int]]:
    """The input positions each pooled window of ``model`` takes, read off its real pooling layers: the
    positions' own indices pushed through them (max: last index; -max(-x): first)."""
    pos = torch.arange(200, dtype=torch.float32).reshape(1, 1, 200)
    hi, lo = pos, -pos
    for pool in model.pool_layers:
        hi, lo = pool(hi), pool(lo)
    return [(int(-a), int(b)) for a, b in zip(lo.flatten(), hi.flatten())]


@pytest.mark.parametrize("name", ["C24-Att", "C4C6-LSTM-Att", "C4-Att"])
def test_attention_windows_are_the_models_pooling(name):
    """A motif in the last 8 positions (past the last window) marks no window; motifs ending at 47 and
    starting at 48 (a window boundary) mark windows 1 and 2 only, as the real pooling groups positions."""
    model = build(name, "task1", "relu", seed=0)
    extents = _window_extents(model)
    assert window_width(model) == 24 and extents == [(24 * w, 24 * w + 23) for w in range(8)]
    info = np.zeros((3, 200))
    info[0, 192:200] = 2.0
    info[1, 40:48] = 2.0
    info[2, 48:56] = 2.0
    windows = motif_windows(info, window_width(model), 8)
    expected = [[lo <= p <= hi for lo, hi in extents] for p in (195, 44, 50)]
    assert windows.tolist() == [[False] * 8, expected[1], expected[2]]
    assert np.flatnonzero(windows[1]).tolist() == [1] and np.flatnonzero(windows[2]).tolist() == [2]


def test_motif_windows_and_mass_ratio_by_hand():
    info = np.zeros((1, 50))
    info[0, 12] = 1.0  # window 1 of 4 (width 12; positions 48-49 past the last window)
    info[0, 49] = 1.0
    assert motif_windows(info, 12, 4).tolist() == [[False, True, False, False]]
    with pytest.raises(ValueError, match="do not fit"):
        motif_windows(info, 13, 4)
    m = np.array([True, True, False, False])
    assert motif_mass_ratio(np.full((4, 4), 0.25), m) == pytest.approx(1.0)
    w = np.zeros((4, 4))
    w[:, :2] = 0.5  # everything attends to the motif windows
    assert motif_mass_ratio(w, m) == pytest.approx((2 * 1.0 / 4) / (4 / 16))


@pytest.mark.parametrize("task", ["task1", "task2"])
def test_attention_scores_of_an_attention_model(task):
    """Both tasks get every attention score, the mass ratio included, and an example map of a scored
    sequence with two or more motif windows."""
    torch.manual_seed(0)
    test = _task1_split(12)
    y = np.concatenate([test.y, np.zeros((12, 10), np.float32)], axis=1) if task == "task1" else test.y[:, :1]
    test = Split(test.x, y, test.model, test.placements)
    model = build("C4C6-LSTM-Trans2", task, "relu", seed=0)
    att, example = attention_scores(model, test, task, max_sequences=12)
    assert set(att) == {"attn_auroc_l0", "attn_auroc_l1", "attn_auroc", "attn_motif_mass_ratio"}
    assert 0 <= att["attn_auroc"] <= 1 and att["attn_motif_mass_ratio"] > 0
    assert att["attn_auroc"] == pytest.approx((att["attn_auroc_l0"] + att["attn_auroc_l1"]) / 2)
    assert example.weights.shape == (8, 8) and example.windows.sum() >= 2 and example.width == 24
    assert attention_scores(build("C4C6", task, "relu", seed=0), test, task) == ({}, None)
