"""The ``hybridlens data`` command, run as a real subprocess."""

import subprocess
import sys

import pytest

from hybridlens.analysis.datasets import load_dataset


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "hybridlens.study.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_data_task1_writes_file_with_progress(tmp_path):
    out = tmp_path / "t1.h5"
    r = run("data", "task1", "--out", str(out), "--num-seqs", "300", "--seed", "9")
    assert r.returncode == 0, r.stderr
    assert "300/300 sequences" in r.stderr and "wrote" in r.stderr
    ds = load_dataset(out)
    assert ds.attrs["seed"] == 9 and len(ds.train) == 210
    # Existing file: refused without --force, file untouched; replaced with --force.
    before = out.read_bytes()
    r = run("data", "task1", "--out", str(out), "--num-seqs", "300", "--seed", "10")
    assert r.returncode != 0
    assert r.stderr.strip() == f"hybridlens: error: {out} already exists; pass --force to overwrite it"
    assert out.read_bytes() == before
    r = run("data", "task1", "--out", str(out), "--num-seqs", "300", "--seed", "10", "--force")
    assert r.returncode == 0 and load_dataset(out).attrs["seed"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.h5"]


def test_data_task2_options(tmp_path):
    out = tmp_path / "t2.h5"
    r = run("data", "task2", "--out", str(out), "--num-seqs", "200", "--max-motifs", "7")
    assert r.returncode == 0, r.stderr
    assert load_dataset(out).attrs["motifs_per_sequence"] == "3-7"


def test_data_task2_code_background(tmp_path):
    from hybridlens.study.simulate import CODE_BACKGROUND_IDS

    out = tmp_path / "t2code.h5"
    r = run("data", "task2", "--out", str(out), "--num-seqs", "200", "--background", "code")
    assert r.returncode == 0, r.stderr
    attrs = load_dataset(out).attrs
    assert attrs["background_pool"] == "code" and attrs["background_motif_ids"] == list(CODE_BACKGROUND_IDS)
    r = run("data", "task2", "--out", str(tmp_path / "x.h5"), "--num-seqs", "200", "--background", "paper")
    assert r.returncode != 0 and r.stderr.strip() == "hybridlens: error: unknown background 'paper'; choose one of filtered, code"
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["data", "task3", "--out", "x.h5"], "No such command 'task3'"),
        (["data", "task1", "--out", "nodir/x.h5"], "output folder nodir does not exist"),
        (["data", "task1", "--out", "."], "is a folder"),
        (["data", "task1", "--out", "x.h5", "--num-seqs", "abc"], "Invalid value for '--num-seqs'"),
        (["data", "task1", "--out", "x.h5", "--num-seqs", "3"], "--num-seqs must be at least 10"),
        (["data", "task2", "--out", "x.h5", "--max-motifs", "6"], "--max-motifs must be 5"),
        (["data", "task1"], "Missing option '--out'"),
        (["data", "task1", "--out", "/proc/x.h5"], "cannot write /proc/x.h5: /proc does not take new files"),
        (["data", "task1", "--out", "/sys/x.h5"], "cannot write /sys/x.h5: /sys does not take new files"),
        (["--version", "data"], None),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, args, message):
    r = run(*args, cwd=tmp_path)
    if message is None:  # --version: one line on stdout, nothing else done
        assert r.returncode == 0 and r.stdout.strip() == "hybridlens 0.1.0" and not r.stderr
        return
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hybridlens: error:") and message in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_output_under_a_file_is_one_line_before_simulating(tmp_path):
    (tmp_path / "afile").write_text("mine")
    r = run("data", "task1", "--out", "afile/x.h5", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == "hybridlens: error: cannot write afile/x.h5: afile is a file, not a folder"
    assert "sequences" not in r.stderr and (tmp_path / "afile").read_text() == "mine"
