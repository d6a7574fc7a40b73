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
