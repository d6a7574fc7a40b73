"""A study against a real ``mlflow server``: many trials logging at once, and the server restarted
mid-study. Plus the retry layer on its own, with a real client and a real refused connection."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml

from hybridlens.analysis import runs as mlruns
from hybridlens.analysis.datasets import write_dataset
from hybridlens.study.simulate import simulate_task1
from hybridlens.study.tracking import RetryingClient, unreachable

METRICS = ("train_loss", "train_auroc", "train_aupr", "val_loss", "val_auroc", "val_aupr", "lr")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_retrying_client_resends_only_while_the_server_is_unreachable(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    said, slept = [], []
    down = RetryingClient(mlruns.client(f"http://127.0.0.1:{_closed_port()}"), budget_s=10, echo=said.append, sleep=slept.append)
    with pytest.raises(Exception) as err:
        down.get_experiment_by_name("x")
    assert unreachable(err.value)
    assert slept == [1.0, 2.0, 4.0] and down.retries == 3  # capped by the 10 s budget
    assert said[0].startswith("hybridlens: tracking server unreachable (") and "retry 1 in 1 s" in said[0]
    # A request the store refuses is not retried.
    up = RetryingClient(mlruns.client(f"sqlite:///{tmp_path / 'm.db'}"), echo=said.append, sleep=slept.append)
    with pytest.raises(Exception) as err:
        up.get_run("0" * 32)
    assert not unreachable(err.value) and up.retries == 0
    # create_run is handed through unwrapped: a lost answer must not create a second run.
    assert up.create_run == up._c.create_run


def _config(tmp_path, name: str, **sections) -> str:
    data = tmp_path / "d.h5"
    if not data.exists():
        write_dataset(data, simulate_task1(num_seqs=300, seed=4))
    raw = {
        "name": name,
        "task": "task1",
        "data": {"path": str(data)},
        "grid": {"architectures": ["C24"], "activations": ["relu", "exp"], "seeds": [0]},
        "train": {"epochs": 3, "early_stopping_patience": None},
        "resources": {"cpu": 1},
        "ray": {"object_store_memory_mb": 100, "max_failures": 1},
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def _study(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "hybridlens.study.cli", "study", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)  # fmt: skip


def _assert_every_step_once(uri: str, study: str, epochs: int, n_runs: int) -> None:
    sr = mlruns.find_study(uri, study)
    assert len(sr.children) == n_runs and all(r.info.status == "FINISHED" for r in sr.children)
    c = mlruns.client(uri)
    for r in sr.children:
        for key in METRICS:
            steps = [m.step for m in c.get_metric_history(r.info.run_id, key)]
            assert sorted(steps) == list(range(1, epochs + 1)), (r.data.tags["mlflow.runName"], key, sorted(steps))
    assert sr.parent.info.status == "FINISHED"


@pytest.mark.slow
def test_sixteen_trials_log_concurrently_to_a_server(tmp_path, mlflow_server):
    """16 trials at once (2 cores: 1/8 CPU each), each logging every epoch: every (run, metric, step)
    is in the store exactly once."""
    cfg = _config(tmp_path, "many", grid={"seeds": list(range(8))}, resources={"cpu": 0.125}, ray={"num_cpus": 2})
    proc = _study(cfg, "--workdir", str(tmp_path / "work"), "--tracking-uri", mlflow_server.uri, "--no-analyze")
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "[16/16]" in out
    _assert_every_step_once(mlflow_server.uri, "many", epochs=3, n_runs=16)


@pytest.mark.slow
def test_study_survives_a_tracking_server_restart(tmp_path, mlflow_server):
    """The server is stopped for 20 s mid-study and started again on the same store: the study
    completes, no step is lost or logged twice, no run stays RUNNING, the output says logging was
    retried, and the analysis rerun against the server gives the same tables."""
    epochs = 40
    cfg = _config(tmp_path, "restart", train={"epochs": epochs}, grid={"seeds": [0, 1]}, resources={"max_concurrent": 2})
    work = tmp_path / "work"
    proc = _study(cfg, "--workdir", str(work), "--tracking-uri", mlflow_server.uri)
    c = mlruns.client(mlflow_server.uri)
    end = time.time() + 300
    while True:  # wait until trials are logging epochs
        exp = c.get_experiment_by_name("restart")
        runs = c.search_runs([exp.experiment_id], filter_string="tags.`hybridlens.kind` = 'trial'") if exp else []
        if any(r.data.metrics.get("lr") is not None and len(c.get_metric_history(r.info.run_id, "val_loss")) >= 3 for r in runs):
            break
        assert time.time() < end and proc.poll() is None, "the study did not start logging"
        time.sleep(0.5)
    mlflow_server.stop()
    time.sleep(20)
    mlflow_server.start()
    out = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, out[-3000:]
    assert "MLflow logging retried" in out, out[-3000:]
    _assert_every_step_once(mlflow_server.uri, "restart", epochs=epochs, n_runs=4)
    # The analysis, rerun against the same server, gives the same tables.
    r = subprocess.run([sys.executable, "-m", "hybridlens.study.cli", "analyze", "--study", "restart", "--tracking-uri",
                        mlflow_server.uri, "--out", str(tmp_path / "again")], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    for table in ("per_run", "summary", "paired_exp_vs_relu"):
        first = pd.read_csv(work / "analysis" / "restart" / f"{table}.csv")
        again = pd.read_csv(tmp_path / "again" / f"{table}.csv")
        pd.testing.assert_frame_equal(first, again)


@pytest.mark.slow
def test_an_outage_longer_than_the_retry_budget_ends_in_one_line_and_resume_finishes(tmp_path, mlflow_server):
    """The server goes away for longer than the trials' retry budget (4 s here): the trials fail, the
    driver cannot close the books and says so in one line (exit 2, no traceback); once the server is
    back, ``resume`` retries the failed trials and every cell ends with one run and every step once."""
    import os

    epochs = 6
    cfg = _config(
        tmp_path,
        "outage",
        train={"epochs": epochs},
        resources={"max_concurrent": 1},
        ray={"max_failures": 0, "checkpoint_every": 1},
    )
    work = tmp_path / "work"
    env = {**os.environ, "HYBRIDLENS_TRACKING_RETRY_S": "4", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    proc = _study(cfg, "--workdir", str(work), "--tracking-uri", mlflow_server.uri, "--no-analyze", env=env)
    c = mlruns.client(mlflow_server.uri)
    end = time.time() + 300
    while True:  # wait until the first trial has logged two epochs
        exp = c.get_experiment_by_name("outage")
        runs = c.search_runs([exp.experiment_id], filter_string="tags.`hybridlens.kind` = 'trial'") if exp else []
        if any(len(c.get_metric_history(r.info.run_id, "val_loss")) >= 2 for r in runs):
            break
        assert time.time() < end and proc.poll() is None, "the study did not start logging"
        time.sleep(0.3)
    mlflow_server.stop()
    out = proc.communicate(timeout=600)[0]
    mlflow_server.start()
    assert proc.returncode == 2, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith("hybridlens: error: study outage stopped and its runs could not be closed: the tracking server"), last
    assert f"'hybridlens resume {work} --study outage'" in last
    r = subprocess.run([sys.executable, "-m", "hybridlens.study.cli", "resume", str(work), "--no-analyze"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_every_step_once(mlflow_server.uri, "outage", epochs=epochs, n_runs=2)


def test_the_runs_table_of_an_epochs_axis_heads_each_column_once(tmp_path):
    """A study with a train.epochs axis: the axis' column is 'epochs' and the epochs a run trained are
    'epochs_trained' (both were 'epochs'), each run's values under its own heading; a real SQLite store."""
    import json

    from mlflow.tracking import MlflowClient

    from hybridlens.analysis.mlflow_layout import AXES_PARAM, TAG_PARENT
    from hybridlens.study.tracking import runs_table

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("s", artifact_location=str(tmp_path / "art"))
    parent = c.create_run(exp).info.run_id
    for epochs, trained in ((5, 3), (9, 9)):
        run = c.create_run(exp, tags={TAG_PARENT: parent}).info.run_id
        for k, v in {"architecture": "C24", "activation": "relu", "seed": "0", "task": "task1",
                     AXES_PARAM: json.dumps({"train.epochs": epochs})}.items():  # fmt: skip
            c.log_param(run, k, v)
        c.log_metric(run, "epochs_trained", trained)
    lines = runs_table(uri, exp, parent).splitlines()
    head = lines[0].split()
    assert len(set(head)) == len(head) and head[2] == "epochs" and "epochs_trained" in head
    col = head.index("epochs_trained")
    assert sorted((ln.split()[2], ln.split()[col]) for ln in lines[1:3]) == [("5", "3"), ("9", "9")]
