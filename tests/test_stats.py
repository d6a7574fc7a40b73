"""Aggregation and the paired exp-vs-relu comparison, by hand."""

import numpy as np
import pandas as pd
import pytest

from hybridlens.analysis.stats import aggregate, paired_exp_vs_relu, to_markdown


def _frame():
    return pd.DataFrame(
        {
            "architecture": ["C24"] * 6,
            "activation": ["exp", "exp", "exp", "relu", "relu", "relu"],
            "seed": [0, 1, 2, 0, 1, 2],
            "tpr": [0.5, 0.6, 0.7, 0.2, 0.4, 0.3],
        }
    )


def test_aggregate_population_std():
    s = aggregate(_frame(), ["tpr"]).set_index("activation")
    assert s.loc["exp", "tpr_mean"] == pytest.approx(0.6)
    assert s.loc["exp", "tpr_std"] == pytest.approx(np.sqrt(((0.1) ** 2 * 2) / 3))  # ddof = 0
    assert s.loc["relu", "runs"] == 3


def test_paired_by_seed():
    p = paired_exp_vs_relu(_frame(), ["tpr"]).iloc[0]
    d = np.array([0.3, 0.2, 0.4])
    assert p["pairs"] == 3
    assert p["mean_diff_exp_minus_relu"] == pytest.approx(d.mean())
    assert p["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert p["wilcoxon_p"] == pytest.approx(0.25)  # exact two-sided test, n = 3, all positive: 2/8


def test_markdown_table():
    md = to_markdown(pd.DataFrame({"a": [1.23456], "b": ["x"]}))
    assert md.splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x |"]
