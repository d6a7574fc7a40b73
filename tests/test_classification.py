"""Classification metrics: the device implementation against scikit-learn, ties included."""

import numpy as np
import pytest
import torch

from hybridlens.analysis.classification import classification_metrics, classification_metrics_torch


def _sklearn(y, s):
    from sklearn.metrics import average_precision_score, roc_auc_score

    return roc_auc_score(y.ravel(), s.ravel()), average_precision_score(y.ravel(), s.ravel())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
def test_device_metrics_equal_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    n, t = int(rng.integers(20, 400)), int(rng.integers(1, 13))
    y = (rng.random((n, t)) < rng.uniform(0.05, 0.6)).astype(np.float32)
    s = (y * rng.uniform(0, 2) + rng.normal(size=(n, t))).astype(np.float32)
    if ties:  # few distinct scores: many ties, across both classes
        s = np.round(s * 2) / 2
    auroc, aupr = classification_metrics_torch(torch.as_tensor(y), torch.as_tensor(s)).tolist()
    ref_auroc, ref_aupr = _sklearn(y, s.astype(np.float64))
    assert auroc == pytest.approx(ref_auroc, abs=1e-6) and aupr == pytest.approx(ref_aupr, abs=1e-6)
    np_m = classification_metrics(y, s)
    assert (np_m["auroc"], np_m["aupr"]) == pytest.approx((ref_auroc, ref_aupr), abs=1e-12)


def test_hand_computed_values():
    # Scores 0.9 (pos), 0.8 (neg), 0.8 (pos), 0.1 (neg): one tie across classes.
    y = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    s = torch.tensor([[0.9], [0.8], [0.8], [0.1]])
    auroc, aupr = classification_metrics_torch(y, s).tolist()
    # ROC points (0,0) (0,.5) (.5,1) (1,1): area .5*.5 + .5*(.5+1)/2 + ... = 0.875
    assert auroc == pytest.approx(0.875)
    # AP: recall .5 at precision 1, then recall 1 at precision 2/3: .5*1 + .5*2/3
    assert aupr == pytest.approx(0.5 + 1 / 3)


def test_single_class_is_nan():
    out = classification_metrics_torch(torch.ones(5, 2), torch.rand(5, 2))
    assert torch.isnan(out).all()


def _keras_by_hand(y, p, num=200):
    """tf.keras.metrics.AUC's result(), transcribed as loops over its thresholds (float64 counts)."""
    thr = np.array([-1e-7] + [(i + 1) / (num - 1) for i in range(num - 2)] + [1 + 1e-7], dtype=np.float32)
    y, p = y.ravel(), p.ravel().astype(np.float32)
    tp = np.array([np.sum((p > t) & (y == 1)) for t in thr], float)
    fp = np.array([np.sum((p > t) & (y == 0)) for t in thr], float)
    fn, tn = (y == 1).sum() - tp, (y == 0).sum() - fp

    def div(a, b):
        return np.where(b == 0, 0.0, a / np.where(b == 0, 1, b))

    tpr, fpr = div(tp, tp + fn), div(fp, fp + tn)
    roc = sum((fpr[i] - fpr[i + 1]) * (tpr[i] + tpr[i + 1]) / 2 for i in range(num - 1))
    pr = 0.0
    for i in range(num - 1):
        dtp, pa, pb = tp[i] - tp[i + 1], tp[i] + fp[i], tp[i + 1] + fp[i + 1]
        slope = div(dtp, max(pa - pb, 0))
        intercept = tp[i + 1] - slope * pb
        ratio = pa / pb if pa > 0 and pb > 0 else 1.0
        pr += div(slope * (dtp + intercept * np.log(ratio)), max(tp[i + 1] + fn[i + 1], 0))
    return roc, pr


@pytest.mark.parametrize("seed", range(4))
def test_keras_auc_equals_its_formulas_and_approaches_the_exact_auc(seed):
    from hybridlens.analysis.classification import auc_torch

    rng = np.random.default_rng(seed)
    y = (rng.random((300, 12)) < 0.2).astype(np.float32)
    logits = (y * 1.5 + rng.normal(size=y.shape)).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    auroc, aupr = auc_torch(torch.as_tensor(y), torch.as_tensor(logits), "keras").tolist()
    ref = _keras_by_hand(y, torch.sigmoid(torch.as_tensor(logits)).numpy())
    assert (auroc, aupr) == pytest.approx(ref, abs=1e-9)
    exact = _sklearn(y, p)
    assert auroc == pytest.approx(exact[0], abs=0.01) and aupr == pytest.approx(exact[1], abs=0.02)
    assert auroc != exact[0]  # 200 thresholds: close to, not equal to the exact area


def test_keras_auc_by_hand():
    """Probabilities 0.9 (pos), 0.3 (neg): every threshold between them separates the classes, so both
    areas are 1. Swapped (0.3 pos, 0.9 neg): ROC 0; PR by Keras' interpolation over the one interval
    where the positive drops out (TP 1 -> 0, predicted positives P 2 -> 1, slope 1, intercept
    TP_B - slope * P_B = -1): (dTP + intercept * ln(P_A / P_B)) / 1 = 1 - ln 2, not 0."""
    import math

    from hybridlens.analysis.classification import keras_auc_torch

    logit = torch.logit(torch.tensor([[0.9], [0.3]]))
    assert keras_auc_torch(torch.tensor([[1.0], [0.0]]), logit).tolist() == pytest.approx([1.0, 1.0])
    auroc, aupr = keras_auc_torch(torch.tensor([[0.0], [1.0]]), logit).tolist()
    assert auroc == pytest.approx(0.0) and aupr == pytest.approx(1 - math.log(2))


def test_the_auc_note_names_each_method_the_runs_used():
    from hybridlens.analysis.classification import auc_note

    assert "exact" in auc_note(["exact", "exact"]) and "Keras" not in auc_note(["exact"])
    assert "200 thresholds" in auc_note(["keras"]) and "the runs differ" in auc_note(["keras", "exact"])


@pytest.mark.parametrize("method", ["exact", "keras"])
def test_a_packs_metrics_at_once_are_each_members_own(method):
    """auc_members on K score sets (ties in some, one set all tied) is each set's own: scikit-learn for
    exact (1e-12), and the loop transcription of Keras' result() for keras (1e-9); the single-class case
    is NaN for every member."""
    from hybridlens.analysis.classification import auc_members

    rng = np.random.default_rng(5)
    y = (rng.random((150, 4)) < 0.3).astype(np.float32)
    sets = [y * 1.5 + rng.normal(size=y.shape), np.round(y + rng.normal(size=y.shape)), np.zeros_like(y), -y]
    scores = torch.as_tensor(np.stack(sets).astype(np.float32))
    got = auc_members(torch.as_tensor(y), scores, method)
    assert got.shape == (4, 2)
    for k, s in enumerate(sets):
        if method == "exact":
            ref = _sklearn(y, s.astype(np.float32).astype(np.float64))
        else:
            ref = _keras_by_hand(y, torch.sigmoid(scores[k]).numpy())
        assert got[k].tolist() == pytest.approx(ref, abs=1e-12 if method == "exact" else 1e-9), k
    assert torch.isnan(auc_members(torch.ones(5, 2), torch.rand(3, 5, 2), method)).all()
