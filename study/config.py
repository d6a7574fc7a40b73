"""Study configuration: a YAML file validated before Ray or MLflow start.

A typo'd key, an unknown architecture or a negative epoch count is rejected with the key path and
the valid choices, e.g. ``configs/x.yaml: train.epochs: must be >= 1 (got -3)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybridlens.analysis.ground_truth import GROUND_TRUTH_RULES
from hybridlens.models import GRID, TASK_SIZES
from hybridlens.models.blocks import ACTIVATIONS
from hybridlens.study.simulate import BACKGROUNDS
from hybridlens.study.train import MONITORS, TrainConfig

#: Per task: the paper's LR-plateau / early-stopping metric and best-k (SPEC.md).
TASK_DEFAULTS = {
    "task1": {"monitor": "val_aupr", "top_k": 3},
    "task2": {"monitor": "val_auroc", "top_k": 5},
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class DataSection(_Strict):
    """Where the dataset is. ``path`` given: it must exist. ``path`` omitted: the study generates
    ``<workdir>/data/<task>-seed<seed>-n<num_seqs>.h5`` if missing."""

    path: Optional[str] = None
    num_seqs: Optional[int] = Field(default=None, ge=10)
    seed: Optional[int] = Field(default=None, ge=0)
    max_motifs: Literal[5, 7] = 5  # Task 2 only
    background: Literal[BACKGROUNDS] = "filtered"  # Task 2 only: SPEC's pool or the released code's


def _distinct_choices(values: list[str], valid, kind: str) -> list[str]:
    """A non-empty list of distinct names from ``valid``."""
    if not values:
        raise ValueError(f"must list at least one {kind}")
    for a in values:
        if a not in valid:
            raise ValueError(f"unknown {kind} {a!r}; choose from {', '.join(valid)}")
    if len(set(values)) != len(values):
        raise ValueError(f"lists an {kind} twice")
    return values


class GridSection(_Strict):
    architectures: Union[Literal["all"], list[str]] = "all"
    activations: list[str] = ["relu", "exp"]
    seeds: Union[int, list[int]] = 10  # an int n means seeds 0..n-1

    @field_validator("architectures")
    @classmethod
    def _known_archs(cls, v):
        return v if v == "all" else _distinct_choices(v, GRID, "architecture")

    @field_validator("activations")
    @classmethod
    def _known_acts(cls, v):
        return _distinct_choices(v, ACTIVATIONS, "activation")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"must be >= 1 (got {v})")
            return list(range(v))
        if not v or len(set(v)) != len(v) or min(v) < 0:
            raise ValueError("must be a positive count or a list of distinct non-negative seeds")
        return v

    def architecture_names(self) -> list[str]:
        return list(GRID) if self.architectures == "all" else list(self.architectures)


class SizeOverrides(_Strict):
    filters: Optional[int] = Field(default=None, ge=1)
    lstm_units: Optional[int] = Field(default=None, ge=2)
    key_size: Optional[int] = Field(default=None, ge=1)
    dense_units: Optional[int] = Field(default=None, ge=1)


class ModelSection(SizeOverrides):
    """Initialisation and size overrides for every architecture, and ``per_architecture`` overrides
    on top (e.g. the released code's Task 2 attention size 96 for ``C24-LSTM-Att`` and ``C4-Att``)."""

    init: Literal["he", "glorot"] = "he"
    per_architecture: dict[str, SizeOverrides] = {}

    @field_validator("per_architecture")
    @classmethod
    def _known_archs(cls, v):
        for a in v:
            if a not in GRID:
                raise ValueError(f"unknown architecture {a!r}; choose from {', '.join(GRID)}")
        return v

    def overrides(self, architecture: str | None = None) -> dict:
        """Keyword overrides for ``models.build``: the global ones, then ``architecture``'s own."""
        out = {k: v for k, v in self.model_dump(exclude={"per_architecture"}).items() if v is not None}
        if architecture in self.per_architecture:
            out |= {k: v for k, v in self.per_architecture[architecture].model_dump().items() if v is not None}
        return out


class TrainSection(_Strict):
    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=100, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    monitor: Optional[str] = None  # task default when omitted
    plateau_factor: float = Field(default=0.2, gt=0, lt=1)
    plateau_patience: int = Field(default=4, ge=0)
    min_lr: float = Field(default=1e-7, ge=0)
    early_stopping_patience: Optional[int] = Field(default=10, ge=1)  # null: off

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v):
        if v is not None and v not in MONITORS:
            raise ValueError(f"unknown metric {v!r}; choose from {', '.join(MONITORS)}")
        return v


class ResourcesSection(_Strict):
    cpu: float = Field(default=1, gt=0)
    gpu: float = Field(default=0, ge=0)  # fractions share a GPU between trials
    max_concurrent: Optional[int] = Field(default=None, ge=1)


class RaySection(_Strict):
    object_store_memory_mb: int = Field(default=256, ge=78)  # local Ray only; Ray's minimum is 75 MiB
    num_cpus: Optional[int] = Field(default=None, ge=1)  # local Ray only; default: all cores
    checkpoint_every: int = Field(default=5, ge=1)  # epochs; the best epoch is always checkpointed
    report_every: int = Field(default=1, ge=1)  # epochs between reports (each: one MLflow batch)
    max_failures: int = Field(default=2, ge=0)


class AnalysisSection(_Strict):
    top_k: Optional[int] = Field(default=None, ge=1)  # task default when omitted
    rank_on: Literal["valid", "test"] = "valid"
    ground_truth: Literal[GROUND_TRUTH_RULES] = "base_ids"


class Fault(_Strict):
    """Fault injection, to exercise recovery: raise in the matching trials after ``epoch`` epochs,
    ``once`` (a marker file in the study's workdir records it, so the retry goes on) or ``always``
    (after every epoch from ``epoch`` on, so retries from a checkpoint fail too)."""

    architecture: str
    activation: Optional[str] = None
    seed: Optional[int] = None
    epoch: int = Field(default=1, ge=1)
    mode: Literal["once", "always"] = "once"


class StudyConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Literal["task1", "task2"]
    data: DataSection = DataSection()
    grid: GridSection = GridSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    resources: ResourcesSection = ResourcesSection()
    ray: RaySection = RaySection()
    analysis: AnalysisSection = AnalysisSection()
    faults: list[Fault] = []

    @model_validator(mode="after")
    def _task_defaults(self):
        if self.task != "task2":
            for key, default in (("max_motifs", 5), ("background", "filtered")):
                if getattr(self.data, key) != default:
                    raise ValueError(f"data.{key} applies to task2 only; remove it for {self.task}")
        d = TASK_DEFAULTS[self.task]
        if self.train.monitor is None:
            object.__setattr__(self, "train", self.train.model_copy(update={"monitor": d["monitor"]}))
        if self.analysis.top_k is None:
            object.__setattr__(self, "analysis", self.analysis.model_copy(update={"top_k": d["top_k"]}))
        return self

    # ------------------------------------------------------------------------------------ derived
    def cells(self) -> list[dict]:
        """The grid: one dict per (architecture, activation, seed) cell."""
        return [
            {"architecture": a, "activation": act, "seed": s}
            for a in self.grid.architecture_names()
            for act in self.grid.activations
            for s in self.grid.seeds
        ]

    def train_config(self, seed: int) -> TrainConfig:
        t = self.train
        return TrainConfig(
            epochs=t.epochs,
            batch_size=t.batch_size,
            lr=t.lr,
            monitor=t.monitor,
            plateau_factor=t.plateau_factor,
            plateau_patience=t.plateau_patience,
            min_lr=t.min_lr,
            early_stopping_patience=t.early_stopping_patience,
            seed=seed,
        )

    def resolved(self) -> dict:
        """Every setting with defaults filled in (what runs write next to their outputs)."""
        out = self.model_dump(mode="json")
        out["grid"]["architectures"] = self.grid.architecture_names()
        out["model"]["sizes"] = {k: v for k, v in TASK_SIZES[self.task].__dict__.items()} | self.model.overrides()
        if self.model.per_architecture:
            out["model"]["per_architecture"] = {a: o.model_dump(exclude_none=True) for a, o in self.model.per_architecture.items()}
        return out

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()[:16]

    def smoke(self) -> "StudyConfig":
        """The same study shrunk for a fast check (Ray Tune's ``--smoke-test``): the first two
        architectures, one seed, 2 epochs, 600 sequences."""
        data = self.data if self.data.path else self.data.model_copy(update={"num_seqs": 600})
        return self.model_copy(
            update={
                "name": f"{self.name}-smoke",
                "data": data,
                "grid": self.grid.model_copy(update={"architectures": self.grid.architecture_names()[:2], "seeds": [0]}),
                "train": self.train.model_copy(update={"epochs": 2}),
            }
        )


def _format_error(source: str, err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        parent = e["loc"][:-1]
        model: type[BaseModel] = StudyConfig
        for p in parent:
            if isinstance(p, str) and p in model.model_fields:
                ann = model.model_fields[p].annotation
                model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else model
        msg = f"unknown key; valid keys here: {', '.join(model.model_fields)}"
    elif e["type"] == "missing":
        msg = "required key is missing"
    msg = msg.removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def parse_config(raw: dict, source: str = "config") -> StudyConfig:
    """Validate a config mapping; raise ValueError with ``source: key.path: problem``."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping of settings at the top level")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise ValueError(_format_error(source, err)) from None


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ValueError(f"{path}: not valid YAML{where}") from None
    return parse_config(raw or {}, str(path))
