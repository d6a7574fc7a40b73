"""The study driver: validate, prepare data and MLflow, run the Ray Tune grid, close the books, analyse.

The pieces live beside it: pre-flight checks and data (:mod:`~hybridlens.study.preflight`), launch
bookkeeping (:mod:`~hybridlens.study.launches`), the Ray Tune fit (:mod:`~hybridlens.study.fit`).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import yaml

from hybridlens.analysis import mlflow_layout as layout
from hybridlens.analysis import runs as mlruns
from hybridlens.analysis.errors import UserError
from hybridlens.study import tracking
from hybridlens.study.config import StudyConfig, load_config, parse_config, settings_from_resolved
from hybridlens.study.fit import fit
from hybridlens.study.launches import (
    DEFAULT_WORKDIR,
    Echo,
    Launch,
    LaunchSummary,
    StudyLock,
    inside,
    load_launch,
    prepare_store,
    resolved_config_path,
    store_init_lock,
)
from hybridlens.study.preflight import (
    check_data_path,
    check_grid_size,
    check_ray_address,
    check_resources,
    grid_size_line,
    prepare_dataset,
)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_study(
    config_path: str | Path,
    *,
    workdir: str | Path = DEFAULT_WORKDIR,
    ray_address: str | None = None,
    tracking_uri: str | None = None,
    storage_path: str | Path | None = None,
    smoke_test: bool = False,
    analyze: bool = True,
    yes: bool = False,
    echo: Echo = print,
) -> LaunchSummary:
    """Run a study end to end (then its analysis, unless ``analyze=False``). ``yes`` confirms a grid
    above :data:`~hybridlens.study.preflight.MAX_CELLS_UNCONFIRMED` cells."""
    cfg = load_config(config_path)
    if smoke_test:
        cfg = cfg.smoke()
    check_grid_size(cfg, yes=yes)
    cfg = check_resources(cfg, ray_address, smoke_test=smoke_test, echo=echo)
    workdir = Path(workdir).expanduser().resolve()
    if not workdir.parent.is_dir():
        raise UserError(f"cannot create workdir {workdir}: folder {workdir.parent} does not exist")
    if storage_path and "://" in str(storage_path):
        raise UserError(
            f"--storage-path {storage_path}: give a folder every node mounts (NFS, say); "
            "cloud URIs are not supported, as trials keep their checkpoints in the workdir"
        )
    uri = tracking_uri or mlruns.sqlite_uri(workdir)
    if tracking_uri:
        mlruns.check_tracking_uri(uri)
    if ray_address:
        check_ray_address(ray_address)
    explicit_data = check_data_path(cfg)
    if workdir.exists() and not os.access(workdir, os.W_OK):
        raise UserError(f"workdir {workdir} is read-only; fix its permissions or pass another --workdir")
    _check_analysis_out(workdir, cfg.name, analyze)
    workdir.mkdir(exist_ok=True)
    (workdir / "studies").mkdir(exist_ok=True)
    with StudyLock(workdir, cfg.name):  # one launch of a study at a time, before MLflow and Ray
        prepare_store(workdir, uri)
        echo(grid_size_line(cfg))
        for note in cfg.axis_notes():
            echo(note)
        data_path = prepare_dataset(cfg, workdir, explicit_data, echo)
        mlruns.check_writable(uri)
        try:
            launch = _new_launch(cfg, config_path, workdir, uri, storage_path, data_path, ray_address, smoke_test, echo)
        except Exception as e:
            problem = mlruns.store_problem(e, uri)
            if problem is None:
                raise
            raise problem from None
        return _analyze(fit(launch, cfg, echo, restore=False), cfg, analyze, echo)


def _new_launch(
    cfg, config_path, workdir: Path, uri: str, storage_path, data_path: Path, ray_address, smoke_test, echo
) -> Launch:
    """Create the study's experiment and parent run, and record the launch in ``studies/``."""
    if uri.startswith("sqlite:"):
        with store_init_lock(workdir):
            c = mlruns.client(uri)
            experiment_id = tracking.get_or_create_experiment(
                c, cfg.name, (workdir / "mlartifacts").as_uri(), beside_store=uri == mlruns.sqlite_uri(workdir)
            )
    else:
        c = mlruns.client(uri)
        experiment_id = tracking.get_or_create_experiment(c, cfg.name, None)
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
        config_sha256=_sha256(Path(config_path)),
    )
    resolved_yaml = yaml.safe_dump(cfg.resolved(), sort_keys=False)
    launch.save()
    resolved_config_path(workdir, cfg.name).write_text(resolved_yaml)
    c.log_text(parent, resolved_yaml, "config/study.yaml")
    _log_study_params(c, parent, cfg, data_path, workdir)
    echo(f"  tracking {uri} (experiment {experiment_id}, parent run {parent})")
    return launch


def _ranges(values: list[int]) -> str:
    """Integers as comma-separated runs, ``[0, 1, 2, 5]`` -> ``"0-2,5"``: a long seed list stays one
    short, lossless MLflow param."""
    out: list[str] = []
    for v in values:
        if out and "-" not in out[-1][1:] and int(out[-1]) + 1 == v:
            out[-1] = f"{out[-1]}-{v}"
        elif out and "-" in out[-1][1:] and int(out[-1].rsplit("-", 1)[1]) + 1 == v:
            out[-1] = f"{out[-1].rsplit('-', 1)[0]}-{v}"
        else:
            out.append(str(v))
    return ",".join(out)


def _log_study_params(c, parent: str, cfg: StudyConfig, data_path: Path, workdir: Path) -> None:
    """The study's parameters and dataset on its parent run; the dataset's path relative to the workdir
    when inside it, as the trials record it (a moved or copied workdir stays right)."""
    from mlflow.entities import Param

    from hybridlens.analysis.datasets import load_dataset, split_sizes

    ds = load_dataset(data_path, splits=())
    recorded = inside(data_path, workdir)
    params = {
        "task": cfg.task,
        "architectures": ",".join(cfg.grid.architecture_names()),
        "activations": ",".join(cfg.grid.activations),
        "seeds": _ranges(cfg.grid.seeds),
        "epochs": cfg.train.epochs,
        "monitor": cfg.train.monitor,
        "top_k": cfg.analysis.top_k,
        "rank_on": cfg.analysis.rank_on,
        "ground_truth": cfg.analysis.ground_truth,
        "data_path": recorded,
        "dataset_hash": ds.content_hash,
    }
    c.log_batch(parent, params=[Param(k, str(v)) for k, v in params.items()])
    c.set_tag(parent, layout.TAG_DATASET_HASH, ds.content_hash)
    c.log_inputs(parent, [tracking.dataset_input(recorded, ds.content_hash, split_sizes(data_path))])


def _analyze(summary: LaunchSummary, cfg: StudyConfig, analyze: bool, echo: Echo) -> LaunchSummary:
    """Run the analysis on the launch's finished runs (tables and figures in WORKDIR/analysis/NAME),
    then print the launch's last line. An analysis that cannot run (no finished run, say) is reported,
    not raised: the study stands."""
    if not analyze or summary.interrupted:
        echo(summary.last_line())
        return summary
    from hybridlens.analysis.report import analyze_study

    launch = summary.launch
    try:
        summary.analysis = analyze_study(
            launch.tracking_uri,
            cfg.name,
            parent_run_id=launch.parent_run_id,
            task=cfg.task,
            top_k=cfg.analysis.top_k,
            rank_on=cfg.analysis.rank_on,
            ground_truth=cfg.analysis.ground_truth,
            attributions=cfg.analysis.attributions,
            max_sequences=cfg.analysis.max_sequences,
            out_dir=analysis_dir(Path(launch.workdir), cfg.name),
            workdir=launch.workdir,
            echo=echo,
        )
    except UserError as e:
        echo(f"analysis not run: {e}")
    echo(summary.last_line(summary.analysis.out_dir if summary.analysis is not None else None))
    return summary


def analysis_dir(workdir: Path, name: str) -> Path:
    """Where a study's analysis goes: ``WORKDIR/analysis/NAME``."""
    return workdir / "analysis" / name


def recorded_config(launch: Launch, echo: Echo = print) -> StudyConfig:
    """The config the launch ran, from ``studies/NAME.yaml`` (smoke-shrunk and resource-checked as it
    was). The source YAML is never re-read: if it changed since the launch, one line says so."""
    path = launch.resolved_config_path
    if not path.is_file():
        raise UserError(f"{path} is missing: the launch's recorded config is needed to resume it (start the study again)")
    cfg = parse_config(settings_from_resolved(yaml.safe_load(path.read_text())), str(path))
    source = Path(launch.config_path)
    if launch.config_sha256 and (not source.is_file() or _sha256(source) != launch.config_sha256):
        echo(f"{source} changed since the launch; resuming with the recorded config {path}")
    return cfg


def _check_analysis_out(workdir: Path, name: str, analyze: bool) -> None:
    """Refuse an analysis folder the analysis may not replace before the training, not after it."""
    if analyze:
        from hybridlens.analysis.report import check_out_dir

        check_out_dir(analysis_dir(workdir, name), study=name, hint="move it away, or pass --no-analyze")


def resume_study(
    workdir: str | Path, study: str | None = None, *, analyze: bool = True, retry_failed: bool = True, echo: Echo = print
) -> LaunchSummary:
    """Resume the latest launch of a study with ``Tuner.restore``, with the config it was launched
    with: unfinished trials continue from their checkpoints in their own child runs, and so do failed
    trials unless ``retry_failed`` is false; finished trials are not rerun."""
    launch = load_launch(workdir, study)
    cfg = recorded_config(launch, echo)
    with StudyLock(Path(launch.workdir), cfg.name):
        mlruns.check_tracking_uri(launch.tracking_uri)
        prepare_store(Path(launch.workdir), launch.tracking_uri)
        if launch.ray_address:
            check_ray_address(launch.ray_address)
        _check_analysis_out(Path(launch.workdir), cfg.name, analyze)
        if not Path(launch.experiment_path, "tuner.pkl").is_file():
            raise UserError(f"no Ray Tune state at {launch.experiment_path}; the study cannot be resumed (start it again)")
        c = mlruns.client(launch.tracking_uri)
        c.update_run(launch.parent_run_id, status="RUNNING")
        if layout.TAG_OUTCOME in c.get_run(launch.parent_run_id).data.tags:  # killed, then reconciled: open again
            c.delete_tag(launch.parent_run_id, layout.TAG_OUTCOME)
        echo(f"resuming study {cfg.name} from {launch.experiment_path}")
        return _analyze(fit(launch, cfg, echo, restore=True, retry_failed=retry_failed), cfg, analyze, echo)
