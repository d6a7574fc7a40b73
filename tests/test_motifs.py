import numpy as np
import pytest

from hybridlens.analysis.motifs import (
    Motif,
    fetch_collection,
    fetch_motif,
    format_meme,
    information_content,
    read_meme,
    reverse_complement,
    write_meme,
)


def test_fetch_motif_pfm_to_pwm_by_hand():
    # Arid3a MA0151.1 counts (JASPAR 2016), column 2 is A1 C9 G0 T17 of 27 sites.
    m = fetch_motif("MA0151.1", "JASPAR2016")
    assert m.name == "Arid3a" and m.pwm.shape == (4, 6)
    np.testing.assert_allclose(m.pwm[:, 2], np.array([1, 9, 0, 17]) / 27)
    np.testing.assert_allclose(m.pwm.sum(axis=0), 1.0)
    assert m.nsites == 27  # the site count MEME weighs its pseudocount against


def test_reverse_complement_by_hand():
    pwm = np.array([[1, 0.5], [0, 0.5], [0, 0], [0, 0]], dtype=float)  # "A" then "A/C"
    rc = reverse_complement(pwm)
    # reverse complement of A,(A|C) is (T|G),T
    np.testing.assert_array_equal(rc, [[0, 0], [0, 0], [0.5, 0], [0.5, 1]])
    np.testing.assert_array_equal(reverse_complement(rc), pwm)


def test_information_content_extremes():
    pwm = np.array([[1, 0.25], [0, 0.25], [0, 0.25], [0, 0.25]])
    np.testing.assert_allclose(information_content(pwm), [2.0, 0.0], atol=1e-8)


def test_collections_have_published_sizes():
    assert len(fetch_collection("JASPAR2016", tax_group=["vertebrates"])) == 519
    assert len(fetch_collection("JASPAR2020", all_versions=True)) == 1964


@pytest.mark.parametrize(
    "bad,match",
    [("MA9999.1", "not in release"), ("MA0151", "versioned"), ("hello", "malformed")],
)
def test_unknown_or_malformed_id(bad, match):
    with pytest.raises(ValueError, match=match):
        fetch_motif(bad, "JASPAR2016")


def test_unknown_release():
    with pytest.raises(ValueError, match="unknown JASPAR release 'JASPAR1999'.*JASPAR2020"):
        fetch_motif("MA0151.1", "JASPAR1999")


def test_meme_round_trip_and_memelite(tmp_path):
    from memelite.io import read_meme as memelite_read

    motifs = fetch_collection("JASPAR2016", tax_group=["vertebrates"])[:25]
    path = write_meme(motifs, tmp_path / "m.meme")
    back = read_meme(path)
    assert [m.id for m in back] == [m.id for m in motifs]
    assert [m.name for m in back] == [m.name for m in motifs]
    assert [m.nsites for m in back] == [m.nsites for m in motifs]
    for a, b in zip(motifs, back):
        np.testing.assert_allclose(b.pwm, a.pwm, atol=5e-7)
    # Writing what was read gives the same bytes: a fixed point.
    assert format_meme(back) == path.read_text()
    # memelite (an independent parser) reads the same matrices.
    other = memelite_read(str(path))
    assert len(other) == len(motifs)
    for (key, pwm), m in zip(other.items(), motifs):
        assert key.split()[0] == m.id
        np.testing.assert_allclose(pwm, m.pwm, atol=5e-7)


def test_reads_meme_suite_file_from_reference(reference_dir):
    motifs = read_meme(reference_dir / "tomtom" / "targets_jaspar2020_core_all_versions.meme")
    assert len(motifs) == 1964
    # that file was written from pyjaspar by another tool; its site counts are our loader's
    ours = {m.id: m for m in fetch_collection("JASPAR2020", all_versions=True)}
    assert all(m.nsites == ours[m.id].nsites for m in motifs)
    assert motifs[0].id == "MA0001.1" and motifs[0].nsites == 97
    # a filter (not counts) gets MEME's default site count when written
    assert "nsites= 20 " in format_meme([Motif("f0", "f0", np.full((4, 3), 0.25))])


def test_site_counts_round_trip_exactly(tmp_path):
    """Large and fractional site counts come back equal (6 significant digits would round 1234567)."""
    flat = np.full((4, 2), 0.25)
    motifs = [Motif(f"m{i}", f"m{i}", flat, n) for i, n in enumerate([1234567.0, 20.5, None])]
    back = read_meme(write_meme(motifs, tmp_path / "n.meme"))
    assert [m.nsites for m in back] == [1234567.0, 20.5, 20.0]


def _write(tmp_path, body):
    p = tmp_path / "bad.meme"
    p.write_text("MEME version 4\n\nALPHABET= ACGT\n\n" + body)
    return p


@pytest.mark.parametrize(
    "body,match",
    [
        ("MOTIF m1\nletter-probability matrix: alength= 4 w= 2\n0.5 0.5 0 0\n0.9 0.9 0 0\n", "m1.*column 1 sums"),
        ("MOTIF m2\nletter-probability matrix: alength= 4 w= 1\n-0.5 1.5 0 0\n", "m2.*non-negative"),
        ("MOTIF m3\nletter-probability matrix: alength= 4 w= 0\n\n", "m3.*width 0"),
        ("MOTIF m4\nletter-probability matrix: alength= 4 w= 2\n0.25 0.25 0.5\n", "m4.*3 values"),
        ("MOTIF m5\nletter-probability matrix: alength= 4 w= 3\n0.25 0.25 0.25 0.25\n", "m5.*w= 3 but 1"),
        ("MOTIF m6\nletter-probability matrix: alength= 4 w= 1\n0.25 x 0.25 0.25\n", "m6.*not a row"),
        ("MOTIF m7\nletter-probability matrix: alength= 4 w= 1 nsites= many\n0.25 0.25 0.25 0.25\n", "m7.*nsites"),
    ],
)
def test_malformed_meme_names_the_motif(tmp_path, body, match):
    with pytest.raises(ValueError, match=match):
        read_meme(_write(tmp_path, body))


def test_not_a_meme_file(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("hello\n")
    with pytest.raises(ValueError, match="not a MEME motif file"):
        read_meme(p)


def test_write_rejects_duplicate_ids_and_leaves_nothing(tmp_path):
    m = Motif("a", "a", np.full((4, 3), 0.25))
    with pytest.raises(ValueError, match="appears twice"):
        write_meme([m, m], tmp_path / "dup.meme")
    assert list(tmp_path.iterdir()) == []
