"""The Ray Tune fit of one launch: a local Ray or a cluster, the grid as a Tuner (or restored from its
state), one progress line per trial, SIGTERM handled as SIGINT, then the books closed in MLflow."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hybridlens.analysis import mlflow_layout as layout
from hybridlens.study.config import StudyConfig
from hybridlens.study.launches import Echo, Launch, LaunchSummary, close_launch, pid_path
from hybridlens.study.trainable import train_trial

# Ray Tune's legacy reporter honours verbose=0 (the new one prints a header box and footer regardless);
# the progress callback below prints one line per trial instead.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


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


def _pack_cells(trial) -> list[str]:
    return [layout.cell_name(**cell) for cell in trial.config["packs"][trial.config["pack"]]]


def _progress_callback(echo: Echo, total: int):
    from ray import tune

    class Progress(tune.Callback):
        """One concise line per trial start, one per grid cell that ends (a pack's cells end one by
        one), one per trial error, and a heartbeat every minute."""

        def __init__(self):
            self.ended: set[str] = set()
            self.errors = 0
            self.last_beat = time.monotonic()

        def on_trial_start(self, iteration, trials, trial, **info):
            echo(f"  start   {', '.join(_pack_cells(trial))}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            for name, what in result.get("events") or []:
                if result.get("tracking_retries"):
                    what += f"; MLflow logging retried {result['tracking_retries']} time(s)"
                if name not in self.ended:  # a retried pack may end a cell again
                    self.ended.add(name)
                    echo(f"  [{len(self.ended)}/{total}] {name}: {what}")
            if time.monotonic() - self.last_beat > 60:
                self.last_beat = time.monotonic()
                running = sum(t.status == "RUNNING" for t in trials)
                echo(
                    f"  ... {len(self.ended)}/{total} done, {running} trials running, {self.errors} errors; "
                    f"{_pack_cells(trial)[0]} at epoch {result.get('epoch')}"
                )

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errors += 1
            for name in _pack_cells(trial):
                if name not in self.ended:
                    self.ended.add(name)
                    echo(f"  [{len(self.ended)}/{total}] {name}: FAILED: {_last_error_line(trial)}")

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


def fit(launch: Launch, cfg: StudyConfig, echo: Echo, *, restore: bool) -> LaunchSummary:
    """Run (or, with ``restore``, resume) the launch's grid; close the books whatever happens."""
    from ray import tune

    pid_file = pid_path(Path(launch.workdir), cfg.name)
    pid_file.write_text(str(os.getpid()))
    try:
        _init_ray(cfg, launch.ray_address)
        total = len(cfg.cells())
        if restore:
            tuner = tune.Tuner.restore(
                launch.experiment_path, trainable=_trainable(cfg), resume_unfinished=True, resume_errored=False
            )
        else:
            packs = cfg.packs()
            param_space = {
                "pack": tune.grid_search(list(range(len(packs)))),
                "packs": packs,
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
    state = (
        "complete" if summary.complete else f"interrupted: resume with 'hybridlens resume {launch.workdir} --study {cfg.name}'"
    )
    echo(
        f"study {cfg.name} {state}: {summary.finished} finished, {summary.failed} failed ({summary.diverged} diverged), {summary.killed} killed"
    )
    return summary
