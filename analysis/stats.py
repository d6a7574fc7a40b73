"""Aggregation over the best-k runs and the paired exp-vs-relu comparison (beyond the paper)."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: The columns that name a configuration: architecture, activation and ``axes`` (the label of its axis
#: values, empty without axes).
CONFIG_COLUMNS = ("architecture", "activation", "axes")


def config_columns(frame: pd.DataFrame) -> list[str]:
    """:data:`CONFIG_COLUMNS` that ``frame`` has (``axes`` may be absent)."""
    return [c for c in CONFIG_COLUMNS if c in frame or c != "axes"]


def aggregate(per_run: pd.DataFrame, metrics: list[str], *, all_runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per (architecture, activation), over the rows of ``per_run`` (the selected runs): the mean, the
    standard deviation (population, ddof = 0, as the reference code: ``_std``) and the standard error of
    the mean (sample std / sqrt(n): ``_se``) of each of ``metrics``, and ``runs`` (n). With ``all_runs``,
    also each metric's mean over all of its rows (``_all_mean``: every finished run, not only the best k).
    ``runs`` counts the rows; a metric missing (NaN) in some of them also gets ``_n``, the count its
    statistics are over. A configuration is an (architecture, activation) and, where the frame has an
    ``axes`` column, its axis values (:func:`config_columns`)."""
    by = config_columns(per_run)
    g = per_run.groupby(by, sort=False)[metrics]
    n = g.count()
    stats = {"mean": g.mean(), "std": g.std(ddof=0), "se": g.std(ddof=1) / np.sqrt(n)}
    if all_runs is not None:
        stats["all_mean"] = all_runs.groupby(by, sort=False)[metrics].mean()
    out = pd.concat(stats, axis=1)
    out.columns = [f"{m}_{stat}" for stat, m in out.columns]
    out["runs"] = g.size()
    partial = [m for m in metrics if (n[m] != out["runs"]).any()]
    for m in partial:
        out[f"{m}_n"] = n[m]
    cols = [f"{m}_{stat}" for m in metrics for stat in [*stats, *(["n"] if m in partial else [])]] + ["runs"]
    return out.loc[g.mean().index, cols].reset_index()


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries are not in the family):
    the i-th smallest of m becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


#: The fewest seed pairs for which the paired test is reported (with 2 pairs the smallest two-sided
#: Wilcoxon p-value is 0.5 and d_z is the ratio of two numbers from one difference).
MIN_PAIRS = 3


def paired_exp_vs_relu(per_run: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per architecture and metric: runs paired by seed, ``d = exp - relu``; mean difference, Cohen's
    d_z = mean(d) / sd(d) and the Wilcoxon signed-rank p-value (two-sided), reported only with at least
    :data:`MIN_PAIRS` pairs, and that p-value Holm-adjusted over the architectures tested on the same
    metric (``wilcoxon_p_holm``). ``note`` says why a value is missing: too few pairs, or a difference
    that is the same for every pair (d_z undefined; no test when it is zero)."""
    from scipy.stats import wilcoxon

    rows = []
    by = [c for c in config_columns(per_run) if c != "activation"]
    for key, sub in per_run.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        wide = sub.pivot_table(index="seed", columns="activation", values=metrics)
        for m in metrics:
            if (m, "exp") not in wide or (m, "relu") not in wide:
                continue
            d = (wide[(m, "exp")] - wide[(m, "relu")]).dropna().to_numpy()
            p = dz = np.nan
            if d.size < MIN_PAIRS:
                note = f"too few pairs ({d.size} < {MIN_PAIRS})"
            elif np.all(d == d[0]):
                note = f"constant difference ({d[0]:+.4g} for every pair)"
                if d[0] != 0:
                    p = float(wilcoxon(d).pvalue)
            else:
                note = ""
                p = float(wilcoxon(d).pvalue)
                dz = float(d.mean() / d.std(ddof=1))
            rows.append(
                {
                    **dict(zip(by, key)),
                    "metric": m,
                    "pairs": int(d.size),
                    "mean_diff_exp_minus_relu": float(d.mean()) if d.size else np.nan,
                    "cohens_dz": dz,
                    "wilcoxon_p": p,
                    "wilcoxon_p_holm": np.nan,
                    "note": note,
                }
            )
    out = pd.DataFrame(rows)
    for m in metrics:
        if len(out):
            same = out["metric"] == m
            out.loc[same, "wilcoxon_p_holm"] = holm(out.loc[same, "wilcoxon_p"].to_numpy())
    return out


def to_markdown(df: pd.DataFrame, digits: int = 3, caption: str | None = None) -> str:
    """A plain Markdown table (no optional dependency), after a one-line ``caption`` if given."""

    def fmt(v):
        if v is pd.NA:
            return "–"
        if isinstance(v, float):
            if np.isnan(v):
                return "–"  # missing values are explained in a note column
            if v != 0 and abs(v) < 10.0 ** (1 - digits):  # a rate of 3e-4 or a p-value of 2e-5 keeps its digits
                return f"{v:.{digits}g}"
            return f"{v:.{digits}f}"
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    head = [caption, ""] if caption else []
    return "\n".join(head + lines) + "\n"
