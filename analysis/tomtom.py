"""Motif comparison with MEME's TomTom statistics (Gupta et al. 2007) and Pearson column scores.

The paper matched first-layer filters to JASPAR with ``tomtom -dist pearson -thresh 0.1`` (MEME
Suite 5). This module computes what that command computes, written from the published algorithm and
MEME's documentation, and checked against MEME 5.4.1's own output (``tests/test_tomtom.py``: p-values
equal to MEME's printed precision, the same significant pairs, offsets and orientations):

1. **Motifs as MEME reads them.** Columns are rescaled if off 1 by more than 1e-5, then the
   pseudocount (``-motif-pseudo``, 0.1) is added against the motif's site count with a uniform
   background.
2. **Column scores.** Every query column against every column of every target, both strands
   (targets' reverse complements are targets too): Pearson correlation of the two 4-vectors
   (0 where a column has no variance), or, with ``distance="ed"``, minus their Euclidean distance.
3. **Complete scores.** For each query column, its scores are shifted by their median over all
   target columns of the database, so a query column left unaligned contributes 0 (a typical
   score). The shifted scores of the whole query are discretised together to integers
   ``0 .. 100`` (``BINS``) with an integer offset (the smallest score rounded down) and an integer
   scale, as MEME 5 does.
4. **Null distribution.** The empirical distribution of each query column's discretised scores over
   all target columns is its null; the null of an alignment covering query columns ``i..j`` is the
   convolution of those columns' distributions.
5. **Best alignment.** For a target (one strand), every offset with at least ``min_overlap``
   overlapping columns is scored by the sum of its shifted scores; the best offset maximises it
   (ties: larger overlap, then the first offset).
6. **p-value.** The probability that the best of all ``2 (w_q + w_t - 1)`` alignments of a random
   target of the same width (both orientations, alignments independent) scores at least as well:
   for two orientations alone this is ``1 - (1 - p)^2``. Kept in single precision, as MEME does.
7. **E-value** = p × number of targets; **q-value** per query over all ``2N`` strand entries:
   Storey's method with π₀ estimated by bootstrap (MEME's grid of λ and bootstrap sizes, our own
   seeded generator); the best strand entry of each target is reported.

Array shapes: motifs are ``(4, L)`` probability matrices, rows A, C, G, T.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from hybridlens.analysis.motifs import ANALYSIS_RELEASE, DEFAULT_NSITES, Motif, fetch_collection, read_meme, validate_pwm

BINS = 100
DISTANCES = ("pearson", "ed")
#: MEME's ``-motif-pseudo`` default.
PSEUDOCOUNT = 0.1
#: Columns whose sum is off 1 by more than this are rescaled when read (as MEME does).
NORMALISE_TOLERANCE = 1e-5

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
            out.append(Motif(m.id, m.name, validate_pwm(m.pwm, m.id), m.nsites))
        else:
            name = f"{prefix}{i}"
            out.append(Motif(name, name, validate_pwm(m, name)))
    if not out:
        raise ValueError("no motifs given")
    return out


def _meme_columns(motif: Motif, pseudocount: float) -> np.ndarray:
    """``(L, 4)`` columns as MEME holds them after reading a motif: columns off 1 by more than
    ``NORMALISE_TOLERANCE`` rescaled, then the pseudocount added against the motif's site count
    (``DEFAULT_NSITES`` if unknown) with a uniform background, in MEME's order of operations.

    The pseudocount leaves Pearson scores unchanged in exact arithmetic, but the discretisation
    floors its offset and scale (see ``_shift_and_scale``), so where a score extreme falls on an
    integer boundary the last bits decide the bins; following MEME's arithmetic reproduces them."""
    cols = np.array(motif.pwm.T, dtype=np.float64)
    total = cols[:, 0] + cols[:, 1] + cols[:, 2] + cols[:, 3]
    off = (1.0 - NORMALISE_TOLERANCE > total) | (1.0 + NORMALISE_TOLERANCE < total)
    cols[off] = cols[off] / total[off, None]
    if pseudocount > 0:
        sites = int(motif.nsites) if motif.nsites is not None and motif.nsites > 0 else DEFAULT_NSITES
        cols = (cols * sites + pseudocount * 0.25) / (sites + pseudocount)
    return cols


@dataclass
class _Targets:
    ids: list[str]
    cols: np.ndarray  # (C, 4) columns of all strand entries, entry 2k = target k, 2k+1 its RC
    starts: np.ndarray  # (2N,) first column of each entry
    lens: np.ndarray  # (2N,)
    dev_t: np.ndarray  # (4, C) columns minus 1/4, letters first
    ss: np.ndarray  # (C,) their sums of squares


def _prepare_targets(targets: list[Motif], pseudocount: float) -> _Targets:
    mats = []
    for t in targets:
        cols = _meme_columns(t, pseudocount)
        mats += [cols, cols[::-1, ::-1]]  # the reverse complement: A<->T, C<->G, order reversed
    lens = np.array([m.shape[0] for m in mats], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    cols = np.ascontiguousarray(np.concatenate(mats), dtype=np.float64)
    dev, ss = _deviations(cols)
    return _Targets([t.id for t in targets], cols, starts, lens, np.ascontiguousarray(dev.T), ss)


def _deviations(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns minus the uniform 1/4 and their sums of squares, summed A, C, G, T in order."""
    dev = np.ascontiguousarray(cols - 0.25)
    sq = dev * dev
    return dev, ((sq[:, 0] + sq[:, 1]) + sq[:, 2]) + sq[:, 3]


@njit(cache=True, error_model="numpy")
def _pearson(qdev, qss, tdev_t, tss):
    """``(w, C)`` Pearson correlations, 0 where either column has no variance. ``tdev_t`` is
    ``(4, C)``: letters first, so the inner loop runs over contiguous target columns (SIMD)."""
    w, c = qdev.shape[0], tdev_t.shape[1]
    out = np.empty((w, c))
    t0, t1, t2, t3 = tdev_t[0], tdev_t[1], tdev_t[2], tdev_t[3]
    for i in range(w):
        q0, q1, q2, q3, s = qdev[i, 0], qdev[i, 1], qdev[i, 2], qdev[i, 3], qss[i]
        row = out[i]
        for j in range(c):
            row[j] = (((q0 * t0[j] + q1 * t1[j]) + q2 * t2[j]) + q3 * t3[j]) / math.sqrt(s * tss[j])
        if s == 0.0:
            row[:] = 0.0
    for j in range(c):
        if tss[j] == 0.0:
            out[:, j] = 0.0
    return out


@njit(cache=True)
def _neg_euclidean(q, t):
    """``(w, C)`` minus the Euclidean distances."""
    w, c = q.shape[0], t.shape[0]
    out = np.empty((w, c))
    for i in range(w):
        for j in range(c):
            d = 0.0
            for a in range(4):
                x = q[i, a] - t[j, a]
                d += x * x
            out[i, j] = -math.sqrt(d)
    return out


def _column_scores(query: np.ndarray, t: _Targets, distance: str) -> np.ndarray:
    """``(w, C)`` similarity of every query column (``(w, 4)``, as ``_meme_columns`` gives) with
    every target column."""
    if distance == "pearson":
        qdev, qss = _deviations(query)
        return _pearson(qdev, qss, t.dev_t, t.ss)
    return _neg_euclidean(np.ascontiguousarray(query), t.cols)


# --------------------------------------------------------------------------------- compiled core


@njit(cache=True)
def _nint(x):
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


@njit(cache=True, error_model="numpy")
def _middle_pair(row, lo, hi, k1, k2, nbins=4096):
    """Mean of the k1-th and k2-th smallest values (0-based, k1 <= k2) of ``row``, whose values lie
    in [lo, hi]: one histogram pass finds the bins that hold those ranks, then only those bins'
    values are sorted."""
    if hi <= lo:
        return lo
    inv = nbins / (hi - lo)
    counts = np.zeros(nbins + 1, np.int64)
    for x in row:
        counts[min(int((x - lo) * inv), nbins)] += 1
    below1, b1 = 0, 0
    while below1 + counts[b1] <= k1:
        below1 += counts[b1]
        b1 += 1
    below2, b2 = below1, b1
    while below2 + counts[b2] <= k2:
        below2 += counts[b2]
        b2 += 1
    members = np.empty(counts[b1 : b2 + 1].sum())
    n = 0
    for x in row:
        b = min(int((x - lo) * inv), nbins)
        if b1 <= b <= b2:
            members[n] = x
            n += 1
    members.sort()
    return (members[k1 - below1] + members[k2 - below1]) / 2.0


@njit(cache=True, error_model="numpy")
def _shift_and_scale(raw, bins):
    """Shift every row by MEME's quantile 0.5 (the midpoint of the sorted values at 1-based ranks
    floor(C/2) and ceil(C/2)), then discretise the whole matrix to integers 0..bins as MEME 5 does:
    the offset is the smallest shifted score rounded down to an integer and the scale
    ``floor(bins / (largest - offset))``, so offset x scale is an integer and every bin holds 1/scale.
    Returns (scaled, offset, scale)."""
    w, c = raw.shape
    k1 = int(math.floor(0.5 * c)) - 1
    k2 = int(math.ceil(0.5 * c)) - 1
    med = np.empty(w)
    small, large = np.inf, -np.inf
    for i in range(w):
        row = raw[i]
        lo, hi = row.min(), row.max()
        med[i] = _middle_pair(row, lo, hi, k1, k2)
        # subtracting a constant is monotone in floating point, so these are the shifted extremes
        small = min(small, lo - med[i])
        large = max(large, hi - med[i])
    if large == small:
        small = large - 1.0
    small = math.floor(small)
    scale = float(math.floor(bins / (large - small)))
    scaled = np.empty((w, c), np.int32)
    for i in range(w):
        m, row, out = med[i], raw[i], scaled[i]
        for j in range(c):
            out[j] = min(max(np.int32(math.floor(((row[j] - m) - small) * scale + 0.5)), 0), bins)
    return scaled, small, scale


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, error_model="numpy")
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


@njit(cache=True, error_model="numpy")
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


#: Storey's π₀ estimate as MEME's q-values make it: lambdas 0.005 .. 0.5, 100 bootstraps of 1,000.
PI0_LAMBDAS = (np.arange(1, 101) / 100.0) * 0.5
PI0_BOOTSTRAPS = 100
PI0_BOOTSTRAP_SIZE = 1000
PI0_MIN_VALUES = 100


def storey_pi0(p: np.ndarray, *, seed: int = 0) -> float:
    """Storey's (2002) bootstrap estimate of the fraction of true nulls among ``p``.

    π₀(λ) = #{p >= λ} / ((1 - λ) m) is computed on a grid of λ; the plug-in value is its minimum;
    λ is chosen to minimise the bootstrap mean squared error of π₀(λ) against the plug-in value
    (``PI0_BOOTSTRAPS`` resamples of ``PI0_BOOTSTRAP_SIZE`` p-values, numpy generator seeded with
    ``seed``), and π₀ at that λ, clipped to [0, 1], is returned. ``PI0_MIN_VALUES`` or fewer
    p-values give 1 (no estimate)."""
    p = np.sort(np.asarray(p, dtype=np.float64))
    m = p.size
    if m <= PI0_MIN_VALUES:
        return 1.0
    first_at = np.searchsorted(p, PI0_LAMBDAS, side="left")  # p[first_at[j]:] are >= lambda_j
    with np.errstate(divide="ignore"):
        pi0 = np.where(first_at == m, np.inf, (m - first_at) / ((1.0 - PI0_LAMBDAS) * m))
    plug_in = pi0.min()
    # a resampled p-value p[i] counts towards lambda_j exactly when i >= first_at[j]: bucket each
    # index by how many lambdas it reaches, histogram the buckets per bootstrap, cumulate from the top
    n_lam = PI0_LAMBDAS.size
    reach = np.searchsorted(first_at, np.arange(m), side="right")  # (m,) in 0..n_lam
    draws = np.random.default_rng(seed).integers(0, m, size=(PI0_BOOTSTRAPS, PI0_BOOTSTRAP_SIZE))
    rows = np.arange(PI0_BOOTSTRAPS)[:, None] * (n_lam + 1)
    hist = np.bincount((reach[draws] + rows).ravel(), minlength=PI0_BOOTSTRAPS * (n_lam + 1))
    hist = hist.reshape(PI0_BOOTSTRAPS, n_lam + 1)
    count_ge = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (B, n_lam): reach > j
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(count_ge == 0, np.inf, count_ge / ((1.0 - PI0_LAMBDAS) * PI0_BOOTSTRAP_SIZE))
        mse = ((boot - plug_in) ** 2).sum(axis=0)
    return float(np.clip(pi0[int(np.argmin(mse))], 0.0, 1.0))


def qvalues(p: np.ndarray, overlap: np.ndarray | None = None, *, pi0: float = 1.0) -> np.ndarray:
    """Storey q-values of one query's p-values: q(i) = min over j >= i of π₀ p(j) m / j in
    ascending order, capped at 1 (π₀ = 1 is Benjamini–Hochberg)."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    order = np.lexsort((-overlap, p)) if overlap is not None else np.argsort(p, kind="stable")
    q_sorted = np.minimum.accumulate(np.minimum(pi0 * p[order] * m / np.arange(1, m + 1), 1.0)[::-1])[::-1]
    q = np.empty(m)
    q[order] = q_sorted
    return q


def _query_table(query: Motif, t: _Targets, distance: str, min_overlap: int, pseudocount: float) -> dict[str, np.ndarray]:
    w = query.width
    raw = _column_scores(_meme_columns(query, pseudocount), t, distance)
    scaled, small, scale = _shift_and_scale(raw, BINS)
    shift = small * scale  # an integer <= 0: the median shift makes the smallest score negative
    best, cfg, overlap = _best_alignments(scaled, t.starts, t.lens, shift, int(min_overlap))
    ext_len = int(math.ceil(w * BINS + 1 - (w - 1) * shift))
    log_cdfs = _log_cdfs(_range_pmfs(scaled, BINS), shift, ext_len)
    index = np.clip(np.floor(best - w * shift + 0.5).astype(np.int64), 0, ext_len - 1)
    p = np.empty(best.size)
    for length in np.unique(t.lens):
        sel = t.lens == length
        p[sel] = _max_alignment_pv(log_cdfs, int(length))[index[sel]]
    p = p.astype(np.float32).astype(np.float64)  # MEME keeps p-values in single precision
    q = qvalues(p, overlap, pi0=storey_pi0(p))
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


def _meme_order(table) -> np.ndarray:
    """Row order of a pairs table: queries in first-appearance order, within a query MEME's."""
    qrank = {q: i for i, q in enumerate(dict.fromkeys(table["query_id"]))}
    keys = (
        table["target_id"].to_numpy(),
        table["orientation"].to_numpy(),
        -table["overlap"].to_numpy(),
        table["p_value"].to_numpy(),
        table["query_id"].map(qrank).to_numpy(),
    )
    return np.lexsort(keys)


@dataclass
class TomtomResult:
    """All (query, target) pairs: ``table`` is a DataFrame with columns query_id, target_id, offset,
    p_value, e_value, q_value, overlap, orientation (one row per pair, queries in input order)."""

    table: "object"

    def significant(self, threshold: float = 0.1) -> "object":
        """Pairs with q <= ``threshold`` (the paper's ``-thresh 0.1``), best first within a query
        (MEME's order: p-value, then larger overlap, then forward strand, then target ID)."""
        t = self.table
        out = t[t["q_value"] <= threshold]
        order = _meme_order(out)
        return out.iloc[order].reset_index(drop=True)

    def hits(self, threshold: float = 0.1) -> dict[str, list[str]]:
        """Per query, the target IDs with q <= ``threshold``, best first ([] when none)."""
        sig = self.significant(threshold)
        out = {q: [] for q in dict.fromkeys(self.table["query_id"])}
        for q, tid in zip(sig["query_id"], sig["target_id"]):
            out[q].append(tid)
        return out


def tomtom(
    queries: MotifsLike,
    targets: MotifsLike = ANALYSIS_RELEASE,
    *,
    distance: str = "pearson",
    min_overlap: int = 1,
    pseudocount: float = PSEUDOCOUNT,
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
    pseudocount
        MEME's ``-motif-pseudo`` (default 0.1), added to every motif against its site count
        (``Motif.nsites``, MEME files' ``nsites=``, 20 when unknown). It moves Euclidean scores;
        Pearson scores only in their last bits.

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
    if not pseudocount >= 0:
        raise ValueError(f"pseudocount must be >= 0, got {pseudocount}")
    qs = as_motifs(queries, prefix="query")
    ts = as_motifs(targets, prefix="target")
    t = _prepare_targets(ts, pseudocount)
    parts = []
    for q in qs:
        cols = _query_table(q, t, distance, min_overlap, pseudocount)
        cols["e_value"] = cols["p_value"] * len(ts)
        parts.append(pd.DataFrame({"query_id": q.id, "target_id": t.ids, **cols}))
    table = pd.concat(parts, ignore_index=True)
    return TomtomResult(table[["query_id", "target_id", "offset", "p_value", "e_value", "q_value", "overlap", "orientation"]])
