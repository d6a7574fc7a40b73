"""The ``hybridlens`` command.

Errors a user can fix (bad paths, bad files, bad options) end the command with one line on stderr,
``hybridlens: error: ...``, and a non-zero exit code; no traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

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


class UserError(Exception):
    """An error the user can fix; printed as one line."""


def echo(msg: str) -> None:
    """Progress output, on stderr so stdout stays parseable."""
    typer.echo(msg, err=True)


def _progress(label: str):
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        echo(f"{label}: {done:,}/{total:,} sequences ({time.perf_counter() - start:.1f} s)")

    return report


def _write_data(task: str, out: Path, force: bool, **kwargs) -> None:
    from analysis.datasets import check_output_path, write_dataset
    from study.simulate import simulate

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
    seed: int = typer.Option(33, help="Random seed (same seed, same file content)."),
    num_seqs: int = typer.Option(25_000, "--num-seqs", help="Total sequences (split 0.7/0.1/0.2)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Task 1: multi-task TF binding, 12 JASPAR motifs, 1-5 per sequence (Koo & Eddy 2019)."""
    _write_data("task1", out, force, seed=seed, num_seqs=num_seqs)


@data_app.command("task2")
def data_task2(
    out: Path = typer.Option(..., "--out", help="HDF5 file to write."),
    seed: int = typer.Option(22, help="Random seed (same seed, same file content)."),
    num_seqs: int = typer.Option(20_000, "--num-seqs", help="Total sequences, half positive (split 0.7/0.1/0.2)."),
    max_motifs: int = typer.Option(5, "--max-motifs", help="3-5 motifs per sequence (paper) or 7 for 3-7 (code)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Task 2: synthetic regulatory code, 5 core motifs vs core + 100 background motifs (Koo & Ploenzke 2021)."""
    _write_data("task2", out, force, seed=seed, num_seqs=num_seqs, max_motifs=max_motifs)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: run the app and turn user errors into one line and an exit code."""
    try:
        app(args=argv, prog_name="hybridlens", standalone_mode=False)
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
        print("hybridlens: interrupted", file=sys.stderr)
        sys.exit(130)
    except (UserError, ValueError, OSError, KeyError) as e:
        msg = str(e) if not isinstance(e, KeyError) else f"missing key {e}"
        print(f"hybridlens: error: {msg}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
