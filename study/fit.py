"""The Ray Tune fit of one launch: a local Ray or a cluster, the grid as a Tuner (or restored from its
state), one progress line per trial, SIGTERM handled as SIGINT, then the books closed in MLflow."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hybridlens.analysis import mlflow_layout as layout
from hybridlens.analysis.errors import UserError
from hybridlens.study import tracking
from hybridlens.study.config import StudyConfig
from hybridlens.study.launches import Echo, Launch, LaunchSummary, close_launch
from hybridlens.study.trainable import ENDED, MONITOR, Site, train_trial, trial_cells

# Ray Tune's legacy reporter honours verbose=0 (the new one prints a header box and footer regardless);
# the progress callback below prints one line per trial instead.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")


class _NoTokenNotice:
    """A logging filter for Ray's notice that it turned token authentication on for the local Ray it
    starts (Ray's default since 2.5x): a study's own loopback Ray needs no action from its user, and
    the notice landed in the middle of the study's output."""

    def filter(self, record) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _init_ray(cfg: StudyConfig, address: str | None) -> None:
    import logging

    import ray

    if ray.is_initialized():
        return
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_NoTokenNotice())
    common = dict(include_dashboard=False, log_to_driver=False, logging_level="warning", configure_logging=True)
    if address:
        ray.init(address=address, **common)
    else:
        ray.init(
            address="local",  # a Ray of our own: never join another process's local Ray on this machine
            num_cpus=cfg.ray.num_cpus,
            object_store_memory=cfg.ray.object_store_memory_mb * 1024 * 1024,
            **common,
        )


def _pack_cells(trial) -> list[str]:
    return [layout.cell_name(**cell) for cell in trial_cells(trial.config)]


#: The launch, echo and total of the fit this process drives, set by :func:`fit` before it builds or
#: restores the Tuner: a restored Tuner's progress callback binds to it (see ``Progress.__reduce__``).
_DRIVER: dict = {}


def _restored_progress(echo: Echo, total: int, launch: Launch | None):
    """The progress callback a ``tuner.pkl`` unpickles into: one bound to the launch this process drives
    now (a resume of a moved or copied workdir marks its runs in the copy), not the one it was saved
    with; where no launch is driven here (Ray Client, ``ray://``, builds the Tuner in a remote actor),
    the one it was saved with."""
    if _DRIVER:
        return _progress_callback(_DRIVER["echo"], _DRIVER["total"], _DRIVER["launch"])
    return _progress_callback(echo, total, launch)


def _progress_callback(echo: Echo, total: int, launch: Launch | None):
    from ray import tune

    class Progress(tune.Callback):
        """One concise line per trial start, one per grid cell that ends (a pack's cells end one by
        one), one per trial error, and a heartbeat every minute."""

        def __reduce__(self):
            # Ray saves the run config (its callbacks too) in tuner.pkl and Tuner.restore gives back that
            # copy: pickled as is, it would hold the first launch's workdir and tracking URI
            return _restored_progress, (echo, total, self.launch)

        def __init__(self):
            self.launch = launch  # where stopped runs are marked
            self.ended: set[str] = set()
            self.noted: set[str] = set()
            self.errors = 0
            self.last_beat = time.monotonic()

        def on_trial_start(self, iteration, trials, trial, **info):
            echo(f"  start   {', '.join(_pack_cells(trial))}")

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("note") and trial.trial_id not in self.noted:  # a pack whose members train in turn
                self.noted.add(trial.trial_id)
                echo(f"  note    {', '.join(_pack_cells(trial))}: {result['note']}")
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

        def on_trial_complete(self, iteration, trials, trial, **info):
            if (trial.last_result or {}).get(ENDED) or self.launch is None:
                return
            # the scheduler stopped it (ASHA): its runs end KILLED, outcome stopped, never finished
            for name in _mark_stopped(self.launch, trial):
                if name not in self.ended:
                    self.ended.add(name)
                    echo(
                        f"  [{len(self.ended)}/{total}] {name}: stopped by the scheduler at epoch {trial.last_result.get('epoch')}"
                    )

        def on_trial_error(self, iteration, trials, trial, **info):
            self.errors += 1
            for name in _pack_cells(trial):
                if name not in self.ended:
                    self.ended.add(name)
                    echo(f"  [{len(self.ended)}/{total}] {name}: FAILED: {_last_error_line(trial)}")

    return Progress()


def _mark_stopped(launch: Launch, trial) -> list[str]:
    """End the child runs of a trial the scheduler stopped: KILLED, outcome ``stopped``, tagged with the
    epoch it reached; and record the trial as ended for a resume. Returns the cells' names."""
    from hybridlens.analysis import runs as mlruns
    from hybridlens.study.checkpoints import CheckpointStore

    c = mlruns.client(launch.tracking_uri)
    names = _pack_cells(trial)
    for name in names:
        run_id = tracking.find_trial_run(c, launch.experiment_id, launch.parent_run_id, trial.trial_id, name)
        if run_id is not None and c.get_run(run_id).info.status == "RUNNING":
            c.set_tag(run_id, layout.TAG_OUTCOME, layout.OUTCOME_STOPPED)
            c.set_tag(run_id, layout.TAG_STOPPED_AT, str(trial.last_result.get("epoch")))
            c.set_terminated(run_id, "KILLED")
    store = CheckpointStore(Path(launch.workdir) / "checkpoints" / launch.ray_experiment / trial.trial_id)
    store.finish({"epoch": trial.last_result.get("epoch"), "cells": names, "stopped_by_scheduler": True})
    return names


def _last_error_line(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()] if path else []
    except OSError:
        lines = []
    return lines[-1].strip()[:300] if lines else "see its MLflow run"


def _trainable(cfg: StudyConfig, launch: Launch):
    """The trainable with this launch's :class:`~hybridlens.study.trainable.Site` (where the study lives,
    resolved from the workdir the driver was given: a resume of a copied workdir trains and tracks in
    the copy) and its resources."""
    from ray import tune

    site = Site(
        workdir=launch.workdir,
        tracking_uri=launch.tracking_uri,
        experiment_id=launch.experiment_id,
        parent_run_id=launch.parent_run_id,
        data_path=launch.data_path,
        ray_experiment=launch.ray_experiment,
    )
    res = {"cpu": cfg.resources.cpu}
    if cfg.resources.gpu:
        res["gpu"] = cfg.resources.gpu
    return tune.with_resources(tune.with_parameters(train_trial, site=site), res)


def _run_config(cfg: StudyConfig, launch: Launch, echo: Echo, total: int):
    from ray import tune

    return tune.RunConfig(
        name=launch.ray_experiment,
        storage_path=launch.storage_path,
        failure_config=tune.FailureConfig(max_failures=cfg.ray.max_failures),
        verbose=0,
        callbacks=[_progress_callback(echo, total, launch)],
    )


def _sampler(kind: str, args: list):
    """Ray Tune's sampling function for a ``search.space`` entry."""
    from ray import tune

    if kind == "choice":
        return tune.choice(args)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*args)


def _tune_config(cfg: StudyConfig):
    """The grid (a grid search over the packs), or with ``search``: Ray Tune's own sampling, ``num_samples``
    draws per pack from a seeded generator, and ASHA when asked."""
    from ray import tune

    if cfg.search is None:
        return tune.TuneConfig(max_concurrent_trials=cfg.resources.max_concurrent, reuse_actors=True)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    scheduler = None
    if cfg.search.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric=MONITOR,
            mode=cfg.train_config(0).mode,
            max_t=cfg.train.epochs,
            grace_period=cfg.search.grace_period,
            reduction_factor=cfg.search.reduction_factor,
        )
    return tune.TuneConfig(
        max_concurrent_trials=cfg.resources.max_concurrent,
        reuse_actors=True,
        num_samples=cfg.search.num_samples,
        search_alg=BasicVariantGenerator(random_state=cfg.search.seed),
        scheduler=scheduler,
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


class _Signals:
    """Around ``Tuner.fit``: SIGTERM takes Ray Tune's graceful SIGINT path (the experiment state is
    saved), and both handlers are put back afterwards. Ray Tune installs its own SIGINT handler during
    ``fit`` and leaves it installed when no signal came; left there, it would swallow the first Ctrl+C
    of the analysis that follows. :attr:`interrupted` says whether a stop signal came during ``fit``."""

    def __enter__(self) -> "_Signals":
        self.term = False
        self.prev_int = signal.getsignal(signal.SIGINT)
        self.prev_term = signal.getsignal(signal.SIGTERM)

        def on_term(*_):
            self.term = True
            signal.raise_signal(signal.SIGINT)

        def on_int(*_):  # what Ray Tune puts back after it took a first SIGINT: a second one stops at once
            raise KeyboardInterrupt

        self.on_int = on_int
        signal.signal(signal.SIGINT, on_int)
        signal.signal(signal.SIGTERM, on_term)
        return self

    def __exit__(self, *exc) -> None:
        # Ray Tune restores the handler it found (ours) once it has taken a SIGINT
        self.interrupted = self.term or signal.getsignal(signal.SIGINT) is self.on_int
        signal.signal(signal.SIGINT, self.prev_int)
        signal.signal(signal.SIGTERM, self.prev_term)


def errored_cells(results) -> list[tuple[str, str]]:
    """``(cell name, the error's last line)`` for every cell of every trial Ray Tune gave up on (its error
    after its last retry): a trial that failed before it could open its cells' runs leaves nothing else
    that says so."""
    out = []
    for result in results:
        if result.error is None or not result.config:
            continue
        lines = [ln for ln in str(result.error).strip().splitlines() if ln.strip()]
        why = (lines[-1] if lines else type(result.error).__name__)[:300]
        out += [(layout.cell_name(**cell), why) for cell in trial_cells(result.config)]
    return out


def fit(launch: Launch, cfg: StudyConfig, echo: Echo, *, restore: bool, retry_failed: bool = True) -> LaunchSummary:
    """Run (or, with ``restore``, resume) the launch's grid; close the books whatever happens. A resume
    retries the trials that failed (from their last checkpoint, in their own child runs) unless
    ``retry_failed`` is false."""
    from ray import tune

    signals = _Signals()
    errored: list[tuple[str, str]] = []  # what Ray Tune gave up on, once fit returns
    try:
        _init_ray(cfg, launch.ray_address)
        total = cfg.num_cells() * cfg.num_samples()
        _DRIVER.update(echo=echo, total=total, launch=launch)
        if restore:
            tuner = tune.Tuner.restore(
                launch.experiment_path, trainable=_trainable(cfg, launch), resume_unfinished=True, resume_errored=retry_failed
            )
        else:
            packs = cfg.packs()
            param_space = {
                "pack": tune.grid_search(list(range(len(packs)))),
                "packs": packs,
                "study": cfg.model_dump(mode="json"),
            }
            if cfg.search is not None:  # Ray Tune draws each trial's values
                param_space["sample"] = {k: _sampler(*next(iter(d.items()))) for k, d in cfg.search.space.items()}
            tuner = tune.Tuner(
                _trainable(cfg, launch),
                param_space=param_space,
                tune_config=_tune_config(cfg),
                run_config=_run_config(cfg, launch, echo, total),
            )
        with signals, _quiet_ray_tune():
            errored = errored_cells(tuner.fit())
    finally:
        _DRIVER.clear()
        try:
            summary = close_launch(launch, cfg, echo, errored=errored)
        except Exception as e:
            if not tracking.unreachable(e):
                raise
            raise UserError(
                f"study {cfg.name} stopped and its runs could not be closed: the tracking server {launch.tracking_uri} is "
                f"unreachable; when it is back, finish the study with 'hybridlens resume {launch.workdir} --study {cfg.name}' "
                f"(or mark its runs with 'hybridlens reconcile --workdir {launch.workdir} --study {cfg.name}')"
            ) from None
    summary.interrupted = getattr(signals, "interrupted", False)
    return summary
