"""Study configuration: a YAML file validated before Ray or MLflow start.

A typo'd key, an unknown architecture or a negative epoch count is rejected with the key path and
the valid choices, e.g. ``configs/x.yaml: train.epochs: must be >= 1 (got -3)``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hybridlens.analysis.attributions import DEFAULT_METHODS, MAX_SEQUENCES, METHODS
from hybridlens.analysis.classification import AUC_METHODS
from hybridlens.analysis.errors import UserError
from hybridlens.analysis.ground_truth import GROUND_TRUTH_RULES
from hybridlens.analysis.tasks import TASKS
from hybridlens.models import ARCHITECTURES, GRID, TASK_SIZES
from hybridlens.models.blocks import ACTIVATIONS
from hybridlens.models.zoo import TOTAL_POOL
from hybridlens.study.simulate import BACKGROUNDS
from hybridlens.study.train import MONITORS, TrainConfig
from hybridlens.study.train_step import PRECISIONS

#: Test sequences a smoke test's attribution methods score (per run and method).
SMOKE_SEQUENCES = 10


class _Strict(BaseModel):
    # allow_inf_nan: inf, -inf and nan (YAML's .inf, .nan, or the strings) are no setting's value; a JSON
    # record would turn them into null
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


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
    """The grid: architectures x activations x seeds x every axis' values. ``architectures: all`` is the
    paper's 17 hybrids; the lab's CNNs (``cnn-pool``, ``cnn-local``, ``cnn-dist``) are named. ``axes``
    maps a setting (``model.filters``, ``train.lr``, ...: :func:`axis_keys`) to its values."""

    architectures: Union[Literal["all"], list[str]] = "all"
    activations: list[str] = ["relu", "exp"]
    seeds: Union[int, list[int]] = 10  # an int n means seeds 0..n-1
    axes: dict[str, list[Any]] = {}

    @field_validator("architectures")
    @classmethod
    def _known_archs(cls, v):
        return v if v == "all" else _distinct_choices(v, ARCHITECTURES, "architecture")

    @field_validator("axes", mode="before")
    @classmethod
    def _axes(cls, v):
        if not isinstance(v, dict):
            raise ValueError("must map settings (model.filters, train.lr, ...) to lists of values")
        problems = []
        for key, values in v.items():
            problem = axis_key_problem(key)
            if problem:
                problems.append(f"{key}: {problem}")
            elif not isinstance(values, list) or not values:
                problems.append(f"{key}: must list at least one value (got {values!r})")
            else:
                converted = [axis_value(key, x) for x in values]
                problems += [f"{key}: {p}" for _, p in converted if p]
                if not any(p for _, p in converted) and _repeats([x for x, _ in converted]):
                    problems.append(f"{key}: lists a value twice")
                v = {**v, key: [x for x, _ in converted]}  # the values as the setting takes them
        if problems:
            raise ValueError("\n".join(problems))
        return v

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
    first_pool: Optional[int] = None  # cnn-pool's first-layer max-pool: a divisor of TOTAL_POOL

    @field_validator("first_pool")
    @classmethod
    def _divides(cls, v):
        if v is not None and (v < 1 or TOTAL_POOL % v):
            divisors = [d for d in range(1, TOTAL_POOL + 1) if TOTAL_POOL % d == 0]
            raise ValueError(
                f"must divide {TOTAL_POOL} (cnn-pool's two pools multiply to {TOTAL_POOL}, as Koo & Eddy's): "
                f"one of {', '.join(map(str, divisors))}"
            )
        return v


class ModelSection(SizeOverrides):
    """Initialisation and size overrides for every architecture, and ``per_architecture`` overrides
    on top (e.g. the released code's Task 2 attention size 96 for ``C24-LSTM-Att`` and ``C4-Att``)."""

    init: Literal["he", "glorot"] = "he"
    per_architecture: dict[str, SizeOverrides] = {}

    @field_validator("per_architecture")
    @classmethod
    def _known_archs(cls, v):
        for a in v:
            if a not in ARCHITECTURES:
                raise ValueError(f"unknown architecture {a!r}; choose from {', '.join(ARCHITECTURES)}")
        return v

    def overrides(self, architecture: str | None = None, axes: dict | None = None) -> dict:
        """Keyword overrides for ``models.build``: the global ones, then ``architecture``'s own, then a
        cell's axis values (``axes``: ``{"model.filters": 16, ...}``)."""
        out = {k: v for k, v in self.model_dump(exclude={"per_architecture"}).items() if v is not None}
        if architecture in self.per_architecture:
            out |= {k: v for k, v in self.per_architecture[architecture].model_dump().items() if v is not None}
        out |= {k.removeprefix("model."): v for k, v in (axes or {}).items() if k.startswith("model.")}
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
    precision: Literal[PRECISIONS] = TrainConfig.precision  # tf32, bf16: GPU only (study.train_step)
    auc: Literal[AUC_METHODS] = TrainConfig.auc  # keras: tf.keras.metrics.AUC (200 thresholds), as the released code

    @field_validator("monitor")
    @classmethod
    def _monitor(cls, v):
        if v is not None and v not in MONITORS:
            raise ValueError(f"unknown metric {v!r}; choose from {', '.join(MONITORS)}")
        return v


def axis_keys() -> tuple[str, ...]:
    """The settings a grid axis or a search dimension may vary: every model size (and ``model.init``)
    and every training setting."""
    return (*(f"model.{k}" for k in (*SizeOverrides.model_fields, "init")), *(f"train.{k}" for k in TrainSection.model_fields))


def axis_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an axis (None when it can)."""
    if key not in axis_keys():
        return f"not a setting a study can vary; choose from {', '.join(axis_keys())}"
    return None


def axis_value(key: str, value) -> tuple[Any, str | None]:
    """``value`` as setting ``key`` takes it (YAML's ``1e-3`` is a string: the float 0.001), and why it is
    not a valid value (None when it is)."""
    section, _, name = key.partition(".")
    model = {"model": ModelSection if name == "init" else SizeOverrides, "train": TrainSection}[section]
    if value is None and not (section == "train" and name == "early_stopping_patience"):
        return value, "null is not a value (list values only)"
    if isinstance(value, bool) and name != "cuda_graph":
        return value, f"{value!r}: not a value of {key}"
    try:
        return getattr(model.model_validate({name: value}), name), None
    except ValidationError as e:
        return value, f"{value!r}: {e.errors()[0]['msg'].removeprefix('Value error, ')}"


def axis_value_problem(key: str, value) -> str | None:
    """Why ``value`` is not a valid value of setting ``key`` (None when it is), as the section says it."""
    return axis_value(key, value)[1]


#: Ray Tune's sampling functions a ``search.space`` entry may name, with their arguments.
DISTRIBUTIONS = ("uniform", "loguniform", "choice", "randint")


class SearchSection(_Strict):
    """Ray Tune's own sampling over the same settings as ``grid.axes``: each dimension one of
    ``{uniform: [low, high]}``, ``{loguniform: [low, high]}``, ``{randint: [low, high]}`` (high excluded,
    as Ray's) or ``{choice: [values]}``; ``num_samples`` draws per grid cell, reproducible from ``seed``.
    ``scheduler: asha`` stops poor trials early on the monitored metric (Ray Tune's ASHA, rungs every
    ``grace_period`` x ``reduction_factor``^k epochs); a run it stops is recorded as stopped, never as
    finished, and stays out of the best-k selection."""

    num_samples: int = Field(ge=1)
    seed: int = Field(default=0, ge=0)
    space: dict[str, dict[str, list[Any]]]
    scheduler: Literal["none", "asha"] = "none"
    grace_period: int = Field(default=1, ge=1)
    reduction_factor: float = Field(default=3.0, gt=1)

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, v):
        if not isinstance(v, dict) or not v:
            raise ValueError("must map at least one setting to a distribution, e.g. train.lr: {loguniform: [1e-4, 1e-2]}")
        problems = []
        for key, dist in v.items():
            problem = axis_key_problem(key) or _distribution_problem(key, dist)
            if problem:
                problems.append(f"{key}: {problem}")
            elif "choice" in dist:
                v = {**v, key: {"choice": [axis_value(key, x)[0] for x in dist["choice"]]}}
        if problems:
            raise ValueError("\n".join(problems))
        return v


def _repeats(values: list) -> bool:
    """Whether ``values`` (as their setting takes them: 16 and 16.0 are one value) hold one twice."""
    return len({json.dumps(x) for x in values}) != len(values)


def _distribution_problem(key: str, dist) -> str | None:
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        return f"must be one of {', '.join(f'{{{d}: [...]}}' for d in DISTRIBUTIONS)} (got {dist!r})"
    ((kind, args),) = dist.items()
    if not isinstance(args, list) or not args:
        return f"{kind} takes a list (got {args!r})"
    if kind == "choice":
        converted = [axis_value(key, x) for x in args]
        problem = next((p for _, p in converted if p), None)
        return problem or (
            "choice lists a value twice (it would be drawn twice as often)" if _repeats([x for x, _ in converted]) else None
        )
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        return f"{kind} takes [low, high] numbers (got {args!r})"
    if not all(math.isfinite(a) for a in args):
        return f"{kind} takes finite bounds (got {args!r})"
    low, high = args
    if not low < high:
        return f"{kind} needs low < high (got {args!r})"
    if kind == "loguniform" and low <= 0:
        return f"loguniform needs low > 0 (got {low})"
    if kind == "randint" and not all(isinstance(a, int) for a in args):
        return f"randint takes whole numbers (got {args!r})"
    if kind != "randint":  # a continuous draw of a whole-number setting would fail in the trial
        probe = axis_value_problem(key, low + (high - low) * 0.5 + (high - low) * 1e-3 * math.pi)
        if probe and "integer" in probe:
            return f"{key} takes whole numbers: draw it with randint or choice, not {kind}"
    if kind == "randint" and high - low <= 1000:  # every value it may draw (cnn-pool's pool divides 100)
        bad = [x for x in range(low, high) if axis_value_problem(key, x)]
        if bad:
            return f"randint may draw {axis_value_problem(key, bad[0])}; list the values with choice"
        return None
    sample = low if kind == "randint" else float(low)
    return axis_value_problem(key, sample) or axis_value_problem(key, high - 1 if kind == "randint" else float(high))


#: The training settings a pack's members share (one stacked step): with the model axes, they decide
#: which cells can share a pack (:meth:`StudyConfig.pack_key`).
PACK_SHARED = ("train.batch_size", "train.cuda_graph", "train.precision")


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
    effect: Literal["error", "nan", "setup"] = "error"

    def matches(self, cell: dict) -> bool:
        return (
            self.architecture == cell["architecture"]
            and self.activation in (None, cell["activation"])
            and self.seed in (None, cell["seed"])
        )


class StudyConfig(_Strict):
    name: str

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        from hybridlens.analysis.mlflow_layout import study_name_problem

        problem = study_name_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    task: Literal["task1", "task2"]
    data: DataSection = DataSection()
    grid: GridSection = GridSection()
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    resources: ResourcesSection = ResourcesSection()
    ray: RaySection = RaySection()
    analysis: AnalysisSection = AnalysisSection()
    faults: list[Fault] = []
    search: Optional[SearchSection] = None

    @model_validator(mode="after")
    def _axes_fit(self):
        problems = []  # an axis (or a search dimension) overrides its section's value for its cells
        if self.search is not None:
            problems += [
                f"search.space.{k}: {k} is also a grid axis; vary it in one place"
                for k in self.search.space
                if k in self.grid.axes
            ]
            if self.resources.models_per_trial != 1:
                problems.append("search: a search trains one model per trial; set resources.models_per_trial: 1")
            varied = {*self.grid.axes, *self.search.space}
            if self.search.scheduler == "asha" and varied & {"train.monitor", "train.epochs"}:
                problems.append("search.scheduler: ASHA ranks every trial on one metric over train.epochs; vary neither with it")
        pooled = ("model.first_pool" in self.grid.axes or self.model.first_pool is not None
                  or (self.search is not None and "model.first_pool" in self.search.space))  # fmt: skip
        problems += [
            f"model.per_architecture.{a}.first_pool: applies to cnn-pool only"
            for a, o in self.model.per_architecture.items()
            if o.first_pool is not None and a != "cnn-pool"
        ]
        others = [a for a in self.grid.architecture_names() if a != "cnn-pool"]
        if pooled and others:
            problems.append(f"model.first_pool: applies to cnn-pool only, not {', '.join(others[:3])}{' ...' if len(others) > 3 else ''}; "
                            "set it under model.per_architecture.cnn-pool, or list cnn-pool alone")  # fmt: skip
        problems += self._precision_problems()
        problems += [f"{where}: its values make no difference to any architecture of the grid "
                     f"({', '.join(self.grid.architecture_names()[:3])}{' ...' if len(self.grid.architecture_names()) > 3 else ''}); remove it"
                     for where, key, users in self._size_users() if not users]  # fmt: skip
        if self.search is not None and self.search.scheduler == "asha" and self.search.grace_period > self.train.epochs:
            problems.append(f"search.grace_period: {self.search.grace_period} is more than train.epochs ({self.train.epochs}); "
                            "ASHA's first rung must come by the last epoch")  # fmt: skip
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _size_users(self) -> list[tuple[str, str, list[str]]]:
        """For every model size a grid axis or a search dimension varies: ``(where, key, architectures of
        the grid that have it)`` (:func:`~hybridlens.models.grid.size_matters`)."""
        from hybridlens.models.grid import size_matters

        varied = [(f"grid.axes.{k}", k, tuple(v)) for k, v in self.grid.axes.items()]
        if self.search is not None:
            for k, dist in self.search.space.items():
                ((kind, args),) = dist.items()
                values = tuple(args) if kind == "choice" else (args[0], args[1] - 1) if kind == "randint" else tuple(args)
                varied.append((f"search.space.{k}", k, values))
        out = []
        for where, k, values in varied:
            size = k.removeprefix("model.")
            if not k.startswith("model.") or size in ("init", "first_pool") or len(set(values)) < 2:
                continue
            users = [a for a in self.grid.architecture_names() if size_matters(a, self.task, size, values)]
            out.append((where, k, users))
        return out

    def axis_notes(self) -> list[str]:
        """A line for each varied size that only some architectures of the grid have: which cells it
        applies to (the others train the same model at each of its values)."""
        names = self.grid.architecture_names()
        return [f"{key}: applies to {', '.join(users)} only; the cells of {', '.join(a for a in names if a not in users)} "
                "train one model at each of its values" for _, key, users in self._size_users() if users and len(users) < len(names)]  # fmt: skip

    def _precision_problems(self) -> list[str]:
        """A precision other than fp32 (the section's, an axis value or a search choice) needs a GPU."""
        values = {self.train.precision, *self.grid.axes.get("train.precision", [])}
        if self.search is not None:
            values |= set(self.search.space.get("train.precision", {}).get("choice", []))
        gpu_only = sorted(v for v in values if v != "fp32")
        if gpu_only and self.resources.gpu == 0:
            return [f"train.precision: {', '.join(map(str, gpu_only))} needs a GPU (TF32 and bfloat16 autocast are GPU settings); "
                    "set resources.gpu, or use fp32 on the CPU"]  # fmt: skip
        return []

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
    def axis_values(self) -> list[dict]:
        """Every combination of the grid's axis values, as ``{"model.filters": 16, ...}`` (``[{}]``
        without axes), in the order the config lists them."""
        keys = list(self.grid.axes)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(self.grid.axes[k] for k in keys))]

    def cells(self) -> list[dict]:
        """The grid: one dict per (architecture, activation, axis values, seed) cell; ``axes`` is there
        only when the grid has axes."""
        return [
            {"architecture": a, "activation": act, "seed": s, **({"axes": axes} if axes else {})}
            for a in self.grid.architecture_names()
            for axes in self.axis_values()
            for act in self.grid.activations
            for s in self.grid.seeds
        ]

    @staticmethod
    def pack_key(cell: dict) -> tuple:
        """What cells must share to share a pack (one stacked module, one batch order per step): the
        architecture, every model axis and the batch size; other training axes (rates, patience,
        epochs) a pack's members keep each their own."""
        axes = cell.get("axes", {})
        shared = {k: v for k, v in axes.items() if k.startswith("model.") or k in PACK_SHARED}
        return cell["architecture"], json.dumps(shared, sort_keys=True)

    def packs(self) -> list[list[dict]]:
        """The Ray Tune trials: the cells of each :meth:`pack_key`, in grid order, in packs of
        ``resources.models_per_trial`` (the last pack of a key may be smaller)."""
        size = self.resources.models_per_trial
        groups: dict[tuple, list[dict]] = {}
        for c in self.cells():
            groups.setdefault(self.pack_key(c), []).append(c)
        return [cells[i : i + size] for cells in groups.values() for i in range(0, len(cells), size)]

    def size_factors(self) -> list[tuple[int, str]]:
        """The grid's factors, ``(count, what)``: architectures, activations, seeds, then each axis."""
        g = self.grid
        out = [(len(g.architecture_names()), "architectures"), (len(g.activations), "activations"), (len(g.seeds), "seeds")]
        return out + [(len(v), k) for k, v in g.axes.items()]

    def num_cells(self) -> int:
        """``len(self.cells())``, without building them (pre-flight on a huge grid)."""
        return math.prod(n for n, _ in self.size_factors())

    def num_packs(self) -> int:
        """``len(self.packs())``, without building them."""
        g = self.grid
        grouping = [len(v) for k, v in g.axes.items() if k.startswith("model.") or k in PACK_SHARED]
        per_key = self.num_cells() // (len(g.architecture_names()) * math.prod(grouping))
        return len(g.architecture_names()) * math.prod(grouping) * -(-per_key // self.resources.models_per_trial)

    def num_samples(self) -> int:
        """Ray Tune's ``num_samples``: draws per grid cell of a search, else 1."""
        return self.search.num_samples if self.search else 1

    def train_config(self, seed: int, axes: dict | None = None) -> TrainConfig:
        """The trainer's settings for one cell: the validated ``train`` section, the cell's training
        axis values and its seed."""
        train = self.train.model_dump() | {k.removeprefix("train."): v for k, v in (axes or {}).items() if k.startswith("train.")}
        return TrainConfig(**train, seed=seed)

    def cell_overrides(self, cell: dict) -> dict:
        """A cell's keyword overrides for ``models.build``: the model section's, then its axis values."""
        return self.model.overrides(cell["architecture"], cell.get("axes"))

    def cell_train(self, cell: dict) -> TrainConfig:
        return self.train_config(cell["seed"], cell.get("axes"))

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
        architectures, one seed, each axis' first and last values, at most 2 samples of a search, 2 epochs,
        600 sequences, attributions on at most :data:`SMOKE_SEQUENCES` sequences."""
        data = self.data if self.data.path else self.data.model_copy(update={"num_seqs": 600})
        return self.model_copy(
            update={
                "name": f"{self.name}-smoke",
                "data": data,
                "grid": self.grid.model_copy(
                    update={
                        "architectures": self.grid.architecture_names()[:2],
                        "seeds": [0],
                        "axes": {
                            k: [2] if k == "train.epochs" else list(dict.fromkeys([v[0], v[-1]]))
                            for k, v in self.grid.axes.items()
                        },
                    }
                ),
                "search": self.search.model_copy(
                    update={"num_samples": min(2, self.search.num_samples), "grace_period": min(2, self.search.grace_period)}
                )
                if self.search
                else None,
                "train": self.train.model_copy(update={"epochs": 2}),
                "analysis": self.analysis.model_copy(update={"max_sequences": min(self.analysis.max_sequences, SMOKE_SEQUENCES)}),
            }
        )


def settings_from_resolved(resolved: dict) -> dict:
    """A resolved config (:meth:`StudyConfig.resolved`, as written to ``studies/NAME.yaml``) back to
    settings that :func:`parse_config` accepts: the derived ``model.sizes`` dropped."""
    out = {**resolved, "model": {k: v for k, v in resolved.get("model", {}).items() if k != "sizes"}}
    return out


def _format_error(source: str, err: ValidationError) -> str:
    """Every problem of ``err``, each with its key path: ``source: a.b: problem`` for one, else
    ``source: N mistakes:`` and one indented line per mistake."""
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
        msg = msg.removeprefix("Value error, ")
        if e["type"] == "value_error":  # a validator's problems, a line each, "key: problem" where keyed
            for line in msg.splitlines():
                key = line.split(": ", 1)[0]
                if loc == "(top level)":
                    problems.append(line)
                elif key.partition(".")[0] in ("model", "train") and " " not in key:
                    problems.append(f"{loc}.{line}")
                else:
                    problems.append(f"{loc}: {line}")
        else:
            problems.append(f"{loc}: {msg}")
    if len(problems) == 1:
        return f"{source}: {problems[0]}"
    return f"{source}: {len(problems)} mistakes:\n" + "\n".join(f"  {p}" for p in problems)


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
