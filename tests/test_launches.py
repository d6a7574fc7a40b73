"""What a launch records about its workdir: relative paths, so a moved workdir keeps working and a copy
is a study state of its own; the first format (absolute paths) is rebased."""

from pathlib import Path

from hybridlens.analysis.runs import sqlite_uri
from hybridlens.study.launches import Launch, LaunchSummary


def _launch(workdir: Path, **kw) -> Launch:
    fields = dict(
        name="s",
        workdir=str(workdir),
        config_path="/cfg/s.yaml",
        tracking_uri=sqlite_uri(workdir),
        experiment_id="1",
        parent_run_id="p",
        storage_path=str(workdir / "ray"),
        ray_experiment="s-2026",
        data_path=str(workdir / "data" / "d.h5"),
        ray_address=None,
    )
    return Launch(**{**fields, **kw})


def test_the_record_is_relative_to_the_workdir_and_resolves_in_another(tmp_path):
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    rec = _launch(a).record()
    assert "workdir" not in rec and rec["tracking_uri"] is None
    assert rec["storage_path"] == "ray" and rec["data_path"] == "data/d.h5"
    moved = Launch.from_record(rec, b)
    assert moved.workdir == str(b) and moved.tracking_uri == sqlite_uri(b)
    assert moved.experiment_path == str(b / "ray" / "s-2026") and moved.data_path == str(b / "data" / "d.h5")


def test_what_lies_outside_the_workdir_stays_as_given(tmp_path):
    a = tmp_path / "a"
    rec = _launch(a, tracking_uri="http://head:5000", storage_path="/shared/ray", data_path="/shared/t1.h5").record()
    assert (rec["tracking_uri"], rec["storage_path"], rec["data_path"]) == ("http://head:5000", "/shared/ray", "/shared/t1.h5")
    there = Launch.from_record(rec, tmp_path / "b")
    assert (there.tracking_uri, there.storage_path, there.data_path) == ("http://head:5000", "/shared/ray", "/shared/t1.h5")


def test_a_first_format_record_is_rebased_onto_the_workdir_it_is_read_from(tmp_path):
    old, new = Path("/gone/work"), tmp_path / "copy"
    legacy = {**_launch(old).record(), "workdir": str(old), "tracking_uri": sqlite_uri(old),
              "storage_path": str(old / "ray"), "data_path": str(old / "data" / "d.h5")}  # fmt: skip
    del legacy["format"]
    launch = Launch.from_record(legacy, new)
    assert launch.tracking_uri == sqlite_uri(new) and launch.storage_path == str(new / "ray")
    assert launch.data_path == str(new / "data" / "d.h5")


def test_last_lines_name_the_next_step_and_a_divergence_is_not_a_failure(tmp_path):
    launch = _launch(tmp_path)
    done = LaunchSummary(launch, complete=True, finished=3, failed=0, killed=0, diverged=1)
    assert done.ok  # exit code 0: a diverged cell is a result of training
    line = done.last_line(tmp_path / "analysis" / "s")
    assert line.startswith("study s complete: 3 finished, 0 failed, 1 diverged, 0 killed; next: ")
    assert f"'hybridlens runs --workdir {tmp_path} --study s'" in line and f"'hybridlens ui --workdir {tmp_path}'" in line
    assert line.endswith(f"tables and figures in {tmp_path / 'analysis' / 's'}")
    assert done.last_line().endswith(f"analyse with 'hybridlens analyze --study s --workdir {tmp_path}'")
    failed = LaunchSummary(launch, complete=True, finished=3, failed=1, killed=0, diverged=0, failures={"C24-exp-s0": "Boom"})
    assert not failed.ok and "retry them with 'hybridlens resume" in failed.last_line()


def test_next_steps_stay_copy_pasteable_with_a_space_in_the_workdir(tmp_path):
    """A workdir with a space (or a $) is one shell word in the printed commands: bash gives it back."""
    import shlex
    import subprocess

    work = tmp_path / "my $work dir"
    line = LaunchSummary(_launch(work), complete=False, finished=1, failed=0, killed=1, diverged=0).last_line()
    command = line.split("resume with '", 1)[1].rstrip("'")
    words = subprocess.run(["bash", "-c", 'for w in ' + command + '; do printf "%s\\n" "$w"; done'], capture_output=True,
                           text=True).stdout.splitlines()  # fmt: skip
    assert words == ["hybridlens", "resume", str(work), "--study", "s"], (command, shlex.split(command))


def test_a_search_is_complete_when_every_trial_ended_not_when_enough_runs_did(tmp_path):
    """A search of one cell x 2 samples: a trial retried after a failure has two runs (failed, then
    finished), which made the launch count as complete while the other trial never ran (review
    finding L4 of #23); it is complete once both trials ended. A real MLflow SQLite store."""
    from hybridlens.analysis import mlflow_layout as layout
    from hybridlens.analysis.runs import client
    from hybridlens.study.config import parse_config
    from hybridlens.study.launches import close_launch

    cfg = parse_config(
        {"name": "s", "task": "task1", "grid": {"architectures": ["C24"], "activations": ["relu"], "seeds": 1},
         "search": {"num_samples": 2, "space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}}}
    )  # fmt: skip
    launch = _launch(tmp_path)
    c = client(launch.tracking_uri)
    exp = c.create_experiment("s")
    launch.experiment_id = exp

    def parent():
        launch.parent_run_id = c.create_run(exp, tags={layout.TAG_KIND: "parent"}).info.run_id

    def child(trial, name, status):
        tags = {layout.TAG_PARENT: launch.parent_run_id, layout.TAG_KIND: "trial", layout.TAG_TRIAL: trial,
                layout.TAG_RUN_NAME: name, layout.TAG_OUTCOME: status.lower()}  # fmt: skip
        c.set_terminated(c.create_run(exp, tags=tags).info.run_id, status)

    parent()
    child("t1", "C24-relu-lr0.001-s0", "FAILED")
    child("t1", "C24-relu-lr0.001-s0", "FINISHED")  # the retry, a run of its own
    assert not close_launch(launch, cfg, echo=lambda m: None).complete
    parent()
    child("t1", "C24-relu-lr0.001-s0", "FINISHED")
    child("t2", "C24-relu-lr0.0002-s0", "FINISHED")
    summary = close_launch(launch, cfg, echo=lambda m: None)
    assert summary.complete and summary.finished == 2
