"""Shared fixtures: small simulated datasets, generated once per session (fixed seeds)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests cleanly where no CUDA device is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def task1_small():
    from hybridlens.study.simulate import simulate_task1

    return simulate_task1(num_seqs=4000, seed=7)


@pytest.fixture(scope="session")
def task2_small():
    from hybridlens.study.simulate import simulate_task2

    return simulate_task2(num_seqs=4000, seed=8)


@pytest.fixture(scope="session")
def task1_file(tmp_path_factory, task1_small):
    """Task 1 dataset written to a real HDF5 file."""
    from hybridlens.analysis.datasets import write_dataset

    path = tmp_path_factory.mktemp("data") / "task1.h5"
    write_dataset(path, task1_small)
    return path


@pytest.fixture(scope="session")
def reference_dir():
    """``../shared/reference`` beside the checkout (MEME's real TomTom output and the method)."""
    from pathlib import Path

    p = Path(__file__).resolve().parents[2] / "shared" / "reference"
    if not p.is_dir():
        pytest.skip("../shared/reference is not beside this checkout")
    return p
