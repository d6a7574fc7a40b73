"""Reading a study from MLflow (the layout: :mod:`hybridlens.analysis.mlflow_layout`): the store's
URI, finding a study's parent and child runs, fetching a run's artifacts. The study writes the layout
(``hybridlens.study.tracking``); the analysis reads it from here, without the study's Ray code.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hybridlens.analysis.errors import UserError

# MLflow draws a progress bar for every artifact download; the analysis prints its own progress.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from hybridlens.analysis.mlflow_layout import TAG_ARTIFACTS_BESIDE_STORE, TAG_KIND, TAG_PARENT

#: Characters that a URL parser reads as syntax (query, escape, fragment) when they appear in a path.
_URL_SYNTAX = set("?%#")


def sqlite_uri(workdir: Path) -> str:
    """The SQLite store URI of ``workdir`` (its ``mlflow.db``), for any legal path.

    A plain path is written as is. A path with ``?``, ``%`` or ``#`` is percent-encoded whole, slashes
    included: SQLAlchemy decodes the database path, so the store lands inside ``workdir``; MLflow's
    own "create the store's parent folder" step reads the URI undecoded, and with encoded slashes
    it sees ``/`` as that folder instead of creating a stray encoded twin of the workdir.
    """
    path = str((Path(workdir) / "mlflow.db").resolve())
    if not _URL_SYNTAX & set(path):
        return f"sqlite:///{path}"
    return "sqlite:////" + urllib.parse.quote(path.lstrip("/"), safe="")


def sqlite_path(uri: str) -> Path:
    """The database file of a ``sqlite:///`` URI (percent-decoded, as SQLAlchemy reads it)."""
    return Path(urllib.parse.unquote(uri.removeprefix("sqlite:///")))


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
        folder = sqlite_path(uri).parent
        if not folder.is_dir():
            raise UserError(f"tracking URI {uri}: folder {folder} does not exist")
    elif uri.startswith("file:") or "://" not in uri:
        raise UserError(
            f"tracking URI {uri!r}: MLflow's file store is not supported; use sqlite:///PATH/mlflow.db or an http(s) server"
        )
    else:
        raise UserError(f"tracking URI {uri!r}: use sqlite:///PATH/mlflow.db or http(s)://HOST:PORT")


#: SQLite's messages for a store that cannot be written, and what to tell the user.
_STORE_PROBLEMS = {
    "readonly database": "is read-only",
    "database or disk is full": "is on a full disk",
    "unable to open database file": "cannot be opened",
}


def store_problem(e: BaseException, uri: str) -> UserError | None:
    """A one-line :class:`UserError` for an exception that says the SQLite store cannot be written
    (read-only, disk full, not openable), or None for any other exception."""
    if not uri.startswith("sqlite:"):
        return None
    text = " ".join(str(x) for x in (e, e.__cause__, e.__context__) if x is not None)
    for needle, what in _STORE_PROBLEMS.items():
        if needle in text:
            return UserError(
                f"the MLflow store {sqlite_path(uri)} {what}; free space or fix its permissions, or pass another --workdir"
            )
    return None


#: Stores up to this size get SQLite's full quick_check before every command (about a second per
#: 100 MB); a larger one only a read of its schema and tables' first pages.
QUICK_CHECK_MAX_BYTES = 256 * 2**20


def check_store(uri: str) -> None:
    """Fail with one line when a SQLite store exists but is damaged (truncated, overwritten): SQLite's
    own check, read-only, before MLflow opens it (which would end in an SQLAlchemy traceback); above
    :data:`QUICK_CHECK_MAX_BYTES`, only its header, schema and the runs table's first rows."""
    import sqlite3

    if not uri.startswith("sqlite:"):
        return
    db = sqlite_path(uri)
    if not db.is_file():
        return
    try:
        con = sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True)
        try:
            if db.stat().st_size <= QUICK_CHECK_MAX_BYTES:
                result = con.execute("PRAGMA quick_check(1)").fetchone()[0]
            else:
                con.execute("select count(*) from sqlite_master").fetchone()
                con.execute("select run_uuid from runs limit 100").fetchall()
                result = "ok"
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        result = str(e)
    if result != "ok":
        raise UserError(
            f"the MLflow store {db} is damaged ({result}); restore it from a backup, or start a new workdir (--workdir)"
        )


def _uri_path(uri: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(uri).path))


def _workdir_roots(con, workdir: Path) -> tuple[str, dict[str, str]]:
    """This workdir's artifact root, and ``{experiment id: old root}`` for the experiments whose root is
    another folder's ``mlartifacts`` and belongs with this store: tagged so
    (:data:`TAG_ARTIFACTS_BESIDE_STORE`), or, for experiments from before the tag, their old root gone
    (moved) or one of their runs' folders here (copied). An experiment that a study in another workdir
    keeps in this store (``--tracking-uri``) has neither, and keeps its root."""
    root = Path(workdir).resolve() / "mlartifacts"
    new = root.as_uri()
    tagged = {
        str(eid)
        for (eid,) in con.execute(
            "select experiment_id from experiment_tags where key = ? and value = 'true'", (TAG_ARTIFACTS_BESIDE_STORE,)
        )
    }
    olds = {}
    for eid, loc in con.execute("select experiment_id, artifact_location from experiments"):
        if not (loc and loc.startswith("file://") and loc.rstrip("/").endswith("/mlartifacts") and loc != new):
            continue
        eid = str(eid)
        runs = con.execute("select run_uuid from runs where experiment_id = ?", (eid,)).fetchall()
        if eid in tagged or not _uri_path(loc).exists() or any((root / run).exists() for (run,) in runs):
            olds[eid] = loc
    return new, olds


def stale_artifact_roots(workdir: Path) -> list[str]:
    """The artifact locations of ``workdir``'s store that name another workdir's ``mlartifacts`` and
    belong here (read-only; :func:`_workdir_roots`)."""
    import sqlite3

    db = Path(workdir) / "mlflow.db"
    if not db.is_file():
        return []
    con = sqlite3.connect(f"file:{urllib.parse.quote(str(db))}?mode=ro", uri=True)
    try:
        return sorted(set(_workdir_roots(con, workdir)[1].values()))
    finally:
        con.close()


def relocate_store(workdir: Path) -> list[str]:
    """Point a moved or copied workdir's store at its own artifacts.

    MLflow records every experiment's artifact location, and every run's, as an absolute ``file://``
    URI: in a moved workdir they name the old place (gone), in a copy the original's artifacts (which
    the copy would then read and write). Locations of the form ``<old workdir>/mlartifacts`` of the
    experiments that belong with this store (:func:`_workdir_roots`) are rewritten to this workdir's
    ``mlartifacts``, their runs' included; returns the old locations rewritten.
    """
    import sqlite3

    con = sqlite3.connect(Path(workdir) / "mlflow.db", timeout=60)
    try:
        with con:
            new, olds = _workdir_roots(con, workdir)
            for eid, old in olds.items():
                con.execute("update experiments set artifact_location = ? where experiment_id = ?", (new, eid))
                con.execute(
                    "update runs set artifact_uri = ? || substr(artifact_uri, ?) "
                    "where experiment_id = ? and substr(artifact_uri, 1, ?) = ?",
                    (new, len(old) + 1, eid, len(old) + 1, old + "/"),
                )
    finally:
        con.close()
    return sorted(set(olds.values()))


def check_writable(uri: str) -> None:
    """Fail with one line when a SQLite store (or the folder it would be created in) is not writable."""
    if not uri.startswith("sqlite:"):
        return
    db = sqlite_path(uri)
    target = db if db.exists() else db.parent
    if not os.access(target, os.W_OK):
        raise UserError(f"the MLflow store {db} is read-only; fix its permissions or pass another --workdir")


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
