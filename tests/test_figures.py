"""Figures along a study's axes, on small summaries built by hand."""

import numpy as np
import pandas as pd

from hybridlens.analysis.figures import axis_figures, heatmap_grids, search_figures
from hybridlens.analysis.report import _with_axes
from hybridlens.analysis.selection import Selection

METRICS = ("tpr", "fpr")


def _summary(axes: dict[str, dict]) -> pd.DataFrame:
    """One configuration per axes label, cnn-pool relu, with tpr_mean = its index / 10 (std 0.01) and
    fpr_mean = 1 - tpr_mean; the axis columns as the report writes them (:func:`_with_axes`)."""
    rows = [
        {"architecture": "cnn-pool", "activation": "relu", "axes": label, "tpr_mean": i / 10, "tpr_std": 0.01,
         "fpr_mean": 1 - i / 10, "fpr_std": 0.01}
        for i, label in enumerate(axes)
    ]  # fmt: skip
    return _with_axes(pd.DataFrame(rows), Selection("task1", 1, "valid", axes=axes), list(next(iter(axes.values()))))


def _axes(**values) -> dict[str, dict]:
    """Every combination of the given axis values, keyed by a label as the analysis makes them."""
    import itertools

    from hybridlens.analysis.mlflow_layout import axes_label

    keys = list(values)
    combos = [dict(zip(keys, vs)) for vs in itertools.product(*values.values())]
    return {axes_label(c): c for c in combos}


def test_a_heat_map_over_two_axes_has_a_row_per_value_of_a_third():
    """Pool x rate heat maps with filters varying too: one row of panels per filters value, each cell
    holding its own configuration's mean (one row per architecture and activation wrote two
    configurations into each cell, the last one winning; review finding M1 of #23)."""
    axes = _axes(**{"model.first_pool": [4, 25], "train.lr": [1e-3, 3e-4], "model.filters": [8, 16]})
    summary = _summary(axes)
    va, vb, rows = heatmap_grids(summary, "model.first_pool", "train.lr", ["model.filters"], METRICS)
    assert va == [4, 25] and vb == [3e-4, 1e-3]
    assert [name for name, _ in rows] == ["cnn-pool relu, filters=8", "cnn-pool relu, filters=16"]
    for name, grids in rows:
        filters = int(name.rsplit("=", 1)[1])
        for i, pool in enumerate(va):
            for j, lr in enumerate(vb):
                k = list(axes).index(
                    next(
                        lb for lb, v in axes.items() if v == {"model.first_pool": pool, "train.lr": lr, "model.filters": filters}
                    )
                )
                assert grids["tpr"][i, j] == k / 10 and np.isclose(grids["fpr"][i, j], 1 - k / 10)


def test_a_null_axis_value_is_a_category_of_its_own(tmp_path):
    """``train.early_stopping_patience: [null, 5]`` beside two numeric axes: null (no early stopping) is
    a value of its own, the axis drawn as categories, the heat map over the numeric two (null became
    NaN: its runs dropped from the lines and the heat map aborted; review finding M2 of #23)."""
    axes = _axes(**{"model.first_pool": [4, 25], "train.lr": [1e-3, 3e-4], "train.early_stopping_patience": [None, 5]})
    summary = _summary(axes)
    assert list(summary["train.early_stopping_patience"]) == ["None", "5"] * 4
    files = axis_figures(summary, METRICS, axes, tmp_path, title="s")
    names = {f.name for f in files}
    assert {"axis_first_pool.png", "axis_lr.png", "axis_early_stopping_patience.png", "heatmap_first_pool_lr.png"} <= names
    va, vb, rows = heatmap_grids(summary, "model.first_pool", "train.lr", ["train.early_stopping_patience"], METRICS)
    assert [n for n, _ in rows] == ["cnn-pool relu, early_stopping_patience=None", "cnn-pool relu, early_stopping_patience=5"]
    assert all(not np.isnan(g["tpr"]).any() for _, g in rows)


def test_a_search_draws_every_run_against_its_drawn_values(tmp_path):
    """A random search's runs against the rates and filters they drew (a numeric and a choice draw)."""
    rng = np.random.default_rng(0)
    per_run = pd.DataFrame(
        {
            "architecture": "C24",
            "activation": ["relu", "exp"] * 5,
            "axes": "",
            "selected": [True, True] + [False] * 8,
            "train.lr": 10 ** rng.uniform(-4, -2, 10),
            "model.init": ["he", "glorot"] * 5,
            "tpr": rng.uniform(size=10),
            "fpr": rng.uniform(size=10),
        }
    )
    files = search_figures(per_run, METRICS, ["train.lr", "model.init"], tmp_path, title="s")
    assert {f.name for f in files} == {"search_lr.png", "search_lr.pdf", "search_init.png", "search_init.pdf"}
    assert all(f.stat().st_size > 1000 for f in files)
