"""Cluster mode: a study pointed at a real two-node Ray cluster (ray.cluster_utils.Cluster) with a
shared storage path; trials land on both nodes."""

import subprocess
import sys

import pytest
import yaml

from analysis.datasets import write_dataset
from study import tracking
from study.runner import load_launch
from study.simulate import simulate_task1

pytestmark = pytest.mark.slow


def test_study_runs_across_two_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    data = tmp_path / "tiny.h5"
    write_dataset(data, simulate_task1(num_seqs=300, seed=2))
    cfg = tmp_path / "cluster.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "cluster",
        "task": "task1",
        "data": {"path": str(data)},
        "grid": {"architectures": ["C24", "C4C6"], "activations": ["relu", "exp"], "seeds": [0]},
        "train": {"epochs": 3},
        "resources": {"cpu": 1},
    }))
    store = 80 * 1024 * 1024
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "object_store_memory": store})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=store)
        cluster.wait_for_nodes()
        work = tmp_path / "work"
        r = subprocess.run(
            [sys.executable, "-m", "study.cli", "study", str(cfg), "--workdir", str(work),
             "--ray-address", cluster.address, "--storage-path", str(tmp_path / "shared"), "--no-analyze"],
            capture_output=True, text=True, timeout=600,
        )
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        cluster.shutdown()
    launch = load_launch(work)
    assert launch.storage_path == str(tmp_path / "shared") and (tmp_path / "shared" / launch.ray_experiment).is_dir()
    c = tracking.client(launch.tracking_uri)
    runs = tracking.child_runs(c, launch.experiment_id, launch.parent_run_id)
    assert len(runs) == 4 and all(x.info.status == "FINISHED" for x in runs)
    nodes = {x.data.tags[tracking.TAG_NODE] for x in runs}
    assert len(nodes) == 2  # both nodes trained trials
