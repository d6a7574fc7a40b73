"""Best-k selection: group a study's runs by configuration (architecture, activation and the cell's
axis values) and keep the k best, ranked on the validation metric by default (SPEC.md), skipping
failed, diverged and stopped runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hybridlens.analysis.errors import UserError
from hybridlens.analysis.mlflow_layout import AXES_PARAM, DRAWN_PARAM, TAG_OUTCOME, axes_label, cell_name
from hybridlens.analysis.tasks import TASKS, task_spec

RANK_ON = ("valid", "test")


@dataclass
class Selection:
    task: str
    top_k: int
    rank_on: str
    # a configuration: (architecture, activation, axes label) -> its runs, best first
    chosen: dict[tuple[str, str, str], list] = field(default_factory=dict)
    skipped: list[tuple[object, str]] = field(default_factory=list)  # (run, reason)
    usable: list = field(default_factory=list)  # every finished run (for paired tests over seeds)
    available: dict[tuple[str, str, str], int] = field(default_factory=dict)  # configuration -> finished runs
    axes: dict[str, dict] = field(default_factory=dict)  # axes label -> the axis values it stands for

    def best_of(self) -> str:
        """``"best k of n"`` with the real numbers: k kept of n finished runs per configuration, as
        ranges where configurations differ (``"best 2-3 of 2-10"``)."""

        def span(values: set[int]) -> str:
            lo, hi = min(values), max(values)
            return str(lo) if lo == hi else f"{lo}-{hi}"

        if not self.chosen:
            return f"best {self.top_k}"
        kept = {len(rs) for rs in self.chosen.values()}
        return f"best {span(kept)} of {span(set(self.available.values()))}"

    @property
    def rank_key(self) -> str:
        m = TASKS[self.task].metric
        return f"best_val_{m}" if self.rank_on == "valid" else f"test_{m}"


def _values(run) -> tuple[dict, set]:
    """The run's axis values (grid and drawn, in the config's order) and the keys a search drew."""
    p = run.data.params
    return json.loads(p.get(AXES_PARAM, "{}")), set(json.loads(p.get(DRAWN_PARAM, "[]")))


def run_axes(run) -> dict:
    """The run's grid axis values (``{"model.first_pool": 4}``; empty for a grid without axes): what
    makes its configuration. The values a random search drew are :func:`run_drawn`'s."""
    values, drawn = _values(run)
    return {k: v for k, v in values.items() if k not in drawn}


def run_drawn(run) -> dict:
    """The values Ray Tune drew for the run in a random search (``{"train.lr": 0.00041}``; else empty)."""
    values, drawn = _values(run)
    return {k: v for k, v in values.items() if k in drawn}


def config_key(run) -> tuple[str, str, str]:
    """The run's configuration: ``(architecture, activation, axes label)`` (the label empty without
    axes). A random search's runs of one grid cell are one configuration whatever values they drew:
    best-k selection picks among the draws."""
    p = run.data.params
    return p["architecture"], p["activation"], axes_label(run_axes(run))


def run_label(run) -> str:
    """The run's cell name (``C24-exp-s0``, ``cnn-pool-relu-first_pool4-s0``; a search's with the values
    it drew), from its params."""
    p = run.data.params
    values, _ = _values(run)
    return cell_name(p.get("architecture", "?"), p.get("activation", "?"), p.get("seed", "?"), values)


def select_best(runs: list, *, task: str | None = None, top_k: int | None = None, rank_on: str = "valid") -> Selection:
    """Keep the ``top_k`` best finished runs of every configuration (architecture, activation, axis values).

    Runs that failed, diverged, were killed or stopped by a scheduler, or are still running are skipped
    with a reason; so are
    runs of another task than ``task`` (default: the task of the runs, which must agree).
    """
    if rank_on not in RANK_ON:
        raise UserError(f"unknown rank_on {rank_on!r}; choose one of {', '.join(RANK_ON)}")
    tasks = sorted({r.data.params.get("task") for r in runs if r.data.params.get("task")})
    if task is None:
        if len(tasks) != 1:
            raise UserError(f"runs belong to tasks {tasks or 'none'}; name one with --task")
        task = tasks[0]
    sel = Selection(task, top_k or task_spec(task).top_k, rank_on)
    groups: dict[tuple[str, str], list] = {}
    for r in runs:
        outcome = r.data.tags.get(TAG_OUTCOME, "")
        if r.data.params.get("task") != task:
            sel.skipped.append((r, f"a {r.data.params.get('task')} run, not {task}"))
        elif r.info.status != "FINISHED":
            sel.skipped.append((r, outcome or r.info.status.lower()))
        elif sel.rank_key not in r.data.metrics:
            sel.skipped.append((r, f"no {sel.rank_key} metric"))
        else:
            sel.usable.append(r)
            key = config_key(r)
            sel.axes[key[2]] = run_axes(r)
            groups.setdefault(key, []).append(r)
    for key, rs in sorted(groups.items()):
        rs.sort(key=lambda r: (-r.data.metrics[sel.rank_key], int(r.data.params.get("seed", 0))))
        sel.chosen[key] = rs[: sel.top_k]
        sel.available[key] = len(rs)
    return sel
