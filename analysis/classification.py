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


def classification_metrics_torch(y_true, y_score):
    """:func:`classification_metrics` on the tensors' device, without a host round trip.

    Sort-based, in float64, with tied scores sharing one threshold as scikit-learn's ``roc_curve``
    and ``precision_recall_curve`` do: AUROC is the trapezoidal area under the ROC curve, AUPR the
    step-wise average precision.

    Parameters
    ----------
    y_true : torch.Tensor
        ``(N, T)`` binary labels.
    y_score : torch.Tensor
        ``(N, T)`` scores.

    Returns
    -------
    torch.Tensor
        ``(2,)`` float64 ``[auroc, aupr]`` on the input's device; NaN where the labels hold a single class.
    """
    import torch

    t = y_true.reshape(-1).to(torch.float64)
    s = y_score.reshape(-1).to(torch.float64)
    if t.shape != s.shape:
        raise ValueError(f"labels and scores differ in size: {tuple(y_true.shape)} vs {tuple(y_score.shape)}")
    order = torch.argsort(s, descending=True, stable=True)
    s, t = s[order], t[order]
    last = torch.ones_like(s, dtype=torch.bool)  # the last position of each distinct score
    last[:-1] = s[1:] != s[:-1]
    idx = torch.nonzero(last).squeeze(1)
    tps = torch.cumsum(t, 0)[idx]
    seen = (idx + 1).to(torch.float64)
    fps = seen - tps
    pos, neg = tps[-1], fps[-1]
    zero = torch.zeros(1, dtype=torch.float64, device=s.device)
    tpr = torch.cat([zero, tps / pos])
    fpr = torch.cat([zero, fps / neg])
    auroc = torch.trapezoid(tpr, fpr)
    recall = tpr
    aupr = torch.sum((recall[1:] - recall[:-1]) * (tps / seen))
    out = torch.stack([auroc, aupr])
    return torch.where((pos > 0) & (neg > 0), out, torch.full_like(out, float("nan")))
