"""Study configuration: a YAML file validated before Ray or MLflow start.

A typo'd key, an unknown architecture or a negative epoch count is rejected with the key path and
the valid choices, e.g. ``configs/x.yaml: train.epochs: must be >= 1 (got -3)``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybridlens.analysis.attributions import DEFAULT_METHODS, MAX_SEQUENCES, METHODS
from hybridlens.analysis.classification import AUC_METHODS
from hybridlens.analysis.errors import UserError
from hybridlens.analysis.ground_truth import GROUND_TRUTH_RULES
from hybridlens.analysis.tasks import TASKS
from hybridlens.models import GRID, TASK_SIZES
from hybridlens.models.blocks import ACTIVATIONS
from hybridlens.study.simulate import BACKGROUNDS
from hybridlens.study.train import MONITORS, TrainConfig


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
    """The training settings a config may set; their defaults are :class:`TrainConfig`'s."""

    epochs: int = Field(default=TrainConfig.epochs, ge=1)
    batch_size: int = Field(default=TrainConfig.batch_size, ge=1)
    lr: float = Field(default=TrainConfig.lr, gt=0)
    monitor: Optional[str] = None  # the task's metric when omitted
    plateau_factor: float = Field(default=TrainConfig.plateau_factor, gt=0, lt=1)
    plateau_patience: int = Field(default=TrainConfig.plateau_patience, ge=0)
    min_lr: float = Field(default=TrainConfig.min_lr, ge=0)
    early_stopping_patience: Optional[int] = Field(default=TrainConfig.early_stopping_patience, ge=1)  # null: off
    cuda_graph: bool = TrainConfig.cuda_graph  # false: eager steps on a GPU too
    auc: Literal[AUC_METHODS] = TrainConfig.auc  # keras: tf.keras.metrics.AUC (200 thresholds), as the released code

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
    models_per_trial: int = Field(default=1, ge=1)  # a trial trains a pack of this many cells of one architecture


class RaySection(_Strict):
    object_store_memory_mb: int = Field(default=256, ge=78)  # local Ray only; Ray's minimum is 75 MiB
    num_cpus: Optional[int] = Field(default=None, ge=1)  # local Ray only; default: all cores
    checkpoint_every: int = Field(default=5, ge=1)  # epochs; and whenever a cell of the pack ends
    report_every: int = Field(default=1, ge=1)  # epochs between reports (each: one MLflow batch)
    max_failures: int = Field(default=2, ge=0)


class AnalysisSection(_Strict):
    top_k: Optional[int] = Field(default=None, ge=1)  # task default when omitted
    rank_on: Literal["valid", "test"] = "valid"
    ground_truth: Literal[GROUND_TRUTH_RULES] = "base_ids"
    attributions: list[Literal[METHODS]] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    max_sequences: int = Field(default=MAX_SEQUENCES, ge=1)  # per run and method (per class on Task 1)


class Fault(_Strict):
    """Fault injection, to exercise recovery, in the matching cells. ``effect: error`` raises after
    ``epoch`` epochs, ``once`` (a marker file in the study's workdir records it, so the retry goes on)
    or ``always`` (after every epoch from ``epoch`` on, so retries from a checkpoint fail too).
    ``effect: nan`` sets the cell's weights to NaN before epoch ``epoch``: its training loss is NaN
    and it diverges (its pack-mates go on). ``times: N`` with ``once``: the first N attempts that
    reach epoch ``epoch`` fail (one marker file each; a retry resumed past it fails after its next
    epoch), the next one goes on."""

    architecture: str
    activation: Optional[str] = None
    seed: Optional[int] = None
    epoch: int = Field(default=1, ge=1)
    mode: Literal["once", "always"] = "once"
    times: int = Field(default=1, ge=1)
    effect: Literal["error", "nan"] = "error"

    def matches(self, cell: dict) -> bool:
        return (
            self.architecture == cell["architecture"]
            and self.activation in (None, cell["activation"])
            and self.seed in (None, cell["seed"])
        )


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
        spec = TASKS[self.task]
        if self.train.monitor is None:
            object.__setattr__(self, "train", self.train.model_copy(update={"monitor": spec.monitor}))
        if self.analysis.top_k is None:
            object.__setattr__(self, "analysis", self.analysis.model_copy(update={"top_k": spec.top_k}))
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

    def packs(self) -> list[list[dict]]:
        """The Ray Tune trials: the cells of each architecture, in grid order, in packs of
        ``resources.models_per_trial`` (the last pack of an architecture may be smaller)."""
        size = self.resources.models_per_trial
        out = []
        for arch in self.grid.architecture_names():
            cells = [c for c in self.cells() if c["architecture"] == arch]
            out += [cells[i : i + size] for i in range(0, len(cells), size)]
        return out

    def num_cells(self) -> int:
        """``len(self.cells())``, without building them (pre-flight on a huge grid)."""
        return len(self.grid.architecture_names()) * len(self.grid.activations) * len(self.grid.seeds)

    def num_packs(self) -> int:
        """``len(self.packs())``, without building them."""
        per_arch = len(self.grid.activations) * len(self.grid.seeds)
        return len(self.grid.architecture_names()) * -(-per_arch // self.resources.models_per_trial)

    def train_config(self, seed: int) -> TrainConfig:
        """The trainer's settings for one cell: the validated ``train`` section and the cell's seed."""
        return TrainConfig(**self.train.model_dump(), seed=seed)

    def resolved(self) -> dict:
        """Every setting with defaults filled in (what runs write next to their outputs)."""
        out = self.model_dump(mode="json")
        out["grid"]["architectures"] = self.grid.architecture_names()
        out["model"]["sizes"] = asdict(TASK_SIZES[self.task]) | self.model.overrides()
        if self.model.per_architecture:
            out["model"]["per_architecture"] = {
                a: o.model_dump(exclude_none=True) for a, o in self.model.per_architecture.items()
            }
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


def settings_from_resolved(resolved: dict) -> dict:
    """A resolved config (:meth:`StudyConfig.resolved`, as written to ``studies/NAME.yaml``) back to
    settings that :func:`parse_config` accepts: the derived ``model.sizes`` dropped."""
    out = {**resolved, "model": {k: v for k, v in resolved.get("model", {}).items() if k != "sizes"}}
    return out


def _format_error(source: str, err: ValidationError) -> str:
    """Every problem of ``err``, each with its key path: ``source: a.b: problem; c: problem``."""
    problems = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            model: type[BaseModel] = StudyConfig
            for p in e["loc"][:-1]:
                if isinstance(p, str) and p in model.model_fields:
                    ann = model.model_fields[p].annotation
                    model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else model
            msg = f"unknown key; valid keys here: {', '.join(model.model_fields)}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        problems.append(f"{loc}: {msg.removeprefix('Value error, ')}")
    return f"{source}: " + "; ".join(problems)


def parse_config(raw: dict, source: str = "config") -> StudyConfig:
    """Validate a config mapping; raise :class:`UserError` naming every problem with its key path."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of settings at the top level")
    try:
        return StudyConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_error(source, err)) from None


#: A study config is a page of settings; anything larger is refused before YAML parses it (a 10 MB
#: file took 30-47 s and over 1 GB to reject).
MAX_CONFIG_BYTES = 1_000_000


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config {path} is a folder; give a study YAML file such as configs/quick.yaml")
    if not path.is_file():
        raise UserError(f"config file {path} does not exist")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is {size:,} bytes; a study config is a YAML file of settings (at most 1 MB)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a text file (byte {e.start} is not UTF-8); give a study YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: not valid YAML{where}") from None
    return parse_config(raw or {}, str(path))
