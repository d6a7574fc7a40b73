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


def test_standard_error_and_all_runs_mean():
    f = _frame()
    s = aggregate(f[f["seed"] < 2], ["tpr"], all_runs=f).set_index("activation")
    assert s.loc["exp", "tpr_se"] == pytest.approx(np.std([0.5, 0.6], ddof=1) / np.sqrt(2))
    assert s.loc["exp", "tpr_std"] == pytest.approx(0.05)  # still the paper's ddof 0
    assert s.loc["exp", "tpr_all_mean"] == pytest.approx(0.6) and s.loc["exp", "tpr_mean"] == pytest.approx(0.55)
    assert s.loc["exp", "runs"] == 2
    one = aggregate(f[f["seed"] == 0], ["tpr"])
    assert one["tpr_se"].isna().all() and (one["tpr_std"] == 0).all()  # no standard error from one run


def test_holm_by_hand():
    from hybridlens.analysis.stats import holm

    # sorted 0.01, 0.02, 0.04 of m = 3: 3 * 0.01 = 0.03, 2 * 0.02 = 0.04, 1 * 0.04 = 0.04 (monotone)
    np.testing.assert_allclose(holm([0.04, 0.01, np.nan, 0.02]), [0.04, 0.03, np.nan, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.3]), [0.6, 0.6])  # 2 * 0.3 = 0.6, then max(0.6, 0.5)
    np.testing.assert_allclose(holm([0.9, 0.8]), [1.0, 1.0])  # capped at 1


def test_paired_p_values_are_holm_adjusted_across_architectures():
    d = [0.1, 0.25, 0.05, 0.3, -0.02]
    f = pd.concat([_pairs(d), _pairs([0.125] * 4).assign(architecture="C4C6")])
    p = paired_exp_vs_relu(f, ["tpr"]).set_index("architecture")
    raw = p["wilcoxon_p"]
    assert raw["C24"] == pytest.approx(4 / 32) and raw["C4C6"] == pytest.approx(2 / 16)
    # two tests, equal p = 0.125: both become 2 * 0.125
    assert p["wilcoxon_p_holm"].tolist() == pytest.approx([0.25, 0.25])


def test_a_metric_missing_in_some_runs_says_its_own_n():
    """``runs`` counts the rows; a metric that is NaN in one of them gets ``_n`` (its SE is over 2)."""
    f = _frame().assign(auroc=[0.9, np.nan, 0.7, 0.8, 0.8, 0.6])
    s = aggregate(f, ["tpr", "auroc"]).set_index("activation")
    assert list(s["runs"]) == [3, 3] and list(s["auroc_n"]) == [2, 3] and "tpr_n" not in s
    assert s.loc["exp", "auroc_se"] == pytest.approx(np.std([0.9, 0.7], ddof=1) / np.sqrt(2))
    assert s.columns.get_loc("auroc_n") == s.columns.get_loc("auroc_se") + 1


def test_markdown_keeps_small_numbers_readable():
    md = to_markdown(pd.DataFrame({"lr": [3e-4, 1e-3, 0.0]}))
    assert md.splitlines()[2:] == ["| 0.0003 |", "| 0.001 |", "| 0.000 |"]
