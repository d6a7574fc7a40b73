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
    if y_true.shape != y_score.shape:
        raise ValueError(f"labels and scores differ in size: {tuple(y_true.shape)} vs {tuple(y_score.shape)}")
    return classification_metrics_members(y_true, y_score.unsqueeze(0))[0]


def classification_metrics_members(y_true, y_scores):
    """:func:`classification_metrics_torch` of K score sets against one set of labels at once (a pack's
    members), in a fixed number of kernels whatever K and without a host sync.

    Parameters
    ----------
    y_true : torch.Tensor
        ``(N, T)`` binary labels.
    y_scores : torch.Tensor
        ``(K, N, T)`` scores.

    Returns
    -------
    torch.Tensor
        ``(K, 2)`` float64 ``[auroc, aupr]`` per score set; NaN where the labels hold a single class.
    """
    import torch

    k = y_scores.shape[0]
    t = y_true.reshape(-1).to(torch.float64)
    s = y_scores.reshape(k, -1).to(torch.float64)
    if s.shape[1] != t.shape[0]:
        raise ValueError(f"labels and scores differ in size: {tuple(y_true.shape)} vs {tuple(y_scores.shape[1:])}")
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    s, t = torch.gather(s, 1, order), t[order]
    last = torch.ones_like(s, dtype=torch.bool)  # the last position of each distinct score: a threshold
    last[:, :-1] = s[:, 1:] != s[:, :-1]
    tps = torch.cumsum(t, 1)
    seen = torch.arange(1, s.shape[1] + 1, dtype=torch.float64, device=s.device).expand_as(tps)
    fps = seen - tps
    pos, neg = tps[:, -1:], fps[:, -1:]
    tpr, fpr = tps / pos, fps / neg
    # each threshold's predecessor on the curve: the threshold before it, or the origin
    positions = torch.arange(s.shape[1], device=s.device).expand_as(tps)
    latest = torch.cummax(torch.where(last, positions, -1), dim=1).values
    prev = torch.cat([torch.full_like(latest[:, :1], -1), latest[:, :-1]], dim=1)
    has_prev = prev >= 0
    prev_tpr = torch.where(has_prev, torch.gather(tpr, 1, prev.clamp(min=0)), 0.0)
    prev_fpr = torch.where(has_prev, torch.gather(fpr, 1, prev.clamp(min=0)), 0.0)
    auroc = torch.where(last, (fpr - prev_fpr) * (tpr + prev_tpr) / 2, 0.0).sum(1)
    aupr = torch.where(last, (tpr - prev_tpr) * (tps / seen), 0.0).sum(1)
    out = torch.stack([auroc, aupr], dim=1)
    return torch.where((pos > 0) & (neg > 0), out, torch.full_like(out, float("nan")))


#: How a study computes AUROC/AUPR during training (``train.auc``): ``exact`` (the default: every
#: distinct score a threshold, as scikit-learn) or ``keras`` (``tf.keras.metrics.AUC`` as the released
#: code compiled it: 200 thresholds, trapezoidal ROC, Davis & Goadrich's interpolated PR).
AUC_METHODS = ("exact", "keras")
#: What each method's numbers are, for a table's caption.
AUC_DESCRIPTIONS = {
    "exact": "exact (every distinct score a threshold)",
    "keras": "Keras' tf.keras.metrics.AUC (200 thresholds, PR interpolated), as the released code (train.auc: keras)",
}


def auc_note(methods) -> str:
    """One sentence for a caption: how the runs' AUROC/AUPR (monitored, ranking and test) were computed."""
    names = sorted(set(methods)) or ["exact"]
    return (
        "AUROC/AUPR (monitor, ranking, test): "
        + "; ".join(AUC_DESCRIPTIONS[m] for m in names)
        + (" (the runs differ)." if len(names) > 1 else ".")
    )


#: ``tf.keras.metrics.AUC``'s default number of thresholds.
KERAS_THRESHOLDS = 200


def keras_thresholds(num: int = KERAS_THRESHOLDS):
    """Keras' thresholds (float32): ``-1e-7``, ``i / (num - 1)`` for ``i = 1 .. num - 2``, ``1 + 1e-7``."""
    import torch

    inner = [(i + 1) * 1.0 / (num - 1) for i in range(num - 2)]
    return torch.tensor([0.0 - 1e-7] + inner + [1.0 + 1e-7], dtype=torch.float32)


def keras_auc_torch(y_true, logits, num_thresholds: int = KERAS_THRESHOLDS):
    """``tf.keras.metrics.AUC`` (``multi_label=False``: all labels pooled) of the sigmoid of ``logits``,
    on the tensors' device: ``(2,)`` float64 ``[auroc, aupr]``.

    A prediction is positive at threshold ``t`` when ``p > t`` (float32, as Keras compares). ROC: the
    trapezoidal rule over the thresholds' (FPR, TPR) points ('interpolation'); PR: Keras'
    ``interpolate_pr_auc`` (true and predicted positives linear between thresholds, Davis & Goadrich 2006).
    NaN where the labels hold a single class, as for :func:`classification_metrics_torch`.
    """
    if y_true.shape != logits.shape:
        raise ValueError(f"labels and scores differ in size: {tuple(y_true.shape)} vs {tuple(logits.shape)}")
    return keras_auc_members(y_true, logits.unsqueeze(0), num_thresholds)[0]


def keras_auc_members(y_true, logits, num_thresholds: int = KERAS_THRESHOLDS):
    """:func:`keras_auc_torch` of K logit sets ``(K, N, T)`` against one set of labels ``(N, T)``:
    ``(K, 2)`` float64."""
    import torch

    k = logits.shape[0]
    t = y_true.reshape(-1).to(torch.float64)
    p = torch.sigmoid(logits.reshape(k, -1).to(torch.float32))
    if p.shape[1] != t.shape[0]:
        raise ValueError(f"labels and scores differ in size: {tuple(y_true.shape)} vs {tuple(logits.shape[1:])}")
    thr = keras_thresholds(num_thresholds).to(p.device).expand(k, -1).contiguous()
    pos_scores = torch.sort(p[:, t == 1], dim=1).values
    neg_scores = torch.sort(p[:, t != 1], dim=1).values
    # p > thr  <=>  not (p <= thr): the count above a threshold is the total minus searchsorted(right)
    tp = (pos_scores.shape[1] - torch.searchsorted(pos_scores, thr, right=True)).to(torch.float64)
    fp = (neg_scores.shape[1] - torch.searchsorted(neg_scores, thr, right=True)).to(torch.float64)
    n_pos, n_neg = float(pos_scores.shape[1]), float(neg_scores.shape[1])
    fn, tn = n_pos - tp, n_neg - fp
    tpr = _div(tp, tp + fn)
    fpr = _div(fp, fp + tn)
    auroc = torch.sum((fpr[:, :-1] - fpr[:, 1:]) * (tpr[:, :-1] + tpr[:, 1:]) / 2, dim=1)
    # interpolate_pr_auc
    dtp = tp[:, :-1] - tp[:, 1:]
    pp = tp + fp
    dp = pp[:, :-1] - pp[:, 1:]
    slope = _div(dtp, torch.clamp(dp, min=0))
    intercept = tp[:, 1:] - slope * pp[:, 1:]
    both = (pp[:, :-1] > 0) & (pp[:, 1:] > 0)
    ratio = torch.where(both, _div(pp[:, :-1], torch.clamp(pp[:, 1:], min=0)), torch.ones_like(pp[:, 1:]))
    aupr = torch.sum(_div(slope * (dtp + intercept * torch.log(ratio)), torch.clamp(tp[:, 1:] + fn[:, 1:], min=0)), dim=1)
    out = torch.stack([auroc, aupr], dim=1)
    return out if n_pos > 0 and n_neg > 0 else torch.full_like(out, float("nan"))


def _div(a, b):
    """TensorFlow's ``divide_no_nan``: ``a / b``, and 0 where ``b`` is 0."""
    import torch

    return torch.where(b == 0, torch.zeros_like(a), a / torch.where(b == 0, torch.ones_like(b), b))


def auc_torch(y_true, logits, method: str = "exact"):
    """``[auroc, aupr]`` of ``logits`` ``(N, T)`` by ``method`` (:data:`AUC_METHODS`), on the device: ``(2,)``."""
    if y_true.shape != logits.shape:
        raise ValueError(f"labels and scores differ in size: {tuple(y_true.shape)} vs {tuple(logits.shape)}")
    return auc_members(y_true, logits.unsqueeze(0), method)[0]


def auc_members(y_true, logits, method: str = "exact"):
    """:func:`auc_torch` of K logit sets ``(K, N, T)`` against labels ``(N, T)`` at once: ``(K, 2)``."""
    if method == "exact":
        return classification_metrics_members(y_true, logits)
    if method == "keras":
        return keras_auc_members(y_true, logits)
    raise ValueError(f"unknown AUC method {method!r}; choose one of {', '.join(AUC_METHODS)}")
