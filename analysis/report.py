"""The analysis of a study, from MLflow alone: per-run interpretability metrics logged back on each
child run, best-k tables, the paired exp-vs-relu comparison, and figures on the parent run.

Rerunning replaces the previous results: metrics are logged with a fixed timestamp and step (the
tracking store keeps one value for an identical entry) and artifacts are written to the same paths.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from hybridlens.analysis import runs as mlruns
from hybridlens.analysis.atomic import atomic_dir
from hybridlens.analysis.attributions import DEFAULT_METHODS, MAX_SEQUENCES, parse_methods
from hybridlens.analysis.classification import auc_note
from hybridlens.analysis.errors import UserError
from hybridlens.analysis.mlflow_layout import TAG_ATTR_NOT_SUPPORTED, TAG_ATTR_UNAVAILABLE, axis_value_text
from hybridlens.analysis.motifs import ANALYSIS_RELEASE
from hybridlens.analysis.selection import Selection, config_key, run_axes, run_drawn, run_label, select_best
from hybridlens.analysis.stats import CONFIG_COLUMNS
from hybridlens.analysis.tasks import TASKS, TaskSpec

Echo = Callable[[str], None]
CLASS_METRICS = ["test_auroc", "test_aupr"]


@dataclass
class AnalysisResult:
    study: str
    task: str
    out_dir: Path
    per_run: pd.DataFrame
    summary: pd.DataFrame
    paired: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run label, reason)


class RunError(Exception):
    """A run that cannot be analysed (missing weights, unreadable config, wrong task)."""


# ------------------------------------------------------------------------------------- one run


#: The columns that name a configuration inside the analysis (the written tables show each axis as a
#: column of its own instead of the ``axes`` label).
CONFIG = list(CONFIG_COLUMNS)


def _with_axes(table: pd.DataFrame, sel: Selection, axis_columns: list[str]) -> pd.DataFrame:
    """``table`` with one column per axis (its value for the row's configuration) after ``activation``."""
    if "axes" not in table or not axis_columns:
        return table
    table = table.copy()
    at = list(table.columns).index("axes") + 1
    for i, key in enumerate(axis_columns):
        values = [sel.axes.get(label, {}).get(key, np.nan) for label in table["axes"]]
        if any(v is None for v in values):  # a null value (no early stopping): the axis is categorical
            values = [axis_value_text(v) for v in values]
        if key in table:
            table[key] = values
        else:
            table.insert(at + i, key, values)
    return table


#: The size params a run records that ``models.build`` takes back.
SIZE_PARAMS = (
    "filters", "lstm_units", "key_size", "dense_units", "num_outputs", "heads", "ffn_units", "kernel_size", "seq_len",
    "first_pool",
)  # fmt: skip


def build_from_params(params: dict, *, seed: int | None = None):
    """A freshly initialised model of the architecture, task, activation, sizes and init a run records."""
    from hybridlens.models import build

    sizes = {k: int(params[k]) for k in SIZE_PARAMS if k in params and params[k] != "None"}
    if "init" in params:
        sizes["init"] = params["init"]
    return build(params["architecture"], params["task"], params["activation"], seed=seed, **sizes)


def load_model(uri: str, run, device: str = "cpu"):
    """The run's final weights in a freshly built model (weights-only loading)."""
    import torch

    try:
        path = mlruns.download(uri, run.info.run_id, "model/weights.pt")
    except Exception as e:  # MLflow raises several types for a missing artifact
        raise RunError(f"no weights (model/weights.pt) logged: {type(e).__name__}") from None
    try:
        model = build_from_params(run.data.params)
        model.load_state_dict(torch.load(path, weights_only=True, map_location=device))
    except Exception as e:  # truncated, tampered or mismatched: torch raises several types
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise RunError(f"model/weights.pt cannot be loaded ({type(e).__name__}: {first})") from None
    return model.to(device).eval()


class _Data:
    """Test splits loaded once per dataset file, checked against the runs' dataset hash. A run records
    its dataset relative to the workdir when it lies inside it, and is read from ``workdir`` (the one
    the analysis was given: a moved or copied workdir reads its own data), else from the workdir the
    run was launched in (an analysis of a server's store, ``--tracking-uri``); an absolute path that no
    longer exists (a workdir moved before datasets were recorded relatively) is looked for in
    ``workdir/data`` by its file name."""

    def __init__(self, workdir: Path | None = None):
        self.cache: dict[str, object] = {}
        self.workdir = workdir

    def path(self, recorded: str, launched_in: str | None = None) -> Path:
        p = Path(recorded)
        if not p.is_absolute():  # in the analysis' workdir, else in the one the run was launched in
            places = [w for w in (self.workdir, launched_in and Path(launched_in)) if w] or [Path.cwd()]
            return next((w / p for w in places if (w / p).is_file()), places[0] / p)
        if not p.is_file() and self.workdir is not None and (self.workdir / "data" / p.name).is_file():
            return self.workdir / "data" / p.name
        return p

    def get(self, uri: str, run):
        from hybridlens.analysis.datasets import load_dataset

        try:
            cfg = mlruns.trial_config(uri, run.info.run_id)
        except Exception as e:
            raise RunError(f"no readable config/trial.json: {type(e).__name__}") from None
        path = str(self.path(cfg["data_path"], cfg.get("workdir")))
        if path not in self.cache:
            if not Path(path).is_file():
                raise RunError(f"dataset {path} is missing; regenerate it with the same seed (hash {cfg['dataset_hash'][:12]})")
            ds = load_dataset(path, splits=("test",), require_model=True)
            if "content_hash" not in ds.attrs:  # an original-layout file: its hash needs every split
                ds = load_dataset(path, require_model=True)
            self.cache[path] = ds
        ds = self.cache[path]
        if ds.content_hash != cfg["dataset_hash"]:
            raise RunError(f"dataset {path} has hash {ds.content_hash[:12]}, the run was trained on {cfg['dataset_hash'][:12]}")
        return ds


def _ground_truth(ds, spec: TaskSpec, rule: str):
    """The ground truth (:class:`analysis.ground_truth.GroundTruth` under ``rule``) and its motif IDs,
    from the dataset's attributes (or the canonical lists for the original papers' files)."""
    from hybridlens.analysis.ground_truth import GroundTruth

    if spec.ground_truth_attr in ds.attrs:  # our files: core motifs come first in motif_names
        ids = ds.attrs[spec.ground_truth_attr]
        names = ds.attrs["motif_names"][: len(ids)]
    else:  # the original papers' files carry no attributes
        ids, names = list(spec.ground_truth.values()), list(spec.ground_truth)
    return GroundTruth.from_motifs(dict(zip(ids, names)), rule), list(ids)


def _filters(model, ds, database, ground_truth):
    from hybridlens.analysis.filters import filter_motifs
    from hybridlens.analysis.motif_match import filter_matches

    motifs = filter_motifs(model, ds.test.x)
    fm, sig = filter_matches(motifs, database, ground_truth)
    return motifs, fm, sig


def logged_metric(name: str, ground_truth: str) -> str:
    """The MLflow key of a table metric: TPR/FPR under the ``reference_lists`` rule are logged as
    ``tpr_reference_lists``/``fpr_reference_lists``, so both rules' values can sit on one run."""
    return f"{name}_{ground_truth}" if name in TASKS["task1"].interp_metrics and ground_truth != "base_ids" else name


def _log_run(c, run, metrics: dict[str, float], folder: Path | None) -> None:
    """Metrics at step 0, only those whose value differs from the run's latest (a rerun with the same
    settings adds nothing; one with other settings adds a newer entry, which becomes the latest), and
    the files of ``folder`` under the run's ``analysis/`` (overwritten on a rerun)."""
    from mlflow.entities import Metric

    def same(old, new: float) -> bool:
        return old is not None and (old == new or (np.isnan(old) and np.isnan(new)))

    now = int(time.time() * 1000)
    changed = [Metric(k, float(v), now, 0) for k, v in metrics.items() if not same(run.data.metrics.get(k), float(v))]
    if changed:
        c.log_batch(run.info.run_id, metrics=changed)
    if folder is not None:
        c.log_artifacts(run.info.run_id, str(folder), "analysis")


# ------------------------------------------------------------------------------------- a study


@dataclass
class _Shared:
    """What the analysis of every run of a study shares: the store, the task, the device, the data
    files, and (from the first dataset read) the ground truth and the TomTom database."""

    uri: str
    spec: TaskSpec
    device: str
    rule: str
    release: str
    best_ids: dict  # run id -> (architecture, activation) for the best run of each configuration
    data: _Data = field(default_factory=_Data)
    gt: object = None
    database: list | None = None
    attributions: tuple[str, ...] = DEFAULT_METHODS
    max_sequences: int = MAX_SEQUENCES
    echo: Echo = print
    unsupported: dict = field(default_factory=dict)  # run id -> {method: reason}
    unavailable: dict = field(default_factory=dict)  # run id -> why no attribution could be scored
    floors: dict = field(default_factory=dict)  # (architecture, activation) -> floor scores
    attention_examples: list = field(default_factory=list)  # (rank value, label, AttentionExample)


@dataclass
class RunResult:
    """One run's analysis: its metrics, the folder of files to log on it (or None), ``(label, filter
    motifs, FilterMatches)`` for the logo grid of a configuration's best run, and its attention example."""

    metrics: dict[str, float]
    folder: Path | None = None
    best: tuple | None = None
    attention: object | None = None  # attribution_scores.AttentionExample


def analyze_run(run, shared: _Shared, tmp: Path) -> RunResult:
    """One run: its interpretability metrics and files (:class:`RunResult`). Raises :class:`RunError`
    when the run cannot be analysed."""
    from hybridlens.analysis.attribution_scores import SATURATED_LOGIT, attention_scores
    from hybridlens.analysis.attributions import logit_gradients
    from hybridlens.analysis.motif_match import comparison_database
    from hybridlens.analysis.saliency import probability_saliency, saliency_metrics, summarize

    ds = shared.data.get(shared.uri, run)
    model = load_model(shared.uri, run, shared.device)
    if shared.database is None:
        shared.gt, gt_ids = _ground_truth(ds, shared.spec, shared.rule)
        shared.database = comparison_database(shared.release, gt_ids)
    res = RunResult({})
    is_best = run.info.run_id in shared.best_ids
    if shared.spec.interpretation == "filters" or is_best:
        motifs, fm, sig = _filters(model, ds, shared.database, shared.gt)
        res.folder = tmp / run.info.run_id
        res.folder.mkdir()
        # the filters themselves are the run's filters/filters.meme, written by the trial (same weights, same data)
        sig.to_csv(res.folder / "tomtom.tsv", sep="\t", index=False)
        pd.DataFrame(fm.per_filter).to_csv(res.folder / "filter_matches.tsv", sep="\t", index=False)
        if shared.spec.interpretation == "filters":
            res.metrics.update(tpr=fm.tpr, fpr=fm.fpr)
        if is_best:
            res.best = (run_label(run), motifs, fm)
    gradients = {}
    if shared.spec.interpretation == "saliency":
        # the paper's saliency (the probability's gradient) on every positive, from the logit's gradient,
        # which the attribution methods' saliency reuses for its first max_sequences positives
        pos = np.flatnonzero(ds.test.y[:, 0] == 1)
        g, logits = logit_gradients(model, ds.test.x[pos], 0)
        res.metrics.update(summarize(saliency_metrics(probability_saliency(g, logits, ds.test.x[pos]), ds.test.model[pos])))
        res.metrics.update(saliency_n=float(len(pos)), saliency_saturated=float((logits.abs() > SATURATED_LOGIT).sum()))
        gradients[0] = (pos, g, logits)
    res.metrics.update(_attributions(run, model, ds, shared, gradients))
    att, res.attention = attention_scores(model, ds.test, shared.spec.name, max_sequences=shared.max_sequences)
    res.metrics.update(att)
    return res


def _attributions(run, model, ds, shared: _Shared, gradients: dict) -> dict[str, float]:
    """Every configured attribution method's scores on the run's scoring targets; methods the
    architecture does not support go to ``shared.unsupported``, a dataset that cannot be scored to
    ``shared.unavailable``."""
    from hybridlens.analysis.attribution_scores import Unavailable, score_attributions, scoring_targets

    if not shared.attributions:
        return {}
    try:
        targets = scoring_targets(ds.test, shared.spec.name, max_sequences=shared.max_sequences)
    except Unavailable as e:
        shared.unavailable[run.info.run_id] = str(e)
        shared.echo(f"      {run_label(run)} attributions unavailable: {e}")
        return {}
    label = run_label(run)

    def said(method: str, seconds: float, scores: dict, unsupported: dict) -> None:
        if method in unsupported:
            shared.echo(f"      {label} {method}: not supported ({unsupported[method]})")
        else:
            shared.echo(f"      {label} {method}: AUROC {scores[f'attr_{method}_auroc']:.3f} ({seconds:.0f} s)")

    scores, unsupported = score_attributions(shared.attributions, model, ds.test, targets, gradients=gradients, on_method=said)
    if unsupported:
        shared.unsupported[run.info.run_id] = unsupported
    return scores


def compute_floors(sel: Selection, shared: _Shared) -> None:
    """The attribution table's floors per configuration, on its best run's dataset and scoring targets:
    a randomly initialised model of the architecture (seed FLOOR_SEED) and a random map."""
    from hybridlens.analysis.attribution_scores import FLOOR_SEED, Unavailable, floor_scores, scoring_targets

    if not shared.attributions:
        return
    for key, runs in sel.chosen.items():
        try:
            ds = shared.data.get(shared.uri, runs[0])
            targets = scoring_targets(ds.test, shared.spec.name, max_sequences=shared.max_sequences)
        except (RunError, Unavailable):
            continue
        try:  # a run whose sizes today's models refuse (it was skipped with its reason): no floor
            model = build_from_params(runs[0].data.params, seed=FLOOR_SEED).to(shared.device).eval()
        except ValueError:
            continue
        shared.floors[key] = floor_scores(shared.attributions, model, ds.test, targets)


#: The file an analysis leaves in its output folder: the next analysis replaces only a folder holding it.
ANALYSIS_MARKER = ".hybridlens-analysis"
#: What an analysis writes (tables, figures, analysis.json), by which a folder from before the marker is known.
_TABLES = ("per_run", "summary", "paired_exp_vs_relu", "attributions", "attention")
_FIGURES = tuple(spec.figure for spec in TASKS.values()) + ("attribution_auroc", "attention_example")  # before the marker


def _written_by_analysis(name: str) -> bool:
    stem, _, ext = name.rpartition(".")
    if ext in ("csv", "md"):
        return stem in _TABLES
    if ext in ("png", "pdf"):
        return stem in _FIGURES or stem.startswith("logos_")
    return name == "analysis.json"


def check_out_dir(
    path: str | Path,
    *,
    study: str | None = None,
    replace: bool = False,
    hint: str = "give another --out, or pass --replace to replace it",
) -> Path:
    """The analysis output folder, resolved, if the analysis may write it: new, or a folder an analysis
    wrote (its marker, or, from before the marker, an ``analysis.json`` of ours among files with the
    names an analysis writes, and nothing else). A file, the current folder (or one holding it), a
    folder that takes no files or a folder of anything else is refused in one line; so is the folder
    of another study's analysis (its marker, or its ``analysis.json``, names the study), unless
    ``replace``."""
    from hybridlens.analysis.atomic import check_replaceable

    p = Path(path).resolve()
    legacy = False
    if p.is_dir() and not (p / ANALYSIS_MARKER).exists() and (p / "analysis.json").is_file():
        legacy = {"study", "task", "parent_run_id"} <= set(_read_json(p / "analysis.json")) and all(
            f.is_file() and _written_by_analysis(f.name) for f in p.iterdir()
        )
    out = check_replaceable(p, ANALYSIS_MARKER, "analysis output folder", ours=legacy)
    earlier = written_for(out) if out.is_dir() else None
    if study is not None and earlier is not None and earlier != study and not replace:
        raise UserError(f"analysis output folder {path} holds the analysis of study {earlier!r}, not {study!r}; {hint}")
    return out


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def written_for(folder: Path) -> str | None:
    """The study an analysis output folder was written for: its marker's record, else (a marker from
    before it held one) its ``analysis.json``'s; None when neither says."""
    study = _read_json(folder / ANALYSIS_MARKER).get("study") if (folder / ANALYSIS_MARKER).is_file() else None
    return study if isinstance(study, str) else _read_json(folder / "analysis.json").get("study")


def analysis_lock_path(workdir: Path | None, study: str, out_dir: Path | None, uri: str = "") -> Path:
    """Where the analyses of ``study`` take turns: ``WORKDIR/studies/STUDY.analysis.lock`` for a workdir's
    store, else beside the output folder, else in this user's lock folder (one per store and study)."""
    import hashlib

    from hybridlens.analysis.locks import user_lock_dir

    if workdir is not None and (workdir / "studies").is_dir():
        return workdir / "studies" / f"{study}.analysis.lock"
    if out_dir is not None:
        return Path(out_dir).resolve().parent / f".{study}.analysis.lock"
    store = hashlib.sha256(uri.encode()).hexdigest()[:12]
    return user_lock_dir() / f"analysis-{store}-{study}.lock"


def write_tables(tables: dict[str, pd.DataFrame], out: Path, caption: str) -> list[Path]:
    """Each table as CSV and as Markdown under a one-line ``caption``."""
    from hybridlens.analysis.stats import to_markdown

    files = []
    for name, df in tables.items():
        df.to_csv(out / f"{name}.csv", index=False)
        (out / f"{name}.md").write_text(to_markdown(df, caption=caption))
        files += [out / f"{name}.csv", out / f"{name}.md"]
    return files


def _slug(label: str) -> str:
    """An axes label as part of a file name (no dots: they would read as a suffix): ``first_pool=4,
    lr=0.0003`` -> ``_first_pool4_lr0p0003``."""
    return "".join("_" + part.replace("=", "").replace(".", "p") for part in label.split(", ")) if label else ""


def draw_figures(
    summary: pd.DataFrame,
    best_filters: dict,
    spec: TaskSpec,
    out: Path,
    title: str,
    echo: Echo,
    axes: dict | None = None,
    per_run: pd.DataFrame | None = None,
    drawn: list[str] | None = None,
) -> list[Path]:
    """The exp-vs-relu scatter figure (a study with axes: each metric against each axis, and heat maps
    over two axes; a random search: each run's metrics against the values it drew) and a filter-logo
    grid of the best run of each configuration."""
    from hybridlens.analysis.figures import (
        axis_figures,
        category_figure,
        filter_logos_many,
        filter_title,
        scatter_exp_vs_relu,
        search_figures,
    )

    metrics = spec.interp_metrics + ("test_auroc",)
    if "axes" in summary and summary["axes"].astype(bool).any():  # each interpretation metric along each axis
        files = axis_figures(summary, metrics, axes, out, title=title)
    elif has_exp_and_relu(summary):
        files = scatter_exp_vs_relu(summary, spec.figure_metrics, out / spec.figure, title=title)
    else:  # a figure of exp against relu with nothing to put in it
        echo(f"  no {spec.figure} figure: no architecture has both exp and relu runs")
        files = []
    if drawn and per_run is not None:
        files += search_figures(per_run, metrics, drawn, out, title=title.split(";")[0])
    if summary["activation"].nunique() > 2:  # an activation study: every metric for every activation
        files += category_figure(summary, metrics, "activation", out / "by_activation", title=title)
    jobs = [
        (
            [m.pwm for m in motifs],
            [filter_title(r, m.nsites) for r, m in zip(fm.per_filter, motifs)],
            out / f"logos_{arch}_{act}{_slug(label_axes)}",
            f"{label} (best {arch} {act}{', ' + label_axes if label_axes else ''})",
        )
        for (arch, act, label_axes), (label, motifs, fm) in sorted(best_filters.items())
    ]
    echo(f"  drawing {len(jobs)} filter-logo grids")
    return files + filter_logos_many(jobs)


def has_exp_and_relu(summary: pd.DataFrame) -> bool:
    """Whether some architecture of ``summary`` has both exp and relu rows (an exp-vs-relu point)."""
    return any({"exp", "relu"} <= set(g["activation"]) for _, g in summary.groupby("architecture"))


def attribution_table(selected: pd.DataFrame, shared: _Shared) -> pd.DataFrame | None:
    """One row per (method, architecture, activation): mean, std and standard error of the attribution
    AUROC, AUPR and SNR over the selected runs; ``sequences``, the (sequence, class) pairs each run
    scored (the same for every method); ``saturated``, how many of them have ``|logit| > 16`` (mean
    over runs); the floors of a randomly initialised model (``floor_weights_*``) and of a random map
    (``floor_map_*``); and a note where the method does not support the architecture or the dataset
    cannot be scored."""
    from hybridlens.analysis.stats import aggregate

    if not shared.attributions:
        return None
    keys = list(zip(selected["architecture"], selected["activation"], selected["axes"]))
    key_of = dict(zip(selected["run_id"], keys))
    reasons = {(m, key_of[r]): why for r, ms in shared.unsupported.items() if r in key_of for m, why in ms.items()}
    unavailable = {key_of[r]: why for r, why in shared.unavailable.items() if r in key_of}
    counts = selected.reindex(columns=[*CONFIG, "attr_n", "attr_saturated"])
    per_key = counts.groupby(CONFIG, sort=False).agg({"attr_n": "max", "attr_saturated": "mean"})
    parts = []
    for method in shared.attributions:
        cols = [f"attr_{method}_{k}" for k in ("auroc", "aupr", "snr")]
        t = aggregate(selected.reindex(columns=[*CONFIG, *cols]), cols)
        t = t.rename(columns=lambda c: c.replace(f"attr_{method}_", ""))
        t.insert(0, "method", method)
        tkeys = list(zip(t["architecture"], t["activation"], t["axes"]))
        t["sequences"] = pd.array([per_key["attr_n"].get(k, np.nan) for k in tkeys], dtype="Float64").astype("Int64")
        t["saturated"] = [per_key["attr_saturated"].get(k, np.nan) for k in tkeys]
        for floor in ("auroc", "aupr"):
            t[f"floor_weights_{floor}"] = [shared.floors.get(k, {}).get(f"floor_weights_{method}_{floor}", np.nan) for k in tkeys]
        for floor in ("auroc", "aupr"):
            t[f"floor_map_{floor}"] = [shared.floors.get(k, {}).get(f"floor_map_{floor}", np.nan) for k in tkeys]
        t["note"] = [
            f"unavailable: {unavailable[k]}"
            if k in unavailable
            else f"not supported: {reasons[(method, k)]}"
            if (method, k) in reasons
            else ""
            for k in tkeys
        ]
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def _attribution_figures(table: pd.DataFrame | None, shared: _Shared, out: Path, study: str) -> list[Path]:
    """The attribution heat map, and the attention map of the best attention run by the ranking metric."""
    from hybridlens.analysis.figures import attention_example, attribution_heatmap

    files = []
    if table is not None and table["auroc_mean"].notna().any():
        files += attribution_heatmap(
            table, out / "attribution_auroc", title=f"{study}: attribution AUROC against the ground truth"
        )
    if shared.attention_examples:
        # the best by the ranking metric (a run without it ranks last; a tie keeps the first analysed)
        _, label, ex = max(shared.attention_examples, key=lambda e: e[0] if np.isfinite(e[0]) else -np.inf)
        files += attention_example(
            ex.weights,
            ex.windows,
            out / "attention_example",
            title=f"{label} (best attention run by the ranking metric)\ntest sequence {ex.row}: last layer, mean over heads",
            width=ex.width,
        )
    return files


def publish(c, parent_run_id: str, files: list[Path]) -> None:
    """Log the study's tables, figures and ``analysis.json`` on its parent run, under ``analysis/``."""
    for f in files:
        c.log_artifact(parent_run_id, str(f), "analysis")


def _grid_order(per_run: pd.DataFrame, axis_columns: list[str]) -> pd.DataFrame:
    """Rows in grid order: architectures as the grid lists them, activations as the model code lists
    them (relu, exp, ...), then each axis' values, seeds ascending."""
    from hybridlens.models import ARCHITECTURES
    from hybridlens.models.blocks import ACTIVATIONS

    order = {"architecture": {a: i for i, a in enumerate(ARCHITECTURES)}, "activation": {a: i for i, a in enumerate(ACTIVATIONS)}}
    return per_run.sort_values(
        ["architecture", "activation", *axis_columns, "seed"],
        key=lambda c: c.map(order[c.name]) if c.name in order else c,
    ).reset_index(drop=True)


def analyze_study(
    uri: str,
    study: str,
    *,
    parent_run_id: str | None = None,
    task: str | None = None,
    top_k: int | None = None,
    rank_on: str = "valid",
    out_dir: str | Path | None = None,
    release: str = ANALYSIS_RELEASE,
    ground_truth: str = "base_ids",
    attributions: tuple[str, ...] | list[str] = DEFAULT_METHODS,
    max_sequences: int = MAX_SEQUENCES,
    device: str | None = None,
    workdir: str | Path | None = None,
    replace: bool = False,
    echo: Echo = print,
) -> AnalysisResult:
    """Analyse a study's latest launch (or ``parent_run_id``) from its MLflow store ``uri``.

    Computes per-run interpretability metrics for every finished run (Task 1: filter TPR/FPR;
    Task 2: saliency AUROC/AUPR/SNR) and logs them on the child runs, aggregates the best ``top_k``
    runs per configuration, tests exp against relu per architecture over seeds, draws the figures,
    and writes the tables and figures to ``out_dir`` and to the parent run (``analysis/``).
    ``ground_truth`` picks the rule for a ground-truth hit (:data:`analysis.ground_truth.GROUND_TRUTH_RULES`).
    ``attributions`` are the attribution methods scored on every run (:mod:`.attribution_scores`), on
    at most ``max_sequences`` test sequences (per class on Task 1); attention models also get their
    attention scores. ``workdir`` is where runs' relative dataset paths lie.
    Runs that cannot be analysed are skipped with their reason; the others still are.

    ``out_dir`` must be new or a folder an analysis of this study wrote (:func:`check_out_dir`; another
    study's only with ``replace``), checked before any work; analyses of one study take turns (a lock, :func:`analysis_lock_path`): a second one says who
    runs the first and waits for it, then finds the values already logged and logs nothing twice.
    """
    from hybridlens.analysis.ground_truth import GROUND_TRUTH_RULES
    from hybridlens.analysis.locks import FileLock
    from hybridlens.analysis.mlflow_layout import check_study_name

    check_study_name(study)  # before any file is opened: a name with a path would lock a file outside
    if ground_truth not in GROUND_TRUTH_RULES:
        raise UserError(f"unknown ground-truth rule {ground_truth!r}; choose one of {', '.join(GROUND_TRUTH_RULES)}")
    mlruns.find_study(uri, study, parent_run_id)  # an unknown study is one line, and leaves no lock behind
    out = check_out_dir(out_dir, study=study, replace=replace) if out_dir else None
    workdir = Path(workdir).resolve() if workdir else None
    lock = FileLock(analysis_lock_path(workdir, study, out, uri), f"the analysis of study {study!r}").acquire(wait=echo)
    try:
        return _analyze_locked(
            uri, study, parent_run_id=parent_run_id, task=task, top_k=top_k, rank_on=rank_on, out_dir=out, release=release,
            ground_truth=ground_truth, attributions=attributions, max_sequences=max_sequences, device=device,
            workdir=workdir, replace=replace, echo=echo,
        )  # fmt: skip
    finally:
        lock.release()


def _analyze_locked(
    uri: str,
    study: str,
    *,
    parent_run_id,
    task,
    top_k,
    rank_on: str,
    out_dir: Path | None,
    release: str,
    ground_truth: str,
    attributions,
    max_sequences: int,
    device: str | None,
    workdir: Path | None,
    replace: bool,
    echo: Echo,
) -> AnalysisResult:
    import torch

    from hybridlens.analysis.stats import aggregate, paired_exp_vs_relu

    t0 = time.perf_counter()
    sr = mlruns.find_study(uri, study, parent_run_id)
    sel: Selection = select_best(sr.children, task=task, top_k=top_k, rank_on=rank_on)
    spec = TASKS[sel.task]
    skipped = [(run_label(r), why) for r, why in sel.skipped]
    for label, why in skipped:
        echo(f"  skipping {label}: {why}")
    if not sel.usable:
        raise UserError(f"study {study!r} has no finished {spec.name} run to analyse ({len(skipped)} skipped)")
    echo(
        f"analysing {len(sel.usable)} {spec.name} runs of study {study!r} ({sel.best_of()} per configuration, ranked on {sel.rank_key}; ground truth: {ground_truth})"
    )
    c = mlruns.client(uri)
    shared = _Shared(
        uri,
        spec,
        device or ("cuda" if torch.cuda.is_available() else "cpu"),
        ground_truth,
        release,
        best_ids={rs[0].info.run_id: key for key, rs in sel.chosen.items()},
        data=_Data(workdir),
        attributions=parse_methods(attributions),
        max_sequences=max_sequences,
        echo=echo,
    )
    selected_ids = {r.info.run_id for rs in sel.chosen.values() for r in rs}
    drawn = list(dict.fromkeys(k for run in sel.usable for k in run_drawn(run)))
    # a drawn null (choice: [null, 5] of early_stopping_patience) is a value of its own, as on an axis
    null_drawn = {k for run in sel.usable for k, v in run_drawn(run).items() if v is None}
    rows, best_filters = [], {}
    with tempfile.TemporaryDirectory(prefix="hybridlens-analysis-") as tmp:
        tmp = Path(tmp)
        for i, run in enumerate(sel.usable, 1):
            label = run_label(run)
            try:
                res = analyze_run(run, shared, tmp)
            except RunError as e:
                skipped.append((label, str(e)))
                echo(f"  [{i}/{len(sel.usable)}] {label}: skipped: {e}")
                continue
            metrics = res.metrics
            _log_run(c, run, {logged_metric(k, ground_truth): v for k, v in metrics.items()}, res.folder)
            for method, reason in shared.unsupported.get(run.info.run_id, {}).items():
                c.set_tag(run.info.run_id, f"{TAG_ATTR_NOT_SUPPORTED}{method}", reason)
            if run.info.run_id in shared.unavailable:
                c.set_tag(run.info.run_id, TAG_ATTR_UNAVAILABLE, shared.unavailable[run.info.run_id])
            if res.best is not None:
                best_filters[shared.best_ids[run.info.run_id]] = res.best
            if res.attention is not None:
                shared.attention_examples.append((run.data.metrics.get(sel.rank_key, -np.inf), label, res.attention))
            p, m = run.data.params, run.data.metrics
            rows.append(
                {
                    "run_id": run.info.run_id,
                    "architecture": p["architecture"],
                    "activation": p["activation"],
                    "axes": config_key(run)[2],
                    **run_axes(run),
                    **{k: axis_value_text(v) if k in null_drawn else v for k, v in run_drawn(run).items()},
                    "seed": int(p["seed"]),
                    "selected": run.info.run_id in selected_ids,
                    **{k: m.get(k, np.nan) for k in CLASS_METRICS + [sel.rank_key]},
                    **metrics,
                }
            )
            shown = ", ".join(
                f"{k} {v:.3f}"
                for k, v in metrics.items()
                if not k.startswith(("attr_", "attn_auroc_l", "saliency_n", "saliency_sat"))
            )
            echo(f"  [{i}/{len(sel.usable)}] {label}: {shown}")
        if not rows:
            raise UserError(f"no run of study {study!r} could be analysed ({len(skipped)} skipped)")

        axis_columns = list(dict.fromkeys(k for axes in sel.axes.values() for k in axes))
        per_run = _grid_order(pd.DataFrame(rows), axis_columns)
        metrics_list = CLASS_METRICS + list(spec.interp_metrics)
        summary = _with_axes(aggregate(per_run[per_run["selected"]], metrics_list, all_runs=per_run), sel, axis_columns)
        summary["finished"] = [
            sel.available.get(k, 0) for k in zip(summary["architecture"], summary["activation"], summary["axes"])
        ]
        # a search draws every trial's values on its own: a seed's exp and relu runs are no pair
        paired = pd.DataFrame() if drawn else _with_axes(paired_exp_vs_relu(per_run, metrics_list), sel, axis_columns)
        compute_floors(sel, shared)
        out = Path(out_dir) if out_dir else tmp / "out"
        caption = (
            f"Study {study}, {spec.name}: {sel.best_of()} finished runs per configuration (top_k {sel.top_k}) ranked on {sel.rank_key}; "
            f"ground truth: {ground_truth}" + ("" if spec.interpretation == "filters" else " (filter labels only)") + "; "
            "_mean, _std (population, ddof 0, as the paper) and _se (standard error, ddof 1) over those runs, _all_mean over "
            "every finished run. " + auc_note(run.data.params.get("auc", "exact") for run in sel.usable)
        )
        if drawn:
            caption += (
                f" A random search over {', '.join(drawn)}: a configuration's best runs are the best of its draws "
                "(per_run has each run's drawn values); no paired exp-vs-relu test (the runs of a seed drew different values)."
            )
        if skipped:
            caption += f" Skipped {len(skipped)} run(s): " + "; ".join(f"{label} ({why})" for label, why in skipped) + "."
        meta = {
            "study": study,
            "task": spec.name,
            "parent_run_id": sr.parent.info.run_id,
            "top_k": sel.top_k,
            "rank_on": rank_on,
            "ground_truth": ground_truth,
            "release": release,
            "attributions": list(shared.attributions),
            "max_sequences": max_sequences,
            "auc": sorted({run.data.params.get("auc", "exact") for run in sel.usable}),
            "runs_analysed": len(rows),
            "skipped": skipped,
            "attributions_unavailable": sorted(set(shared.unavailable.values())),
        }
        # all or nothing: tables, figures and analysis.json are written to a fresh folder that then
        # replaces the old one; the parent run gets them only after that
        marker = json.dumps({"study": study, "parent_run_id": sr.parent.info.run_id})  # whose folder this is
        recheck = lambda p: check_out_dir(p, study=study, replace=replace)  # noqa: E731
        with atomic_dir(out, marker=ANALYSIS_MARKER, marker_text=marker, check=recheck) as staging:
            tables = {"per_run": per_run, "summary": summary, **({} if drawn else {"paired_exp_vs_relu": paired})}
            attr_table = attribution_table(per_run[per_run["selected"]], shared)
            if attr_table is not None:
                tables["attributions"] = attr_table
            if "attn_auroc" in per_run:
                att_cols = [k for k in ("attn_auroc", "attn_motif_mass_ratio") if k in per_run]
                tables["attention"] = aggregate(per_run[per_run["selected"]].dropna(subset=["attn_auroc"]), att_cols)
            tables = {k: _with_axes(t, sel, axis_columns).drop(columns="axes", errors="ignore") for k, t in tables.items()}
            written = write_tables(tables, staging, caption)
            written += draw_figures(
                summary,
                best_filters,
                spec,
                staging,
                f"{study}: "
                + ("" if axis_columns or not has_exp_and_relu(summary) else "exp vs relu, ")
                + f"{sel.best_of()} runs per configuration; error bars: std (ddof 0) over those runs",
                echo,
                sel.axes,
                per_run,
                drawn,
            )
            written += _attribution_figures(attr_table, shared, staging, study)
            (staging / "analysis.json").write_text(json.dumps(meta, indent=2))
            written.append(staging / "analysis.json")
        files = [out / f.relative_to(staging) for f in written]
        publish(c, sr.parent.info.run_id, files)
        echo(
            f"analysis of {study!r}: {len(rows)} runs in {time.perf_counter() - t0:.0f} s; tables and figures in {out if out_dir else 'the parent run'}"
            + (f"; {len(skipped)} run(s) skipped (listed in the tables' caption)" if skipped else "")
        )
        return AnalysisResult(study, spec.name, out, per_run, summary, paired, files if out_dir else [], skipped)
