"""Task 2 interpretability: does grad × input light up the true motif positions? (method.md §4.2)

Scores are the gradient of the positive-class *probability* (sigmoid of the logit) with respect to
the one-hot input, times the input, summed over nucleotides: one signed score per position.
Per sequence, against the generating PWM's information content ``2 + Σ p log2(p + 1e-10)``:

- motif positions: information > 0.1 bits; background positions: information == its minimum
  (the uniform columns); motif columns with 0 < info <= 0.1 belong to neither;
- **AUROC** and **AUPR** (trapezoidal area under the PR curve, ``auc(recall, precision)``) of the
  scores at motif positions against background positions;
- **SNR** = mean score at motif positions / mean of the 20 largest *positive* background scores;
  with fewer than 20 positive background scores the SNR is 0 (the reference's NaN -> 0).

A model's values are the means over sequences.
"""

from __future__ import annotations

import numpy as np
import torch

from hybridlens.analysis.motifs import information_content


def grad_times_input(
    model: torch.nn.Module, x: np.ndarray | torch.Tensor, *, class_index: int = 0, batch_size: int = 128
) -> np.ndarray:
    """Grad × input of ``sigmoid(model(x))[:, class_index]``, summed over nucleotides.

    Parameters
    ----------
    x
        ``(N, 4, L)`` one-hot sequences.

    Returns
    -------
    numpy.ndarray
        ``(N, L)`` signed scores. Computed in eval mode; cuDNN is disabled for the backward pass,
        which it refuses through LSTMs in eval mode.
    """
    model.eval()
    device = next(model.parameters()).device
    x = torch.as_tensor(x, dtype=torch.float32)
    out = []
    with torch.backends.cudnn.flags(enabled=False):
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(device).requires_grad_(True)
            prob = torch.sigmoid(model(xb))[:, class_index]
            (grad,) = torch.autograd.grad(prob.sum(), xb)
            out.append((grad * xb).sum(dim=1).detach().cpu())
    return torch.cat(out).numpy()


def probability_saliency(gradients: torch.Tensor, logits: torch.Tensor, x) -> np.ndarray:
    """:func:`grad_times_input` from the logit's gradient (:func:`~.attributions.logit_gradients`), with
    no second backward pass: the probability's gradient is the logit's times ``s(1 - s)``, computed in
    float32 as autograd does (0 where the sigmoid saturates). ``(N, L)``."""
    s = torch.sigmoid(logits.to(torch.float32))
    scale = (s * (1 - s)).reshape(-1, 1, 1)
    return (gradients * scale * torch.as_tensor(np.asarray(x), dtype=torch.float32)).sum(dim=1).numpy()


def _auc_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import auc, precision_recall_curve, roc_curve

    if labels.all() or not labels.any():
        return float("nan"), float("nan")
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    return float(auc(fpr, tpr)), float(auc(recall, precision))


def saliency_metrics(scores: np.ndarray, pwm: np.ndarray, *, threshold: float = 0.1, top_k: int = 20) -> dict[str, np.ndarray]:
    """Per-sequence AUROC, AUPR and SNR of saliency ``scores`` against ground truth.

    Parameters
    ----------
    scores
        ``(N, L)`` per-position scores.
    pwm
        ``(N, 4, L)`` generating PWMs (``model_test``).

    Returns
    -------
    dict
        ``auroc``, ``aupr``, ``snr``: arrays of shape ``(N,)`` (AUROC/AUPR NaN for a sequence without
        both motif and background positions).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or pwm.shape[0] != scores.shape[0] or pwm.shape[2] != scores.shape[1]:
        raise ValueError(f"scores {scores.shape} do not match ground-truth PWMs {pwm.shape} (expected (N, L) and (N, 4, L))")
    info = information_content(pwm, eps=1e-10)  # (N, L)
    return position_metrics(scores, info > threshold, info == info.min(axis=1, keepdims=True), top_k=top_k)


def position_metrics(scores: np.ndarray, motif: np.ndarray, background: np.ndarray, *, top_k: int = 20) -> dict[str, np.ndarray]:
    """Per-sequence AUROC, AUPR and SNR of ``scores`` ``(N, L)`` at ``motif`` positions against
    ``background`` positions (boolean ``(N, L)`` masks; a position in neither is left out), as
    :func:`saliency_metrics` defines them."""
    n = scores.shape[0]
    auroc, aupr, snr = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n)
    for i in range(n):
        keep = motif[i] | background[i]
        auroc[i], aupr[i] = _auc_scores(scores[i, keep], motif[i, keep])
        noise = scores[i, background[i] & ~motif[i]]
        noise = noise[noise > 0]
        if noise.size >= top_k and motif[i].any():
            top = np.sort(noise)[-top_k:]
            snr[i] = scores[i, motif[i]].mean() / top.mean()
    return {"auroc": auroc, "aupr": aupr, "snr": snr}


def summarize(per_sequence: dict[str, np.ndarray], prefix: str = "saliency_") -> dict[str, float]:
    """Means over sequences: ``saliency_auroc``, ``saliency_aupr``, ``saliency_snr`` (or ``prefix``...)."""
    return {f"{prefix}{k}": float(np.nanmean(v)) for k, v in per_sequence.items()}
