"""Writing the MLflow layout (:mod:`hybridlens.analysis.mlflow_layout`, SPEC.md "MLflow layout").

- The parent run is created by the driver before Ray starts (never concurrently from trials).
- A retried or resumed trial finds its child run by the trial-id tag and reuses it.
- Per report, one ``log_batch`` request; steps already logged (before a crash, say) are not logged
  again, so a retried trial leaves no duplicate steps.
- Runs left RUNNING by a stopped driver are marked KILLED, by the driver or ``hybridlens reconcile``.
- A trial survives its tracking server going away for a while (a restart, an upgrade): every call it
  makes re-sends on a connection failure, saying so, for up to :data:`RETRY_BUDGET_S` seconds
  (:class:`RetryingClient`). Re-sent calls are idempotent: metrics carry the timestamp of their first
  sending (the store keeps one copy of an identical entry), params and artifacts are rewritten with
  the same content, and a child run is created only after a fresh look for it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hybridlens.analysis.mlflow_layout import (
    AXES_PARAM,
    DATASET_DIGEST_CHARS,
    EXPERIMENT_KIND_TRAINING,
    TAG_ARTIFACTS_BESIDE_STORE,
    TAG_CONFIG_HASH,
    TAG_EXPERIMENT_KIND,
    TAG_KIND,
    TAG_OUTCOME,
    TAG_PARENT,
    TAG_RUN_NAME,
    TAG_STUDY,
    TAG_TRIAL,
    axis_value_text,
)
from hybridlens.analysis.runs import child_runs, client

#: How long a trial keeps re-sending a call to an unreachable tracking server before it fails (Ray
#: then retries the trial from its checkpoint, and no step already logged is sent twice); the
#: environment variable HYBRIDLENS_TRACKING_RETRY_S sets another budget (trial processes inherit it).
RETRY_BUDGET_S = float(os.environ.get("HYBRIDLENS_TRACKING_RETRY_S", "300"))
#: MLflow's own retries, shortened in trial processes (unless set by the user) so that a failure
#: surfaces in seconds and :class:`RetryingClient` can say that it retries; MLflow's defaults retry
#: silently for about four minutes.
MLFLOW_CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def unreachable(e: BaseException) -> bool:
    """Whether ``e`` is a tracking server that could not be reached (connection refused or reset,
    timeouts, 5xx after MLflow's own retries), as opposed to a request the server refused."""
    import requests

    for err in (e, e.__cause__, e.__context__):
        if isinstance(err, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError)):
            return True
    return False


class RetryingClient:
    """An ``MlflowClient`` whose calls re-send on :func:`unreachable` errors, with a capped backoff, for
    up to ``budget_s`` seconds, printing one line per retry; ``retries`` counts them. ``create_run``
    is not retried on its own (a lost answer would duplicate the run): retry the find-or-create unit
    with :meth:`call`."""

    NOT_IDEMPOTENT = frozenset({"create_run"})

    def __init__(self, c, *, budget_s: float = RETRY_BUDGET_S, echo=None, sleep=time.sleep):
        import sys

        self._c, self.budget_s, self._sleep = c, budget_s, sleep
        self._echo = echo or (lambda m: print(m, file=sys.stderr, flush=True))
        self.retries = 0

    def call(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, re-sent while the tracking server is unreachable."""
        start, delay, waited = time.monotonic(), 1.0, 0.0
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                if not unreachable(e) or max(time.monotonic() - start, waited) + delay > self.budget_s:
                    raise
                self.retries += 1
                waited += delay
                name = getattr(fn, "__name__", "call")
                self._echo(
                    f"hybridlens: tracking server unreachable ({type(e).__name__} in {name}); retry {self.retries} in {delay:.0f} s"
                )
                self._sleep(delay)
                delay = min(2 * delay, 15.0)

    def __getattr__(self, name):
        attr = getattr(self._c, name)
        if not callable(attr) or name in self.NOT_IDEMPOTENT:
            return attr
        return lambda *a, **k: self.call(attr, *a, **k)


def get_or_create_experiment(c, name: str, artifact_location: str | None = None, *, beside_store: bool = False) -> str:
    """The study's experiment (restored if deleted, created if missing), tagged as model training, and
    with ``beside_store`` as keeping its artifacts beside its store (:data:`TAG_ARTIFACTS_BESIDE_STORE`)."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        if exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND_TRAINING:
            c.set_experiment_tag(exp.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND_TRAINING)
        if beside_store and exp.artifact_location == artifact_location and TAG_ARTIFACTS_BESIDE_STORE not in exp.tags:
            c.set_experiment_tag(exp.experiment_id, TAG_ARTIFACTS_BESIDE_STORE, "true")
        return exp.experiment_id
    tags = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND_TRAINING}
    if beside_store:
        tags[TAG_ARTIFACTS_BESIDE_STORE] = "true"
    return c.create_experiment(name, artifact_location=artifact_location, tags=tags)


def dataset_input(path: str | Path, content_hash: str, sizes: dict[str, int], context: str = "training"):
    """The study's dataset as an MLflow dataset input: name = the file's stem, digest = the start of our
    content hash, source = the file (MLflow's ``local`` source), profile = the split sizes."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    path = Path(path)
    ds = Dataset(
        name=path.stem,
        digest=content_hash[:DATASET_DIGEST_CHARS],
        source_type="local",
        source=json.dumps({"uri": str(path)}),
        profile=json.dumps(sizes),
    )
    return DatasetInput(ds, tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])


def create_parent_run(c, experiment_id: str, study: str, config_hash: str, run_name: str | None = None) -> str:
    run = c.create_run(
        experiment_id,
        run_name=run_name or f"{study}-study",
        tags={TAG_STUDY: study, TAG_KIND: "parent", TAG_CONFIG_HASH: config_hash},
    )
    return run.info.run_id


def find_trial_run(c, experiment_id: str, parent_run_id: str, trial_id: str, cell: str) -> str | None:
    """The child run of grid cell ``cell`` trained by Ray trial ``trial_id`` (a pack's trial holds
    several cells), or None."""
    runs = c.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{TAG_TRIAL}` = '{trial_id}' and tags.`{TAG_PARENT}` = '{parent_run_id}' and tags.`{TAG_RUN_NAME}` = '{cell}'"
        ),
        max_results=2,
    )
    return runs[0].info.run_id if runs else None


def logged_steps(c, run_id: str, key: str) -> set[int]:
    return {m.step for m in c.get_metric_history(run_id, key)}


class TrialLogger:
    """Logs a trial's metrics to its child run, one ``log_batch`` request per call."""

    def __init__(self, c, run_id: str, probe_key: str = "val_loss"):
        self.c, self.run_id = c, run_id
        self._done_steps = logged_steps(c, run_id, probe_key)

    def log_steps(self, steps: list[tuple[int, dict[str, float]]], tags: dict | None = None) -> int:
        """Log several epochs' metrics (and ``tags``) in one request, skipping steps logged before (a
        resumed trial re-trains the epochs after its last checkpoint). Returns the number of steps sent."""
        from mlflow.entities import Metric, RunTag

        todo = [(s, m) for s, m in steps if s not in self._done_steps]
        if todo or tags:
            ts = int(time.time() * 1000)
            self.c.log_batch(
                self.run_id,
                metrics=[Metric(k, float(v), ts, s) for s, m in todo for k, v in m.items()],
                tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
            )
            self._done_steps.update(s for s, _ in todo)
        return len(todo)

    def log(self, metrics: dict[str, float], step: int = 0, params: dict | None = None, tags: dict | None = None) -> None:
        from mlflow.entities import Metric, Param, RunTag

        ts = int(time.time() * 1000)
        self.c.log_batch(
            self.run_id,
            metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )


def runs_table(uri: str, experiment_id: str, parent_run_id: str) -> str:
    """A plain-text table of a launch's child runs: cell, short run ID (the UI's run page), status,
    outcome, epochs trained, the task's ranking metric (best validation epoch) and test metrics, and the
    analysis metrics once ``analyze`` has logged them (``-`` before)."""
    from hybridlens.analysis.tasks import TASKS

    c = client(uri)
    runs = child_runs(c, experiment_id, parent_run_id)
    tasks = {r.data.params.get("task") for r in runs} & set(TASKS)
    spec = TASKS[tasks.pop()] if len(tasks) == 1 else TASKS["task1"]
    rank = f"best_{spec.monitor}"
    analysis = [k for k in spec.interp_metrics if any(k in r.data.metrics for r in runs)] or list(spec.interp_metrics)

    def num(m: dict, key: str) -> str:
        return f"{m[key]:.3f}" if key in m else "-"

    axes = {r.info.run_id: json.loads(r.data.params.get(AXES_PARAM, "{}")) for r in runs}
    axis_keys = list(dict.fromkeys(k for a in axes.values() for k in a))  # each axis a column, short-named
    rows = []
    for r in runs:
        p, m, t = r.data.params, r.data.metrics, r.data.tags
        rows.append(
            [
                p.get("architecture", "?"),
                p.get("activation", "?"),
                *(axis_value_text(axes[r.info.run_id][k]) if k in axes[r.info.run_id] else "-" for k in axis_keys),
                p.get("seed", "?"),
                r.info.run_id[:8],
                r.info.status,
                t.get(TAG_OUTCOME, "running" if r.info.status == "RUNNING" else ""),
                f"{int(m['epochs_trained'])}" if "epochs_trained" in m else "-",
                num(m, rank),
                num(m, "test_auroc"),
                num(m, "test_aupr"),
                *(num(m, k) for k in analysis),
            ]
        )
    n = len(axis_keys)

    def order(text) -> tuple:  # axis values numerically where they are numbers
        try:
            return 0, float(text), ""
        except ValueError:
            return 1, 0.0, str(text)

    rows.sort(key=lambda r: (r[0], r[1], *map(order, r[2 : 2 + n]), int(r[2 + n]) if str(r[2 + n]).isdigit() else 0))
    head = [
        "architecture",
        "activation",
        *(k.split(".", 1)[-1] for k in axis_keys),
        "seed",
        "run",
        "status",
        "outcome",
        "epochs_trained",  # the metric's name: a train.epochs axis has a column "epochs" of its own
        rank,
        "test_auroc",
        "test_aupr",
        *analysis,
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head)] + [fmt.format(*map(str, r)) for r in rows]
    return "\n".join(lines) + f"\n{len(rows)} runs ({spec.name}: ranked on {rank}; '-': not logged yet)"
