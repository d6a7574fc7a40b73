"""Cluster mode: a study pointed at a real two-node Ray cluster (ray.cluster_utils.Cluster) with a
shared storage path; trials land on both nodes."""

import subprocess
import sys

import pytest
import yaml

from hybridlens.analysis import mlflow_layout as layout
from hybridlens.analysis import runs as mlruns
from hybridlens.analysis.datasets import write_dataset
from hybridlens.study.launches import load_launch
from hybridlens.study.simulate import simulate_task1

pytestmark = pytest.mark.slow


def test_study_runs_across_two_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    data = tmp_path / "tiny.h5"
    write_dataset(data, simulate_task1(num_seqs=300, seed=2))
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "cluster",
                "task": "task1",
                "data": {"path": str(data)},
                "grid": {"architectures": ["C24", "C4C6"], "activations": ["relu", "exp"], "seeds": [0]},
                "train": {"epochs": 3},
                "resources": {"cpu": 1},
            }
        )
    )
    store = 80 * 1024 * 1024
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "object_store_memory": store})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=store)
        cluster.wait_for_nodes()
        work = tmp_path / "work"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "hybridlens.study.cli",
                "study",
                str(cfg),
                "--workdir",
                str(work),
                "--ray-address",
                cluster.address,
                "--storage-path",
                str(tmp_path / "shared"),
                "--no-analyze",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        cluster.shutdown()
    launch = load_launch(work)
    assert launch.storage_path == str(tmp_path / "shared") and (tmp_path / "shared" / launch.ray_experiment).is_dir()
    c = mlruns.client(launch.tracking_uri)
    runs = mlruns.child_runs(c, launch.experiment_id, launch.parent_run_id)
    assert len(runs) == 4 and all(x.info.status == "FINISHED" for x in runs)
    nodes = {x.data.tags[layout.TAG_NODE] for x in runs}
    assert len(nodes) == 2  # both nodes trained trials


def test_study_tracks_to_a_real_mlflow_server(tmp_path, mlflow_server):
    """--tracking-uri: a real `mlflow server` on loopback, artifacts proxied by it."""
    from hybridlens.analysis.runs import find_study

    uri = mlflow_server.uri
    data = tmp_path / "d.h5"
    write_dataset(data, simulate_task1(num_seqs=300, seed=4))
    cfg = tmp_path / "srv.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "srv",
                "task": "task1",
                "data": {"path": str(data)},
                "grid": {"architectures": ["C24"], "activations": ["relu", "exp"], "seeds": [0]},
                "train": {"epochs": 2},
            }
        )
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridlens.study.cli",
            "study",
            str(cfg),
            "--workdir",
            str(tmp_path / "work"),
            "--tracking-uri",
            uri,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    sr = find_study(uri, "srv")
    assert len(sr.children) == 2 and all(x.info.status == "FINISHED" for x in sr.children)
    assert all({"tpr", "fpr", "test_auroc"} <= set(x.data.metrics) for x in sr.children)
    c = mlruns.client(uri)
    assert "model/weights.pt" in {a.path for a in c.list_artifacts(sr.children[0].info.run_id, "model")}
    assert not (tmp_path / "work" / "mlflow.db").exists()  # nothing tracked locally
