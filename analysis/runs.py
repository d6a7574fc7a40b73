"""Reading a study from MLflow (the layout: :mod:`hybridlens.analysis.mlflow_layout`): the store's
URI, finding a study's parent and child runs, fetching a run's artifacts. The study writes the layout
(``hybridlens.study.tracking``); the analysis reads it from here, without the study's Ray code.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hybridlens.analysis.errors import UserError

# MLflow draws a progress bar for every artifact download; the analysis prints its own progress.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from hybridlens.analysis.mlflow_layout import TAG_KIND, TAG_PARENT


def sqlite_uri(workdir: Path) -> str:
    return f"sqlite:///{(Path(workdir) / 'mlflow.db').resolve()}"


def check_tracking_uri(uri: str, *, timeout: float = 5.0) -> None:
    """Fail fast, with one line, on a tracking URI that cannot work."""
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                if r.status != 200:
                    raise UserError(f"MLflow tracking server {uri} answered {r.status} on /health")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(f"MLflow tracking server {uri} is unreachable ({reason}); start it or fix --tracking-uri") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not folder.is_dir():
            raise UserError(f"tracking URI {uri}: folder {folder} does not exist")
    elif uri.startswith("file:") or "://" not in uri:
        raise UserError(
            f"tracking URI {uri!r}: MLflow's file store is not supported; use sqlite:///PATH/mlflow.db or an http(s) server"
        )
    else:
        raise UserError(f"tracking URI {uri!r}: use sqlite:///PATH/mlflow.db or http(s)://HOST:PORT")


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def child_runs(c, experiment_id: str, parent_run_id: str) -> list:
    """Every child run of ``parent_run_id`` (all statuses)."""
    from mlflow.entities import ViewType

    out, token = [], None
    while True:
        page = c.search_runs(
            [experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_run_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            page_token=token,
        )
        out += list(page)
        token = page.token
        if not token:
            return out


@dataclass
class StudyRuns:
    """A study's latest launch in MLflow: its parent run and every child run."""

    uri: str
    experiment_id: str
    parent: object  # mlflow.entities.Run
    children: list


def find_study(uri: str, study: str, parent_run_id: str | None = None) -> StudyRuns:
    """The study's latest launch (or the launch ``parent_run_id``) and its child runs."""
    c = client(uri)
    exp = c.get_experiment_by_name(study)
    if exp is None:
        names = sorted(e.name for e in c.search_experiments() if e.name != "Default")
        raise UserError(f"unknown study {study!r} in {uri}; studies there: {', '.join(names) or 'none'}")
    if parent_run_id:
        parent = c.get_run(parent_run_id)
    else:
        parents = c.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`{TAG_KIND}` = 'parent'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not parents:
            raise UserError(f"study {study!r} has no launch (parent run) in {uri}")
        parent = parents[0]
    return StudyRuns(uri, exp.experiment_id, parent, child_runs(c, exp.experiment_id, parent.info.run_id))


def download(uri: str, run_id: str, path: str, dest: str | Path | None = None) -> Path:
    """Download one artifact (file or folder) of a run; returns the local path."""
    dest = Path(dest or tempfile.mkdtemp(prefix="hybridlens-art-"))
    return Path(client(uri).download_artifacts(run_id, path, str(dest)))


def trial_config(uri: str, run_id: str) -> dict:
    """The run's resolved configuration (``config/trial.json``)."""
    return json.loads(download(uri, run_id, "config/trial.json").read_text())
