"""The study driver: validate, prepare data and MLflow, run the Ray Tune grid, close the books.

A working directory (default ``./hybridlens-work``) holds everything a study needs on one machine::

    mlflow.db            MLflow tracking store (SQLite), unless --tracking-uri points at a server
    mlartifacts/         MLflow artifacts of runs tracked in mlflow.db
    ray/                 Ray Tune experiment folders (checkpoints, state), unless --storage-path
    data/                generated datasets
    studies/NAME.json    the latest launch of study NAME (what `resume` needs)
    studies/NAME.yaml    its resolved config
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import yaml

from hybridlens.study import tracking
from hybridlens.study.config import StudyConfig, load_config
from hybridlens.study.trainable import train_trial, trial_name

DEFAULT_WORKDIR = "hybridlens-work"
# Ray Tune's legacy reporter honours verbose=0 (the new one prints a header box and footer regardless);
# the progress callback below prints one line per trial instead.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
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

    @property
    def experiment_path(self) -> str:
        return str(Path(self.storage_path) / self.ray_experiment)


# ------------------------------------------------------------------------------------- pre-flight


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast if a Ray cluster address does not answer (``auto`` is left to Ray)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ValueError(f"Ray cluster at {address} is unreachable ({e.strerror or e}); start it with 'ray start --head' or fix --ray-address") from None


def check_resources(cfg: StudyConfig, ray_address: str | None, *, smoke_test: bool = False, echo: Echo = print) -> StudyConfig:
    """Fail fast on a per-trial request that a local Ray could never schedule (Ray would wait
    silently). ``--smoke-test`` on a machine without a GPU runs on the CPU instead (one line says so).
    A cluster (``ray_address``) is left to Ray: its nodes may have what this machine lacks."""
    if ray_address:
        return cfg
    import torch

    gpus = torch.cuda.device_count()
    cpus = cfg.ray.num_cpus or os.cpu_count() or 1
    res = cfg.resources
    if res.gpu > 0 and gpus == 0 and smoke_test:
        echo(f"no GPU on this machine: the smoke test runs on the CPU (resources.gpu {res.gpu:g} -> 0)")
        return cfg.model_copy(update={"resources": res.model_copy(update={"gpu": 0.0})})
    if res.gpu > gpus:
        have = "has no GPU" if gpus == 0 else f"has {gpus} GPU(s)"
        raise ValueError(f"resources.gpu is {res.gpu:g} per trial but this machine {have}; set resources.gpu: 0 (CPU) or run on a cluster with --ray-address")
    if res.cpu > cpus:
        raise ValueError(f"resources.cpu is {res.cpu:g} per trial but the local Ray has {cpus} CPU(s); lower resources.cpu (or raise ray.num_cpus)")
    return cfg


def default_data_path(cfg: StudyConfig, workdir: Path) -> Path:
    from hybridlens.study.simulate import TASK1_DEFAULT_NUM_SEQS, TASK2_DEFAULT_NUM_SEQS

    n = cfg.data.num_seqs or (TASK1_DEFAULT_NUM_SEQS if cfg.task == "task1" else TASK2_DEFAULT_NUM_SEQS)
    seed = cfg.data.seed if cfg.data.seed is not None else (33 if cfg.task == "task1" else 22)
    extra = f"-m{cfg.data.max_motifs}" if cfg.task == "task2" else ""
    extra += "-bgcode" if cfg.data.background == "code" else ""
    return workdir / "data" / f"{cfg.task}-seed{seed}-n{n}{extra}.h5"


def check_data_path(cfg: StudyConfig) -> Path | None:
    """The config's explicit dataset path, checked (exists, right task); None when generated."""
    from hybridlens.analysis.datasets import load_dataset

    if not cfg.data.path:
        return None
    path = Path(cfg.data.path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} (data.path) does not exist; generate it with 'hybridlens data {cfg.task} --out {path}' or drop data.path")
    n_out = load_dataset(path, splits=()).num_outputs
    expected = 12 if cfg.task == "task1" else 1
    if n_out != expected:
        raise ValueError(f"dataset {path} has {n_out} labels but {cfg.task} expects {expected}")
    return path


def ensure_dataset(cfg: StudyConfig, workdir: Path, echo: Echo) -> Path:
    """The generated dataset's absolute path (for a config without ``data.path``; check an explicit
    path with :func:`check_data_path`), generated with progress when missing."""
    from hybridlens.analysis.datasets import write_dataset
    from hybridlens.study.simulate import simulate

    path = default_data_path(cfg, workdir).resolve()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if cfg.data.num_seqs:
        kwargs["num_seqs"] = cfg.data.num_seqs
    if cfg.data.seed is not None:
        kwargs["seed"] = cfg.data.seed
    if cfg.task == "task2":
        kwargs.update(max_motifs=cfg.data.max_motifs, background=cfg.data.background)
    echo(f"generating {cfg.task} dataset -> {path}")
    step = [0]

    def progress(done: int, total: int) -> None:
        if done * 4 // total > step[0] or done == total:
            step[0] = done * 4 // total
            echo(f"  {done:,}/{total:,} sequences")

    write_dataset(path, simulate(cfg.task, progress=progress, **kwargs))
    return path


# ---------------------------------------------------------------------------------------- ray


def _init_ray(cfg: StudyConfig, address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="warning", configure_logging=True)
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            object_store_memory=cfg.ray.object_store_memory_mb * 1024 * 1024,
            **common,
        )


def _progress_callback(echo: Echo, total: int):
    from ray import tune

    class Progress(tune.Callback):
        """One concise line per trial start, end or error, and a heartbeat every minute."""

        def __init__(self):
            self.done = self.errors = 0
            self.last_beat = time.monotonic()
            self.started: dict[str, float] = {}

        def _name(self, trial) -> str:
            return trial_name(trial.config)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started[trial.trial_id] = time.monotonic()
            echo(f"  start   {self._name(trial)}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if time.monotonic() - self.last_beat > 60:
                self.last_beat = time.monotonic()
                running = sum(t.status == "RUNNING" for t in trials)
                echo(f"  ... {self.done}/{total} done, {running} running, {self.errors} errors; {self._name(trial)} at epoch {result.get('epoch')}")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            secs = time.monotonic() - self.started.get(trial.trial_id, time.monotonic())
            if r.get("diverged"):
                what = f"diverged at epoch {r.get('epoch')}"
            else:
                what = f"{r.get('epochs_trained', r.get('epoch'))} epochs, best epoch {r.get('best_epoch')}, test AUROC {r.get('test_auroc', float('nan')):.3f} AUPR {r.get('test_aupr', float('nan')):.3f}"
            echo(f"  [{self.done}/{total}] {self._name(trial)}: {what} ({secs:.0f} s)")

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            self.errors += 1
            echo(f"  [{self.done}/{total}] {self._name(trial)}: FAILED: {_last_error_line(trial)}")

    return Progress()


def _last_error_line(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1].strip()[:300] if lines else "see its MLflow run"


def _trainable(cfg: StudyConfig):
    from ray import tune

    res = {"cpu": cfg.resources.cpu}
    if cfg.resources.gpu:
        res["gpu"] = cfg.resources.gpu
    return tune.with_resources(train_trial, res)


def _run_config(cfg: StudyConfig, launch: Launch, echo: Echo, total: int):
    from ray import tune

    return tune.RunConfig(
        name=launch.ray_experiment,
        storage_path=launch.storage_path,
        failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        verbose=0,
        callbacks=[_progress_callback(echo, total)],
    )


class _quiet_ray_tune:
    """Ray Tune logs every trial error's traceback at ERROR; the progress callback prints one line
    per error instead (the traceback stays in the trial's error file and its MLflow run)."""

    def __enter__(self):
        import logging

        self.loggers = [logging.getLogger(n) for n in ("ray.tune", "ray.tune.tune", "ray.tune.execution.tune_controller")]
        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        for lg, lvl in zip(self.loggers, self.levels):
            lg.setLevel(lvl)


class _SigtermAsSigint:
    """Ray Tune stops gracefully on SIGINT (saving the experiment state); give SIGTERM the same path."""

    def __enter__(self):
        self.prev = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.prev)


# ------------------------------------------------------------------------------------ launches


def _state_path(workdir: Path, name: str) -> Path:
    return workdir / "studies" / f"{name}.json"


def _pid_path(workdir: Path, name: str) -> Path:
    return workdir / "studies" / f"{name}.pid"


def load_launch(workdir: str | Path, study: str | None = None) -> Launch:
    """The latest launch recorded in ``workdir`` (of ``study``, or of its only study)."""
    workdir = Path(workdir)
    folder = workdir / "studies"
    names = sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []
    if not names:
        raise FileNotFoundError(f"{workdir} holds no study (no {folder}/NAME.json); run 'hybridlens study CONFIG --workdir {workdir}' first")
    if study is None:
        if len(names) > 1:
            raise ValueError(f"{workdir} holds several studies ({', '.join(names)}); pick one with --study")
        study = names[0]
    if study not in names:
        raise ValueError(f"unknown study {study!r} in {workdir}; choose one of {', '.join(names)}")
    return Launch(**json.loads(_state_path(workdir, study).read_text()))


def _check_not_running(workdir: Path, name: str) -> None:
    pid_file = _pid_path(workdir, name)
    if pid_file.is_file():
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            return
        except PermissionError:
            pass
        raise ValueError(f"study {name!r} is being run by process {pid}; wait for it or stop it first")


def _expected_cells(cfg: StudyConfig) -> set[str]:
    return {trial_name(c) for c in cfg.cells()}


def close_launch(launch: Launch, cfg: StudyConfig, echo: Echo) -> dict:
    """After Ray returns (finished or interrupted): mark child runs left RUNNING as KILLED, and end the
    parent FINISHED when every grid cell has a finished, failed or diverged run, else KILLED."""
    c = tracking.client(launch.tracking_uri)
    runs = tracking.child_runs(c, launch.experiment_id, launch.parent_run_id)
    killed = set(tracking.mark_unfinished(c, runs, "KILLED"))
    status = {r.info.run_id: "KILLED" if r.info.run_id in killed else r.info.status for r in runs}
    ended = {r.data.tags.get("mlflow.runName") for r in runs if status[r.info.run_id] in ("FINISHED", "FAILED")}
    complete = _expected_cells(cfg) <= ended
    counts = {s: sum(v == s for v in status.values()) for s in ("FINISHED", "FAILED", "KILLED")}
    counts["diverged"] = sum(r.data.tags.get(tracking.TAG_OUTCOME) == "diverged" for r in runs)
    from mlflow.entities import RunTag

    c.log_batch(launch.parent_run_id, tags=[RunTag(f"hybridlens.runs_{k.lower()}", str(v)) for k, v in counts.items()])
    c.set_terminated(launch.parent_run_id, "FINISHED" if complete else "KILLED")
    if killed:
        echo(f"marked {len(killed)} interrupted trial run(s) KILLED")
    return {"complete": complete, **counts}


def run_study(
    config_path: str | Path,
    *,
    workdir: str | Path = DEFAULT_WORKDIR,
    ray_address: str | None = None,
    tracking_uri: str | None = None,
    storage_path: str | Path | None = None,
    smoke_test: bool = False,
    analyze: bool = True,
    echo: Echo = print,
) -> dict:
    """Run a study end to end (then its analysis, unless ``analyze=False``); returns the summary of
    :func:`close_launch` plus the launch (and the analysis result under ``"analysis"``)."""
    cfg = load_config(config_path)
    if smoke_test:
        cfg = cfg.smoke()
    cfg = check_resources(cfg, ray_address, smoke_test=smoke_test, echo=echo)
    workdir = Path(workdir).expanduser().resolve()
    if not workdir.parent.is_dir():
        raise FileNotFoundError(f"cannot create workdir {workdir}: folder {workdir.parent} does not exist")
    uri = tracking_uri or tracking.sqlite_uri(workdir)
    if tracking_uri:
        tracking.check_tracking_uri(uri)
    if ray_address:
        check_ray_address(ray_address)
    explicit_data = check_data_path(cfg)
    workdir.mkdir(exist_ok=True)
    (workdir / "studies").mkdir(exist_ok=True)
    _check_not_running(workdir, cfg.name)
    data_path = explicit_data or ensure_dataset(cfg, workdir, echo)

    c = tracking.client(uri)
    artifact_root = (workdir / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
    experiment_id = tracking.get_or_create_experiment(c, cfg.name, artifact_root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = tracking.create_parent_run(c, experiment_id, cfg.name, cfg.config_hash(), run_name=f"{cfg.name}-{stamp}")
    launch = Launch(
        name=cfg.name,
        workdir=str(workdir),
        config_path=str(Path(config_path).resolve()),
        tracking_uri=uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        storage_path=str(Path(storage_path).expanduser().resolve() if storage_path else workdir / "ray"),
        ray_experiment=f"{cfg.name}-{stamp}",
        data_path=str(data_path),
        ray_address=ray_address,
        smoke_test=smoke_test,
    )
    resolved_yaml = yaml.safe_dump(cfg.resolved(), sort_keys=False)
    _state_path(workdir, cfg.name).write_text(json.dumps(asdict(launch), indent=2))
    (workdir / "studies" / f"{cfg.name}.yaml").write_text(resolved_yaml)
    c.log_text(parent, resolved_yaml, "config/study.yaml")
    _log_study_params(c, parent, cfg, data_path)
    cells = cfg.cells()
    echo(f"study {cfg.name}: {len(cells)} trials ({len(cfg.grid.architecture_names())} architectures x {len(cfg.grid.activations)} activations x {len(cfg.grid.seeds)} seeds), {cfg.train.epochs} epochs max")
    echo(f"  tracking {uri} (experiment {experiment_id}, parent run {parent})")
    return _finish(_fit(launch, cfg, echo, restore=False), cfg, analyze, echo)


def _log_study_params(c, parent: str, cfg: StudyConfig, data_path: Path) -> None:
    from mlflow.entities import Param

    from hybridlens.analysis.datasets import load_dataset

    ds = load_dataset(data_path, splits=())
    params = {
        "task": cfg.task,
        "architectures": ",".join(cfg.grid.architecture_names()),
        "activations": ",".join(cfg.grid.activations),
        "seeds": ",".join(map(str, cfg.grid.seeds)),
        "epochs": cfg.train.epochs,
        "monitor": cfg.train.monitor,
        "top_k": cfg.analysis.top_k,
        "rank_on": cfg.analysis.rank_on,
        "ground_truth": cfg.analysis.ground_truth,
        "data_path": str(data_path),
        "dataset_hash": ds.content_hash,
    }
    c.log_batch(parent, params=[Param(k, str(v)) for k, v in params.items()])
    c.set_tag(parent, tracking.TAG_DATASET_HASH, ds.content_hash)


def _fit(launch: Launch, cfg: StudyConfig, echo: Echo, *, restore: bool) -> dict:
    from ray import tune

    workdir = Path(launch.workdir)
    pid_file = _pid_path(workdir, cfg.name)
    pid_file.write_text(str(os.getpid()))
    try:
        _init_ray(cfg, launch.ray_address)
        total = len(cfg.cells())
        if restore:
            tuner = tune.Tuner.restore(launch.experiment_path, trainable=_trainable(cfg), resume_unfinished=True, resume_errored=False)
        else:
            param_space = {
                "architecture": tune.grid_search(cfg.grid.architecture_names()),
                "activation": tune.grid_search(list(cfg.grid.activations)),
                "seed": tune.grid_search(list(cfg.grid.seeds)),
                "study": cfg.model_dump(mode="json"),
                "data_path": launch.data_path,
                "workdir": launch.workdir,
                "tracking": {
                    "uri": launch.tracking_uri,
                    "experiment_id": launch.experiment_id,
                    "parent_run_id": launch.parent_run_id,
                },
            }
            tuner = tune.Tuner(
                _trainable(cfg),
                param_space=param_space,
                tune_config=tune.TuneConfig(max_concurrent_trials=cfg.resources.max_concurrent, reuse_actors=True),
                run_config=_run_config(cfg, launch, echo, total),
            )
        with _SigtermAsSigint(), _quiet_ray_tune():
            tuner.fit()
    finally:
        summary = close_launch(launch, cfg, echo)
        pid_file.unlink(missing_ok=True)
    state = "complete" if summary["complete"] else "interrupted: resume with 'hybridlens resume " + launch.workdir + f" --study {cfg.name}'"
    echo(f"study {cfg.name} {state}: {summary['FINISHED']} finished, {summary['FAILED']} failed ({summary['diverged']} diverged), {summary['KILLED']} killed")
    return {**summary, "launch": launch}


def _finish(summary: dict, cfg: StudyConfig, analyze: bool, echo: Echo) -> dict:
    """Run the analysis on the launch's finished runs (tables and figures in WORKDIR/analysis/NAME).
    An analysis that cannot run (no finished run, say) is reported, not raised: the study stands."""
    if not analyze:
        return summary
    from hybridlens.analysis.report import analyze_study

    launch: Launch = summary["launch"]
    try:
        summary["analysis"] = analyze_study(
            launch.tracking_uri,
            cfg.name,
            parent_run_id=launch.parent_run_id,
            task=cfg.task,
            top_k=cfg.analysis.top_k,
            rank_on=cfg.analysis.rank_on,
            ground_truth=cfg.analysis.ground_truth,
            out_dir=Path(launch.workdir) / "analysis" / cfg.name,
            echo=echo,
        )
    except ValueError as e:
        echo(f"analysis not run: {e}")
    return summary


def resume_study(workdir: str | Path, study: str | None = None, *, analyze: bool = True, echo: Echo = print) -> dict:
    """Resume the latest launch of a study with ``Tuner.restore``: unfinished trials continue from
    their checkpoints in their own child runs; finished trials are not rerun."""
    launch = load_launch(workdir, study)
    cfg = load_config(launch.config_path)
    if launch.smoke_test:
        cfg = cfg.smoke()
    cfg = check_resources(cfg, launch.ray_address, smoke_test=launch.smoke_test, echo=echo)
    _check_not_running(Path(launch.workdir), cfg.name)
    tracking.check_tracking_uri(launch.tracking_uri)
    if launch.ray_address:
        check_ray_address(launch.ray_address)
    if not Path(launch.experiment_path, "tuner.pkl").is_file():
        raise FileNotFoundError(f"no Ray Tune state at {launch.experiment_path}; the study cannot be resumed (start it again)")
    c = tracking.client(launch.tracking_uri)
    c.update_run(launch.parent_run_id, status="RUNNING")
    echo(f"resuming study {cfg.name} from {launch.experiment_path}")
    return _finish(_fit(launch, cfg, echo, restore=True), cfg, analyze, echo)


def reconcile(workdir: str | Path, study: str | None = None, *, echo: Echo = print) -> list[str]:
    """Mark runs left RUNNING by a killed (SIGKILL) driver as KILLED; refuses while the driver lives."""
    launch = load_launch(workdir, study)
    _check_not_running(Path(launch.workdir), launch.name)
    c = tracking.client(launch.tracking_uri)
    runs = tracking.child_runs(c, launch.experiment_id, launch.parent_run_id) + [c.get_run(launch.parent_run_id)]
    marked = tracking.mark_unfinished(c, runs, "KILLED")
    echo(f"marked {len(marked)} run(s) KILLED" if marked else "no run was left RUNNING")
    return marked
