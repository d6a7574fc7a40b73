"""Study configs: the shipped files load; bad configs fail with the key path and the valid choices."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study.config import load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_paper_grids():
    for task in ("task1", "task2"):
        cfg = load_config(CONFIGS / f"{task}.yaml")
        assert len(cfg.cells()) == 17 * 2 * 10
        assert cfg.train.epochs == 100
    assert load_config(CONFIGS / "task1.yaml").train.monitor == "val_aupr"
    assert load_config(CONFIGS / "task2.yaml").analysis.top_k == 5


def test_task_defaults_fill_in():
    c1 = parse_config({"name": "a", "task": "task1"})
    c2 = parse_config({"name": "b", "task": "task2"})
    assert (c1.train.monitor, c1.analysis.top_k) == ("val_aupr", 3)
    assert (c2.train.monitor, c2.analysis.top_k) == ("val_auroc", 5)
    assert c1.grid.seeds == list(range(10)) and c1.model.init == "he"


def test_quick_config_is_small():
    cfg = load_config(CONFIGS / "quick.yaml")
    assert len(cfg.cells()) <= 12 and cfg.train.epochs <= 20


def test_smoke_shrinks_the_same_study():
    cfg = load_config(CONFIGS / "task1.yaml").smoke()
    assert cfg.grid.architecture_names() == ["C24", "C24-Att"]
    assert cfg.grid.seeds == [0] and cfg.train.epochs == 2 and cfg.data.num_seqs == 600
    assert cfg.task == "task1" and cfg.train.monitor == "val_aupr"


@pytest.mark.parametrize(
    "patch,message",
    [
        ({"trian": {}}, "trian: unknown key; valid keys here: name, task, data, grid"),
        ({"train": {"epoch": 3}}, "train.epoch: unknown key; valid keys here: epochs, batch_size"),
        ({"grid": {"architectures": ["C24", "C5"]}}, "grid.architectures: unknown architecture 'C5'; choose from C24, C24-Att"),
        ({"grid": {"activations": ["tanh"]}}, "grid.activations: unknown activation 'tanh'; choose from relu, exp"),
        ({"train": {"epochs": -3}}, "train.epochs: Input should be greater than or equal to 1"),
        ({"train": {"monitor": "val_acc"}}, "train.monitor: unknown metric 'val_acc'; choose from val_auroc"),
        ({"task": "task3"}, "task: Input should be 'task1' or 'task2'"),
        ({"name": None}, "name: Input should be a valid string"),
    ],
)
def test_bad_config_names_key_path(patch, message):
    raw = {"name": "x", "task": "task1"} | patch
    with pytest.raises(ValueError) as err:
        parse_config(raw, "x.yaml")
    assert str(err.value).startswith("x.yaml: ") and message in str(err.value)


def test_yaml_syntax_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntask: [task1\n")
    with pytest.raises(ValueError, match="not valid YAML at line"):
        load_config(p)


def test_cli_rejects_bad_config_before_any_work(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "task": "task1", "train": {"epochs": 0}}))
    work = tmp_path / "work"
    r = subprocess.run(
        [sys.executable, "-m", "study.cli", "study", str(cfg), "--workdir", str(work)],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"hybridlens: error: {cfg}: train.epochs: Input should be greater than or equal to 1"]
    assert not work.exists()
