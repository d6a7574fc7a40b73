"""Launch bookkeeping: what a launch records in the working directory, one launch at a time per study,
closing the books in MLflow after Ray returns, and ``reconcile`` after a SIGKILLed driver.

A working directory (default ``./hybridlens-work``) holds everything a study needs on one machine::

    mlflow.db            MLflow tracking store (SQLite), unless --tracking-uri points at a server
    mlartifacts/         MLflow artifacts of runs tracked in mlflow.db
    ray/                 Ray Tune experiment folders (checkpoints, state), unless --storage-path
    data/                generated datasets
    studies/NAME.json    the latest launch of study NAME (what `resume` needs)
    studies/NAME.yaml    its resolved config: what `resume` runs, whatever became of the source YAML
    studies/NAME.pid     the driver running it, while it runs
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hybridlens.analysis import mlflow_layout as layout
from hybridlens.analysis import runs as mlruns
from hybridlens.analysis.errors import UserError

if TYPE_CHECKING:
    from hybridlens.study.config import StudyConfig

DEFAULT_WORKDIR = "hybridlens-work"
Echo = Callable[[str], None]


@dataclass
class Launch:
    """What a launch recorded in ``studies/NAME.json``."""

    name: str
    workdir: str
    config_path: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    storage_path: str
    ray_experiment: str
    data_path: str
    ray_address: str | None
    smoke_test: bool = False
    config_sha256: str = ""  # of the source YAML at launch; resume says when it changed since

    @property
    def experiment_path(self) -> str:
        return str(Path(self.storage_path) / self.ray_experiment)

    @property
    def resolved_config_path(self) -> Path:
        return resolved_config_path(Path(self.workdir), self.name)


@dataclass
class LaunchSummary:
    """How a launch ended: its run counts by status, and whether every grid cell has an ended run."""

    launch: Launch
    complete: bool
    finished: int
    failed: int
    killed: int
    diverged: int
    analysis: object | None = None  # hybridlens.analysis.report.AnalysisResult, once analysed


def state_path(workdir: Path, name: str) -> Path:
    return workdir / "studies" / f"{name}.json"


def resolved_config_path(workdir: Path, name: str) -> Path:
    return workdir / "studies" / f"{name}.yaml"


def pid_path(workdir: Path, name: str) -> Path:
    return workdir / "studies" / f"{name}.pid"


def load_launch(workdir: str | Path, study: str | None = None) -> Launch:
    """The latest launch recorded in ``workdir`` (of ``study``, or of its only study)."""
    workdir = Path(workdir)
    folder = workdir / "studies"
    names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    if not names:
        raise UserError(
            f"{workdir} holds no study (no {folder}/NAME.json); run 'hybridlens study CONFIG --workdir {workdir}' first"
        )
    if study is None:
        if len(names) > 1:
            raise UserError(f"{workdir} holds several studies ({', '.join(names)}); pick one with --study")
        study = names[0]
    if study not in names:
        raise UserError(f"unknown study {study!r} in {workdir}; choose one of {', '.join(names)}")
    return Launch(**json.loads(state_path(workdir, study).read_text()))


def check_not_running(workdir: Path, name: str) -> None:
    """Refuse while another live process runs study ``name`` in ``workdir``."""
    pid_file = pid_path(workdir, name)
    if pid_file.is_file():
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            return
        except PermissionError:
            pass
        raise UserError(f"study {name!r} is being run by process {pid}; wait for it or stop it first")


def mark_unfinished(c, runs, status: str = "KILLED") -> list[str]:
    """Set ``status`` on every run in ``runs`` still RUNNING (or SCHEDULED); return their ids."""
    marked = []
    for r in runs:
        if r.info.status in ("RUNNING", "SCHEDULED"):
            c.set_tag(r.info.run_id, layout.TAG_OUTCOME, status.lower())
            c.set_terminated(r.info.run_id, status)
            marked.append(r.info.run_id)
    return marked


def close_launch(launch: Launch, cfg: "StudyConfig", echo: Echo) -> LaunchSummary:
    """After Ray returns (finished or interrupted): mark child runs left RUNNING as KILLED, and end the
    parent FINISHED when every grid cell has a finished, failed or diverged run, else KILLED."""
    from mlflow.entities import RunTag

    c = mlruns.client(launch.tracking_uri)
    runs = mlruns.child_runs(c, launch.experiment_id, launch.parent_run_id)
    killed = set(mark_unfinished(c, runs, "KILLED"))
    status = {r.info.run_id: "KILLED" if r.info.run_id in killed else r.info.status for r in runs}
    ended = {r.data.tags.get(layout.TAG_RUN_NAME) for r in runs if status[r.info.run_id] in ("FINISHED", "FAILED")}
    complete = {layout.cell_name(**cell) for cell in cfg.cells()} <= ended
    counts = {s.lower(): sum(v == s for v in status.values()) for s in ("FINISHED", "FAILED", "KILLED")}
    counts["diverged"] = sum(r.data.tags.get(layout.TAG_OUTCOME) == "diverged" for r in runs)
    c.log_batch(launch.parent_run_id, tags=[RunTag(f"hybridlens.runs_{k}", str(v)) for k, v in counts.items()])
    c.set_terminated(launch.parent_run_id, "FINISHED" if complete else "KILLED")
    if killed:
        echo(f"marked {len(killed)} interrupted trial run(s) KILLED")
    return LaunchSummary(launch, complete, **counts)


def reconcile(workdir: str | Path, study: str | None = None, *, echo: Echo = print) -> list[str]:
    """Mark runs left RUNNING by a killed (SIGKILL) driver as KILLED; refuses while the driver lives."""
    launch = load_launch(workdir, study)
    check_not_running(Path(launch.workdir), launch.name)
    c = mlruns.client(launch.tracking_uri)
    runs = mlruns.child_runs(c, launch.experiment_id, launch.parent_run_id) + [c.get_run(launch.parent_run_id)]
    marked = mark_unfinished(c, runs, "KILLED")
    echo(f"marked {len(marked)} run(s) KILLED" if marked else "no run was left RUNNING")
    return marked
