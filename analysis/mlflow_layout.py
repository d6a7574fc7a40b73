"""The MLflow layout, the contract between the study that writes runs and the analysis that reads
them (SPEC.md "MLflow layout"): tag names, outcomes and run names, defined once.

- One experiment per study name; one parent run per launch (``TAG_KIND = "parent"``), created by the
  driver; one child run per grid cell (``TAG_KIND = "trial"``), tagged ``mlflow.parentRunId``, the
  Ray trial id, the config hash, the dataset hash and the node, named by :func:`cell_name`.
- The experiment is tagged as model training (``TAG_EXPERIMENT_KIND``), so MLflow 3's UI opens it on
  its runs rather than on the GenAI overview. Every run records the study's dataset as an MLflow
  dataset input (name: the file's stem, digest: the start of our content hash, source: the file).
- Statuses: FINISHED; FAILED on an exception (``TAG_OUTCOME = "failed"``, ``TAG_ERROR`` the cause) or a
  divergence (``"diverged"``); KILLED for runs stopped by a signal (``"killed"``) or by a search's
  scheduler (``"stopped"``, ``TAG_STOPPED_AT`` the epoch it reached).
"""

from __future__ import annotations

import re

#: A study's name: the MLflow experiment's, and part of file names under its workdir
#: (``studies/NAME.json``, ``analysis/NAME``): letters, digits, ``_``, ``.``, ``-``, starting with a letter or
#: digit, never ``..``, at most :data:`MAX_STUDY_NAME` characters.
STUDY_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
MAX_STUDY_NAME = 100


def study_name_problem(name) -> str | None:
    """Why ``name`` cannot be a study's name (None when it can): the one rule for a config's ``name``,
    ``--study`` and a recorded launch, checked before any file is opened."""
    if not isinstance(name, str) or not name:
        return "a study name is a non-empty string"
    if len(name) > MAX_STUDY_NAME:
        return f"a study name is at most {MAX_STUDY_NAME} characters (got {len(name)})"
    if not re.fullmatch(STUDY_NAME_PATTERN, name) or ".." in name:  # fullmatch: '$' lets a final newline by
        return (f"{name!r} is not a study name: letters, digits, '_', '.' and '-' only, starting with a letter or "
                "digit, no '..' and no path separators")  # fmt: skip
    return None


def check_study_name(name, flag: str = "--study") -> str:
    """``name`` if it is a study name (:func:`study_name_problem`), else a one-line :class:`UserError`."""
    from hybridlens.analysis.errors import UserError

    problem = study_name_problem(name)
    if problem:
        raise UserError(f"{flag}: {problem}")
    return name


TAG_STUDY = "hybridlens.study"
TAG_TRIAL = "hybridlens.trial_id"
TAG_CONFIG_HASH = "hybridlens.config_hash"
TAG_DATASET_HASH = "hybridlens.dataset_hash"
TAG_KIND = "hybridlens.kind"  # parent | trial
TAG_OUTCOME = "hybridlens.outcome"  # finished | diverged | failed | killed | stopped
#: The outcome of a run a search's scheduler (ASHA) stopped early: KILLED, never finished or selected.
OUTCOME_STOPPED = "stopped"
TAG_STOPPED_AT = "hybridlens.stopped_at_epoch"
TAG_ERROR = "hybridlens.error"  # the exception or divergence that ended a run
TAG_NODE = "hybridlens.node_id"
#: How the run trained: ``cuda-graph``, ``cuda-eager`` or ``cpu``; and why a GPU run trained eagerly.
TAG_TRAIN_PATH = "hybridlens.train_path"
TAG_TRAIN_PATH_REASON = "hybridlens.train_path_reason"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"
#: Prefix of the tag that records, per attribution method, why it cannot attribute the run's model.
TAG_ATTR_NOT_SUPPORTED = "hybridlens.attr_not_supported."
#: Why no attribution method could be scored on the run's dataset (a Task 1 file without placements).
TAG_ATTR_UNAVAILABLE = "hybridlens.attr_unavailable"
#: MLflow 3 records an experiment's kind in this tag; its UI (``ExperimentKind`` in MLflow's web app)
#: shows "custom_model_development" as "Model training" and opens such an experiment on its runs.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_TRAINING = "custom_model_development"
#: Experiment tag ("true"): its artifact root is the ``mlartifacts`` folder beside its store, in the
#: same workdir, so a moved or copied workdir takes its artifacts along (:func:`analysis.runs.relocate_store`).
TAG_ARTIFACTS_BESIDE_STORE = "hybridlens.artifacts_beside_store"
#: MLflow keeps at most 36 characters of a dataset digest; the full hash is the TAG_DATASET_HASH tag.
DATASET_DIGEST_CHARS = 36


def axis_value_text(value) -> str:
    """An axis value as names and labels show it: ``0.0003``, ``4``, ``true``, ``glorot``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def axes_label(axes: dict | None) -> str:
    """A cell's axis values, for tables and titles: ``first_pool=4, lr=0.0003`` (empty without axes)."""
    return ", ".join(f"{k.split('.', 1)[-1]}={axis_value_text(v)}" for k, v in (axes or {}).items())


def cell_name(architecture: str, activation: str, seed, axes: dict | None = None) -> str:
    """A grid cell's run name: ``C24-exp-s0``; with axis values ``cnn-pool-relu-first_pool4-lr0.0003-s0``."""
    values = "".join(f"-{k.split('.', 1)[-1]}{axis_value_text(v)}" for k, v in (axes or {}).items())
    return f"{architecture}-{activation}{values}-s{seed}"


#: The params that identify a grid cell (the search space's dimensions); a cell's axis values are the
#: param ``axes`` (JSON, in the config's order), each also a param of its own name (``model.first_pool``).
CELL_KEYS = ("architecture", "activation", "seed")
AXES_PARAM = "axes"
#: In a random search: the keys among ``axes`` whose values Ray Tune drew for the trial (JSON list); the
#: analysis groups runs by the other (grid) axes and shows the drawn values run by run.
DRAWN_PARAM = "drawn"


def runs_url(ui: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs, in the UI's "Model training" mode.

    MLflow 3.17's web app keeps a global GenAI / Model-training switch (browser storage, GenAI in a
    fresh browser) that decides where a click on an experiment lands, whatever the experiment's kind
    tag says; the ``workflowType`` parameter sets the switch, and ``/runs`` is the runs tab."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
