"""Classification metrics, micro-averaged over labels as Keras' ``AUC(multi_label=False)`` (method.md §2)."""

from __future__ import annotations

import numpy as np


def classification_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """AUROC and AUPR of scores against binary labels, all labels pooled (micro-average).

    Parameters
    ----------
    y_true : numpy.ndarray
        ``(N, T)`` binary labels.
    y_score : numpy.ndarray
        ``(N, T)`` scores (probabilities or logits; both metrics depend only on the order).

    Returns
    -------
    dict
        ``{"auroc": ..., "aupr": ...}``; AUPR is average precision (step-wise area). NaN where the
        labels hold a single class.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    t = np.asarray(y_true).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {np.shape(y_true)} vs {np.shape(y_score)}")
    if t.min(initial=0) == t.max(initial=0):
        return {"auroc": float("nan"), "aupr": float("nan")}
    return {"auroc": float(roc_auc_score(t, s)), "aupr": float(average_precision_score(t, s))}
