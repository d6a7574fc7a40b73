"""Aggregation over the best-k runs and the paired exp-vs-relu comparison (beyond the paper)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def aggregate(per_run: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Mean and standard deviation (population, ddof = 0, as the reference code) of ``metrics`` per
    (architecture, activation), over the rows of ``per_run`` (the selected runs)."""
    g = per_run.groupby(["architecture", "activation"], sort=False)[metrics]
    mean, std = g.mean(), g.std(ddof=0)
    out = pd.concat({"mean": mean, "std": std, "n": g.count().iloc[:, :1].rename(columns=lambda _: "runs")}, axis=1)
    out.columns = [f"{m}_{stat}" if stat != "n" else "runs" for stat, m in out.columns]
    cols = [f"{m}_{stat}" for m in metrics for stat in ("mean", "std")] + ["runs"]
    return out[cols].reset_index()


def paired_exp_vs_relu(per_run: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per architecture and metric: runs paired by seed, ``d = exp - relu``; Wilcoxon signed-rank
    p-value (two-sided; NaN with fewer than 2 pairs or all-zero differences), mean difference and
    Cohen's d_z = mean(d) / sd(d)."""
    from scipy.stats import wilcoxon

    rows = []
    for arch, sub in per_run.groupby("architecture", sort=False):
        wide = sub.pivot_table(index="seed", columns="activation", values=metrics)
        for m in metrics:
            if (m, "exp") not in wide or (m, "relu") not in wide:
                continue
            d = (wide[(m, "exp")] - wide[(m, "relu")]).dropna().to_numpy()
            p = np.nan
            if d.size >= 2 and np.any(d != 0):
                p = float(wilcoxon(d).pvalue)
            sd = d.std(ddof=1) if d.size >= 2 else np.nan
            rows.append(
                {
                    "architecture": arch,
                    "metric": m,
                    "pairs": int(d.size),
                    "mean_diff_exp_minus_relu": float(d.mean()) if d.size else np.nan,
                    "cohens_dz": float(d.mean() / sd) if d.size >= 2 and sd > 0 else np.nan,
                    "wilcoxon_p": p,
                }
            )
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame, digits: int = 3, caption: str | None = None) -> str:
    """A plain Markdown table (no optional dependency), after a one-line ``caption`` if given."""

    def fmt(v):
        if isinstance(v, float):
            return "nan" if np.isnan(v) else f"{v:.{digits}f}"
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    head = [caption, ""] if caption else []
    return "\n".join(head + lines) + "\n"
