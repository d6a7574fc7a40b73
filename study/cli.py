"""The ``hybridlens`` command.

Input a user can fix (a config, a path, a service address, a study name: :class:`UserError`) ends the
command with one line on stderr, ``hybridlens: error: ...``, and exit code 2. Any other exception is a
bug: it propagates with its traceback (exit code 1).
"""

from __future__ import annotations

import errno
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from hybridlens.analysis.attributions import DEFAULT_METHODS as DEFAULT_ATTRIBUTIONS
from hybridlens.analysis.attributions import MAX_SEQUENCES, METHODS
from hybridlens.analysis.errors import UserError
from hybridlens.analysis.tasks import TASKS
from hybridlens.study.launches import DEFAULT_WORKDIR

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions

app = typer.Typer(
    name="hybridlens",
    help="Architecture studies of CNN/BiLSTM/attention/transformer hybrids, with interpretability metrics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="Generate the synthetic datasets (HDF5).", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"hybridlens {version('hybridlens')}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version, is_eager=True),
) -> None:
    """Architecture studies of CNN/BiLSTM/attention/transformer hybrids, with interpretability metrics."""


def echo(msg: str) -> None:
    """Progress output, on stderr so stdout stays parseable."""
    typer.echo(msg, err=True)


def _progress(label: str):
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        echo(f"{label}: {done:,}/{total:,} sequences ({time.perf_counter() - start:.1f} s)")

    return report


def _write_data(task: str, out: Path, force: bool, **kwargs) -> None:
    from hybridlens.analysis.datasets import check_output_path, write_dataset
    from hybridlens.study.simulate import simulate

    check_output_path(out, force=force)  # fail before the work, not after
    start = time.perf_counter()
    ds = simulate(task, progress=_progress(task), **kwargs)
    write_dataset(out, ds, force=force)
    n = {s: len(ds.split(s)) for s in ("train", "valid", "test")}
    echo(
        f"wrote {out} ({task}: {n['train']:,} train / {n['valid']:,} valid / {n['test']:,} test, "
        f"hash {ds.attrs['content_hash'][:12]}) in {time.perf_counter() - start:.1f} s"
    )


@data_app.command("task1")
def data_task1(
    out: Path = typer.Option(..., "--out", help="HDF5 file to write."),
    seed: int = typer.Option(TASKS["task1"].data_seed, help="Random seed (same seed, same file content)."),
    num_seqs: int = typer.Option(TASKS["task1"].num_seqs, "--num-seqs", help="Total sequences (split 0.7/0.1/0.2)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Task 1: multi-task TF binding, 12 JASPAR motifs, 1-5 per sequence (Koo & Eddy 2019)."""
    _write_data("task1", out, force, seed=seed, num_seqs=num_seqs)


@data_app.command("task2")
def data_task2(
    out: Path = typer.Option(..., "--out", help="HDF5 file to write."),
    seed: int = typer.Option(TASKS["task2"].data_seed, help="Random seed (same seed, same file content)."),
    num_seqs: int = typer.Option(
        TASKS["task2"].num_seqs, "--num-seqs", help="Total sequences, half positive (split 0.7/0.1/0.2)."
    ),
    max_motifs: int = typer.Option(5, "--max-motifs", help="3-5 motifs per sequence (paper) or 7 for 3-7 (code)."),
    background: str = typer.Option(
        "filtered",
        "--background",
        help="Negative pool: 'filtered' (100 motifs unlike the core ones) or 'code' (the released code's 50).",
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Task 2: synthetic regulatory code, 5 core motifs vs core + background motifs (Koo & Ploenzke 2021)."""
    _write_data("task2", out, force, seed=seed, num_seqs=num_seqs, max_motifs=max_motifs, background=background)


WORKDIR_OPTION = typer.Option(
    Path(DEFAULT_WORKDIR), "--workdir", help="Working directory: MLflow store (mlflow.db), artifacts, Ray state, data."
)


@app.command("study")
def study_cmd(
    config: Path = typer.Argument(..., help="Study YAML (see configs/)."),
    workdir: Path = WORKDIR_OPTION,
    ray_address: Optional[str] = typer.Option(
        None, "--ray-address", help="Existing Ray cluster (HOST:PORT or auto); default: a local Ray."
    ),
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow server (http://HOST:PORT); default: sqlite in the workdir."
    ),
    storage_path: Optional[str] = typer.Option(
        None, "--storage-path", help="Ray Tune storage (shared by all nodes of a cluster); default: WORKDIR/ray."
    ),
    smoke_test: bool = typer.Option(
        False, "--smoke-test", help="Shrink the same study: 2 architectures, 1 seed, 2 epochs, 600 sequences."
    ),
    no_analyze: bool = typer.Option(
        False, "--no-analyze", help="Skip the analysis at the end (run it later with 'hybridlens analyze')."
    ),
    yes: bool = typer.Option(False, "--yes", help="Launch a grid of more than 10,000 cells."),
) -> None:
    """Run a grid study: data (if missing), the Ray Tune grid, MLflow tracking, then the analysis."""
    from hybridlens.study.runner import run_study

    summary = run_study(
        config,
        workdir=workdir,
        ray_address=ray_address,
        tracking_uri=tracking_uri,
        storage_path=storage_path,
        smoke_test=smoke_test,
        analyze=not no_analyze,
        yes=yes,
        echo=echo,
    )
    _exit(summary)


def _exit(summary) -> None:
    """Exit 130 after a stop signal, 3 when cells are unfinished or failed, else 0."""
    if summary.interrupted:
        raise KeyboardInterrupt
    if not summary.ok:
        raise typer.Exit(3)


@app.command("resume")
def resume_cmd(
    workdir: Path = typer.Argument(..., help="The interrupted study's working directory."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name, when the workdir holds several."),
    no_analyze: bool = typer.Option(False, "--no-analyze", help="Skip the analysis at the end."),
    no_retry_failed: bool = typer.Option(
        False, "--no-retry-failed", help="Leave failed trials as they are (by default they run again from their checkpoints)."
    ),
) -> None:
    """Resume an interrupted study: unfinished and failed trials run again, from their checkpoints."""
    from hybridlens.study.runner import resume_study

    _exit(resume_study(workdir, study, analyze=not no_analyze, retry_failed=not no_retry_failed, echo=echo))


@app.command("reconcile")
def reconcile_cmd(
    workdir: Path = WORKDIR_OPTION,
    study: Optional[str] = typer.Option(None, "--study", help="Study name, when the workdir holds several."),
) -> None:
    """Mark runs left RUNNING by a killed (SIGKILL) study driver as KILLED."""
    from hybridlens.study.launches import reconcile

    reconcile(workdir, study, echo=echo)


@app.command("runs")
def runs_cmd(
    workdir: Path = WORKDIR_OPTION,
    study: Optional[str] = typer.Option(None, "--study", help="Study name, when the workdir holds several."),
) -> None:
    """Print a table of the study's trials (latest launch) and their statuses."""
    from hybridlens.study.launches import load_launch, prepare_store
    from hybridlens.study.tracking import runs_table

    launch = load_launch(workdir, study)
    prepare_store(Path(launch.workdir), launch.tracking_uri)
    typer.echo(runs_table(launch.tracking_uri, launch.experiment_id, launch.parent_run_id))


@app.command("analyze")
def analyze_cmd(
    study: str = typer.Option(..., "--study", help="Study name (the MLflow experiment)."),
    workdir: Path = WORKDIR_OPTION,
    tracking_uri: Optional[str] = typer.Option(
        None, "--tracking-uri", help="MLflow server or store; default: the workdir's mlflow.db."
    ),
    top_k: Optional[int] = typer.Option(
        None, "--top-k", min=1, help="Best runs per configuration (default: 3 for Task 1, 5 for Task 2)."
    ),
    rank_on: str = typer.Option("valid", "--rank-on", help="Rank runs on the validation (default) or test metric."),
    task: Optional[str] = typer.Option(None, "--task", help="Analyse only this task's runs (task1 or task2)."),
    ground_truth: str = typer.Option(
        "base_ids",
        "--ground-truth",
        help="What counts as a ground-truth hit: base_ids (any version of the TFs' JASPAR IDs) or reference_lists (the released code's lists).",
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for tables and figures; default: WORKDIR/analysis/STUDY."),
    attributions: str = typer.Option(
        ",".join(DEFAULT_ATTRIBUTIONS),
        "--attributions",
        help=f"Attribution methods to score, comma-separated: {', '.join(METHODS)}; or none.",
    ),
    max_sequences: int = typer.Option(
        MAX_SEQUENCES, "--max-sequences", min=1, help="Test sequences attributed per run and method (per class on Task 1)."
    ),
    replace: bool = typer.Option(False, "--replace", help="Replace --out even when it holds another study's analysis."),
) -> None:
    """Analyse a study from MLflow alone: filter TPR/FPR (Task 1) or saliency (Task 2), tables, figures."""
    from hybridlens.analysis.attributions import parse_methods
    from hybridlens.analysis.mlflow_layout import check_study_name
    from hybridlens.analysis.report import analyze_study
    from hybridlens.analysis.runs import check_tracking_uri, sqlite_uri
    from hybridlens.study.launches import prepare_store

    check_study_name(study)  # before any path is built from it
    if rank_on not in ("valid", "test"):
        raise UserError(f"--rank-on must be valid or test, got {rank_on!r}")
    methods = parse_methods(attributions)
    if tracking_uri:
        check_tracking_uri(tracking_uri)
        uri = tracking_uri
    else:
        if not (workdir / "mlflow.db").is_file():
            raise UserError(f"{workdir / 'mlflow.db'} does not exist; pass --workdir of a study or --tracking-uri")
        uri = sqlite_uri(workdir)
        prepare_store(workdir.resolve(), uri)
    analyze_study(
        uri,
        study,
        task=task,
        top_k=top_k,
        rank_on=rank_on,
        ground_truth=ground_truth,
        attributions=methods,
        max_sequences=max_sequences,
        out_dir=out or workdir / "analysis" / study,
        workdir=workdir,
        replace=replace,
        echo=echo,
    )


def _free_port(host: str, port: int) -> int:
    """``port`` if nothing listens on it at ``host`` (0: a free port the system picks); one line otherwise."""
    import socket

    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number (0 to 65535; 0 picks a free one)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            # as the server will (uvicorn, gunicorn): a port in TIME_WAIT after a stopped UI is free,
            # one with a listener is not
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            return sock.getsockname()[1]
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is in use (another server); pass another --port, or --port 0 for a free one"
            ) from None
        raise UserError(f"cannot serve on {host}:{port} ({e.strerror or e}); check --host and --port") from None


@app.command("ui")
def ui_cmd(
    workdir: Path = WORKDIR_OPTION,
    port: int = typer.Option(5000, "--port", help="Port to serve on; 0 picks a free one."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; 127.0.0.1 keeps the UI on this machine."),
) -> None:
    """Start the MLflow UI on the workdir's store and print the URL of each study's runs."""
    import os

    from hybridlens.analysis.locks import FileLock, user_lock_dir
    from hybridlens.analysis.mlflow_layout import runs_url
    from hybridlens.analysis.runs import sqlite_uri
    from hybridlens.study.launches import launched_studies, prepare_store

    db = workdir / "mlflow.db"
    if not db.is_file():
        raise UserError(f"{db} does not exist; run a study with --workdir {workdir} first")
    uri = sqlite_uri(workdir)
    prepare_store(workdir.resolve(), uri)
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number (0 to 65535; 0 picks a free one)")

    def hold(port: int) -> None:
        # a UI that is still starting has not bound its port yet: this lock, which the UI keeps across
        # exec for its whole life, tells a second one on the same port
        FileLock(
            user_lock_dir() / f"ui-{host}-{port}.lock",
            f"port {port} on {host}",
            busy="{what} is taken by another 'hybridlens ui' ({who}); pass another --port, or --port 0 for a free one",
        ).acquire(inheritable=True)

    if port:
        hold(port)
        _free_port(host, port)
    else:
        port = _free_port(host, 0)
        hold(port)
    base = f"http://{host}:{port}"
    echo(f"MLflow UI on {base} (store {uri}); Ctrl+C stops it")
    for launch in launched_studies(workdir):
        echo(f"  study {launch.name}: {runs_url(base, launch.experiment_id)}")
    # the mlflow of this interpreter, whether or not its venv's bin/ is on PATH
    args = ["-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    os.execv(sys.executable, [sys.executable, *args])


def _interrupted() -> None:
    import os

    sys.stderr.flush()
    os.write(2, b"hybridlens: interrupted\n")  # straight to the descriptor: stderr may be mid-write
    sys.exit(130)


def _caused_by_interrupt(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: run the app and turn user errors into one line and an exit code."""
    try:
        rv = app(args=argv, prog_name="hybridlens", standalone_mode=False)
        if rv == 130:  # typer turns Ctrl+C into Exit(130), returned as a code without standalone mode
            _interrupted()
        if isinstance(rv, int) and rv:  # typer.Exit(code) returns its code without standalone mode
            sys.exit(rv)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except click_exceptions.NoArgsIsHelpError as e:
        print(e.format_message(), file=sys.stderr)
        sys.exit(2)
    except click_exceptions.UsageError as e:
        print(f"hybridlens: error: {e.format_message()}", file=sys.stderr)
        sys.exit(2)
    except click_exceptions.ClickException as e:
        print(f"hybridlens: error: {e.format_message()}", file=sys.stderr)
        sys.exit(e.exit_code or 1)
    except (typer.Abort, KeyboardInterrupt):
        _interrupted()
    except UserError as e:  # input the user can fix: one line; anything else is a bug and keeps its traceback
        print(f"hybridlens: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:
        if _caused_by_interrupt(e):  # Ctrl+C inside compiled code (numba, torch) arrives wrapped
            _interrupted()
        raise


if __name__ == "__main__":
    main()
