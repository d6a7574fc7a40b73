"""Attribution maps and attention maps scored against the simulators' ground truth (SPEC.md
"Attribution methods", "Attention maps"), with the definitions of the paper's saliency metrics
(:mod:`~hybridlens.analysis.saliency`): a position whose generating PWM column carries more than 0.1
bits is a motif position, a position at the sequence's minimum information (a uniform column) is
background, and per sequence AUROC, AUPR and SNR compare the two.

- **Task 2**: the positive test sequences, attributions for the one output, every embedded motif's
  positions against background (the paper's saliency evaluation, for any method).
- **Task 1**: for each of the 12 classes, the test sequences that carry its motif, attributions for
  that class's output, scored on that motif's positions (from ``placements_test``) against
  background; the other motifs' positions count as neither. Reported: the mean over classes.
- **Attention**: per sequence and attention layer, the attention each pooled window receives (mean
  over heads and queries), as an AUROC against "this window overlaps a motif position"; and, for
  sequences with two or more motifs, the attention mass between motif-bearing windows (mean over
  heads; every query-key pair with both windows in the set) over the mass a uniform map would put
  there, ``|M|^2 / P^2``.
"""

from __future__ import annotations

import numpy as np
import torch

from hybridlens.analysis.attributions import MAX_SEQUENCES, attribute
from hybridlens.analysis.motifs import information_content
from hybridlens.analysis.saliency import _auc_scores, position_metrics

#: Information (bits) above which a PWM column is a motif position (method.md §4.2).
MOTIF_BITS = 0.1


def _background(info: np.ndarray) -> np.ndarray:
    return info == info.min(axis=1, keepdims=True)


def class_motif_positions(shape: tuple[int, int], placements: np.ndarray, rows: np.ndarray, cls: int) -> np.ndarray:
    """``(len(rows), L)`` mask of the positions of class ``cls``'s motif in test sequences ``rows``."""
    mask = np.zeros((len(rows), shape[1]), dtype=bool)
    where = {int(r): i for i, r in enumerate(rows)}
    for p in placements[placements["motif"] == cls]:
        i = where.get(int(p["seq"]))
        if i is not None:
            mask[i, p["start"] : p["start"] + p["width"]] = True
    return mask


def score_method(
    method: str, model: torch.nn.Module, test, task: str, *, max_sequences: int = MAX_SEQUENCES, **kwargs
) -> dict[str, float]:
    """``attr_<method>_auroc``, ``_aupr`` and ``_snr`` of one model on a test split (``Split`` with
    ``model`` PWMs and, for Task 1, ``placements``). Raises ``NotSupported`` from :func:`attribute`."""
    info = information_content(test.model, eps=1e-10)
    per_class = []
    if task == "task2":
        rows = np.flatnonzero(test.y[:, 0] == 1)[:max_sequences]
        attr = attribute(method, model, test.x[rows], 0, **kwargs).sum(axis=1)
        per_class.append(position_metrics(attr, info[rows] > MOTIF_BITS, _background(info[rows])))
    else:
        if test.placements is None:
            raise ValueError("Task 1 attribution scoring needs the dataset's placements (a hybridlens-generated file)")
        for cls in range(test.y.shape[1]):
            rows = np.flatnonzero(test.y[:, cls] == 1)[:max_sequences]
            if rows.size == 0:
                continue
            attr = attribute(method, model, test.x[rows], cls, **kwargs).sum(axis=1)
            motif = class_motif_positions(test.x.shape[1:], test.placements, rows, cls) & (info[rows] > MOTIF_BITS)
            per_class.append(position_metrics(attr, motif, _background(info[rows])))
    return {f"attr_{method}_{k}": float(np.nanmean([np.nanmean(pc[k]) for pc in per_class])) for k in ("auroc", "aupr", "snr")}


def motif_windows(pwm_info: np.ndarray, positions: int) -> np.ndarray:
    """``(N, P)``: whether each of the model's ``P`` pooled windows (consecutive ``L // P`` positions;
    the remainder the pooling drops is ignored) holds a motif position."""
    n, length = pwm_info.shape
    width = length // positions
    motif = pwm_info[:, : width * positions] > MOTIF_BITS
    return motif.reshape(n, positions, width).any(axis=2)


def attention_scores(model: torch.nn.Module, test, task: str, *, max_sequences: int = MAX_SEQUENCES) -> dict[str, float]:
    """``attn_auroc`` (mean over layers), ``attn_auroc_l<i>`` per layer and, on Task 1,
    ``attn_motif_mass_ratio``; empty for a model without attention."""
    if not any(True for _ in _attention_modules(model)):
        return {}
    rows = np.flatnonzero(test.y[:, 0] == 1) if task == "task2" else np.flatnonzero(test.y.sum(axis=1) > 0)
    rows = rows[:max_sequences]
    info = information_content(test.model[rows], eps=1e-10)
    maps = attention_maps(model, test.x[rows])  # layers of (N, P, P), mean over heads
    windows = motif_windows(info, maps[0].shape[-1])
    out = {}
    for layer, w in enumerate(maps):
        received = w.mean(axis=1)  # (N, P): mean over queries
        aucs = [_auc_scores(received[i], windows[i])[0] for i in range(len(rows))]
        out[f"attn_auroc_l{layer}"] = float(np.nanmean(aucs))
    out["attn_auroc"] = float(np.nanmean([out[f"attn_auroc_l{i}"] for i in range(len(maps))]))
    if task == "task1" and test.placements is not None:
        counts = np.bincount(test.placements["seq"], minlength=len(test.y))[rows]
        ratios = [
            motif_mass_ratio(w[i], windows[i])
            for w in maps
            for i in np.flatnonzero(counts >= 2)
            if 0 < windows[i].sum() < windows[i].size
        ]
        if ratios:
            out["attn_motif_mass_ratio"] = float(np.mean(ratios))
    return out


def motif_mass_ratio(weights: np.ndarray, motif: np.ndarray) -> float:
    """Attention mass between motif-bearing windows over what a uniform map puts there.

    ``weights`` ``(P, P)`` (rows: queries, each summing to 1), ``motif`` ``(P,)`` booleans: the share of
    the total mass (``P``) on query-key pairs with both windows in the motif set, divided by
    ``|M|^2 / P^2``. 1 for a uniform map; ``P^2 / |M|^2`` when all the motif windows' attention stays
    among themselves and the others attend only to motif windows too."""
    p = weights.shape[0]
    share = weights[np.ix_(motif, motif)].sum() / p
    return float(share / (motif.sum() ** 2 / p**2))


def _attention_modules(model):
    from hybridlens.models.blocks import MultiHeadAttention

    return (m for m in model.modules() if isinstance(m, MultiHeadAttention))


@torch.no_grad()
def attention_maps(model: torch.nn.Module, x: np.ndarray, *, batch_size: int = 250) -> list[np.ndarray]:
    """Every attention layer's weights, mean over heads: a list of ``(N, P, P)`` arrays (rows: queries)."""
    model.eval()
    device = next(model.parameters()).device
    xt = torch.as_tensor(x, dtype=torch.float32)
    parts: list[list[np.ndarray]] = []
    for i in range(0, len(xt), batch_size):
        layers = model.attention_weights(xt[i : i + batch_size].to(device))
        parts.append([w.mean(dim=1).cpu().numpy() for w in layers])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
