"""Study configs: the shipped files load; bad configs fail with the key path and the valid choices."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hybridlens.analysis.errors import UserError
from hybridlens.study.config import load_config, parse_config

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
        ({"grid": {"activations": ["swish"]}}, "grid.activations: unknown activation 'swish'; choose from relu, exp, sigmoid"),
        ({"train": {"epochs": -3}}, "train.epochs: Input should be greater than or equal to 1"),
        ({"train": {"monitor": "val_acc"}}, "train.monitor: unknown metric 'val_acc'; choose from val_auroc"),
        ({"task": "task3"}, "task: Input should be 'task1' or 'task2'"),
        ({"name": None}, "name: Input should be a valid string"),
        ({"name": "x\n"}, "name: 'x\\n' is not a study name"),
        ({"name": "../../victim"}, "name: '../../victim' is not a study name"),
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


def test_configs_that_are_not_yaml_files_are_one_line(tmp_path):
    """A binary file, a folder and a file over 1 MB are refused before YAML parses anything."""
    import time

    from hybridlens.analysis.errors import UserError

    binary = tmp_path / "model.pt"
    binary.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(UserError, match=r"model.pt: not a text file \(byte 128 is not UTF-8\); give a study YAML file"):
        load_config(binary)
    with pytest.raises(UserError, match="is a folder; give a study YAML file"):
        load_config(tmp_path)
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: x\ntask: task1\ngrid:\n  seeds: [" + ", ".join(map(str, range(300_000))) + "]\n")
    t0 = time.monotonic()
    with pytest.raises(
        UserError, match=r"huge.yaml is [0-9,]+ bytes; a study config is a YAML file of settings \(at most 1 MB\)"
    ):
        load_config(huge)
    assert time.monotonic() - t0 < 1


def test_attributions_can_be_turned_off():
    from hybridlens.analysis.attributions import parse_methods
    from hybridlens.analysis.errors import UserError

    cfg = parse_config({"name": "x", "task": "task1", "analysis": {"attributions": []}})
    assert cfg.analysis.attributions == [] and parse_methods(cfg.analysis.attributions) == ()
    assert parse_methods("none") == () and parse_methods("None") == ()
    for text in ("", ",", " , "):  # more likely a mistake than a wish for none
        with pytest.raises(UserError, match="no attribution method given; name some .* or none"):
            parse_methods(text)


def test_cli_rejects_bad_config_before_any_work(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "task": "task1", "train": {"epochs": 0}}))
    work = tmp_path / "work"
    r = subprocess.run(
        [sys.executable, "-m", "hybridlens.study.cli", "study", str(cfg), "--workdir", str(work)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        f"hybridlens: error: {cfg}: train.epochs: Input should be greater than or equal to 1"
    ]
    assert not work.exists()


def test_reference_configs_carry_the_released_codes_choices():
    r1 = load_config(CONFIGS / "reference" / "task1.yaml")
    r2 = load_config(CONFIGS / "reference" / "task2.yaml")
    for c in (r1, r2):
        assert c.model.init == "glorot" and c.train.monitor == "val_auroc"
        assert c.analysis.rank_on == "test" and c.analysis.ground_truth == "reference_lists"
        assert len(c.cells()) == 17 * 2 * 10
    assert r1.data.num_seqs == 30000 and r1.analysis.top_k == 3
    assert (r2.data.max_motifs, r2.data.background, r2.analysis.top_k) == (7, "code", 5)
    # Attention size 96 for the code's CNN_LSTM_ATT and CNN_LSTM2_ATT only (method.md §1.5).
    assert r2.model.overrides("C24-LSTM-Att")["key_size"] == 96 and r2.model.overrides("C4-Att")["key_size"] == 96
    assert "key_size" not in r2.model.overrides("C4C6-LSTM-Att")
    assert r2.resolved()["model"]["per_architecture"] == {"C24-LSTM-Att": {"key_size": 96}, "C4-Att": {"key_size": 96}}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"task": "task1", "data": {"background": "code"}}, "data.background applies to task2 only"),
        ({"task": "task2", "data": {"background": "paper"}}, "data.background: Input should be 'filtered' or 'code'"),
        (
            {"task": "task2", "analysis": {"ground_truth": "ids"}},
            "analysis.ground_truth: Input should be 'base_ids' or 'reference_lists'",
        ),
        (
            {"task": "task2", "model": {"per_architecture": {"C5": {"key_size": 96}}}},
            "model.per_architecture: unknown architecture 'C5'",
        ),
        (
            {"task": "task2", "model": {"per_architecture": {"C4-Att": {"heads": 4}}}},
            "model.per_architecture.C4-Att.heads: unknown key",
        ),
    ],
)
def test_reference_options_validated(raw, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_config({"name": "x", **raw})


def test_cli_lists_every_mistake_of_a_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump({"name": "x", "task": "task1", "train": {"epochs": 0, "lr": -1}, "grid": {"seeds": 0}}))
    r = subprocess.run(
        [sys.executable, "-m", "hybridlens.study.cli", "study", str(cfg), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    head, *lines = r.stderr.strip().splitlines()
    assert head == f"hybridlens: error: {cfg}: 3 mistakes:"  # then one line per mistake
    assert lines == [
        "  grid.seeds: must be >= 1 (got 0)",
        "  train.epochs: Input should be greater than or equal to 1",
        "  train.lr: Input should be greater than 0",
    ]


def test_cli_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """An internal failure is not dressed as an input problem: it propagates (traceback, exit 1)."""
    import hybridlens.study.simulate as simulate
    from hybridlens.study.cli import main

    def broken(*args, **kwargs):
        raise KeyError("an internal bug")

    monkeypatch.setattr(simulate, "simulate", broken)
    with pytest.raises(KeyError, match="an internal bug"):
        main(["data", "task1", "--out", str(tmp_path / "t.h5"), "--num-seqs", "100"])
    assert "hybridlens: error" not in capsys.readouterr().err
    # The same call from a shell: exit code 1 and Python's traceback.
    code = (
        "import sys, hybridlens.study.simulate as s\n"
        "def broken(*a, **k): raise KeyError('an internal bug')\n"
        "s.simulate = broken\n"
        "from hybridlens.study.cli import main\n"
        f"main(['data', 'task1', '--out', {str(tmp_path / 'u.h5')!r}, '--num-seqs', '100'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr and "KeyError: 'an internal bug'" in r.stderr


def test_resolved_config_round_trips():
    """What a launch records (studies/NAME.yaml) loads back to the same config: resume runs it."""
    from hybridlens.study.config import settings_from_resolved

    for path in (CONFIGS / "quick.yaml", CONFIGS / "reference" / "task2.yaml"):
        cfg = load_config(path).smoke()
        again = parse_config(settings_from_resolved(yaml.safe_load(yaml.safe_dump(cfg.resolved(), sort_keys=False))))
        assert again == cfg and again.config_hash() == cfg.config_hash()


def _axes_cfg(**extra):
    grid = {"architectures": ["cnn-pool"], "activations": ["relu", "exp"], "seeds": 2}
    return {"name": "x", "task": "task1", "grid": {**grid, **extra.pop("grid", {})}, **extra}


def test_axes_make_cells_with_their_values_and_packs_that_can_share():
    """Every combination x architectures x activations x seeds is a cell; the cell's build overrides
    and training settings carry its values; packs group cells that can share a stacked step (the
    same model axes and batch size), while a rate axis may share."""
    cfg = parse_config(_axes_cfg(grid={"axes": {"model.first_pool": [1, 4, 25], "train.lr": [1e-3, 3e-4]}}))
    cells = cfg.cells()
    assert cfg.num_cells() == len(cells) == 1 * 2 * 2 * 3 * 2
    assert cells[0] == {
        "architecture": "cnn-pool",
        "activation": "relu",
        "seed": 0,
        "axes": {"model.first_pool": 1, "train.lr": 1e-3},
    }
    assert len({json.dumps(c, sort_keys=True) for c in cells}) == len(cells)
    c = next(c for c in cells if c["axes"] == {"model.first_pool": 25, "train.lr": 3e-4})
    assert cfg.cell_overrides(c)["first_pool"] == 25 and cfg.cell_train(c).lr == 3e-4 and cfg.cell_train(c).seed == c["seed"]
    packed = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"models_per_trial": 4})})
    packs = packed.packs()
    assert packed.num_packs() == len(packs) == 3 * 2  # 3 pools; 8 cells each (2 rates x 2 activations x 2 seeds)
    for p in packs:
        assert len({c["axes"]["model.first_pool"] for c in p}) == 1
    assert sorted(c2 for p in packs for c2 in map(json.dumps, p)) == sorted(map(json.dumps, cells))
    plain = parse_config(_axes_cfg())
    assert "axes" not in plain.cells()[0] and plain.num_cells() == 4


def test_axis_and_search_mistakes_are_each_a_line():
    raw = _axes_cfg(
        grid={"axes": {"model.filter": [16], "train.lr": [-1, 0.1], "train.epochs": [], "model.filters": [8, 8]}},
        search={
            "num_samples": 2,
            "space": {"train.batch_size": {"loguniform": [0, 64]}, "model.dense_units": {"normal": [1, 2]}},
        },
    )
    with pytest.raises(UserError) as e:
        parse_config(raw, "x.yaml")
    head, *lines = str(e.value).splitlines()
    assert head == "x.yaml: 6 mistakes:"
    assert lines[0].startswith("  grid.axes.model.filter: not a setting a study can vary; choose from model.filters,")
    assert lines[1:] == [
        "  grid.axes.train.lr: -1: Input should be greater than 0",
        "  grid.axes.train.epochs: must list at least one value (got [])",
        "  grid.axes.model.filters: lists a value twice",
        "  search.space.train.batch_size: loguniform needs low > 0 (got 0)",
        "  search.space.model.dense_units: must be one of {uniform: [...]}, {loguniform: [...]}, {choice: [...]}, "
        "{randint: [...]} (got {'normal': [1, 2]})",
    ]


@pytest.mark.parametrize(
    "raw, message",
    [
        (_axes_cfg(grid={"architectures": ["C24", "cnn-pool"], "axes": {"model.first_pool": [4]}}),
         "x.yaml: model.first_pool: applies to cnn-pool only, not C24"),
        (_axes_cfg(search={"num_samples": 2, "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}, resources={"models_per_trial": 2}),
         "x.yaml: search: a search trains one model per trial; set resources.models_per_trial: 1"),
        (_axes_cfg(search={"num_samples": 2, "space": {"train.epochs": {"randint": [5, 2]}}}),
         "x.yaml: search.space.train.epochs: randint needs low < high (got [5, 2])"),
    ],
)  # fmt: skip
def test_settings_that_contradict_are_refused(raw, message):
    with pytest.raises(UserError) as e:
        parse_config(raw, "x.yaml")
    assert str(e.value).startswith(message)


def test_a_valid_search_section():
    cfg = parse_config(_axes_cfg(search={"num_samples": 3, "seed": 7, "space": {"train.lr": {"loguniform": [1e-4, 1e-2]},
                                   "model.first_pool": {"choice": [1, 4, 25]}}, "scheduler": "asha", "grace_period": 1}))  # fmt: skip
    assert cfg.num_samples() == 3 and cfg.search.scheduler == "asha" and cfg.search.reduction_factor == 3
    assert cfg.smoke().num_samples() == 2


def test_axis_values_are_taken_as_the_setting_takes_them():
    """YAML reads 1e-3 as a string: the cell gets the float (Adam refused the string); a bool is no size;
    16 and 16.0 are one value; the resolved config a trial re-parses is accepted again."""
    raw = yaml.safe_load("grid: {axes: {train.lr: [1e-3, 3e-4], model.filters: [16, 32]}}")
    cfg = parse_config(_axes_cfg(grid=raw["grid"]))
    assert cfg.grid.axes["train.lr"] == [0.001, 0.0003] and cfg.cell_train(cfg.cells()[0]).lr == 0.001
    assert parse_config(cfg.model_dump(mode="json")).cells() == cfg.cells()  # what every trial does
    for values, message in (([True], "True: not a value of model.filters"), ([16, 16.0], "lists a value twice")):
        with pytest.raises(UserError, match=message):
            parse_config(_axes_cfg(grid={"axes": {"model.filters": values}}))


def test_first_pool_for_another_model_in_per_architecture_is_a_line():
    with pytest.raises(UserError, match="model.per_architecture.C24.first_pool: applies to cnn-pool only"):
        parse_config({"name": "x", "task": "task1", "model": {"per_architecture": {"C24": {"first_pool": 4}}}}, "x.yaml")


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"train": {"precision": "fp16"}}, "x.yaml: train.precision: Input should be 'fp32', 'tf32' or 'bf16'"),
        ({"train": {"precision": "bf16"}}, "x.yaml: train.precision: bf16 needs a GPU (TF32 and bfloat16 autocast are GPU settings); "
                                          "set resources.gpu, or use fp32 on the CPU"),
        ({"grid": {"architectures": ["C24"], "axes": {"train.precision": ["fp32", "tf32"]}}}, "x.yaml: train.precision: tf32 needs a GPU"),
        ({"search": {"num_samples": 2, "space": {"train.precision": {"choice": ["bf16", "fp32"]}}}}, "x.yaml: train.precision: bf16 needs a GPU"),
    ],
)  # fmt: skip
def test_precision_is_validated_and_needs_a_gpu_beyond_fp32(patch, message):
    """train.precision takes fp32, tf32 or bf16; tf32 and bf16 are GPU settings, refused in one line for a
    CPU study (resources.gpu 0): a run records its precision as a param, and it must be what it trained at."""
    with pytest.raises(UserError) as e:
        parse_config({"name": "x", "task": "task1"} | patch, "x.yaml")
    assert str(e.value).startswith(message)


def test_precision_on_a_gpu_study_is_taken_shared_by_a_pack_and_recorded():
    """With a GPU, every precision is a valid setting and axis; cells of different precisions never share
    a pack (one stacked step trains at one precision); the cell's TrainConfig (its params) carries it."""
    raw = {"name": "x", "task": "task1", "resources": {"gpu": 1, "models_per_trial": 4},
           "grid": {"architectures": ["C24"], "seeds": 2, "axes": {"train.precision": ["fp32", "bf16"]}}}  # fmt: skip
    cfg = parse_config(raw)
    packs = cfg.packs()
    assert len(packs) == 2 and all(len({c["axes"]["train.precision"] for c in p}) == 1 for p in packs)
    assert {cfg.cell_train(p[0]).precision for p in packs} == {"fp32", "bf16"}
    assert parse_config({"name": "y", "task": "task1"}).cell_train(cfg.cells()[0] | {"axes": {}}).precision == "fp32"


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"grid": {"architectures": ["C24"], "axes": {"train.lr": ["inf", 1.0e30]}}}, "grid.axes.train.lr: 'inf': Input should be a finite number"),
        ({"train": {"lr": float("inf")}}, "train.lr: Input should be a finite number"),
        ({"train": {"plateau_factor": float("nan")}}, "train.plateau_factor: Input should be a finite number"),
        ({"search": {"num_samples": 2, "space": {"train.lr": {"loguniform": [1e-4, float("inf")]}}}},
         "search.space.train.lr: loguniform takes finite bounds (got [0.0001, inf])"),
        ({"search": {"num_samples": 2, "space": {"model.filters": {"choice": [8, 16, 8.0]}}}},
         "search.space.model.filters: choice lists a value twice (it would be drawn twice as often)"),
        ({"search": {"num_samples": 2, "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}, "scheduler": "asha", "grace_period": 5},
          "train": {"epochs": 3}}, "search.grace_period: 5 is more than train.epochs (3); ASHA's first rung must come by the last epoch"),
        ({"grid": {"architectures": ["C24"], "axes": {"model.lstm_units": [16, 32]}}},
         "grid.axes.model.lstm_units: its values make no difference to any architecture of the grid (C24); remove it"),
        ({"grid": {"architectures": ["C24"]}, "search": {"num_samples": 2, "space": {"model.key_size": {"choice": [16, 32]}}}},
         "search.space.model.key_size: its values make no difference to any architecture of the grid (C24); remove it"),
    ],
)  # fmt: skip
def test_every_value_is_finite_and_meaningful_before_anything_starts(patch, message, tmp_path):
    """The cases of reliability 3, each refused in validation in one line (exit 2 from the CLI, nothing
    created): inf or nan anywhere a number is read (YAML's .inf, the string "inf"), a search bound of
    .inf, a choice that lists a value twice, ASHA's grace period past the last epoch, a size no
    architecture of the grid has."""
    raw = {"name": "x", "task": "task1"} | patch
    with pytest.raises(UserError) as e:
        parse_config(raw, "x.yaml")
    assert str(e.value) == f"x.yaml: {message}"
    cfg = tmp_path / "x.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    work = tmp_path / "work"
    r = subprocess.run([sys.executable, "-m", "hybridlens.study.cli", "study", str(cfg), "--workdir", str(work)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"hybridlens: error: {cfg}: {message}"], r.stderr[-2000:]
    assert not work.exists()


def test_a_size_only_some_architectures_have_says_which_cells_it_applies_to():
    cfg = parse_config({"name": "x", "task": "task1", "grid": {"architectures": ["C24", "C24-LSTM-Att", "C4"],
                        "axes": {"model.lstm_units": [16, 32]}}})  # fmt: skip
    assert cfg.axis_notes() == [
        "model.lstm_units: applies to C24-LSTM-Att, C4 only; the cells of C24 train one model at each of its values"
    ]
    assert (
        parse_config(
            {"name": "x", "task": "task1", "grid": {"architectures": ["C24"], "axes": {"model.filters": [8, 16]}}}
        ).axis_notes()
        == []
    )


def test_a_smoke_test_keeps_asha_within_its_epochs():
    raw = {"name": "x", "task": "task1", "train": {"epochs": 10},
           "search": {"num_samples": 4, "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}, "scheduler": "asha", "grace_period": 5}}  # fmt: skip
    smoke = parse_config(raw).smoke()
    assert smoke.train.epochs == 2 and smoke.search.grace_period == 2
