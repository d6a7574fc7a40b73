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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from hybridlens.analysis import mlflow_layout as layout
from hybridlens.analysis import runs as mlruns
from hybridlens.analysis.atomic import atomic_write_text
from hybridlens.analysis.errors import UserError
from hybridlens.analysis.locks import FileLock
from hybridlens.analysis.mlflow_layout import check_study_name, study_name_problem

if TYPE_CHECKING:
    from hybridlens.study.config import StudyConfig

DEFAULT_WORKDIR = "hybridlens-work"
Echo = Callable[[str], None]


@dataclass
class Launch:
    """A launch, with every path absolute for the workdir it was loaded from. ``studies/NAME.json``
    records it relative to the workdir (:meth:`record`): what lies inside the workdir (its SQLite store,
    ``ray/``, ``data/``) is recorded as a path inside it, so a moved workdir keeps working and a copied
    one is a study state of its own; what lies outside (a tracking server, a shared ``--storage-path``,
    a dataset given by path) stays as given."""

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

    def record(self) -> dict:
        """The JSON record: paths inside the workdir relative to it, the workdir's own store as null."""
        workdir = Path(self.workdir)
        out = {k: v for k, v in asdict(self).items() if k != "workdir"}
        out["format"] = LAUNCH_FORMAT
        out["tracking_uri"] = None if self.tracking_uri == mlruns.sqlite_uri(workdir) else self.tracking_uri
        out["storage_path"] = inside(self.storage_path, workdir)
        out["data_path"] = inside(self.data_path, workdir)
        return out

    def save(self) -> None:
        """Write :meth:`record` to ``studies/NAME.json`` (atomically)."""
        atomic_write_text(state_path(Path(self.workdir), self.name), json.dumps(self.record(), indent=2))

    @classmethod
    def from_record(cls, record: dict, workdir: Path) -> "Launch":
        """The launch a record describes, for the workdir it was read from. A record of the first format
        (absolute paths, the workdir included) is rebased from the workdir it names onto ``workdir``."""
        record = dict(record)
        old = record.pop("workdir", None)
        record.pop("format", None)
        if old is not None:  # first format: absolute paths under the workdir of the time
            for key in ("storage_path", "data_path"):
                record[key] = inside(record[key], Path(old))
            if record["tracking_uri"] == mlruns.sqlite_uri(Path(old)):
                record["tracking_uri"] = None
        record["tracking_uri"] = record["tracking_uri"] or mlruns.sqlite_uri(workdir)
        for key in ("storage_path", "data_path"):
            record[key] = str(workdir / record[key])  # an absolute path stays what it is
        return cls(workdir=str(workdir), **record)


#: ``studies/NAME.json``'s format: 2 records paths relative to the workdir.
LAUNCH_FORMAT = 2


def inside(path: str | os.PathLike, workdir: Path) -> str:
    """``path`` relative to ``workdir`` when it lies inside it, else as given (absolute)."""
    p = Path(path)
    try:
        return str(p.relative_to(workdir)) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


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
    stopped: int = 0  # runs a search's scheduler stopped early (ended, not killed)
    interrupted: bool = False  # a stop signal (Ctrl+C, SIGTERM) ended the fit
    analysis: object | None = None  # hybridlens.analysis.report.AnalysisResult, once analysed

    @property
    def ok(self) -> bool:
        """Every cell ended, none failed (a diverged cell is a result of training, not a failure: exit
        code 0), no interruption."""
        return self.complete and not self.failures and not self.interrupted

    def last_line(self, analysis_dir: Path | None = None) -> str:
        """The driver's last line: how the launch ended and what to do next (``analysis_dir``: where
        the analysis wrote its tables and figures, None when it did not run)."""
        n, w = _shell_arg(self.launch.name), _shell_arg(self.launch.workdir)
        resume = f"'hybridlens resume {w} --study {n}'"
        counts = f"{self.finished} finished, {self.failed} failed, {self.diverged} diverged, {self.killed} killed"
        counts += f", {self.stopped} stopped by the scheduler" if self.stopped else ""
        if self.interrupted or not self.complete:
            return f"study {n} interrupted: {counts}; resume with {resume}"
        if self.failures:
            cell, why = next(iter(self.failures.items()))
            more = f" (and {len(self.failures) - 1} more)" if len(self.failures) > 1 else ""
            return (
                f"study {n} ended with {len(self.failures)} failed cell(s): {counts}; {cell}: {why}{more}; "
                f"retry them with {resume}"
            )
        analysis = (
            f"tables and figures in {analysis_dir}"
            if analysis_dir
            else f"analyse with 'hybridlens analyze --study {n} --workdir {w}'"
        )
        return f"study {n} complete: {counts}; next: 'hybridlens runs --workdir {w} --study {n}', 'hybridlens ui --workdir {w}', {analysis}"


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
    if study is not None:
        check_study_name(study)
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
    record = json.loads(state_path(workdir, study).read_text())
    if study_name_problem(study) or record.get("name") != study:  # its name builds paths: a lock, the config
        raise UserError(
            f"{state_path(workdir, study)} does not record a launch of study {study!r} (it names {record.get('name')!r}); "
            "restore the file from the study's parent run, or start the study again"
        )
    return Launch.from_record(record, workdir.resolve())


def _shell_arg(text: str) -> str:
    """``text`` as one shell word inside a line that quotes whole commands in '...': as it is when the
    shell leaves it alone, else in double quotes (a workdir with a space stays copy-pasteable)."""
    import shlex

    if shlex.quote(text) == text:
        return text
    escaped = "".join("\\" + ch if ch in '\\"$`' else ch for ch in text)
    return f'"{escaped}"'


def lock_path(workdir: Path, name: str) -> Path:
    return workdir / "studies" / f"{name}.lock"


class StudyLock(FileLock):
    """One process at a time per study and workdir: an exclusive ``flock`` on ``studies/NAME.lock``
    (:class:`~hybridlens.analysis.locks.FileLock`), taken before anything touches MLflow or Ray and held
    until the command ends."""

    def __init__(self, workdir: Path, name: str):
        super().__init__(lock_path(workdir, name), f"study {name!r}")
        self.name = name


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


def prepare_store(workdir: Path, uri: str, echo: Echo | None = None) -> None:
    """Before a command uses a workdir's store: one line if it is damaged, and its artifact locations
    pointed at this workdir if it was moved or copied (:func:`~hybridlens.analysis.runs.relocate_store`).
    A workdir this user cannot write (a colleague's, a read-only mount) is left as it is, with a line
    saying where its artifacts are still looked for."""
    mlruns.check_store(uri)
    if uri != mlruns.sqlite_uri(workdir):
        return
    stale = mlruns.stale_artifact_roots(workdir)
    if not stale:
        return
    if not (os.access(workdir, os.W_OK) and os.access(workdir / "mlflow.db", os.W_OK)):
        (echo or _stderr)(
            f"note: {workdir} is read-only, so its store still looks for artifacts in {', '.join(stale)} "
            "(a writable copy of the workdir reads its own)"
        )
        return
    with store_init_lock(workdir):
        mlruns.relocate_store(workdir)


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def mark_unfinished(c, runs, status: str = "KILLED") -> list[str]:
    """Set ``status`` on every run in ``runs`` still RUNNING (or SCHEDULED); return their ids."""
    marked = []
    for r in runs:
        if r.info.status in ("RUNNING", "SCHEDULED"):
            c.set_tag(r.info.run_id, layout.TAG_OUTCOME, status.lower())
            c.set_terminated(r.info.run_id, status)
            marked.append(r.info.run_id)
    return marked


def close_launch(
    launch: Launch, cfg: "StudyConfig", echo: Echo, *, errored: list[tuple[str, str]] | None = None
) -> LaunchSummary:
    """After Ray returns (finished or interrupted): mark child runs left RUNNING as KILLED, and end the
    parent FINISHED when every grid cell has a finished, failed or diverged run, else KILLED.
    ``errored``: ``(cell name, error)`` of every cell of the trials Ray Tune gave up on
    (:func:`.fit.errored_cells`); those without a run of their own count as failed cells (a trial that
    failed before it opened its runs, every attempt)."""
    from mlflow.entities import RunTag

    c = mlruns.client(launch.tracking_uri)
    runs = mlruns.child_runs(c, launch.experiment_id, launch.parent_run_id)
    killed = set(mark_unfinished(c, runs, "KILLED"))
    status = {r.info.run_id: "KILLED" if r.info.run_id in killed else r.info.status for r in runs}
    stopped = {r.info.run_id for r in runs if r.data.tags.get(layout.TAG_OUTCOME) == layout.OUTCOME_STOPPED}
    ended_runs = [r for r in runs if status[r.info.run_id] in ("FINISHED", "FAILED") or r.info.run_id in stopped]
    with_runs = {r.data.tags.get(layout.TAG_RUN_NAME) for r in runs}  # any status: a killed run is no failure
    runless = [(cell, why) for cell, why in (errored or []) if cell not in with_runs]  # Ray gave up: ended, runless
    if cfg.search is None:
        complete = {layout.cell_name(**cell) for cell in cfg.cells()} <= {
            r.data.tags.get(layout.TAG_RUN_NAME) for r in ended_runs
        } | {cell for cell, _ in runless}
    else:  # each trial draws its own values: its cells' names are known only once it ran; a retried
        # trial has a run per attempt (one failed, one finished): count trials' cells, not runs
        ended_cells = {(r.data.tags.get(layout.TAG_TRIAL), r.data.tags.get(layout.TAG_RUN_NAME)) for r in ended_runs}
        complete = len(ended_cells) + len(runless) >= cfg.num_cells() * cfg.num_samples()
    counts = {s.lower(): sum(v == s for v in status.values()) for s in ("FINISHED", "FAILED", "KILLED")}
    counts["diverged"] = sum(r.data.tags.get(layout.TAG_OUTCOME) == "diverged" for r in runs)
    counts["failed"] -= counts["diverged"]  # a diverged run ends FAILED in MLflow, but it is a result, not a failure
    counts["stopped"] = len(stopped)
    counts["killed"] -= len(stopped)  # KILLED in MLflow, but ended by the search's scheduler
    failures = {
        r.data.tags.get(layout.TAG_RUN_NAME, r.info.run_id): r.data.tags.get(layout.TAG_ERROR, "see its MLflow run")
        for r in runs
        if status[r.info.run_id] == "FAILED" and r.data.tags.get(layout.TAG_OUTCOME) != "diverged"
    }
    failures |= dict(runless)
    counts["failed"] += len(runless)
    tags = [RunTag(f"hybridlens.runs_{k}", str(v)) for k, v in counts.items()]
    tags.append(RunTag(layout.TAG_OUTCOME, "finished" if complete else "killed"))
    c.log_batch(launch.parent_run_id, tags=tags)
    c.set_terminated(launch.parent_run_id, "FINISHED" if complete else "KILLED")
    if killed:
        echo(f"marked {len(killed)} interrupted trial run(s) KILLED")
    return LaunchSummary(launch, complete, **counts, failures=failures)


def reconcile(workdir: str | Path, study: str | None = None, *, echo: Echo = print) -> list[str]:
    """Mark runs left RUNNING by a killed (SIGKILL) driver as KILLED; refuses while the driver lives."""
    launch = load_launch(workdir, study)
    check_not_running(Path(launch.workdir), launch.name)
    prepare_store(Path(launch.workdir), launch.tracking_uri)
    c = mlruns.client(launch.tracking_uri)
    runs = mlruns.child_runs(c, launch.experiment_id, launch.parent_run_id) + [c.get_run(launch.parent_run_id)]
    marked = mark_unfinished(c, runs, "KILLED")
    echo(f"marked {len(marked)} run(s) KILLED" if marked else "no run was left RUNNING")
    return marked
