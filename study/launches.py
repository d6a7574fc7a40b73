"""Launch bookkeeping: what a launch records in the working directory, one launch at a time per study,
closing the books in MLflow after Ray returns, and ``reconcile`` after a SIGKILLed driver.

A working directory (default ``./hybridlens-work``) holds everything a study needs on one machine::

    mlflow.db            MLflow tracking store (SQLite), unless --tracking-uri points at a server
    mlartifacts/         MLflow artifacts of runs tracked in mlflow.db
    ray/                 Ray Tune experiment folders (checkpoints, state), unless --storage-path
    data/                generated datasets
    studies/NAME.json    the latest launch of study NAME (what `resume` needs)
    studies/NAME.yaml    its resolved config: what `resume` runs, whatever became of the source YAML
    studies/NAME.lock    held (``flock``) by the process running the study, and holding its pid
    .init.lock           held while a first launch creates the SQLite store (one migration at a time)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass, field
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
    failures: dict[str, str] = field(default_factory=dict)  # cell -> error, for cells that failed (not diverged)
    interrupted: bool = False  # a stop signal (Ctrl+C, SIGTERM) ended the fit
    analysis: object | None = None  # hybridlens.analysis.report.AnalysisResult, once analysed

    @property
    def ok(self) -> bool:
        """Every cell ended, none failed (a diverged cell is a result, not a failure), no interruption."""
        return self.complete and not self.failures and not self.interrupted

    def last_line(self) -> str:
        """The driver's last line: how the launch ended and what to do next."""
        n = self.launch.name
        resume = f"'hybridlens resume {self.launch.workdir} --study {n}'"
        counts = f"{self.finished} finished, {self.failed} failed ({self.diverged} diverged), {self.killed} killed"
        if self.interrupted or not self.complete:
            return f"study {n} interrupted: {counts}; resume with {resume}"
        if self.failures:
            cell, why = next(iter(self.failures.items()))
            more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            return (
                f"study {n} ended with {len(self.failures)} failed cell(s): {counts}; {cell}: {why}{more}; "
                f"retry them with {resume}"
            )
        return f"study {n} complete: {counts}"


def state_path(workdir: Path, name: str) -> Path:
    return workdir / "studies" / f"{name}.json"


def resolved_config_path(workdir: Path, name: str) -> Path:
    return workdir / "studies" / f"{name}.yaml"


def launched_studies(workdir: str | Path) -> list[Launch]:
    """The latest launch of every study recorded in ``workdir``, by name."""
    folder = Path(workdir) / "studies"
    return [load_launch(workdir, p.stem) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


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


def lock_path(workdir: Path, name: str) -> Path:
    return workdir / "studies" / f"{name}.lock"


class StudyLock:
    """One process at a time per study and workdir: an exclusive ``flock`` on ``studies/NAME.lock``.

    Taken before anything touches MLflow or Ray and held until the command ends. The kernel releases it
    when the process dies, however it dies (a SIGKILLed driver leaves no stale lock). The file holds the
    holder's pid for the message a second launch gets; it is never deleted (deleting a lock file lets
    two processes lock two different files).
    """

    def __init__(self, workdir: Path, name: str):
        self.path, self.name = lock_path(workdir, name), name
        self.fd: int | None = None

    def acquire(self) -> "StudyLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            who = f"process {holder}" if holder.isdigit() else holder
            raise UserError(f"study {self.name!r} is being run by {who}; wait for it or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "StudyLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_not_running(workdir: Path, name: str) -> None:
    """Refuse while another process runs study ``name`` in ``workdir`` (takes and drops its lock)."""
    StudyLock(workdir, name).acquire().release()


@contextlib.contextmanager
def store_init_lock(workdir: Path, timeout: float = 300.0):
    """Serialise the creation of a workdir's SQLite store: MLflow's schema migration is not safe when
    two first launches (of different studies) run it at once."""
    fd = os.open(workdir / ".init.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        end = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > end:
                    raise UserError(f"{workdir}: another launch has held the store's init lock for {timeout:.0f} s") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
    failures = {
        r.data.tags.get(layout.TAG_RUN_NAME, r.info.run_id): r.data.tags.get(layout.TAG_ERROR, "see its MLflow run")
        for r in runs
        if status[r.info.run_id] == "FAILED" and r.data.tags.get(layout.TAG_OUTCOME) != "diverged"
    }
    c.log_batch(launch.parent_run_id, tags=[RunTag(f"hybridlens.runs_{k}", str(v)) for k, v in counts.items()])
    c.set_terminated(launch.parent_run_id, "FINISHED" if complete else "KILLED")
    if killed:
        echo(f"marked {len(killed)} interrupted trial run(s) KILLED")
    return LaunchSummary(launch, complete, **counts, failures=failures)


def reconcile(workdir: str | Path, study: str | None = None, *, echo: Echo = print) -> list[str]:
    """Mark runs left RUNNING by a killed (SIGKILL) driver as KILLED; refuses while the driver lives."""
    launch = load_launch(workdir, study)
    check_not_running(Path(launch.workdir), launch.name)
    c = mlruns.client(launch.tracking_uri)
    runs = mlruns.child_runs(c, launch.experiment_id, launch.parent_run_id) + [c.get_run(launch.parent_run_id)]
    marked = mark_unfinished(c, runs, "KILLED")
    echo(f"marked {len(marked)} run(s) KILLED" if marked else "no run was left RUNNING")
    return marked
