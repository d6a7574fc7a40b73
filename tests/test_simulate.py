"""Statistical properties of the simulated tasks (method.md §3), on a few thousand sequences."""

import numpy as np
import pytest
from scipy import stats

from hybridlens.analysis.datasets import SPLITS
from hybridlens.analysis.ground_truth import TASK1_MOTIFS, TASK2_CORE_MOTIFS
from hybridlens.analysis.motifs import fetch_motifs, information_content, reverse_complement
from hybridlens.study.simulate import (
    CODE_BACKGROUND_IDS,
    COUNT_PROBS,
    SIMILARITY_MIN_OVERLAP,
    SIMILARITY_THRESHOLD,
    select_background_motifs,
    simulate_task1,
    simulate_task2,
)


def _pooled(ds, key):
    return np.concatenate([getattr(ds.split(s), key) for s in SPLITS])


def _counts_per_seq(split):
    return np.bincount(split.placements["seq"], minlength=len(split))


def _check_consistency(ds, pwm_of):
    """Placements, labels-free checks: no overlap, model == PWM at placements, uniform elsewhere,
    information > 0.1 only at placed motif columns, one-hot X."""
    for s in SPLITS:
        sp = ds.split(s)
        n, _, L = sp.x.shape
        np.testing.assert_array_equal(sp.x.sum(axis=1), 1.0)
        covered = np.zeros((n, L), dtype=bool)
        expected_informative = np.zeros((n, L), dtype=bool)
        p = sp.placements
        for row in p:
            i, k, start, w, strand = (int(row[f]) for f in ("seq", "motif", "start", "width", "strand"))
            assert 0 <= start and start + w <= L
            assert not covered[i, start : start + w].any(), "motifs overlap"
            covered[i, start : start + w] = True
            pwm = pwm_of[k] if strand == 1 else reverse_complement(pwm_of[k])
            assert pwm.shape[1] == w
            np.testing.assert_allclose(sp.model[i, :, start : start + w], pwm, atol=1e-6)
            expected_informative[i, start : start + w] = information_content(pwm) > 0.1
        assert np.all(sp.model.transpose(0, 2, 1)[~covered] == 0.25)
        info = information_content(sp.model)
        np.testing.assert_array_equal(info > 0.1, expected_informative)


def test_task1_published_properties(task1_small):
    ds = task1_small
    motifs = fetch_motifs(TASK1_MOTIFS.values(), "JASPAR2016")
    assert ds.attrs["motif_ids"] == list(TASK1_MOTIFS.values())
    # Split sizes 0.7 / 0.1 / 0.2.
    assert [len(ds.split(s)) for s in SPLITS] == [2800, 400, 800]
    assert ds.train.y.shape == (2800, 12) and ds.train.x.shape == (2800, 4, 200)
    # Motif counts follow P = .50 .25 .17 .05 .03 over 1..5 (chi-square goodness of fit).
    counts = np.concatenate([_counts_per_seq(ds.split(s)) for s in SPLITS])
    assert counts.min() >= 1 and counts.max() <= 5
    observed = np.bincount(counts, minlength=6)[1:]
    assert stats.chisquare(observed, np.array(COUNT_PROBS) * counts.size).pvalue > 1e-3
    # Every label is set exactly when its motif was embedded (either strand).
    for s in SPLITS:
        sp = ds.split(s)
        expected = np.zeros_like(sp.y)
        expected[sp.placements["seq"], sp.placements["motif"]] = 1
        np.testing.assert_array_equal(sp.y, expected)
    # Motifs drawn uniformly: each of 24 PWMs (12 x 2 strands) about equally often.
    plc = np.concatenate([ds.split(s).placements for s in SPLITS])
    pwm_index = plc["motif"] * 2 + (plc["strand"] == -1)
    assert stats.chisquare(np.bincount(pwm_index, minlength=24)).pvalue > 1e-3
    assert 0.45 < np.mean(plc["strand"] == 1) < 0.55
    _check_consistency(ds, [m.pwm for m in motifs])


def test_sequences_are_sampled_from_the_model(task1_small):
    x, model = _pooled(task1_small, "x"), _pooled(task1_small, "model")
    # Background: uniform base composition (chi-square over ~ 600k positions).
    bg = (model == 0.25).all(axis=1)
    base_counts = x.transpose(0, 2, 1)[bg].sum(axis=0)
    assert stats.chisquare(base_counts).pvalue > 1e-3
    # Motif positions: the probability of the sampled base matches its expectation sum p^2.
    motif_cols = ~bg
    p_sampled = (x * model).sum(axis=1)[motif_cols]
    expected = (model**2).sum(axis=1)[motif_cols]
    se = np.sqrt(np.sum(expected * (1 - expected))) / motif_cols.sum()
    assert abs(p_sampled.mean() - expected.mean()) < 5 * se


def test_task2_published_properties(task2_small):
    ds = task2_small
    core_ids = list(TASK2_CORE_MOTIFS.values())
    bg_ids = ds.attrs["background_motif_ids"]
    assert ds.attrs["motif_ids"] == core_ids + bg_ids and len(bg_ids) == 100
    assert [len(ds.split(s)) for s in SPLITS] == [2800, 400, 800]
    y = _pooled(ds, "y")
    assert y.shape[1] == 1 and y.sum() == 2000
    counts = np.concatenate([_counts_per_seq(ds.split(s)) for s in SPLITS])
    assert counts.min() == 3 and counts.max() == 5
    p = np.array(COUNT_PROBS[:3]) / sum(COUNT_PROBS[:3])
    assert stats.chisquare(np.bincount(counts, minlength=6)[3:], p * counts.size).pvalue > 1e-3
    used_neg, used_pos = set(), set()
    for s in SPLITS:
        sp = ds.split(s)
        cls = sp.y[sp.placements["seq"], 0]
        used_pos |= set(sp.placements["motif"][cls == 1].tolist())
        used_neg |= set(sp.placements["motif"][cls == 0].tolist())
    assert used_pos == set(range(5))  # positives: core motifs only
    # Negatives draw from core + background: with ~8,000 draws over 105 motifs all appear,
    # so the recorded list is exactly what was used.
    assert used_neg == set(range(105))
    motifs = fetch_motifs(ds.attrs["motif_ids"], "JASPAR2016")
    _check_consistency(ds, [m.pwm for m in motifs])


def test_task2_three_to_seven_option():
    ds = simulate_task2(num_seqs=2000, seed=1, max_motifs=7)
    counts = np.concatenate([_counts_per_seq(ds.split(s)) for s in SPLITS])
    assert counts.min() == 3 and counts.max() == 7
    assert stats.chisquare(np.bincount(counts, minlength=8)[3:], np.array(COUNT_PROBS) * counts.size).pvalue > 1e-3


def test_task2_code_background_pool():
    """The released code's pool (method.md §3.2): 10 core PWMs + its 50 motifs and their reverse
    complements = 110 PWMs, the 50 IDs recorded in the stored order."""
    ds = simulate_task2(num_seqs=4000, seed=5, background="code")
    assert ds.attrs["background_motif_ids"] == list(CODE_BACKGROUND_IDS) and len(set(CODE_BACKGROUND_IDS)) == 50
    assert ds.attrs["background_pool"] == "code" and ds.attrs["negative_pool_size"] == 110
    assert ds.attrs["motif_ids"] == list(TASK2_CORE_MOTIFS.values()) + list(CODE_BACKGROUND_IDS)
    # method.md's list by name: first, last, and the look-alikes the code failed to exclude.
    names = dict(zip(ds.attrs["motif_ids"], ds.attrs["motif_names"]))
    assert names["MA0909.1"] == "HOXD13" and names["MA0593.1"] == "FOXP2"
    assert {"ETV5", "CEBPG", "MLX", "ETV3", "PLAG1", "ZIC3", "TCF4", "NFIC", "E2F6"} <= {n.upper() for n in names.values()}
    used_neg = set()
    for s in SPLITS:
        sp = ds.split(s)
        neg = sp.y[sp.placements["seq"], 0] == 0
        used_neg |= set(zip(sp.placements["motif"][neg].tolist(), sp.placements["strand"][neg].tolist()))
    assert len(used_neg) == 110  # ~6,000 negative draws over 110 PWMs: every one appears
    motifs = fetch_motifs(ds.attrs["motif_ids"], "JASPAR2016")
    _check_consistency(ds, [m.pwm for m in motifs])


def test_task2_default_file_unchanged_by_background_option():
    # The hash the generator gave for this seed and size before the background option existed.
    assert simulate_task2(num_seqs=200, seed=3).content_hash == "bc0f81d8c103498fbccc6f798536fb2484ec0f3424e9b843922b60c7a499bf17"
    assert (
        simulate_task2(num_seqs=200, seed=3, background="code").content_hash != simulate_task2(num_seqs=200, seed=3).content_hash
    )


def test_task2_unknown_background():
    with pytest.raises(ValueError, match="unknown background 'coded'; choose one of filtered, code"):
        simulate_task2(num_seqs=200, background="coded")


def _brute_force_similarity(a, b, min_overlap):
    """Independent implementation: np.corrcoef column by column over every alignment."""
    best = -1.0
    for bb in (b, b[::-1, ::-1]):
        la, lb = a.shape[1], bb.shape[1]
        for shift in range(-(lb - 1), la):
            pairs = [(i, i - shift) for i in range(la) if 0 <= i - shift < lb]
            if len(pairs) < min(min_overlap, la, lb):
                continue
            r = [np.corrcoef(a[:, i], bb[:, j])[0, 1] for i, j in pairs]
            best = max(best, float(np.mean(r)))
    return best


def test_background_motifs_exclude_core_tfs_and_look_alikes():
    core = fetch_motifs(TASK2_CORE_MOTIFS.values(), "JASPAR2016")
    background = select_background_motifs()
    assert len(background) == 100 and len({m.id for m in background}) == 100
    core_names = {m.name.upper() for m in core}
    assert not core_names & {m.name.upper() for m in background}
    for m in background:
        for c in core:
            assert _brute_force_similarity(c.pwm, m.pwm, SIMILARITY_MIN_OVERLAP) < SIMILARITY_THRESHOLD, (m.id, c.id)
    # The look-alikes the released code meant to remove (method.md §3.2) are not in the pool.
    lookalikes = {"ETV5", "CEBPG", "KLF5", "MLX", "ETV3", "PLAG1"}
    assert not lookalikes & {m.name.upper() for m in background}


def test_same_seed_same_hash_different_seed_different_data():
    a = simulate_task1(num_seqs=500, seed=3)
    b = simulate_task1(num_seqs=500, seed=3)
    c = simulate_task1(num_seqs=500, seed=4)
    assert a.content_hash == b.content_hash
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert a.content_hash != c.content_hash
    assert not np.array_equal(a.train.x, c.train.x)


@pytest.mark.parametrize("n", [5, -1])
def test_too_few_sequences(n):
    with pytest.raises(ValueError, match="num-seqs"):
        simulate_task1(num_seqs=n)


def test_planted_stand_in_has_the_task_shapes_and_honest_labels():
    """The JASPAR-free stand-in: Task 1 shapes and splits; every label is a planted k-mer (or its reverse
    complement) at its recorded place; with one output, half the sequences are positives."""
    from hybridlens.study.simulate import simulate_planted

    ds = simulate_planted(num_seqs=2000, num_outputs=12, seed=3)
    assert [len(ds.split(s)) for s in ("train", "valid", "test")] == [1400, 200, 400]
    assert ds.train.x.shape == (1400, 4, 200) and ds.train.y.shape == (1400, 12)
    sp = ds.train
    kmers: dict[tuple[int, int], np.ndarray] = {}
    for p in sp.placements:
        seen = sp.x[p["seq"], :, p["start"] : p["start"] + p["width"]]
        assert sp.y[p["seq"], p["motif"]] == 1
        # a one-hot PWM: the sampled sequence is the k-mer itself, the same every time
        kmers.setdefault((int(p["motif"]), int(p["strand"])), seen)
        np.testing.assert_array_equal(seen, kmers[(int(p["motif"]), int(p["strand"]))])
    fwd, rev = kmers[(0, 1)], kmers[(0, -1)]
    np.testing.assert_array_equal(rev, fwd[::-1, ::-1])
    assert sp.y.sum() == len({(int(p["seq"]), int(p["motif"])) for p in sp.placements})
    one = simulate_planted(num_seqs=1000, num_outputs=1, seed=3)
    assert one.train.y.shape[1] == 1 and 0.45 < one.train.y.mean() < 0.55
