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


def _pairs(diffs, relu=0.5):
    n = len(diffs)
    return pd.DataFrame(
        {
            "architecture": ["C24"] * (2 * n),
            "activation": ["exp"] * n + ["relu"] * n,
            "seed": list(range(n)) * 2,
            "tpr": [relu + d for d in diffs] + [relu] * n,
        }
    )


def test_two_pairs_are_too_few_for_a_test():
    p = paired_exp_vs_relu(_pairs([0.1, 0.3]), ["tpr"]).iloc[0]
    assert p["pairs"] == 2 and p["note"] == "too few pairs (2 < 3)"
    assert np.isnan(p["wilcoxon_p"]) and np.isnan(p["cohens_dz"])
    assert p["mean_diff_exp_minus_relu"] == pytest.approx(0.2)  # the difference itself is still shown


def test_five_pairs_give_the_exact_test_and_effect_size():
    d = np.array([0.1, 0.25, 0.05, 0.3, -0.02])
    p = paired_exp_vs_relu(_pairs(list(d)), ["tpr"]).iloc[0]
    # exact two-sided signed-rank test, n = 5: ranks of |d| are 2, 4, 3, 5, 1; W- = 1; of the 32 sign
    # patterns, W- <= 1 in 2 (W- = 0 and W- = 1), so p = 2 * 2/32
    assert p["note"] == "" and p["wilcoxon_p"] == pytest.approx(4 / 32)
    assert p["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-6)


def test_a_constant_difference_is_named_not_nan():
    p = paired_exp_vs_relu(_pairs([0.125] * 4), ["tpr"]).iloc[0]
    assert p["note"] == "constant difference (+0.125 for every pair)"
    assert np.isnan(p["cohens_dz"]) and p["wilcoxon_p"] == pytest.approx(2 / 16)  # all positive, n = 4
    zero = paired_exp_vs_relu(_pairs([0.0] * 3), ["tpr"]).iloc[0]
    assert zero["note"] == "constant difference (+0 for every pair)" and np.isnan(zero["wilcoxon_p"])
    md = to_markdown(paired_exp_vs_relu(_pairs([0.125] * 4), ["tpr"]))
    assert "nan" not in md and "| – |" in md and "constant difference" in md
