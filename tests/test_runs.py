"""A moved or copied workdir's MLflow store pointed at its own artifacts, and only what belongs there
(a real SQLite store, real artifacts)."""

import os
import shutil
from pathlib import Path

import pytest

from hybridlens.analysis.mlflow_layout import TAG_ARTIFACTS_BESIDE_STORE
from hybridlens.analysis.runs import client, relocate_store, sqlite_uri, stale_artifact_roots


def _experiment(c, name, root, tmp_path, *, beside: bool):
    tags = {TAG_ARTIFACTS_BESIDE_STORE: "true"} if beside else {}
    eid = c.create_experiment(name, artifact_location=root.as_uri(), tags=tags)
    run = c.create_run(eid)
    note = tmp_path / f"{name}.txt"
    note.write_text(name)
    c.log_artifact(run.info.run_id, str(note))
    return eid, run.info.run_id


@pytest.fixture
def stores(tmp_path):
    """Workdir A's store: its own study (tagged), an older study of A (untagged, from before the tag), and
    a study whose artifacts live in workdir B (run with --tracking-uri at A's store); then A copied."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    c = client(sqlite_uri(a))
    ids = {
        "own": _experiment(c, "own", a / "mlartifacts", tmp_path, beside=True),
        "legacy": _experiment(c, "legacy", a / "mlartifacts", tmp_path, beside=False),
        "other": _experiment(c, "other", b / "mlartifacts", tmp_path, beside=False),
    }
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    return a, b, copy, ids


def _roots(work, ids):
    c = client(sqlite_uri(work))
    return {k: (c.get_experiment(e).artifact_location, c.get_run(r).info.artifact_uri) for k, (e, r) in ids.items()}


def test_a_copy_takes_its_own_artifacts_and_leaves_another_workdirs(stores):
    a, b, copy, ids = stores
    assert stale_artifact_roots(copy) == [(a / "mlartifacts").as_uri()]  # B's root is not stale here
    relocate_store(copy)
    roots = _roots(copy, ids)
    for k in ("own", "legacy"):  # the untagged one: its run's folder is in the copy
        assert roots[k][0] == (copy / "mlartifacts").as_uri() and roots[k][1].startswith((copy / "mlartifacts").as_uri() + "/")
    assert roots["other"][0] == (b / "mlartifacts").as_uri()
    c = client(sqlite_uri(copy))
    assert [f.path for f in c.list_artifacts(ids["own"][1])] == ["own.txt"]
    assert _roots(a, ids)["own"][0] == (a / "mlartifacts").as_uri()  # the original untouched
    assert stale_artifact_roots(copy) == []


def test_a_read_only_workdir_is_left_as_it_is_with_a_line(tmp_path):
    """A copy this user cannot write (a colleague's workdir, a read-only mount): one line, the store and
    the folder untouched. Run as an unprivileged user (as root through setpriv: root writes anywhere)."""
    import subprocess
    import sys
    import tempfile

    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("root without setpriv cannot test a read-only folder")
    base = Path(tempfile.mkdtemp(prefix="hybridlens-ro-", dir="/tmp"))  # outside root's private pytest folder
    try:
        a = base / "a"
        a.mkdir()
        c = client(sqlite_uri(a))
        _experiment(c, "own", a / "mlartifacts", base, beside=True)
        copy = base / "copy"
        shutil.copytree(a, copy)
        before = (copy / "mlflow.db").read_bytes()
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
        (copy / "mlflow.db").chmod(0o444)
        copy.chmod(0o555)
        code = f"from pathlib import Path; from hybridlens.study.launches import prepare_store; from hybridlens.analysis.runs import sqlite_uri; prepare_store(Path({str(copy)!r}), sqlite_uri(Path({str(copy)!r})))"
        cmd = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stderr.strip().splitlines() == [
            f"note: {copy} is read-only, so its store still looks for artifacts in {(a / 'mlartifacts').as_uri()} "
            "(a writable copy of the workdir reads its own)"
        ]
        assert (copy / "mlflow.db").read_bytes() == before and not (copy / ".init.lock").exists()
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(base)])
        shutil.rmtree(base, ignore_errors=True)
