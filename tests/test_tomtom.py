"""Our TomTom against MEME Suite 5.4.1's real output (../shared/reference/tomtom/) and against
memelite (an independent implementation of MEME's Euclidean mode)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from hybridlens.analysis.motifs import Motif, read_meme
from hybridlens.analysis.tomtom import (
    _column_scores,
    _meme_columns,
    _prepare_targets,
    _shift_and_scale,
    qvalues,
    storey_pi0,
    tomtom,
)


@pytest.fixture(scope="module")
def ref(reference_dir):
    return reference_dir / "tomtom"


@pytest.fixture(scope="module")
def targets(ref):
    return read_meme(ref / "targets_jaspar2020_core_all_versions.meme")


@pytest.fixture(scope="module")
def result(ref, targets):
    return tomtom(ref / "queries.meme", targets)


@pytest.fixture(scope="module")
def meme_q01(ref):
    return pd.read_csv(ref / "pearson_q01.tsv", sep="\t", comment="#")


def _compare(result, meme_q01):
    ours = result.significant(0.1)
    qids = list(dict.fromkeys(result.table["query_id"]))
    m_hit, o_hit = set(meme_q01["Query_ID"]), set(ours["query_id"])
    both = sorted(m_hit & o_hit)
    top_m = meme_q01.groupby("Query_ID")["Target_ID"].first()  # MEME's order: best first
    top_o = ours.groupby("query_id")["target_id"].first()
    return {
        "has_hit_agreement": np.mean([(q in m_hit) == (q in o_hit) for q in qids]),
        "jaccard": len(set(zip(meme_q01.Query_ID, meme_q01.Target_ID)) & set(zip(ours.query_id, ours.target_id)))
        / len(set(zip(meme_q01.Query_ID, meme_q01.Target_ID)) | set(zip(ours.query_id, ours.target_id))),
        "top_same": np.mean([top_m[q] == top_o[q] for q in both]),
    }


def test_has_a_hit_and_pairs_agree_with_meme(result, meme_q01):
    s = _compare(result, meme_q01)
    print(s)
    assert s["has_hit_agreement"] >= 0.98
    assert s["jaccard"] >= 0.95


def test_top_target_agrees_with_meme(result, meme_q01):
    assert _compare(result, meme_q01)["top_same"] >= 0.95


def test_significant_pairs_match_meme_row_for_row(result, meme_q01):
    """Beyond the acceptance thresholds: the same 4,151 pairs, in MEME's order within each query,
    with MEME's offsets, overlaps and orientations and its p-values to the 6 digits it prints."""
    ours = result.significant(0.1)
    assert len(ours) == len(meme_q01)
    np.testing.assert_array_equal(ours["query_id"], meme_q01["Query_ID"])
    np.testing.assert_array_equal(ours["target_id"], meme_q01["Target_ID"])
    np.testing.assert_array_equal(ours["offset"], meme_q01["Optimal_offset"])
    np.testing.assert_array_equal(ours["overlap"], meme_q01["Overlap"])
    np.testing.assert_array_equal(ours["orientation"], meme_q01["Orientation"])
    np.testing.assert_allclose(ours["p_value"], meme_q01["p-value"], rtol=1e-5)
    # q-values rest on a bootstrap pi0 estimate (MEME's generator is not ours): close, not equal
    np.testing.assert_allclose(ours["q_value"], meme_q01["q-value"], rtol=0.01)


def test_p_values_offsets_orientations_on_all_pairs(ref, result):
    allp = pd.read_csv(ref / "pearson_allpairs_60queries.tsv.gz", sep="\t", comment="#")
    mg = allp.merge(result.table, left_on=["Query_ID", "Target_ID"], right_on=["query_id", "target_id"])
    assert len(mg) == len(allp) == 60 * 1964
    rho = spearmanr(np.log(mg["p-value"]), np.log(mg["p_value"].clip(1e-300))).statistic
    assert rho >= 0.999
    small = mg["p-value"] < 1e-3
    assert np.median(np.abs(np.log10(mg["p-value"][small]) - np.log10(mg["p_value"][small]))) <= 0.05
    sig = mg["q-value"] < 0.1
    assert np.mean(mg["Optimal_offset"][sig] == mg["offset"][sig]) >= 0.95
    assert np.mean(mg["Orientation"][sig] == mg["orientation"][sig]) >= 0.95
    # E-value = p x number of targets
    np.testing.assert_allclose(mg["e_value"], mg["p_value"] * 1964)
    # every one of the 117,840 p-values equals MEME's to its printed precision
    np.testing.assert_allclose(mg["p_value"], mg["p-value"], rtol=1e-5)


def test_flat_queries_get_no_more_hits_than_meme(ref, targets):
    r = tomtom(ref / "flat_queries.meme", targets)
    meme = pd.read_csv(ref / "flat_pearson_q01.tsv", sep="\t", comment="#")
    ours = r.significant(0.1)
    assert len(ours) <= len(meme) == 3
    assert set(zip(ours.query_id, ours.target_id)) == set(zip(meme.Query_ID, meme.Target_ID))


def test_flat_queries_pearson_far_below_euclidean(ref, targets):
    """Dead (near-flat) filters: Pearson gives MEME's handful of hits, Euclidean dozens."""
    pearson = len(tomtom(ref / "flat_queries.meme", targets).significant(0.1))
    ed = len(tomtom(ref / "flat_queries.meme", targets, distance="ed").significant(0.1))
    assert pearson <= 3 and ed >= 20
    exact_uniform = tomtom(np.full((4, 20), 0.25), targets)
    assert exact_uniform.significant(0.1).empty


def test_identical_motif_is_the_best_match(targets):
    mot = targets[100]
    r = tomtom([Motif("probe", "probe", mot.pwm)], targets)
    best = r.significant(0.1).iloc[0]
    assert best["target_id"] == mot.id and best["offset"] == 0 and best["orientation"] == "+"
    assert best["overlap"] == mot.width
    # its reverse complement matches the same target on the other strand
    rc = tomtom([Motif("rc", "rc", mot.pwm[::-1, ::-1])], targets).significant(0.1).iloc[0]
    assert rc["target_id"] == mot.id and rc["orientation"] == "-"


def test_qvalues_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.5])
    # BH: sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.06, 0.0533, 0.5 -> running min from the top
    np.testing.assert_allclose(qvalues(p), [0.04, 0.05333333, 0.05333333, 0.5])


@pytest.mark.parametrize(
    "pwm,match",
    [
        (np.array([[0.5, 0.5], [0.5, 0.5], [0, 0], [0, 0.2]]), r"'query0'.*column 1 sums to 1.2"),
        (np.array([[1.5], [-0.5], [0], [0]]), r"'query0'.*non-negative"),
        (np.zeros((4, 0)), r"'query0'.*width 0"),
    ],
)
def test_bad_query_names_the_motif(pwm, match, targets):
    with pytest.raises(ValueError, match=match):
        tomtom([pwm], targets[:5])


def test_malformed_meme_and_bad_options(tmp_path, targets):
    bad = tmp_path / "bad.meme"
    bad.write_text("MEME version 4\n\nMOTIF f3\nletter-probability matrix: alength= 4 w= 2\n0.2 0.2 0.2\n")
    with pytest.raises(ValueError, match="f3"):
        tomtom(bad, targets[:5])
    with pytest.raises(ValueError, match="unknown distance 'kl'"):
        tomtom([np.full((4, 3), 0.25)], targets[:5], distance="kl")


@pytest.mark.slow
def test_euclidean_mode_agrees_with_memelite(ref, targets):
    from memelite import tomtom as memelite_tomtom

    queries = read_meme(ref / "queries.meme")[::3]  # 100 queries across the three categories
    ours = tomtom(queries, targets, distance="ed").table
    p = memelite_tomtom([q.pwm for q in queries], [t.pwm for t in targets])[0]  # best strand per target
    n = len(targets)
    agree = []
    for i, q in enumerate(queries):
        # MEME-style q over 2N strand entries, from memelite's best-strand p-values (BH, m = 2N)
        srt = np.sort(p[i])
        mq = np.minimum.accumulate((srt * 2 * n / np.arange(1, n + 1))[::-1])[::-1]
        ours_hit = ours.loc[ours.query_id == q.id, "q_value"].min() <= 0.1
        agree.append(ours_hit == bool((mq <= 0.1).any()))
    assert np.mean(agree) >= 0.98


def test_discretisation_by_hand():
    """MEME 5's scaling: rows shifted by the midpoint of their 2nd and 3rd smallest of 5 scores,
    offset = floor(smallest shifted) = -2, scale = floor(100 / (0.875 + 2)) = 34, nint((x + 2) 34)."""
    raw = np.array([[-1.0, 0.0, 0.5, 1.0, 0.25], [0.2, 0.4, -0.6, 0.0, 0.1]])
    # medians: row 0 (0 + 0.25) / 2 = 0.125; row 1 (0 + 0.1) / 2 = 0.05
    # shifted row 0: -1.125 -0.125 0.375 0.875 0.125 -> (x + 2) * 34 = 29.75 63.75 80.75 97.75 72.25
    # shifted row 1: 0.15 0.35 -0.65 -0.05 0.05     -> 73.1 79.9 45.9 66.3 69.7
    scaled, offset, scale = _shift_and_scale(raw, 100)
    assert offset == -2.0 and scale == 34.0
    np.testing.assert_array_equal(scaled, [[30, 64, 81, 98, 72], [73, 80, 46, 66, 70]])


def test_pearson_and_euclidean_columns_against_numpy(targets):
    """The compiled column scores against numpy's corrcoef and norm, pseudocount included."""
    q = Motif("q", "q", targets[7].pwm[:, :5])
    t = _prepare_targets(targets[:30], 0.1)
    cols = _meme_columns(q, 0.1)
    # the pseudocount by hand: (p * 20 + 0.1 / 4) / 20.1 for a matrix with no site count
    np.testing.assert_allclose(cols, (q.pwm.T * 20 + 0.025) / 20.1)
    r = _column_scores(cols, t, "pearson")
    expect = np.array([[np.corrcoef(a, b)[0, 1] for b in t.cols] for a in cols])
    np.testing.assert_allclose(r, expect, atol=1e-12)
    d = _column_scores(cols, t, "ed")
    np.testing.assert_allclose(d, -np.linalg.norm(cols[:, None, :] - t.cols[None], axis=2), atol=1e-12)
    # reverse-complement entries: entry 2k+1 is entry 2k read backwards with A<->T, C<->G
    a, n = t.starts[0], t.lens[0]
    np.testing.assert_array_equal(t.cols[a + n : a + 2 * n], t.cols[a : a + n][::-1, ::-1])


def test_storey_pi0_statistics():
    rng = np.random.default_rng(5)
    null = rng.uniform(size=4000)
    assert 0.9 <= storey_pi0(null) <= 1.0
    # half the p-values from real effects (near 0): pi0 near 0.5
    mixed = np.concatenate([rng.uniform(size=2000), rng.uniform(0, 1e-4, size=2000)])
    assert abs(storey_pi0(mixed) - 0.5) < 0.05
    assert storey_pi0(rng.uniform(size=50)) == 1.0  # too few p-values to estimate
    # q-values scale with pi0: by hand, half of the BH values above
    np.testing.assert_allclose(qvalues(np.array([0.01, 0.04, 0.03, 0.5]), pi0=0.5), [0.02, 0.08 / 3, 0.08 / 3, 0.25])
