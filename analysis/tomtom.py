"""Motif comparison with MEME's TomTom statistics (Gupta et al. 2007) and Pearson column scores.

The paper matched first-layer filters to JASPAR with ``tomtom -dist pearson -thresh 0.1``. This module
computes what that command computes, written from the published algorithm and MEME's documentation:

1. **Column scores.** Every query column against every column of every target, both strands
   (targets' reverse complements are targets too): Pearson correlation of the two 4-vectors
   (0 where a column has no variance), or, with ``distance="ed"``, minus their Euclidean distance.
2. **Complete scores.** For each query column, its scores are shifted by their median over all
   target columns of the database, so a query column left unaligned contributes 0 (a typical
   score). The shifted scores of the whole query are discretised together to integers
   ``0 .. 100`` (``BINS``).
3. **Null distribution.** The empirical distribution of each query column's discretised scores over
   all target columns is its null; the null of an alignment covering query columns ``i..j`` is the
   convolution of those columns' distributions.
4. **Best alignment.** For a target (one strand), every offset with at least ``min_overlap``
   overlapping columns is scored by the sum of its shifted scores; the best offset maximises it
   (ties: larger overlap, then the first offset).
5. **p-value.** The probability that the best of all ``2 (w_q + w_t - 1)`` alignments of a random
   target of the same width (both orientations, alignments independent) scores at least as well:
   for two orientations alone this is ``1 - (1 - p)^2``.
6. **E-value** = p × number of targets; **q-value** per query over all ``2N`` strand entries
   (Benjamini–Hochberg, i.e. Storey's method with π₀ = 1, which MEME's bootstrap estimate is close to
   for this use); the best strand entry of each target is reported.

Array shapes: motifs are ``(4, L)`` probability matrices, rows A, C, G, T.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from analysis.motifs import Motif, fetch_collection, read_meme, reverse_complement, validate_pwm

BINS = 100
DISTANCES = ("pearson", "ed")

MotifsLike = Union[str, os.PathLike, Sequence[Motif], Sequence[np.ndarray], np.ndarray]

try:  # numba compiles the inner loops; its cache makes later processes skip compilation
    from numba import njit
except ImportError:  # pragma: no cover - numba is a pinned dependency
    def njit(*args, **kwargs):
        return (lambda f: f) if not (args and callable(args[0])) else args[0]


# ------------------------------------------------------------------------------------------ inputs


def as_motifs(motifs: MotifsLike, *, prefix: str = "motif") -> list[Motif]:
    """Motifs from a MEME file path, a JASPAR release name (``"JASPAR2020"``: CORE, all taxa, all
    versions, as the paper's database), Motif objects, or ``(4, L)`` arrays (named ``prefix<i>``).
    Every matrix is validated: non-negative, columns summing to 1, width >= 1."""
    if isinstance(motifs, (str, os.PathLike)):
        s = str(motifs)
        if s.upper().startswith("JASPAR") and not Path(s).exists():
            return fetch_collection(s, all_versions=True)
        return read_meme(s)
    if isinstance(motifs, np.ndarray) and motifs.ndim == 2:
        motifs = [motifs]
    out = []
    for i, m in enumerate(motifs):
        if isinstance(m, Motif):
            out.append(Motif(m.id, m.name, validate_pwm(m.pwm, m.id)))
        else:
            name = f"{prefix}{i}"
            out.append(Motif(name, name, validate_pwm(m, name)))
    if not out:
        raise ValueError("no motifs given")
    return out


@dataclass
class _Targets:
    ids: list[str]
    cols: np.ndarray  # (C, 4) columns of all strand entries, entry 2k = target k, 2k+1 its RC
    starts: np.ndarray  # (2N,) first column of each entry
    lens: np.ndarray  # (2N,)
    zcols: np.ndarray  # (C, 4) centred, unit-norm columns (Pearson)


def _prepare_targets(targets: list[Motif]) -> _Targets:
    mats = []
    for t in targets:
        mats += [t.pwm.T, reverse_complement(t.pwm).T]
    lens = np.array([m.shape[0] for m in mats], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    cols = np.ascontiguousarray(np.concatenate(mats), dtype=np.float64)
    return _Targets([t.id for t in targets], cols, starts, lens, _unit_columns(cols))


def _unit_columns(cols: np.ndarray) -> np.ndarray:
    """Columns centred on 1/4 and scaled to unit length (zero where a column has no variance), so
    a dot product is the Pearson correlation."""
    c = cols - 0.25
    norm = np.sqrt((c * c).sum(axis=1, keepdims=True))
    return np.where(norm > 1e-12, c / np.where(norm > 1e-12, norm, 1.0), 0.0)


def _column_scores(query: np.ndarray, t: _Targets, distance: str) -> np.ndarray:
    """``(w, C)`` similarity of every query column with every target column."""
    q = np.ascontiguousarray(query.T, dtype=np.float64)  # (w, 4)
    if distance == "pearson":
        return _unit_columns(q) @ t.zcols.T
    d2 = (q * q).sum(1)[:, None] + (t.cols * t.cols).sum(1)[None, :] - 2.0 * q @ t.cols.T
    return -np.sqrt(np.maximum(d2, 0.0))


# --------------------------------------------------------------------------------- compiled core


@njit(cache=True)
def _nint(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


@njit(cache=True)
def _kth_smallest(v, k, nbins=2048):
    """The k-th smallest value (0-based) of ``v``: a histogram pass finds the bin that holds it,
    then only that bin's values are sorted."""
    lo, hi = v.min(), v.max()
    if hi <= lo:
        return lo
    width = (hi - lo) / nbins
    counts = np.zeros(nbins + 1, np.int64)
    for x in v:
        counts[min(int((x - lo) / width), nbins)] += 1
    below = 0
    b = 0
    while below + counts[b] <= k:
        below += counts[b]
        b += 1
    members = np.empty(counts[b])
    n = 0
    for x in v:
        if min(int((x - lo) / width), nbins) == b:
            members[n] = x
            n += 1
    members.sort()
    return members[k - below]


@njit(cache=True)
def _shift_and_scale(raw, bins):
    """Shift every row by MEME's quantile 0.5 (the midpoint of the sorted values at 1-based ranks
    floor(C/2) and ceil(C/2)), then discretise the whole matrix to integers 0..bins.
    Returns (scaled, smallest shifted score, scale)."""
    w, c = raw.shape
    lo_rank = int(math.floor(0.5 * c)) - 1
    hi_rank = int(math.ceil(0.5 * c)) - 1
    shifted = np.empty((w, c))
    for i in range(w):
        row = raw[i]
        m_lo = _kth_smallest(row, lo_rank)
        m_hi = m_lo if hi_rank == lo_rank else _kth_smallest(row, hi_rank)
        med = (m_lo + m_hi) / 2.0
        for j in range(c):
            shifted[i, j] = row[j] - med
    small, large = shifted.min(), shifted.max()
    scale = bins / (large - small) if large > small else 1.0
    scaled = np.empty((w, c), np.int64)
    for i in range(w):
        for j in range(c):
            scaled[i, j] = min(max(int(math.floor((shifted[i, j] - small) * scale + 0.5)), 0), bins)
    return scaled, small, scale


@njit(cache=True)
def _range_pmfs(scaled, bins):
    """pmf[s, e, :] of the sum of query columns s..e, each column an independent draw from its
    scores over all target columns."""
    w, c = scaled.shape
    size = w * bins + 1
    hist = np.zeros((w, bins + 1))
    for i in range(w):
        for j in range(c):
            hist[i, scaled[i, j]] += 1.0
    hist /= c
    pmfs = np.zeros((w, w, size))
    for s in range(w):
        cur = np.zeros(size)
        cur[0] = 1.0
        top = 0
        for e in range(s, w):
            nxt = np.zeros(size)
            for k in range(top + 1):
                pk = cur[k]
                if pk != 0.0:
                    for b in range(bins + 1):
                        hb = hist[e, b]
                        if hb != 0.0:
                            nxt[k + b] += pk * hb
            top += bins
            cur = nxt
            pmfs[s, e, :] = cur
    return pmfs


@njit(cache=True)
def _best_alignments(scaled, starts, lens, shift, min_overlap):
    """For every strand entry: the best complete (shifted, discretised) score, its configuration
    (1 .. w + len - 1) and overlap. ``shift`` = offset * scale of the discretisation."""
    w = scaled.shape[0]
    n = starts.shape[0]
    best = np.empty(n, np.int64)
    best_cfg = np.empty(n, np.int64)
    best_ov = np.empty(n, np.int64)
    for t in range(n):
        lt = lens[t]
        st = starts[t]
        mo = min(min_overlap, w, lt)
        lo, hi = 1, w + lt - 1
        if mo > 1:
            lo, hi = mo, w + lt - mo
        first = True
        for cfg in range(lo, hi + 1):
            if cfg <= w:
                qc, tc = w - cfg, 0
            else:
                qc, tc = 0, cfg - w
            total = 0.0
            ov = 0
            while qc < w and tc < lt:
                total += scaled[qc, st + tc]
                qc += 1
                tc += 1
                ov += 1
            score = _nint(total + ov * shift)
            if first or score > best[t] or (score == best[t] and ov > best_ov[t]):
                best[t], best_cfg[t], best_ov[t] = score, cfg, ov
                first = False
    return best, best_cfg, best_ov


@njit(cache=True)
def _log_cdfs(pmfs, shift, ext_len):
    """log P(X_se < k) on the extended score grid for every alignment X_se of query columns s..e;
    the unaligned query columns contribute their (median-shifted) score 0, which on the
    discretised scale is a shift of ``-shift`` per column."""
    w = pmfs.shape[0]
    size = pmfs.shape[2]
    out = np.zeros((w, w, ext_len))
    for s in range(w):
        for e in range(s, w):
            corr = _nint(shift * (w - 1 - (e - s)))
            cur = np.zeros(ext_len)
            for j in range(size):
                k = j - corr
                if 0 <= k < ext_len:
                    cur[k] += pmfs[s, e, j]
            tail = 0.0  # P(X >= k), summed from the top so the tail keeps its precision
            for k in range(ext_len - 1, -1, -1):
                tail += cur[k]
                out[s, e, k] = math.log1p(-min(tail, 1.0))  # log P(X < k)
    return out


@njit(cache=True)
def _max_alignment_pv(log_cdfs, target_len):
    """P(best of the 2 (w + len - 1) alignments of a random target of width ``target_len`` scores
    >= k) for every extended index k: 1 - prod_i P(X_i < k)^2, the alignments independent."""
    w = log_cdfs.shape[0]
    ext_len = log_cdfs.shape[2]
    acc = np.zeros(ext_len)
    for i in range(w + target_len - 1):
        if i < w:
            s = w - i - 1
            e = min(w, s + target_len) - 1
        else:
            s = 0
            e = min(w, target_len + w - i - 1) - 1
        for k in range(ext_len):
            acc[k] += 2.0 * log_cdfs[s, e, k]  # two orientations
    pv = np.empty(ext_len)
    for k in range(ext_len):
        pv[k] = -math.expm1(acc[k])
    return pv


# ---------------------------------------------------------------------------------- statistics


def qvalues(p: np.ndarray, overlap: np.ndarray | None = None) -> np.ndarray:
    """Benjamini–Hochberg q-values (Storey with π₀ = 1) of one query's p-values: q(i) = min over
    j >= i of p(j) m / j in ascending order, capped at 1."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    order = np.lexsort((-overlap, p)) if overlap is not None else np.argsort(p, kind="stable")
    q_sorted = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    q = np.empty(m)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def _query_table(query: Motif, t: _Targets, distance: str, min_overlap: int) -> dict[str, np.ndarray]:
    w = query.width
    scaled, small, scale = _shift_and_scale(_column_scores(query.pwm, t, distance), BINS)
    shift = small * scale  # <= 0: the median shift makes the smallest score negative
    best, cfg, overlap = _best_alignments(scaled, t.starts, t.lens, shift, int(min_overlap))
    ext_len = int(math.ceil(w * BINS + 1 - (w - 1) * shift))
    log_cdfs = _log_cdfs(_range_pmfs(scaled, BINS), shift, ext_len)
    index = np.clip(np.floor(best - w * shift + 0.5).astype(np.int64), 0, ext_len - 1)
    p = np.empty(best.size)
    for length in np.unique(t.lens):
        sel = t.lens == length
        p[sel] = _max_alignment_pv(log_cdfs, int(length))[index[sel]]
    q = qvalues(p, overlap)
    # the best strand entry of each target: lower p, then larger overlap, then forward
    fwd, rev = slice(0, None, 2), slice(1, None, 2)
    take_rev = (p[rev] < p[fwd]) | ((p[rev] == p[fwd]) & (overlap[rev] > overlap[fwd]))
    pick = np.arange(0, p.size, 2) + take_rev
    return {
        "offset": cfg[pick] - w,
        "p_value": p[pick],
        "q_value": q[pick],
        "overlap": overlap[pick],
        "orientation": np.where(take_rev, "-", "+"),
    }


@dataclass
class TomtomResult:
    """All (query, target) pairs: ``table`` is a DataFrame with columns query_id, target_id, offset,
    p_value, e_value, q_value, overlap, orientation (one row per pair, queries in input order)."""

    table: "object"

    def significant(self, threshold: float = 0.1) -> "object":
        """Pairs with q <= ``threshold`` (the paper's ``-thresh 0.1``), best first within a query."""
        t = self.table
        out = t[t["q_value"] <= threshold]
        return out.sort_values(["query_id", "p_value"], kind="stable").reset_index(drop=True)

    def hits(self, threshold: float = 0.1) -> dict[str, list[str]]:
        """Per query, the target IDs with q <= ``threshold``, best first ([] when none)."""
        sig = self.significant(threshold)
        out = {q: [] for q in dict.fromkeys(self.table["query_id"])}
        for q, tid in zip(sig["query_id"], sig["target_id"]):
            out[q].append(tid)
        return out


def tomtom(
    queries: MotifsLike,
    targets: MotifsLike = "JASPAR2020",
    *,
    distance: str = "pearson",
    min_overlap: int = 1,
) -> TomtomResult:
    """Compare every query motif with every target motif (both strands), as MEME's
    ``tomtom -dist pearson`` (default) or ``-dist ed``.

    Parameters
    ----------
    queries, targets
        MEME file paths, Motif lists or ``(4, L)`` arrays; ``targets`` may also name a bundled JASPAR
        release (default ``"JASPAR2020"``: CORE, all taxa, all versions, the paper's database).
    distance
        ``"pearson"`` (the paper) or ``"ed"`` (Euclidean, MEME's and memelite's default).
    min_overlap
        Minimum number of overlapping columns (MEME's default 1).

    Returns
    -------
    TomtomResult
        Every pair with its p-value, E-value, q-value, offset, overlap and orientation.
    """
    import pandas as pd

    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    if min_overlap < 1:
        raise ValueError(f"min_overlap must be >= 1, got {min_overlap}")
    qs = as_motifs(queries, prefix="query")
    ts = as_motifs(targets, prefix="target")
    t = _prepare_targets(ts)
    parts = []
    for q in qs:
        cols = _query_table(q, t, distance, min_overlap)
        cols["e_value"] = cols["p_value"] * len(ts)
        parts.append(pd.DataFrame({"query_id": q.id, "target_id": t.ids, **cols}))
    table = pd.concat(parts, ignore_index=True)
    return TomtomResult(table[["query_id", "target_id", "offset", "p_value", "e_value", "q_value", "overlap", "orientation"]])
