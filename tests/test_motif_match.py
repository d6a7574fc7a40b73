"""TPR/FPR golden values and the filter -> TomTom -> ground-truth pipeline."""

import numpy as np
import pytest
import torch

from hybridlens.analysis.filters import filter_motifs
from hybridlens.analysis.ground_truth import TASK1_MOTIFS, GroundTruth
from hybridlens.analysis.motif_match import comparison_database, filter_matches, match_stats
from hybridlens.analysis.motifs import fetch_motif
from hybridlens.models import build

GT = GroundTruth.from_motifs({"MA0058.3": "MAX", "MA0079.3": "SP1", "MA0052.3": "MEF2A"})
TASK1 = {i: n for n, i in TASK1_MOTIFS.items()}


def test_no_hits():
    s = match_stats({}, 8, GT)
    assert (s.tpr, s.fpr) == (0.0, 0.0) and len(s.per_filter) == 8


def test_filter_zero_alone_counts():
    # The reference returned 0 when filter 0 was the only match (any(match_index)); fixed here.
    s = match_stats({"filter0": [("MA0058.3", 0.01)]}, 4, GT)
    assert s.tpr == pytest.approx(0.25) and s.fpr == 0.0
    assert s.per_filter[0]["gt_match"] == "MAX"


def test_many_hits_by_hand():
    hits = {
        "filter0": [("MA0058.1", 0.001)],  # MAX, an older version: ground truth by base ID
        "filter1": [("MA9999.1", 0.01), ("MA0079.4", 0.05)],  # SP1 as second hit: still ground truth
        "filter2": [("MA0004.1", 0.02)],  # Arnt: a JASPAR hit, no ground truth -> false positive
        "filter3": [("MA0615.1", 0.03)],  # Gmeb1 only: not counted (reference code)
        "filter4": [("MA0615.1", 0.03), ("MA0004.1", 0.05)],  # Gmeb1 and another: false positive
        "filter5": [],
    }
    s = match_stats(hits, 10, GT, target_names={"MA0004.1": "Arnt"})
    assert s.tpr == pytest.approx(2 / 10)
    assert s.fpr == pytest.approx(2 / 10)
    assert [r["gt_match"] for r in s.per_filter[:3]] == ["MAX", "SP1", ""]
    assert s.per_filter[2]["best_hit_name"] == "Arnt"


def test_ground_truth_rules_by_hand():
    """The two rules on hand-built hits (method.md §4.1 item 5): the released code's lists accept
    sibling matrices and miss newer versions; the base-ID rule does the opposite."""
    hits = {
        "filter0": [("MA0601.1", 0.01)],  # Arid3b: in the code's Arid3 list only
        "filter1": [("MA0062.3", 0.01)],  # GABPA's 2020 version: base ID only
        "filter2": [("MA0058.1", 0.01)],  # MAX, an older version: both
        "filter3": [("MA0060.2", 0.01)],  # NFYA: the code's NFYB list only
        "filter4": [("MA0660.1", 0.02), ("MA0004.1", 0.03)],  # MEF2B (under STAT1 in the code), Arnt
        "filter5": [("MA0004.1", 0.01)],  # Arnt: a false positive under both
    }
    base = match_stats(hits, 8, GroundTruth.from_motifs(TASK1, "base_ids"))
    ref = match_stats(hits, 8, GroundTruth.from_motifs(TASK1, "reference_lists"))
    assert [r["gt_match"] for r in base.per_filter[:6]] == ["", "Gabpa", "MAX", "", "", ""]
    assert [r["gt_match"] for r in ref.per_filter[:6]] == ["Arid3a", "", "MAX", "NFYB", "STAT1", ""]
    assert (base.tpr, base.fpr) == (pytest.approx(2 / 8), pytest.approx(4 / 8))
    assert (ref.tpr, ref.fpr) == (pytest.approx(4 / 8), pytest.approx(2 / 8))


def test_ground_truth_rule_errors():
    with pytest.raises(ValueError, match="unknown ground-truth rule 'lists'; choose one of base_ids, reference_lists"):
        GroundTruth.from_motifs(TASK1, "lists")
    with pytest.raises(ValueError, match="reference lists have no entry for MA0004.1"):
        GroundTruth.from_motifs({"MA0004.1": "Arnt"}, "reference_lists")


def test_bad_denominator():
    with pytest.raises(ValueError, match="num_filters"):
        match_stats({}, 0, GT)


@pytest.fixture(scope="module")
def database():
    return comparison_database("JASPAR2020", ["MA0058.3"])


def test_known_motif_filter_matches_its_id_random_and_dead_match_nothing(database):
    """A filter set to MAX's log-odds recovers MAX from sequences with planted MAX sites; a random
    filter and a never-activating filter match nothing."""
    rng = np.random.default_rng(0)
    mx = fetch_motif("MA0058.3", "JASPAR2016").pwm  # (4, 10)
    n, length, w = 400, 100, mx.shape[1]
    idx = rng.integers(0, 4, (n, length))
    for i in range(0, n, 2):
        s = rng.integers(20, 70)
        idx[i, s : s + w] = [rng.choice(4, p=mx[:, j]) for j in range(w)]
    x = np.eye(4, dtype=np.float32)[idx].transpose(0, 2, 1)
    model = build("C24", "task1", "relu", filters=3, seed=0).eval()
    with torch.no_grad():
        wts = torch.zeros(3, 4, 19)
        wts[0, :, 4 : 4 + w] = torch.as_tensor(np.log2(mx + 0.05) - np.log2(0.25), dtype=torch.float32)
        wts[1] = torch.as_tensor(np.random.default_rng(1).normal(0, 0.05, (4, 19)), dtype=torch.float32)
        wts[2] = -10.0  # never activates under ReLU
        model.stage1.first.conv.weight.copy_(wts)
        bn = model.stage1.first.bn
        bn.running_mean.zero_(), bn.running_var.fill_(1.0), bn.weight.fill_(1.0), bn.bias.zero_()
    motifs = filter_motifs(model, x)
    fm, sig = filter_matches(motifs, database, GroundTruth.from_motifs({"MA0058.3": "MAX"}))
    best = sig[sig.query_id == "filter0"].sort_values("p_value").iloc[0]
    assert best["target_id"].startswith("MA0058")
    assert fm.per_filter[0]["gt_match"] == "MAX"
    assert set(sig["query_id"]) == {"filter0"}  # the random and the dead filter match nothing
    assert fm.tpr == pytest.approx(1 / 3) and fm.fpr == 0.0
