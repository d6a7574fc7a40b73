"""HDF5 round trips through real files, the original layout, and clear errors for bad files."""

import h5py
import numpy as np
import pytest

from hybridlens.analysis.datasets import SPLITS, content_hash, load_dataset, write_dataset
from hybridlens.analysis.errors import UserError


def test_round_trip_keys_and_attrs(task1_small, task1_file):
    ds = load_dataset(task1_file)
    with h5py.File(task1_file) as f:
        for s in SPLITS:
            for k in ("X", "Y", "model", "placements"):
                assert f"{k}_{s}" in f
    for s in SPLITS:
        a, b = task1_small.split(s), ds.split(s)
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_array_equal(a.model, b.model)
        np.testing.assert_array_equal(a.placements, b.placements)
    assert ds.attrs["task"] == "task1" and ds.attrs["seed"] == 7
    assert ds.attrs["jaspar_release"] == "JASPAR2016"
    assert ds.attrs["motif_ids"][0] == "MA0151.1" and len(ds.attrs["motif_ids"]) == 12
    assert ds.attrs["generator_version"].startswith("hybridlens-simulate/")
    # The stored hash is the hash of the arrays read back.
    assert ds.attrs["content_hash"] == content_hash(ds.arrays())


def test_same_seed_same_file_hash(tmp_path):
    from hybridlens.study.simulate import simulate_task2

    hashes = []
    for i, seed in enumerate([5, 5, 6]):
        p = tmp_path / f"{i}.h5"
        write_dataset(p, simulate_task2(num_seqs=200, seed=seed))
        hashes.append(load_dataset(p).attrs["content_hash"])
    assert hashes[0] == hashes[1] != hashes[2]


def test_original_layout_loads(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "synthetic_dataset.h5"
    with h5py.File(path, "w") as f:
        for s, n in zip(SPLITS, (7, 2, 3)):
            idx = rng.integers(0, 4, (n, 200))
            f[f"X_{s}"] = np.eye(4, dtype=np.float32)[idx].transpose(0, 2, 1)
            f[f"Y_{s}"] = rng.integers(0, 2, (n, 12)).astype(np.float32)
            f[f"model_{s}"] = np.full((n, 4, 200), 0.25, np.float32)
    ds = load_dataset(path, require_model=True)
    assert len(ds.train) == 7 and ds.num_outputs == 12 and ds.test.placements is None
    assert len(ds.content_hash) == 64  # computed from the arrays


def _copy_without(src, dst, drop=(), replace=None):
    with h5py.File(src) as f, h5py.File(dst, "w") as g:
        for k in f:
            if k in drop:
                continue
            g[k] = replace[k] if replace and k in replace else f[k][()]


def test_missing_key_is_named(tmp_path, task1_file):
    bad = tmp_path / "bad.h5"
    _copy_without(task1_file, bad, drop=("Y_valid",))
    with pytest.raises(ValueError, match="missing key 'Y_valid'"):
        load_dataset(bad)


def test_wrong_shape_is_named(tmp_path, task1_file):
    bad = tmp_path / "bad.h5"
    with h5py.File(task1_file) as f:
        x = f["X_test"][()]
    _copy_without(task1_file, bad, replace={"X_test": x.transpose(0, 2, 1)})
    with pytest.raises(ValueError, match=r"X_test has shape \(800, 200, 4\)"):
        load_dataset(bad)


def test_not_hdf5_and_missing(tmp_path):
    p = tmp_path / "x.h5"
    p.write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        load_dataset(p)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(tmp_path / "nope.h5")


def test_interrupted_write_leaves_nothing(tmp_path, task1_small, monkeypatch):
    import hybridlens.analysis.datasets as mod

    # Fault injection: an interrupt after the temporary file holds two datasets.
    calls = []
    real_create = h5py.Group.create_dataset

    def create(self, name, **kw):
        calls.append(name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_create(self, name, **kw)

    monkeypatch.setattr(h5py.Group, "create_dataset", create)
    with pytest.raises(KeyboardInterrupt):
        mod.write_dataset(tmp_path / "out.h5", task1_small)
    assert list(tmp_path.iterdir()) == []
