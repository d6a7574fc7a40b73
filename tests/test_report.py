"""The analysis end to end on tiny trained studies: real Ray, real MLflow SQLite, real files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from hybridlens.analysis.datasets import write_dataset
from hybridlens.analysis.mlflow_layout import TAG_KIND, TAG_OUTCOME, TAG_PARENT
from hybridlens.analysis.runs import child_runs, client, find_study
from hybridlens.study.runner import run_study
from hybridlens.study.simulate import simulate_task1, simulate_task2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _ray_shutdown():
    yield
    import ray

    ray.shutdown()


def _study(tmp: Path, task: str, archs: list[str], *, placements: bool = True) -> tuple[Path, dict]:
    data = tmp / "work" / "data" / f"{task}.h5"  # inside the workdir: runs record it relative to it
    data.parent.mkdir(parents=True)
    sim = simulate_task1 if task == "task1" else simulate_task2
    ds = sim(num_seqs=400, seed=5)
    if not placements:  # the original papers' layout: X, Y and model only
        for split in (ds.train, ds.valid, ds.test):
            split.placements = None
    write_dataset(data, ds)
    cfg = tmp / f"{task}.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": f"tiny-{task}",
                "task": task,
                "data": {"path": str(data)},
                "grid": {"architectures": archs, "activations": ["relu", "exp"], "seeds": [0]},
                "train": {"epochs": 2},
                "ray": {"object_store_memory_mb": 100},
            }
        )
    )
    work = tmp / "work"
    summary = run_study(cfg, workdir=work, echo=lambda m: None)
    return work, summary


@pytest.fixture(scope="module")
def task1(tmp_path_factory):
    return _study(tmp_path_factory.mktemp("t1"), "task1", ["C24", "C4C6"])


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "hybridlens.study.cli", *args], capture_output=True, text=True, timeout=600)


def _artifacts(c, run_id: str, path: str = "analysis") -> list[str]:
    return sorted(a.path for a in c.list_artifacts(run_id, path))


def test_study_runs_the_analysis_and_logs_it(task1):
    work, summary = task1
    assert summary.analysis.task == "task1"
    out = work / "analysis" / "tiny-task1"
    names = {p.name for p in out.iterdir()}
    for f in (
        "summary.csv",
        "summary.md",
        "paired_exp_vs_relu.csv",
        "per_run.csv",
        "fig2_task1.png",
        "fig2_task1.pdf",
        "logos_C24_exp.png",
        "logos_C4C6_relu.pdf",
        "analysis.json",
    ):
        assert f in names, f
    summ = pd.read_csv(out / "summary.csv")
    assert set(summ.columns) >= {"architecture", "activation", "tpr_mean", "tpr_std", "tpr_se", "tpr_all_mean", "fpr_mean",
                                 "test_aupr_mean", "runs"}  # fmt: skip
    paired = pd.read_csv(out / "paired_exp_vs_relu.csv")
    assert {"wilcoxon_p", "wilcoxon_p_holm"} <= set(paired.columns)
    assert len(summ) == 4 and (summ["runs"] == 1).all()
    # the caption and analysis.json say how AUROC/AUPR were computed (train.auc, logged on every run)
    assert "AUROC/AUPR (monitor, ranking, test): exact" in (out / "summary.md").read_text().splitlines()[0]
    assert json.loads((out / "analysis.json").read_text())["auc"] == ["exact"]
    assert ((summ["tpr_mean"] >= 0) & (summ["tpr_mean"] <= 1)).all()
    c = client(summary.launch.tracking_uri)
    parent = summary.launch.parent_run_id
    assert "analysis/fig2_task1.png" in _artifacts(c, parent)
    for r in child_runs(c, summary.launch.experiment_id, parent):
        assert {"tpr", "fpr"} <= set(r.data.metrics)
        assert _artifacts(c, r.info.run_id) == ["analysis/filter_matches.tsv", "analysis/tomtom.tsv"]


def test_rerun_replaces_and_works_from_mlflow_alone(task1):
    work, summary = task1
    launch = summary.launch
    c = client(launch.tracking_uri)
    kids = child_runs(c, launch.experiment_id, launch.parent_run_id)
    before_parent = _artifacts(c, launch.parent_run_id)
    before = pd.read_csv(work / "analysis" / "tiny-task1" / "per_run.csv").sort_values("run_id")
    # Analysis from MLflow only: no Ray folder, no checkpoints; given the store's URI, no workdir (as
    # for a tracking server), from another folder: the runs' relative dataset path is found in the
    # workdir they were launched in
    shutil.rmtree(work / "ray")
    assert c.get_run(launch.parent_run_id).data.params["data_path"] == "data/task1.h5"
    r = subprocess.run(
        [sys.executable, "-m", "hybridlens.study.cli", "analyze", "--study", "tiny-task1", "--tracking-uri", launch.tracking_uri,
         "--out", str(work / "analysis" / "tiny-task1")],
        capture_output=True, text=True, timeout=600, cwd=work.parent,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "[4/4]" in r.stderr
    after = pd.read_csv(work / "analysis" / "tiny-task1" / "per_run.csv").sort_values("run_id")
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True))
    assert _artifacts(c, launch.parent_run_id) == before_parent
    for k in kids:
        for key in ("tpr", "fpr"):
            assert len(c.get_metric_history(k.info.run_id, key)) == 1  # replaced, not appended


def test_runs_without_weights_are_skipped_others_analysed(task1):
    work, summary = task1
    launch = summary.launch
    c = client(launch.tracking_uri)
    fake = c.create_run(
        launch.experiment_id, tags={TAG_PARENT: launch.parent_run_id, TAG_KIND: "trial", TAG_OUTCOME: "finished"}
    ).info.run_id
    for k, v in dict(architecture="C24", activation="exp", seed=7, task="task1").items():
        c.log_param(fake, k, v)
    c.log_metric(fake, "best_val_aupr", 0.99)
    c.set_terminated(fake, "FINISHED")
    try:
        r = _cli("analyze", "--study", "tiny-task1", "--workdir", str(work), "--out", str(work / "an2"))
        assert r.returncode == 0, r.stderr
        assert "C24-exp-s7: skipped: no readable config/trial.json" in r.stderr
        per_run = pd.read_csv(work / "an2" / "per_run.csv")
        assert len(per_run) == 4  # the four real runs
    finally:
        c.delete_run(fake)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--study", "nope"], "unknown study 'nope'"),
        (["--study", "tiny-task1", "--task", "task2"], "no finished task2 run to analyse"),
        (["--study", "tiny-task1", "--rank-on", "train"], "--rank-on must be valid or test"),
    ],
)
def test_bad_input_is_one_line(task1, args, message):
    r = _cli("analyze", "--workdir", str(task1[0]), *args)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.strip().startswith("skipping ")]
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_task2_saliency_end_to_end(tmp_path):
    # C4: a BiLSTM (the backward pass runs without cuDNN); C4-Att: attention maps
    work, summary = _study(tmp_path, "task2", ["C4", "C4-Att"])
    res = summary.analysis
    assert set(res.per_run.columns) >= {"saliency_auroc", "saliency_aupr", "saliency_snr", "test_auroc"}
    # the default attribution methods attribute the logit; the paper's saliency (the probability's
    # gradient, every positive) ranks positions alike unless the sigmoid saturates, and with fewer than
    # max_sequences positives both score the same sequences
    assert (res.per_run["saliency_saturated"] == 0).all() and (res.per_run["attr_n"] == res.per_run["saliency_n"]).all()
    pd.testing.assert_series_equal(
        res.per_run["attr_saliency_auroc"], res.per_run["saliency_auroc"], check_names=False, atol=1e-6, rtol=0
    )
    assert ((res.per_run["attr_saliency_corrected_auroc"] >= 0) & (res.per_run["attr_saliency_corrected_auroc"] <= 1)).all()
    out = work / "analysis" / "tiny-task2"
    att = pd.read_csv(out / "attention.csv")
    assert att["architecture"].tolist() == ["C4-Att", "C4-Att"] and att["attn_auroc_mean"].between(0, 1).all()
    assert (out / "attention_example.png").is_file() and (out / "attribution_auroc.png").is_file()
    attr = pd.read_csv(out / "attributions.csv")
    assert sorted(set(attr["method"])) == ["saliency", "saliency_corrected"] and len(attr) == 8
    assert (attr.groupby("architecture")["sequences"].nunique() == 1).all()  # every method, the same sequences
    assert attr["floor_map_auroc"].between(0.4, 0.6).all() and attr["floor_weights_auroc"].notna().all()
    assert ((res.per_run["saliency_auroc"] >= 0) & (res.per_run["saliency_auroc"] <= 1)).all()
    out = work / "analysis" / "tiny-task2"
    assert (out / "fig3_task2.png").is_file() and (out / "logos_C4_exp.png").is_file()
    launch = summary.launch
    c = client(launch.tracking_uri)
    for r in child_runs(c, launch.experiment_id, launch.parent_run_id):
        assert {"saliency_auroc", "saliency_aupr", "saliency_snr"} <= set(r.data.metrics)
    assert find_study(launch.tracking_uri, "tiny-task2").parent.info.run_id == launch.parent_run_id


def _fake_run_like(c, launch, real, weights: bytes) -> str:
    """A finished child run that copies a real run's params and config, with ``weights`` as its
    ``model/weights.pt``."""
    import tempfile

    fake = c.create_run(
        launch.experiment_id,
        run_name="C24-exp-s7",
        tags={TAG_PARENT: launch.parent_run_id, TAG_KIND: "trial", TAG_OUTCOME: "finished", "mlflow.runName": "C24-exp-s7"},
    ).info.run_id
    for k, v in {**real.data.params, "seed": "7", "architecture": "C24", "activation": "exp"}.items():
        c.log_param(fake, k, v)
    c.log_metric(fake, "best_val_aupr", 0.99)
    with tempfile.TemporaryDirectory() as d:
        cfg = c.download_artifacts(real.info.run_id, "config/trial.json", d)
        c.log_artifact(fake, cfg, "config")
        (Path(d) / "weights.pt").write_bytes(weights)
        c.log_artifact(fake, str(Path(d) / "weights.pt"), "model")
    c.set_terminated(fake, "FINISHED")
    return fake


def test_a_tampered_weights_file_is_skipped_with_its_reason(task1):
    work, summary = task1
    launch = summary.launch
    c = client(launch.tracking_uri)
    real = next(r for r in child_runs(c, launch.experiment_id, launch.parent_run_id) if r.data.params["architecture"] == "C24")
    good = Path(c.download_artifacts(real.info.run_id, "model/weights.pt", str(work)))
    fake = _fake_run_like(c, launch, real, good.read_bytes()[:300])  # truncated
    try:
        r = _cli("analyze", "--study", "tiny-task1", "--workdir", str(work), "--out", str(work / "an3"))
        assert r.returncode == 0, r.stderr
        assert "C24-exp-s7: skipped: model/weights.pt cannot be loaded (" in r.stderr
        assert "Traceback" not in r.stderr
        assert len(pd.read_csv(work / "an3" / "per_run.csv")) == 4  # the four real runs
        caption = (work / "an3" / "summary.md").read_text().splitlines()[0]
        assert "Skipped 1 run(s): C24-exp-s7 (model/weights.pt cannot be loaded" in caption
    finally:
        c.delete_run(fake)


def test_an_interrupted_analysis_leaves_the_previous_outputs_as_they_were(task1):
    """Ctrl+C in the middle of ``analyze``: exit 130 with one line, the previous tables, figures and
    analysis.json untouched, no half-written folder beside them."""
    import os
    import signal
    import time

    work, summary = task1
    out = work / "analysis" / "tiny-task1"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybridlens.study.cli", "analyze", "--study", "tiny-task1", "--workdir", str(work)],
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a process inherits an ignored SIGINT (earlier tests of this session may
        # leave this one's ignored), and Python then never raises KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines = []
    for line in proc.stderr:  # interrupt once the first run has been analysed
        lines.append(line)
        if "[1/4]" in line:
            time.sleep(0.2)
            os.kill(proc.pid, signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "hybridlens: interrupted", err
    assert "Traceback" not in err
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before
    # no staging folder left (the lock an analysis with --out and no workdir keeps beside it is no output)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".") and not p.name.endswith(".analysis.lock")] == []


def test_attributions_on_request_and_a_rerun_adds_no_duplicates(task1):
    """Task 1: attributions per class, scored on each class's own motif; ISM on request; the table,
    the heat map; analysing twice leaves one value per metric on every run."""
    work, summary = task1
    launch = summary.launch
    args = ["analyze", "--study", "tiny-task1", "--workdir", str(work), "--out", str(work / "an4"),
            "--attributions", "saliency,saliency_corrected,ism", "--max-sequences", "3"]  # fmt: skip
    c = client(launch.tracking_uri)
    runs = child_runs(c, launch.experiment_id, launch.parent_run_id)
    keys = ("attr_ism_auroc", "attr_saliency_auroc", "attr_saliency_corrected_snr", "tpr")
    history = []
    for _ in range(2):
        r = _cli(*args)
        assert r.returncode == 0, r.stderr
        history.append({(run.info.run_id, k): len(c.get_metric_history(run.info.run_id, k)) for run in runs for k in keys})
    assert history[0] == history[1]  # the second, identical analysis logged nothing new
    assert all(n == 1 for (_, k), n in history[1].items() if k in ("attr_ism_auroc", "tpr"))
    assert "C24-exp-s0 ism: AUROC" in r.stderr
    out = work / "an4"
    attr = pd.read_csv(out / "attributions.csv")
    assert sorted(set(attr["method"])) == ["ism", "saliency", "saliency_corrected"] and len(attr) == 12
    assert attr["auroc_mean"].between(0, 1).all() and (attr["runs"] == 1).all()
    assert (attr["sequences"] == 3 * 12).all()  # 3 per class, 12 classes, the same for every method and run
    assert {"auroc_se", "saturated", "floor_weights_auroc", "floor_weights_aupr", "floor_map_auroc", "floor_map_aupr"} <= set(
        attr
    )
    assert (out / "attribution_auroc.png").is_file() and (out / "attributions.md").read_text().startswith("Study tiny-task1")
    per_run = pd.read_csv(out / "per_run.csv").set_index("run_id")
    for run in child_runs(c, launch.experiment_id, launch.parent_run_id):  # the latest values: this analysis's
        assert run.data.metrics["attr_saliency_auroc"] == pytest.approx(per_run.loc[run.info.run_id, "attr_saliency_auroc"])


def test_a_task1_file_without_placements_is_analysed_without_attributions(tmp_path):
    """The lab's original Task 1 file has no placements, which per-class attribution scoring needs: the
    analysis finishes (filters, tables, figures), and the attributions say why they are missing."""
    import json

    from hybridlens.analysis.mlflow_layout import TAG_ATTR_UNAVAILABLE

    work, summary = _study(tmp_path, "task1", ["C24"], placements=False)
    res = summary.analysis
    assert res is not None and len(res.per_run) == 2 and res.per_run["tpr"].between(0, 1).all()
    out = work / "analysis" / "tiny-task1"
    attr = pd.read_csv(out / "attributions.csv")
    assert attr["note"].str.startswith("unavailable: the dataset has no motif placements").all()
    assert json.loads((out / "analysis.json").read_text())["attributions_unavailable"]
    c = client(summary.launch.tracking_uri)
    for r in child_runs(c, summary.launch.experiment_id, summary.launch.parent_run_id):
        assert "no motif placements" in r.data.tags[TAG_ATTR_UNAVAILABLE] and "tpr" in r.data.metrics


def test_an_output_folder_it_did_not_write_is_refused_before_any_work(task1, tmp_path):
    """--out at a folder of the user's (or the current folder), or at a file: one line, exit 2, before any
    analysis, everything left as it was; the analysis' own folders carry its marker and are readable."""
    import os
    import stat

    work, _ = task1
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / "mydata.h5").write_bytes(b"\x89HDF\r\n")
    data = tmp_path / "task1.h5"
    data.write_bytes(b"not to be replaced")
    for out, cwd in ((mine, None), (data, None), (".", mine)):
        r = subprocess.run(
            [sys.executable, "-m", "hybridlens.study.cli", "analyze", "--study", "tiny-task1", "--workdir", str(work), "--out", str(out)],
            capture_output=True, text=True, timeout=600, cwd=cwd,
        )  # fmt: skip
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("hybridlens: error: analysis output folder "), (
            r.stderr
        )
        assert "analysing" not in r.stderr
    assert sorted(p.name for p in mine.iterdir()) == ["mydata.h5", "notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    assert data.read_bytes() == b"not to be replaced" and sorted(p.name for p in tmp_path.iterdir()) == ["mine", "task1.h5"]
    out = work / "analysis" / "tiny-task1"
    assert (out / ".hybridlens-analysis").is_file()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_a_folder_from_before_the_marker_is_known_by_its_file_names(tmp_path):
    """An analysis folder from before the marker (its analysis.json among tables, figures and logos)
    may be replaced; the same with a user's own notes.md or paper.pdf in it may not."""
    from hybridlens.analysis.errors import UserError
    from hybridlens.analysis.report import check_out_dir

    old = tmp_path / "old"
    old.mkdir()
    (old / "analysis.json").write_text(json.dumps({"study": "s", "task": "task1", "parent_run_id": "x"}))
    for name in ("summary.csv", "summary.md", "fig2_task1.png", "fig3_task2.pdf", "logos_C24_exp.png", "attention.md"):
        (old / name).write_text("")
    assert check_out_dir(old) == old
    for name in ("notes.md", "paper.pdf"):
        (old / name).write_text("mine")
        with pytest.raises(UserError, match="was not written by hybridlens"):
            check_out_dir(old)
        (old / name).unlink()


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_study_name_with_a_path_touches_nothing_outside_and_unknown_names_create_nothing(task1):
    """Every command that takes --study, given a name with a path (../../victim) or an unknown one:
    one line, exit 2; the file such a name would have locked outside the workdir keeps its bytes, and
    no file is created or changed anywhere (an unknown name's lock included)."""
    work, _ = task1
    outside = work.parent
    victim = outside / "victim.analysis.lock"
    victim.write_text("precious data")
    before = _tree(outside)
    for study, problem in (("../../victim", "is not a study name"), ("nosuch", "unknown study 'nosuch'"),
                           ("a" * 101, "at most 100 characters")):  # fmt: skip
        for args in (["analyze", "--workdir", str(work)], ["runs", "--workdir", str(work)],
                     ["reconcile", "--workdir", str(work)], ["resume", str(work)]):  # fmt: skip
            r = _cli(*args, "--study", study)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and problem in lines[0], (args, study, r.stderr[-2000:])
        assert _tree(outside) == before, study
    assert victim.read_text() == "precious data"
    # a launch record whose name is not its file's: its name would build the lock's path, outside
    record = json.loads((work / "studies" / "tiny-task1.json").read_text())
    (work / "studies" / "forged.json").write_text(json.dumps(record | {"name": "../../victim"}))
    try:
        for args in (["runs", "--workdir", str(work)], ["reconcile", "--workdir", str(work)], ["resume", str(work)]):
            r = _cli(*args, "--study", "forged")
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and "does not record a launch of study 'forged'" in lines[0], r.stderr
        assert not (outside / "victim.lock").exists() and victim.read_text() == "precious data"
    finally:
        (work / "studies" / "forged.json").unlink()


def test_an_output_folder_knows_its_study_and_another_is_replaced_only_when_asked(task1, tmp_path):
    """The output folder's marker records the study and launch it was written for; --out onto another
    study's folder (its marker, or an older empty marker's analysis.json, names it) is one line, exit 2,
    the folder as it was; with --replace it is replaced, and then knows its new study."""
    from hybridlens.analysis.report import written_for

    work, summary = task1
    own = work / "analysis" / "tiny-task1"
    marker = json.loads((own / ".hybridlens-analysis").read_text())
    assert marker == {"study": "tiny-task1", "parent_run_id": summary.launch.parent_run_id}
    other = tmp_path / "other"
    shutil.copytree(own, other)
    (other / ".hybridlens-analysis").write_text(json.dumps({"study": "other", "parent_run_id": "x"}))
    older = tmp_path / "older"
    shutil.copytree(own, older)
    (older / ".hybridlens-analysis").write_text("")  # a marker from before it held its study
    meta = json.loads((older / "analysis.json").read_text())
    (older / "analysis.json").write_text(json.dumps(meta | {"study": "older-study"}))
    for folder, name in ((other, "other"), (older, "older-study")):
        before = _tree(folder)
        r = _cli("analyze", "--study", "tiny-task1", "--workdir", str(work), "--out", str(folder))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
        assert lines[0] == (f"hybridlens: error: analysis output folder {folder} holds the analysis of study {name!r}, not "
                            "'tiny-task1'; give another --out, or pass --replace to replace it")  # fmt: skip
        assert _tree(folder) == before and written_for(folder) == name
    r = _cli(
        "analyze", "--study", "tiny-task1", "--workdir", str(work), "--out", str(other), "--replace", "--attributions", "none"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert written_for(other) == "tiny-task1" and json.loads((other / "analysis.json").read_text())["study"] == "tiny-task1"


def test_two_analyses_at_once_take_turns_and_log_each_value_once(task1):
    """Two analyses of one study started together (with settings that change the attribution values):
    the second says who runs the first and waits; every (run, metric, step) gains at most one entry;
    analysis.json records the settings of the latest values."""
    import json
    import sqlite3

    work, summary = task1
    db = work / "mlflow.db"

    def entries() -> dict:
        with sqlite3.connect(db) as con:
            rows = con.execute("select run_uuid, key, step, count(*) from metrics where key like 'attr_%' group by 1, 2, 3")
            return {(r, k, s): n for r, k, s, n in rows}

    before = entries()
    args = [sys.executable, "-m", "hybridlens.study.cli", "analyze", "--study", "tiny-task1", "--workdir", str(work),
            "--max-sequences", "2"]  # fmt: skip
    procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert (
        sum("the analysis of study 'tiny-task1' is being run by process" in e and "waiting for it to finish" in e for e in errs)
        == 1
    )
    after = entries()
    assert after and all(after[k] - before.get(k, 0) <= 1 for k in after), {
        k: v for k, v in after.items() if v - before.get(k, 0) > 1
    }
    meta = json.loads((work / "analysis" / "tiny-task1" / "analysis.json").read_text())
    assert meta["max_sequences"] == 2 and meta["attributions"] == ["saliency", "saliency_corrected"]


def test_attributions_none_analyses_without_them(task1, tmp_path):
    work, _ = task1
    r = _cli(
        "analyze", "--study", "tiny-task1", "--workdir", str(work), "--out", str(tmp_path / "plain"), "--attributions", "none"
    )
    assert r.returncode == 0, r.stderr
    names = {p.name for p in (tmp_path / "plain").iterdir()}
    assert (
        "summary.csv" in names
        and "attributions.csv" not in names
        and "attr_" not in (tmp_path / "plain" / "per_run.csv").read_text()
    )


def test_a_relu_only_study_draws_no_empty_exp_vs_relu_figure(tmp_path):
    """Without an architecture that has both exp and relu runs there is no point to plot: no fig2, one
    line says why (and has_exp_and_relu, which also keeps 'exp vs relu' out of the figures' titles, says
    no); with one, the figure is drawn."""
    from hybridlens.analysis.report import draw_figures, has_exp_and_relu
    from hybridlens.analysis.tasks import TASKS

    spec = TASKS["task1"]
    metrics = (*spec.interp_metrics, *spec.figure_metrics, "test_auroc", "test_aupr")

    def summary(acts):
        rows = [{"architecture": a, "activation": act, **{f"{m}_{s}": 0.5 for m in metrics for s in ("mean", "std")}}
                for a in ("C24", "C4C6") for act in acts]  # fmt: skip
        return pd.DataFrame(rows)

    lines = []
    relu = summary(["relu"])
    assert not has_exp_and_relu(relu)
    assert draw_figures(relu, {}, spec, tmp_path, "t", lines.append) == []
    assert f"  no {spec.figure} figure: no architecture has both exp and relu runs" in lines
    both = summary(["relu", "exp"])
    assert has_exp_and_relu(both)
    files = draw_figures(both, {}, spec, tmp_path, "t", lines.append)
    assert (tmp_path / f"{spec.figure}.png").is_file() and tmp_path / f"{spec.figure}.png" in files
