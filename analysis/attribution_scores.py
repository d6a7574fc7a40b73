"""Attribution maps and attention maps scored against the simulators' ground truth (SPEC.md
"Attribution methods", "Attention maps"), with the definitions of the paper's saliency metrics
(:mod:`~hybridlens.analysis.saliency`): a position whose generating PWM column carries more than 0.1
bits is a motif position, a position at the sequence's minimum information (a uniform column) is
background, and per sequence AUROC, AUPR and SNR compare the two.

**The sequences scored** (:func:`scoring_targets`), the same for every method of a run, in file order:

- **Task 2**: the first ``max_sequences`` positive test sequences; attributions of the one output;
  every embedded motif's positions against background (the paper's saliency evaluation, any method).
- **Task 1**: for each of the 12 classes, the first ``max_sequences`` test sequences labelled with it;
  attributions of that class's output, scored on that motif's positions (from ``placements_test``)
  against background; the other motifs' positions count as neither. Reported: the mean over classes.
  A file without placements (the original papers' layout) cannot be scored this way: :class:`Unavailable`.

Every method attributes the logit (:mod:`.attributions`); ``attr_n`` counts the (sequence, class) pairs
scored and ``attr_saturated`` those whose logit is beyond ``±16``, where the probability's gradient (the
paper's Task 2 saliency) is at most 1.2e-7 of the logit's; above a logit of about 16.6 it is exactly 0 in
float32 and the sequence scores AUROC 0.5. **Floors**
(:func:`floor_scores`): the same methods on the same sequences for a randomly initialised model of the
architecture (a model-parameter randomisation test), and a random map, so a reader sees how far each
method is above chance.

**Attention** (:func:`attention_scores`): the model's attention layers see ``P`` pooled windows; window
``w`` is the input positions ``[w * width, (w + 1) * width)`` with ``width`` the product of the model's
pooling sizes (24 for every grid model: 8 windows cover positions 0-191, and positions 192-199, which
the pooling drops, belong to none). A window is motif-bearing when one of its own positions has
information > 0.1 bits (not widened by the convolution's reach). Scored: the first ``max_sequences``
test sequences that hold a motif (Task 1: any label; Task 2: positives), in file order. Per sequence
and layer, the attention each window receives (mean over heads and queries) as an AUROC against
"motif-bearing" (``attn_auroc_l<i>``, and their mean ``attn_auroc``); for sequences with at least two
motif-bearing windows and at least one without, the attention mass between motif-bearing windows (mean
over heads) over what a uniform map puts there, ``|M|^2 / P^2`` (``attn_motif_mass_ratio``, both tasks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hybridlens.analysis.attributions import GRADIENT_METHODS, MAX_SEQUENCES, attribute, logit_gradients, times_input
from hybridlens.analysis.motifs import information_content
from hybridlens.analysis.saliency import _auc_scores, position_metrics

#: Information (bits) above which a PWM column is a motif position (method.md §4.2).
MOTIF_BITS = 0.1
#: |logit| beyond which the sigmoid saturates in float32 (its gradient, the paper's saliency, is 0).
SATURATED_LOGIT = 16.0
#: Seed of the randomly initialised model and of the random map of the floors.
FLOOR_SEED = 12345


class Unavailable(ValueError):
    """Attributions cannot be scored on this dataset; the message says why."""


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


@dataclass
class Target:
    """One output's scored sequences: test rows, motif and background masks ``(n, L)``."""

    cls: int
    rows: np.ndarray
    motif: np.ndarray
    background: np.ndarray


def scoring_targets(test, task: str, *, max_sequences: int = MAX_SEQUENCES) -> list[Target]:
    """What every method scores (module docstring); raises :class:`Unavailable` for Task 1 without placements."""
    info = information_content(test.model, eps=1e-10)
    if task == "task2":
        rows = np.flatnonzero(test.y[:, 0] == 1)[:max_sequences]
        return [Target(0, rows, info[rows] > MOTIF_BITS, _background(info[rows]))]
    if test.placements is None:
        raise Unavailable("the dataset has no motif placements (placements_test), which Task 1 scoring needs per class")
    out = []
    for cls in range(test.y.shape[1]):
        rows = np.flatnonzero(test.y[:, cls] == 1)[:max_sequences]
        if rows.size:
            motif = class_motif_positions(test.x.shape[1:], test.placements, rows, cls) & (info[rows] > MOTIF_BITS)
            out.append(Target(cls, rows, motif, _background(info[rows])))
    return out


def _means(per_target: list[dict]) -> dict[str, float]:
    return {k: float(np.nanmean([np.nanmean(pc[k]) for pc in per_target])) for k in ("auroc", "aupr", "snr")}


def score_attributions(
    methods, model: torch.nn.Module, test, targets: list[Target], *, gradients: dict | None = None, on_method=None, **kwargs
) -> tuple[dict[str, float], dict[str, str]]:
    """Score every method in ``methods`` on ``targets``: ``attr_<method>_auroc/aupr/snr``, ``attr_n`` and
    ``attr_saturated``, and ``{method: reason}`` for the methods the architecture does not support.

    One gradient pass per target serves the gradient methods (:data:`GRADIENT_METHODS`); ``gradients``
    may hold it already, ``{cls: (rows, gradients, logits)}`` for rows of which the target's are a prefix
    (the paper's Task 2 saliency computes it for every positive). ``on_method(method, seconds, scores,
    unsupported)`` is called after each method with the results so far.
    """
    import time

    from hybridlens.analysis.attributions import NotSupported, unsupported_reason

    gradients = dict(gradients or {})
    out: dict[str, float] = {}
    saturated = 0
    for t in targets:
        g = gradients.get(t.cls)
        if g is None or len(g[0]) < len(t.rows) or not np.array_equal(g[0][: len(t.rows)], t.rows):
            gradients[t.cls] = g = (t.rows, *logit_gradients(model, test.x[t.rows], t.cls))
        saturated += int((g[2][: len(t.rows)].abs() > SATURATED_LOGIT).sum())
    out["attr_n"] = float(sum(len(t.rows) for t in targets))
    out["attr_saturated"] = float(saturated)
    unsupported = {}
    for method in methods:
        t0 = time.perf_counter()
        reason = unsupported_reason(method, model)
        if reason:
            unsupported[method] = reason
            if on_method:
                on_method(method, 0.0, out, unsupported)
            continue
        per_target = []
        for t in targets:
            x = test.x[t.rows]
            if method in GRADIENT_METHODS:
                attr = times_input(gradients[t.cls][1][: len(t.rows)], x, corrected=method == "saliency_corrected")
            else:
                try:
                    attr = attribute(method, model, x, t.cls, **kwargs.get(method, {}))
                except NotSupported as e:
                    unsupported[method] = str(e)
                    break
            per_target.append(position_metrics(attr.sum(axis=1), t.motif, t.background))
        if method not in unsupported:
            out |= {f"attr_{method}_{k}": v for k, v in _means(per_target).items()}
        if on_method:
            on_method(method, time.perf_counter() - t0, out, unsupported)
    return out, unsupported


def floor_scores(methods, random_model: torch.nn.Module, test, targets: list[Target]) -> dict[str, float]:
    """The floors of the attribution table: every supported method on a randomly initialised model
    (``floor_weights_<method>_auroc/aupr``) and a random map, standard normal scores seeded with
    :data:`FLOOR_SEED` (``floor_map_auroc/aupr``), on the same ``targets``."""
    scores, _ = score_attributions(methods, random_model, test, targets)
    out = {f"floor_weights_{k.removeprefix('attr_')}": v for k, v in scores.items() if k.endswith(("_auroc", "_aupr"))}
    rng = np.random.default_rng(FLOOR_SEED)
    per_target = [position_metrics(rng.standard_normal(t.motif.shape), t.motif, t.background) for t in targets]
    means = _means(per_target)
    return out | {"floor_map_auroc": means["auroc"], "floor_map_aupr": means["aupr"]}


# ------------------------------------------------------------------------------------- attention
def window_width(model: torch.nn.Module) -> int:
    """Input positions per pooled window: the product of the model's pooling sizes (``Hybrid.pools``)."""
    return int(np.prod(model.pools))


def motif_windows(pwm_info: np.ndarray, width: int, positions: int) -> np.ndarray:
    """``(N, P)``: whether window ``w`` (input positions ``[w * width, (w + 1) * width)``) has a position
    with information > :data:`MOTIF_BITS`; positions past the last window are ignored."""
    n, length = pwm_info.shape
    if width * positions > length:
        raise ValueError(f"{positions} windows of {width} positions do not fit a sequence of {length}")
    motif = pwm_info[:, : width * positions] > MOTIF_BITS
    return motif.reshape(n, positions, width).any(axis=2)


@dataclass
class AttentionExample:
    """One scored sequence's last-layer map ``(P, P)`` (mean over heads) and its motif windows ``(P,)``."""

    row: int  # the sequence's index in the test split
    weights: np.ndarray
    windows: np.ndarray
    width: int  # input positions per window


def attention_rows(test, task: str, max_sequences: int = MAX_SEQUENCES) -> np.ndarray:
    """The first ``max_sequences`` test sequences that hold a motif (Task 1: any label; Task 2: positives)."""
    rows = np.flatnonzero(test.y[:, 0] == 1) if task == "task2" else np.flatnonzero(test.y.sum(axis=1) > 0)
    return rows[:max_sequences]


def attention_scores(
    model: torch.nn.Module, test, task: str, *, max_sequences: int = MAX_SEQUENCES
) -> tuple[dict[str, float], AttentionExample | None]:
    """``attn_auroc`` (mean over layers), ``attn_auroc_l<i>`` per layer and ``attn_motif_mass_ratio``
    (module docstring), and an example map for the figure: the first scored sequence with two or more
    motif windows and at least one without. Empty and None for a model without attention."""
    if not any(True for _ in _attention_modules(model)):
        return {}, None
    rows = attention_rows(test, task, max_sequences)
    info = information_content(test.model[rows], eps=1e-10)
    maps = attention_maps(model, test.x[rows])  # layers of (N, P, P), mean over heads
    width = window_width(model)
    windows = motif_windows(info, width, maps[0].shape[-1])
    out = {}
    for layer, w in enumerate(maps):
        received = w.mean(axis=1)  # (N, P): mean over queries
        aucs = [_auc_scores(received[i], windows[i])[0] for i in range(len(rows))]
        out[f"attn_auroc_l{layer}"] = float(np.nanmean(aucs))
    out["attn_auroc"] = float(np.nanmean([out[f"attn_auroc_l{i}"] for i in range(len(maps))]))
    several = [i for i in range(len(rows)) if 2 <= windows[i].sum() < windows[i].size]
    ratios = [motif_mass_ratio(w[i], windows[i]) for w in maps for i in several]
    if ratios:
        out["attn_motif_mass_ratio"] = float(np.mean(ratios))
    example = AttentionExample(int(rows[several[0]]), maps[-1][several[0]], windows[several[0]], width) if several else None
    return out, example


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
