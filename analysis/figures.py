"""Figures: the paper's exp-vs-relu scatter plots (Fig. 2 for Task 1, Fig. 3 for Task 2) and
filter logos. Each figure is written as PNG and PDF."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

METRIC_LABELS = {
    "test_aupr": "AUPR",
    "test_auroc": "AUC",
    "tpr": "Match fraction (TPR)",
    "fpr": "False positive rate",
    "saliency_auroc": "Saliency AUROC",
    "saliency_aupr": "Saliency AUPR",
    "saliency_snr": "Saliency SNR",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(fig, stem: Path, title: str, title_size: int) -> list[Path]:
    """Title, lay out, write PNG and PDF, close; returns the two paths."""
    if title:
        fig.suptitle(title, fontsize=title_size)
    fig.tight_layout()
    out = []
    for ext in ("png", "pdf"):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=150, bbox_inches="tight")
        out.append(p)
    _plt().close(fig)
    return out


def scatter_exp_vs_relu(summary: pd.DataFrame, metrics: Sequence[str], stem: str | Path, *, title: str = "") -> list[Path]:
    """One row per baseline (C24, C4C6, C4), one column per metric, one point per architecture:
    x = ReLU mean, y = exponential mean, error bars = standard deviations (x error from ReLU,
    y error from exp; the reference notebooks swapped them), the diagonal drawn. Each architecture
    keeps one colour in every panel (:func:`architecture_colours`); each row's title names its series.

    ``summary`` has columns architecture, activation, ``<metric>_mean``, ``<metric>_std``.
    """
    plt = _plt()
    stem = Path(stem)
    from hybridlens.models.grid import BASELINES, GRID

    colours = architecture_colours(list(GRID))
    rows = [b for b in BASELINES if any(GRID[a].baseline == b for a in summary["architecture"])]
    fig, axes = plt.subplots(len(rows), len(metrics), figsize=(3.2 * len(metrics), 3.0 * len(rows)), squeeze=False)
    legend: dict[str, object] = {}  # one legend per figure: architecture -> its marker
    for r, base in enumerate(rows):
        sub = summary[[GRID[a].baseline == base for a in summary["architecture"]]]
        for c, m in enumerate(metrics):
            ax = axes[r][c]
            extent = []  # every point with its error bar
            for arch, g in sub.groupby("architecture", sort=False):
                by = g.set_index("activation")
                if "relu" not in by.index or "exp" not in by.index:
                    continue
                x, y = by.loc["relu", f"{m}_mean"], by.loc["exp", f"{m}_mean"]
                xe, ye = by.loc["relu", f"{m}_std"], by.loc["exp", f"{m}_std"]
                h = ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", ms=5, capsize=2, label=arch, color=colours[arch])
                legend.setdefault(arch, h)
                xe, ye = (v if np.isfinite(v) else 0.0 for v in (xe, ye))
                extent += [x - xe, x + xe, y - ye, y + ye]
            finite = [v for v in extent if np.isfinite(v)]
            lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
            pad = 0.08 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            ax.set_xlabel(f"ReLU {METRIC_LABELS.get(m, m)}", fontsize=8)
            ax.set_ylabel(f"Exp {METRIC_LABELS.get(m, m)}", fontsize=8)
            ax.tick_params(labelsize=7)
            if c == 0:
                shown = [a for a, g in sub.groupby("architecture", sort=False) if {"exp", "relu"} <= set(g["activation"])]
                named = ", ".join(shown) or "no architecture with both exp and relu"
                ax.set_title(f"{base} baseline: {named}", fontsize=8, loc="left")
    if legend:
        fig.legend(list(legend.values()), list(legend), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _finish(fig, stem, title, 10)


def architecture_colours(names: Sequence[str]) -> dict[str, tuple]:
    """One colour per architecture, the same in every panel and figure: matplotlib's tab20 in grid order,
    its 10 strong colours first, then their light twins (so a baseline's row never mixes a colour with
    its twin)."""
    plt = _plt()
    cmap = plt.get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {a: cmap(order[i % 20]) for i, a in enumerate(names)}


def filter_title(match: dict, nsites: int | None) -> str:
    """A filter logo's title: its best ground-truth hit, else its best JASPAR hit marked "JASPAR only",
    else "no hit"; then the number of windows it was aligned from, marked below ``MIN_WINDOWS``.
    ``match`` is a row of ``FilterMatches.per_filter``."""
    from hybridlens.analysis.filters import MIN_WINDOWS

    if match.get("gt_match"):
        what = match["gt_match"]
    elif match.get("best_hit"):
        what = f"{match.get('best_hit_name') or match['best_hit']} (JASPAR only)"
    else:
        what = "no hit"
    title = f"{match['filter']}: {what}"
    if nsites is not None:
        title += f"\n{nsites} windows" + (f" (< {MIN_WINDOWS}: unreliable)" if nsites < MIN_WINDOWS else "")
    return title


def filter_logos(
    pwms: Sequence[np.ndarray], labels: Sequence[str], stem: str | Path, *, title: str = "", ncols: int = 4
) -> list[Path]:
    """Information-content logos (logomaker) of filter PPMs ``(4, L)``, each titled with its label
    (:func:`filter_title`); the y axis spans the full 2 bits."""
    import logomaker

    plt = _plt()
    stem = Path(stem)
    n = len(pwms)
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 1.7 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        ppm = np.clip(np.asarray(pwms[i], dtype=float), 1e-9, 1.0)
        info = 2 + (ppm * np.log2(ppm)).sum(axis=0)
        heights = (ppm * info).T
        heights[heights < 0.01] = 0.0  # invisible at this scale; logomaker's glyphs are the slow part
        df = pd.DataFrame(heights, columns=list("ACGT"))
        logomaker.Logo(df, ax=ax, color_scheme="classic")
        ax.set_ylim(0, 2.05)  # a glyph drawn to exactly 2 bits is not clipped by the axes
        ax.set_yticks([0, 1, 2])
        ax.set_ylabel("bits", fontsize=6)
        for spine in ("top", "right"):  # a full-height letter would run into the frame
            ax.spines[spine].set_visible(False)
        ax.set_title(labels[i], fontsize=7)
        ax.set_xticks([])
        ax.tick_params(labelsize=6)
    return _finish(fig, stem, title, 9)


def filter_logos_many(jobs: Sequence[tuple], *, workers: int | None = None) -> list[Path]:
    """Draw several logo grids (``(pwms, labels, stem, title)`` each) in parallel processes:
    logomaker builds every glyph anew, so the grids dominate the analysis's time."""
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs), 4))
    if workers == 1:
        return [p for pwms, labels, stem, title in jobs for p in filter_logos(pwms, labels, stem, title=title)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(filter_logos, pwms, labels, stem, title=title) for pwms, labels, stem, title in jobs]
        return [p for f in futures for p in f.result()]


def attribution_heatmap(table: pd.DataFrame, stem: str | Path, *, title: str = "", metric: str = "auroc_mean") -> list[Path]:
    """Methods (rows) x architectures (columns) of an attribution score, one panel per activation (exp
    and relu side by side); a method that does not support an architecture is an empty cell marked
    "n/s". ``table`` is :func:`~hybridlens.analysis.report.attribution_table`'s."""
    from hybridlens.models import GRID

    plt = _plt()
    methods = list(dict.fromkeys(table["method"]))
    archs = sorted(set(table["architecture"]), key=lambda a: list(GRID).index(a) if a in GRID else len(GRID))
    acts = [a for a in ("exp", "relu") if a in set(table["activation"])]
    fig, axes = plt.subplots(1, len(acts), figsize=(0.9 * len(archs) * len(acts) + 2.5, 0.55 * len(methods) + 1.8), squeeze=False)
    for k, (ax, act) in enumerate(zip(axes[0], acts)):
        grid = np.full((len(methods), len(archs)), np.nan)
        sub = table[table["activation"] == act]
        for _, r in sub.iterrows():
            grid[methods.index(r["method"]), archs.index(r["architecture"])] = r[metric]
        im = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
        for i in range(len(methods)):
            for j in range(len(archs)):
                v = grid[i, j]
                ax.text(j, i, "n/s" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if np.isnan(v) or v > 0.8 else "white")  # fmt: skip
        ax.set_xticks(range(len(archs)), archs, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(methods)), methods if k == 0 else [], fontsize=7)  # one set of labels, left
        ax.set_title(act, fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label=f"attribution {metric.replace('_mean', '').upper()}")
    fig.suptitle(title, fontsize=9)
    out = []
    for ext in ("png", "pdf"):
        p = Path(stem).with_suffix(f".{ext}")
        fig.savefig(p, dpi=150, bbox_inches="tight")
        out.append(p)
    plt.close(fig)
    return out


def attention_example(
    weights: np.ndarray, motif_windows: np.ndarray, stem: str | Path, *, title: str = "", width: int | None = None
) -> list[Path]:
    """One sequence's attention map ``(P, P)`` (rows: queries, columns: keys) with the windows that hold
    a ground-truth motif marked on both axes; with ``width``, each window is labelled with its input
    positions (window ``w``: ``w * width`` to ``(w + 1) * width - 1``)."""
    plt = _plt()
    p = weights.shape[0]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    im = ax.imshow(weights, cmap="magma", vmin=0)
    for j in np.flatnonzero(motif_windows):
        for spot in ((j, -0.9), (-0.9, j)):
            ax.plot(*spot, marker="s", color="tab:cyan", ms=6, clip_on=False)
    ax.set_xlim(-1.3, p - 0.5)
    ax.set_ylim(p - 0.5, -1.3)
    labels = [f"{w * width}-{(w + 1) * width - 1}" for w in range(p)] if width else [str(w) for w in range(p)]
    ax.set_xticks(range(p), labels, rotation=90 if width else 0)
    ax.set_yticks(range(p), labels)
    ax.tick_params(labelsize=6)
    unit = "positions" if width else "window"
    ax.set_xlabel(f"key ({unit}; cyan: holds a motif)", fontsize=7)
    ax.set_ylabel(f"query ({unit})", fontsize=7)
    fig.colorbar(im, ax=ax, shrink=0.8, label="attention")
    return _finish(fig, Path(stem), title, 8)
