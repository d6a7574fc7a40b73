"""Figures: the paper's exp-vs-relu scatter plots (Fig. 2 for Task 1, Fig. 3 for Task 2), metrics along
a study's axes, filter logos, attribution and attention maps. Each figure is written as PNG and PDF."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from hybridlens.analysis.mlflow_layout import axes_label

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
    from hybridlens.models import ARCHITECTURES, family
    from hybridlens.models.grid import BASELINES

    colours = architecture_colours(list(ARCHITECTURES))
    rows = [b for b in (*BASELINES, "lab CNNs") if any(family(a) == b for a in summary["architecture"])]
    fig, axes = plt.subplots(len(rows), len(metrics), figsize=(3.2 * len(metrics), 3.0 * len(rows)), squeeze=False)
    legend: dict[str, object] = {}  # one legend per figure: architecture -> its marker
    for r, base in enumerate(rows):
        sub = summary[[family(a) == base for a in summary["architecture"]]]
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
                ax.set_title(f"{base}{' baseline' if base in BASELINES else ''}: {named}", fontsize=8, loc="left")
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
    """Methods (rows) x configurations (columns: architectures, with their axis values where a study has
    axes) of an attribution score, one panel per activation (in the model code's order, four panels a
    row); a method that does not support an architecture is an empty cell marked "n/s". ``table`` is
    :func:`~hybridlens.analysis.report.attribution_table`'s."""
    from hybridlens.models import ARCHITECTURES
    from hybridlens.models.blocks import ACTIVATIONS

    plt = _plt()
    methods = list(dict.fromkeys(table["method"]))
    labels = (
        table["architecture"] + (" " + table["axes"]).where(table.get("axes", "").astype(bool), "")
        if "axes" in table
        else table["architecture"]
    )
    table = table.assign(_column=labels)
    rank = {a: i for i, a in enumerate(ARCHITECTURES)}
    columns = list(dict.fromkeys(table.sort_values("architecture", key=lambda c: c.map(rank), kind="stable")["_column"]))
    acts = [a for a in ACTIVATIONS if a in set(table["activation"])]
    ncols = min(4, len(acts))
    nrows = -(-len(acts) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(0.9 * len(columns) * ncols + 2.5, (0.55 * len(methods) + 1.8) * nrows), squeeze=False
    )
    for k, ax in enumerate(axes.flat):
        if k >= len(acts):
            ax.axis("off")
            continue
        act = acts[k]
        grid = np.full((len(methods), len(columns)), np.nan)
        for _, r in table[table["activation"] == act].iterrows():
            grid[methods.index(r["method"]), columns.index(r["_column"])] = r[metric]
        im = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
        for i in range(len(methods)):
            for j in range(len(columns)):
                v = grid[i, j]
                ax.text(j, i, "n/s" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="black" if np.isnan(v) or v > 0.8 else "white")  # fmt: skip
        ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(methods)), methods if k % ncols == 0 else [], fontsize=7)  # labels on the left only
        ax.set_title(act, fontsize=9)
    fig.colorbar(im, ax=list(axes.flat), shrink=0.8, label=f"attribution {metric.replace('_mean', '').upper()}")
    fig.suptitle(title, fontsize=9)
    out = []
    for ext in ("png", "pdf"):
        p = Path(stem).with_suffix(f".{ext}")
        fig.savefig(p, dpi=150, bbox_inches="tight")
        out.append(p)
    plt.close(fig)
    return out


def _numeric(values) -> bool:
    vals = [v for v in values if not (isinstance(v, float) and math.isnan(v))]
    return bool(vals) and all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in vals)


def category_figure(summary: pd.DataFrame, metrics: Sequence[str], column: str, stem: Path, *, title: str = "") -> list[Path]:
    """Each metric (mean with error bars of the std over the best k) for each value of a categorical
    ``column`` of ``summary`` (``activation``, or a non-numeric axis), in the order the rows give them;
    one series of points per architecture and the other columns' values (axes label), side by side."""
    plt = _plt()
    metrics = [m for m in metrics if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]
    if not metrics:
        return []
    cats = list(dict.fromkeys(summary[column]))
    series_cols = [c for c in ("architecture", "activation", "axes") if c in summary and c != column]
    groups = list(summary.groupby(series_cols, sort=False))
    width = 0.8 / max(1, len(groups))
    fig, axs = plt.subplots(len(metrics), 1, figsize=(max(6.0, 0.7 * len(cats) + 3), 2.6 * len(metrics)), squeeze=False)
    handles = {}
    for ax, m in zip(axs[:, 0], metrics):
        for i, (key, g) in enumerate(groups):
            key = key if isinstance(key, tuple) else (key,)
            name = " ".join(str(k) for k in key if k)
            x = [cats.index(v) - 0.4 + width * (i + 0.5) for v in g[column]]
            h = ax.errorbar(x, g[f"{m}_mean"], yerr=g[f"{m}_std"].fillna(0), fmt="o", ms=4, capsize=2)
            handles.setdefault(name, h)
        ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(METRIC_LABELS.get(m, m), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", lw=0.3)
    fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return _finish(fig, stem, title, 9)


def heatmap_grids(
    summary: pd.DataFrame, a: str, b: str, rest: Sequence[str], metrics: Sequence[str]
) -> tuple[list, list, list[tuple[str, dict[str, np.ndarray]]]]:
    """The cells of the heat maps over axes ``a`` (rows) and ``b`` (columns): their values ``va`` and
    ``vb`` (sorted) and one row of panels per architecture, activation and value of each axis in
    ``rest`` (a third axis would otherwise write two configurations into one cell), each its name
    (``cnn-pool relu, filters=8``) and per metric a ``(len(va), len(vb))`` array of ``<metric>_mean``
    (NaN where no configuration has those values)."""
    va, vb = sorted(set(summary[a].dropna())), sorted(set(summary[b].dropna()))
    rows = []
    for key, sub in summary.groupby(["architecture", "activation", *rest], sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        label = axes_label(dict(zip(rest, key[2:])))
        name = f"{key[0]} {key[1]}" + (f", {label}" if label else "")
        grids = {}
        for m in metrics:
            grid = np.full((len(va), len(vb)), np.nan)
            for _, row in sub.dropna(subset=[a, b]).iterrows():
                grid[va.index(row[a]), vb.index(row[b])] = row[f"{m}_mean"]
            grids[m] = grid
        rows.append((name, grids))
    return va, vb, rows


def axis_figures(
    summary: pd.DataFrame, metrics: Sequence[str], axes: dict[str, dict], out: Path, *, title: str = ""
) -> list[Path]:
    """Each metric against each numeric axis (``axis_<name>``: mean with error bars of the std over the
    best k, as the summaries; one line per architecture, activation and value of the other axes), each
    metric for each value of a non-numeric axis, and for each pair of numeric axes a heat map of each
    metric's mean over both (``heatmap_<a>_<b>``: one row of panels per architecture, activation and
    value of the other axes). ``summary`` has architecture, activation, ``axes`` (the
    label) and one column per axis (:func:`~hybridlens.analysis.report.analyze_study`'s); ``axes`` maps
    a label to its values. A metric the summary lacks is left out; a non-numeric axis (``init``, ``auc``)
    gets no figure of its own."""
    plt = _plt()
    keys = list(dict.fromkeys(k for a in axes.values() for k in a))
    numeric = [k for k in keys if k in summary and _numeric(summary[k])]
    metrics = [m for m in metrics if f"{m}_mean" in summary and summary[f"{m}_mean"].notna().any()]
    files: list[Path] = []
    if not metrics:
        return files
    short = {k: k.split(".", 1)[-1] for k in keys}
    for key in numeric:
        others = [k for k in keys if k != key]
        fig, axs = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics) + 1.8, 3.2), squeeze=False)
        handles = {}
        for ax, m in zip(axs[0], metrics):
            for line, g in summary.groupby(["architecture", "activation", *others], sort=False, dropna=False):
                line = line if isinstance(line, tuple) else (line,)
                name = " ".join(str(x) for x in line[:2]) + "".join(
                    f", {short[o]}={v}" for o, v in zip(others, line[2:]) if not (isinstance(v, float) and math.isnan(v))
                )
                g = g.sort_values(key)
                h = ax.errorbar(g[key], g[f"{m}_mean"], yerr=g[f"{m}_std"].fillna(0), marker="o", ms=4, capsize=2, lw=1)
                handles.setdefault(name, h)
            ax.set_xlabel(short[key], fontsize=8)
            ax.set_ylabel(METRIC_LABELS.get(m, m), fontsize=8)
            values = sorted(set(summary[key].dropna()))
            if len(values) > 2 and values[0] > 0 and values[-1] / values[0] >= 20:
                ax.set_xscale("log")  # pools 1-50, rates 1e-4-1e-2: even steps on a log scale
            ax.set_xticks(values, [f"{v:g}" for v in values], fontsize=7)
            ax.minorticks_off()
            ax.tick_params(labelsize=7)
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        files += _finish(
            fig,
            out / f"axis_{short[key]}",
            f"{title}\n{', '.join(METRIC_LABELS.get(m, m) for m in metrics)} against {short[key]}",
            9,
        )
    for key in keys:
        if key in summary and key not in numeric:  # init, auc, monitor: a value each, side by side
            # one series per architecture, activation and the values of the other axes
            others = [k for k in keys if k != key and k in summary]
            label = [axes_label({o: row[o] for o in others}) for _, row in summary.iterrows()]
            files += category_figure(summary.assign(axes=label), metrics, key, out / f"axis_{short[key]}", title=title)
    for a, b in itertools.combinations(numeric, 2):  # a heat map over each pair of numeric axes
        rest = [k for k in keys if k in summary and k not in (a, b)]
        va, vb, rows = heatmap_grids(summary, a, b, rest, metrics)
        fig, axs = plt.subplots(
            len(rows),
            len(metrics),
            figsize=(0.6 * len(vb) * len(metrics) + 3, 0.5 * len(va) * len(rows) + 1.5),
            squeeze=False,
        )
        for r, (row_name, grids) in enumerate(rows):
            for c, m in enumerate(metrics):
                grid = grids[m]
                lo, hi = np.nanmin(summary[f"{m}_mean"]), np.nanmax(summary[f"{m}_mean"])  # one scale per metric
                hi = hi if hi > lo else lo + 1e-9
                ax = axs[r][c]
                ax.imshow(grid, cmap="viridis", aspect="auto", vmin=lo, vmax=hi)
                for i in range(len(va)):
                    for j in range(len(vb)):
                        if not np.isnan(grid[i, j]):
                            bright = (grid[i, j] - lo) / (hi - lo) > 0.6  # viridis turns yellow: dark text there
                            ax.text(
                                j,
                                i,
                                f"{grid[i, j]:.2f}",
                                ha="center",
                                va="center",
                                fontsize=6,
                                color="black" if bright else "white",
                            )
                ax.set_xticks(range(len(vb)), [f"{v:g}" for v in vb], fontsize=7)
                ax.set_yticks(range(len(va)), [f"{v:g}" for v in va], fontsize=7)
                ax.set_xlabel(short[b], fontsize=7)
                ax.set_ylabel(short[a], fontsize=7)
                ax.set_title(f"{METRIC_LABELS.get(m, m)}\n{row_name}", fontsize=7)
        study = title.split(";")[0]
        files += _finish(
            fig, out / f"heatmap_{short[a]}_{short[b]}", f"{study}: mean over the best runs of each configuration", 9
        )
    return files


def search_figures(
    per_run: pd.DataFrame, metrics: Sequence[str], drawn: Sequence[str], out: Path, *, title: str = ""
) -> list[Path]:
    """A random search's runs (``search_<name>``): each metric of every run against each value Ray Tune
    drew for it, one colour per configuration (architecture, activation, grid axes), the runs kept by
    best-k selection filled and the others open. ``per_run`` has architecture, activation, ``axes``,
    ``selected``, the metrics and a column per drawn key; a non-numeric draw (``choice``) is placed
    by its value."""
    plt = _plt()
    metrics = [m for m in metrics if m in per_run and per_run[m].notna().any()]
    files: list[Path] = []
    if not metrics:
        return files
    series = [c for c in ("architecture", "activation", "axes") if c in per_run]
    for key in drawn:
        if key not in per_run:
            continue
        short = key.split(".", 1)[-1]
        numeric = _numeric(per_run[key])
        cats = [] if numeric else list(dict.fromkeys(str(v) for v in per_run[key]))
        fig, axs = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics) + 1.8, 3.2), squeeze=False)
        handles = {}
        for ax, m in zip(axs[0], metrics):
            for i, (name, g) in enumerate(per_run.groupby(series, sort=False)):
                name = " ".join(str(x) for x in (name if isinstance(name, tuple) else (name,)) if x)
                colour = f"C{i % 10}"
                x = g[key] if numeric else [cats.index(str(v)) for v in g[key]]
                kept = g["selected"].to_numpy(bool)
                x = np.asarray(x, dtype=float)
                y = g[m].to_numpy(float)
                ax.scatter(x[~kept], y[~kept], s=14, facecolors="none", edgecolors=colour, lw=0.8)
                handles.setdefault(name, ax.scatter(x[kept], y[kept], s=14, color=colour))
            values = sorted(set(per_run[key].dropna())) if numeric else []
            if numeric and len(values) > 1 and values[0] > 0 and values[-1] / values[0] >= 20:
                ax.set_xscale("log")  # a loguniform rate: even steps on a log scale
            if not numeric:
                ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right", fontsize=7)
            ax.set_xlabel(f"{short} (drawn)", fontsize=8)
            ax.set_ylabel(METRIC_LABELS.get(m, m), fontsize=8)
            ax.tick_params(labelsize=7)
        fig.legend(list(handles.values()), list(handles), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        files += _finish(
            fig, out / f"search_{short}", f"{title}: every run against the {short} it drew (filled: kept as best)", 9
        )
    return files


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
