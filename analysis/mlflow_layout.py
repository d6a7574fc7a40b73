"""The MLflow layout, the contract between the study that writes runs and the analysis that reads
them (SPEC.md "MLflow layout"): tag names, outcomes and run names, defined once.

- One experiment per study name; one parent run per launch (``TAG_KIND = "parent"``), created by the
  driver; one child run per grid cell (``TAG_KIND = "trial"``), tagged ``mlflow.parentRunId``, the
  Ray trial id, the config hash, the dataset hash and the node, named by :func:`cell_name`.
- Statuses: FINISHED; FAILED on an exception (``TAG_OUTCOME = "failed"``, ``TAG_ERROR`` the cause) or a
  divergence (``"diverged"``); KILLED for runs stopped by a signal (``"killed"``).
"""

from __future__ import annotations

TAG_STUDY = "hybridlens.study"
TAG_TRIAL = "hybridlens.trial_id"
TAG_CONFIG_HASH = "hybridlens.config_hash"
TAG_DATASET_HASH = "hybridlens.dataset_hash"
TAG_KIND = "hybridlens.kind"  # parent | trial
TAG_OUTCOME = "hybridlens.outcome"  # finished | diverged | failed | killed
TAG_ERROR = "hybridlens.error"  # the exception or divergence that ended a run
TAG_NODE = "hybridlens.node_id"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"


def cell_name(architecture: str, activation: str, seed) -> str:
    """A grid cell's run name: ``C24-exp-s0``."""
    return f"{architecture}-{activation}-s{seed}"


#: The params that identify a grid cell (the search space's dimensions).
CELL_KEYS = ("architecture", "activation", "seed")
