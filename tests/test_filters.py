"""Activation-based alignment and clipping (method.md §4.1) on hand-built inputs."""

import numpy as np
import torch

from hybridlens.analysis.filters import align_filters, clip_filters, filter_motifs
from hybridlens.models import build


def _onehot(idx):
    return np.eye(4)[np.asarray(idx)].T  # (4, L)


def test_align_by_hand():
    rng = np.random.default_rng(0)
    x = np.stack([_onehot(rng.integers(0, 4, 40)) for _ in range(3)])
    fmap = np.zeros((3, 2, 40))
    fmap[0, 0, 15] = 10.0  # max; window 5..24 kept
    fmap[1, 0, 20] = 6.0  # > 5: kept, window 10..29
    fmap[2, 0, 25] = 4.0  # below half the max: ignored
    fmap[2, 0, 10] = 9.0  # p - 10 = 0 is not > 0: excluded (strict, as the reference)
    fmap[1, 0, 30] = 9.0  # p + 10 = 40 is not < 40: excluded
    ppm = align_filters(fmap, x, window=20, threshold=0.5)
    assert ppm.shape == (2, 4, 20)
    np.testing.assert_allclose(ppm[0], (x[0, :, 5:25] + x[1, :, 10:30]) / 2)
    np.testing.assert_allclose(ppm[1], 0.25)  # never activates: uniform
    _, counts = align_filters(fmap, x, window=20, threshold=0.5, return_counts=True)
    assert counts.tolist() == [2, 0]  # the two kept windows above; filter 1 had none


def test_clip_by_hand():
    flat = np.full((4, 20), 0.25)
    a = flat.copy()
    a[:, 5:9] = np.array([[1, 0, 0, 0]] * 4).T  # 4 informative columns 5..8
    b = flat.copy()
    b[:, 0] = [1, 0, 0, 0]  # only column 0 informative (the reference kept this whole: a bug)
    out = clip_filters(np.stack([a, flat, b]))
    np.testing.assert_array_equal(out[0], a[:, 2:12])
    np.testing.assert_array_equal(out[1], flat)
    np.testing.assert_array_equal(out[2], b[:, 0:4])


def test_filter_that_detects_a_planted_motif_recovers_it():
    """A first-layer filter set to a motif's log-odds recovers that motif from the sequences."""
    rng = np.random.default_rng(1)
    motif = np.array([0, 1, 2, 3, 3, 2, 1, 0])  # ACGTTGCA
    n, length = 200, 100
    idx = rng.integers(0, 4, (n, length))
    starts = rng.integers(20, 70, n)
    for i, s in enumerate(starts[: n // 2]):
        idx[i, s : s + 8] = motif
    x = np.eye(4, dtype=np.float32)[idx].transpose(0, 2, 1)
    model = build("C24", "task1", "relu", filters=2, kernel_size=19, seed=0).eval()
    with torch.no_grad():
        w = torch.zeros(2, 4, 19)
        w[0, :, 5:13] = -1.0
        w[0, torch.as_tensor(motif), torch.arange(5, 13)] = 1.0  # scores ACGTTGCA (8 at a full match)
        w[1] = 0.0  # a dead filter
        model.stage1.first.conv.weight.copy_(w)
        bn = model.stage1.first.bn
        bn.running_mean.zero_(), bn.running_var.fill_(1.0), bn.weight.fill_(1.0), bn.bias.zero_()
    motifs = filter_motifs(model, x)
    consensus = "".join("ACGT"[i] for i in motifs[0].pwm.argmax(axis=0))
    assert "ACGTTGCA" in consensus
    np.testing.assert_allclose(motifs[1].pwm, 0.25)  # a dead filter gives a uniform PPM
    assert [m.id for m in motifs] == ["filter0", "filter1"]


def test_meme_file_states_each_filters_window_count(tmp_path):
    """``nsites`` in the filters' MEME file is the number of windows each PPM was averaged from (not a
    constant), and the logo titles carry it."""
    from hybridlens.analysis.figures import filter_title
    from hybridlens.analysis.filters import first_layer_activations
    from hybridlens.analysis.motifs import read_meme, write_meme

    rng = np.random.default_rng(1)
    x = np.stack([_onehot(rng.integers(0, 4, 200)) for _ in range(60)]).astype(np.float32)
    model = build("C24", "task1", "relu", seed=3)
    motifs = filter_motifs(model, x)
    _, counts = align_filters(first_layer_activations(model, x), x, return_counts=True)
    back = read_meme(write_meme(motifs, tmp_path / "filters.meme"))
    assert [m.nsites for m in back] == counts.tolist()
    assert len(set(counts.tolist())) > 1  # filters differ: the file does not state one number for all
    few = int(np.argmin(counts))
    row = {"filter": f"filter{few}", "gt_match": "", "best_hit": "", "best_hit_name": ""}
    assert filter_title(row, int(counts[few])).endswith(
        f"{counts[few]} windows" + (" (< 10: unreliable)" if counts[few] < 10 else "")
    )


def test_logo_titles_say_what_each_filter_matched():
    from hybridlens.analysis.figures import filter_title

    gt = {"filter": "filter3", "gt_match": "MAX", "best_hit": "MA0058.3", "best_hit_name": "MAX"}
    jaspar = {"filter": "filter5", "gt_match": "", "best_hit": "MA1271.1", "best_hit_name": "TSO1"}
    none = {"filter": "filter7", "gt_match": "", "best_hit": "", "best_hit_name": ""}
    assert filter_title(gt, 153) == "filter3: MAX\n153 windows"
    assert filter_title(jaspar, 40) == "filter5: TSO1 (JASPAR only)\n40 windows"
    assert filter_title(none, 4) == "filter7: no hit\n4 windows (< 10: unreliable)"
    assert filter_title({**jaspar, "best_hit_name": ""}, None) == "filter5: MA1271.1 (JASPAR only)"
