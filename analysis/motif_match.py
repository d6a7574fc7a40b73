"""Task 1 interpretability: do first-layer filters match the true motifs? (method.md §4.1)

For one trained model: activation-aligned, clipped filter PPMs (``analysis.filters``), TomTom with
Pearson column scores against a JASPAR release plus the ground-truth motifs (q < 0.1), then

- **TPR**: the fraction of all filters with a hit to a ground-truth TF (by JASPAR base ID, any
  version, or with the released code's ID lists: :class:`analysis.ground_truth.GroundTruth`; filter
  0 counts like any other, fixing the reference code's ``any(match_index)`` bug);
- **FPR**: the fraction of all filters with a hit to some JASPAR motif but to no ground-truth TF,
  not counting filters whose only hits are Gmeb1 (MA0615), as the reference code does.

Both are fractions of all filters, as in the paper (method.md §4.1 Δ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

from hybridlens.analysis.ground_truth import GroundTruth, base_id
from hybridlens.analysis.motifs import ANALYSIS_RELEASE, SIMULATION_RELEASE, Motif, fetch_collection, fetch_motifs

#: Filters whose only hits are these base IDs are not counted as false positives (reference code).
IGNORED_ONLY_HITS = ("MA0615",)  # Gmeb1
Q_THRESHOLD = 0.1


@dataclass
class FilterMatches:
    """TPR/FPR of one model and what each filter matched."""

    tpr: float
    fpr: float
    num_filters: int
    per_filter: list[dict] = field(default_factory=list)  # filter, gt_match, gt_id, best_hit, best_q


def match_stats(
    hits: Mapping[str, Sequence[tuple[str, float]]],
    num_filters: int,
    ground_truth: GroundTruth,
    *,
    target_names: Mapping[str, str] | None = None,
    ignored_only_hits: Iterable[str] = IGNORED_ONLY_HITS,
    prefix: str = "filter",
) -> FilterMatches:
    """TPR/FPR from TomTom hits.

    Parameters
    ----------
    hits
        Filter ID (``filter0`` ...) -> its significant hits ``[(target matrix ID, q-value), ...]``,
        best first. Filters absent from the mapping have no hit.
    num_filters
        All filters of the layer (the denominator).
    ground_truth
        Which targets count as a ground-truth TF (its rule and names).
    target_names
        Matrix ID -> TF name, to label filters whose best hit is not ground truth.
    """
    if num_filters < 1:
        raise ValueError(f"num_filters must be >= 1, got {num_filters}")
    ignored = set(ignored_only_hits)
    names = dict(target_names or {})
    n_gt = n_fp = 0
    per_filter = []
    for i in range(num_filters):
        fid = f"{prefix}{i}"
        fh = list(hits.get(fid, []))
        gt = [(t, q, ground_truth.match(t)) for t, q in fh if ground_truth.match(t)]
        row = {"filter": fid, "gt_match": "", "gt_id": "", "best_hit": "", "best_hit_name": "", "best_q": np.nan}
        if fh:
            row.update(best_hit=fh[0][0], best_hit_name=names.get(fh[0][0], ""), best_q=float(fh[0][1]))
        if gt:
            n_gt += 1
            row.update(gt_match=gt[0][2], gt_id=gt[0][0])
        elif fh and not all(base_id(t) in ignored for t, _ in fh):
            n_fp += 1
        per_filter.append(row)
    return FilterMatches(n_gt / num_filters, n_fp / num_filters, num_filters, per_filter)


def comparison_database(release: str = ANALYSIS_RELEASE, ground_truth: Sequence[str] = ()) -> list[Motif]:
    """The TomTom targets: a JASPAR release (CORE, all taxa, all versions: the paper's database) plus
    any ground-truth motif (JASPAR 2016 ID) the release lacks."""
    db = fetch_collection(release, all_versions=True)
    have = {m.id for m in db}
    extra = [i for i in ground_truth if i not in have]
    return db + fetch_motifs(extra, SIMULATION_RELEASE) if extra else db


def filter_matches(
    filters: Sequence[Motif],
    database: Sequence[Motif],
    ground_truth: GroundTruth,
    *,
    threshold: float = Q_THRESHOLD,
):
    """Run TomTom (Pearson) of ``filters`` against ``database`` and compute TPR/FPR.

    Returns ``(FilterMatches, significant_table)`` where the table holds every pair with
    q <= ``threshold`` (columns as :class:`analysis.tomtom.TomtomResult`).
    """
    from hybridlens.analysis.tomtom import tomtom

    res = tomtom(list(filters), list(database), distance="pearson")
    sig = res.significant(threshold)
    hits: dict[str, list[tuple[str, float]]] = {}
    for q, t, qv in zip(sig["query_id"], sig["target_id"], sig["q_value"]):
        hits.setdefault(q, []).append((t, float(qv)))
    names = {m.id: m.name for m in database}
    sig = sig.assign(target_name=sig["target_id"].map(names))
    return match_stats(hits, len(filters), ground_truth, target_names=names), sig
