"""The Ray Tune trainable: a pack of grid cells of one architecture (one cell when
``resources.models_per_trial`` is 1), trained with the paper's recipe, each cell tracked in its own
MLflow child run.

The trial's ``config`` holds what the grid is: the study's packs (``packs``: lists of cells, each
``architecture``, ``activation``, ``seed``), this trial's index among them (``pack``: the grid-searched
dimension) and the resolved study config (``study``). Where the study lives (workdir, tracking store,
dataset) is not in it: Ray Tune keeps a trial's config in its experiment state, which a copied or moved
workdir carries along, so the driver hands each launch or resume its :class:`Site` (``tune.with_parameters``),
resolved from the workdir it was given.

Each cell keeps everything a one-cell trial has: its child run (found again on a retry or resume by
the trial id and the cell's name), its seed, plateau, early stopping and best-weight restore. A cell
that ends (finished, or diverged) is closed in MLflow at once, before the checkpoint that records it
as closed; its pack-mates go on. Reports carry one ``events`` line per cell that ended, which the
driver prints. The pack's state is checkpointed in files of the trainable's own
(:class:`~hybridlens.study.checkpoints.CheckpointStore`), not through Ray.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hybridlens.analysis import mlflow_layout as layout
from hybridlens.analysis import runs as mlruns
from hybridlens.study import tracking
from hybridlens.study.config import StudyConfig, parse_config

#: A report key: the trial ended by itself (every cell closed); a trial that ends without it was stopped
#: by the scheduler (Ray's own ``done`` is set for both).
ENDED = "hybridlens_ended"
#: A report key: the trial's monitored metric at its latest epoch (a scheduler's ranking).
MONITOR = "monitor"


@dataclass(frozen=True)
class Site:
    """Where one launch's (or resume's) study lives, absolute, for the workdir the driver was given."""

    workdir: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    data_path: str
    ray_experiment: str

    def checkpoints(self, trial_id: str):
        from hybridlens.study.checkpoints import CheckpointStore

        return CheckpointStore(Path(self.workdir) / "checkpoints" / self.ray_experiment / trial_id)

    def recorded_data_path(self) -> str:
        """The dataset as runs record it: relative to the workdir when it lies inside it."""
        from hybridlens.study.launches import inside

        return inside(self.data_path, Path(self.workdir))


_DATA: dict = {}  # loaded once per worker process: (path, device) -> (Dataset, TensorData)


def _data(path: str, device: torch.device):
    from hybridlens.analysis.datasets import load_dataset
    from hybridlens.study.train import TensorData

    key = (path, str(device))
    if key not in _DATA:
        _DATA.clear()
        ds = load_dataset(path)
        _DATA[key] = (ds, TensorData(ds, device))
    return _DATA[key]


def _device(cfg: StudyConfig) -> torch.device:
    if cfg.resources.gpu > 0 and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def trial_cells(config: dict) -> list[dict]:
    """The cells a trial trains: its pack's, each with the values a search (``config["sample"]``, Ray
    Tune's draws) gave this trial among its axis values."""
    cells = config["packs"][config["pack"]]
    sample = {k: v.item() if hasattr(v, "item") else v for k, v in (config.get("sample") or {}).items()}
    if not sample:
        return cells
    return [{**c, "axes": {**c.get("axes", {}), **sample}} for c in cells]


def trial_params(cfg: StudyConfig, cell: dict, dataset_hash: str) -> dict:
    """Every parameter a child run records: the cell (its axis values too), the task, sizes and
    training hyperparameters."""
    from dataclasses import asdict

    from hybridlens.models import resolve_sizes

    sizes = asdict(resolve_sizes(cfg.task, cell["architecture"], **cfg.cell_overrides(cell)))
    train = asdict(cfg.cell_train(cell))
    axes = cell.get("axes") or {}
    ids = {k: v for k, v in cell.items() if k != "axes"}
    if axes:  # the cell's axis values: one param with all of them (JSON), and each under its own name
        ids |= {layout.AXES_PARAM: json.dumps(axes), **axes}  # in the config's order, as the run name
    drawn = [k for k in axes if cfg.search is not None and k in cfg.search.space]
    if drawn:  # which of them a search drew (the others are the grid's)
        ids[layout.DRAWN_PARAM] = json.dumps(drawn)
    sizes = {k: v for k, v in sizes.items() if v is not None}
    return {**ids, "task": cfg.task, **sizes, **train, "dataset_hash": dataset_hash}


class InjectedFault(RuntimeError):
    """Raised by a configured fault (``faults:`` in the study config)."""


def _maybe_fault(cfg: StudyConfig, cell: dict, epoch: int, trial_id: str, workdir: Path) -> None:
    for f in cfg.faults:
        if f.effect != "error" or not f.matches(cell):
            continue
        if f.mode == "always" and epoch >= f.epoch:  # every attempt, also one resumed past f.epoch
            raise InjectedFault(f"injected fault (always) at epoch {epoch}")
        if epoch < f.epoch:
            continue
        # the first `times` attempts that reach f.epoch fail (a retry resumes at its checkpoint, past
        # f.epoch maybe): one marker file per failed attempt, -epochE, -epochE.2, ...
        base = workdir / "faults" / f"{trial_id}-{layout.cell_name(**cell)}-epoch{f.epoch}"
        for k in range(1, f.times + 1):
            marker = base if k == 1 else base.with_name(f"{base.name}.{k}")
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                raise InjectedFault(f"injected fault ({'once' if f.times == 1 else f'{k} of {f.times}'}) at epoch {epoch}")


def _open_child_run(
    c, site: Site, trial_id: str, cfg: StudyConfig, cell: dict, dataset_hash: str, *, reopen: bool = True, inputs=()
) -> str:
    """Find the cell's child run (a retry or resume) or create it (with the dataset ``inputs``); leave
    it RUNNING unless ``reopen`` is false (a cell the pack had closed before its checkpoint keeps its end
    status)."""
    run_id = tracking.find_trial_run(c, site.experiment_id, site.parent_run_id, trial_id, layout.cell_name(**cell))
    if run_id is not None:
        run = c.get_run(run_id)
        if reopen:
            if run.info.status != "RUNNING":
                c.update_run(run_id, status="RUNNING")
            # a retried run (failed, or left RUNNING by a killed worker): its end is not known yet, nor
            # how this attempt trains
            for tag in (layout.TAG_OUTCOME, layout.TAG_ERROR, layout.TAG_TRAIN_PATH_REASON):
                if tag in run.data.tags:
                    c.delete_tag(run_id, tag)
        return run_id
    import ray

    run = c.create_run(
        site.experiment_id,
        run_name=layout.cell_name(**cell),
        tags={
            layout.TAG_PARENT: site.parent_run_id,
            layout.TAG_TRIAL: trial_id,
            layout.TAG_STUDY: cfg.name,
            layout.TAG_KIND: "trial",
            layout.TAG_CONFIG_HASH: cfg.config_hash(),
            layout.TAG_DATASET_HASH: dataset_hash,
            layout.TAG_NODE: ray.get_runtime_context().get_node_id(),
        },
    )
    from mlflow.entities import Param

    c.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in trial_params(cfg, cell, dataset_hash).items()])
    if inputs:
        c.log_inputs(run.info.run_id, list(inputs))
    return run.info.run_id


def _log_artifacts(c, run_id: str, trainer, ds, cfg: StudyConfig, cell: dict, site: Site) -> None:
    from hybridlens.analysis.filters import filter_motifs
    from hybridlens.analysis.motifs import write_meme

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "model").mkdir()
        torch.save({k: v.cpu() for k, v in trainer.model.state_dict().items()}, d / "model" / "weights.pt")
        (d / "config").mkdir()
        resolved = {
            "cell": cell,
            "trial_name": layout.cell_name(**cell),
            "params": trial_params(cfg, cell, ds.content_hash),
            "study": cfg.resolved(),
            "data_path": site.recorded_data_path(),  # relative to the workdir when inside it
            "workdir": str(site.workdir),  # where a relative data_path was, if the analysis is given no workdir
            "dataset_hash": ds.content_hash,
        }
        (d / "config" / "trial.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
        (d / "filters").mkdir()
        write_meme(filter_motifs(trainer.model, ds.test.x), d / "filters" / "filters.meme")
        c.log_artifacts(run_id, str(d))


def path_tags(member) -> dict[str, str]:
    """The run's training-path tags (``member``: a pack member, or anything with a ``train_path``):
    ``hybridlens.train_path`` and, for a GPU run that trains eagerly, ``hybridlens.train_path_reason``."""
    from hybridlens.study.train_step import PATH_EAGER

    path, reason = member.train_path
    return {layout.TAG_TRAIN_PATH: path} | ({layout.TAG_TRAIN_PATH_REASON: reason} if path == PATH_EAGER and reason else {})


def path_note(member) -> str:
    """``; eager (reason)`` for the driver's line of a GPU cell that trained eagerly, else empty."""
    tags = path_tags(member)
    return f"; eager ({tags[layout.TAG_TRAIN_PATH_REASON]})" if layout.TAG_TRAIN_PATH_REASON in tags else ""


class _Cell:
    """One member of the trial's pack: its cell, child run and logger, the steps not yet sent, and the
    training-path tags sent so far."""

    def __init__(self, cell: dict, run_id: str, logger):
        self.cell, self.run_id, self.logger = cell, run_id, logger
        self.name = layout.cell_name(**cell)
        self.pending: list[tuple[int, dict]] = []
        self.tags: dict[str, str] = {}

    def flush(self, member) -> None:
        """Send the pending steps, and the training path (of pack ``member``) when it changed (one request)."""
        tags = path_tags(member)
        if layout.TAG_TRAIN_PATH_REASON in self.tags and layout.TAG_TRAIN_PATH_REASON not in tags:
            self.logger.c.delete_tag(self.run_id, layout.TAG_TRAIN_PATH_REASON)
        self.logger.log_steps(self.pending, tags=tags if tags != self.tags else None)
        self.tags = tags
        self.pending.clear()


def _close(c, member, m, ds, cfg: StudyConfig, site: Site, elapsed: float) -> list[str]:
    """Close an ended member's child run: final metrics, artifacts and FINISHED, or the divergence
    and FAILED. Returns ``[cell name, the driver's line for it]``."""
    import ray

    trainer = member.trainer
    m.flush(member)
    if member.diverged:
        _end_diverged(c, m.logger, m.run_id, trainer, member.diverged)
        return [m.name, f"diverged at epoch {trainer.epoch + 1} ({elapsed:.0f} s){path_note(member)}"]
    trainer.restore_best()
    final = {f"best_val_{k}": v for k, v in trainer.evaluate("valid").items()}
    final |= {f"test_{k}": v for k, v in trainer.evaluate("test").items()}
    final |= {"best_epoch": trainer.best_epoch, "epochs_trained": trainer.epoch}
    m.logger.log(
        final,
        step=trainer.epoch,
        tags={layout.TAG_OUTCOME: "finished", layout.TAG_NODE: ray.get_runtime_context().get_node_id()},
    )
    _log_artifacts(c, m.run_id, trainer, ds, cfg, m.cell, site)
    c.set_terminated(m.run_id, "FINISHED")
    return [
        m.name,
        f"{trainer.epoch} epochs, best epoch {trainer.best_epoch}, "
        f"test AUROC {final['test_auroc']:.3f} AUPR {final['test_aupr']:.3f} ({elapsed:.0f} s){path_note(member)}",
    ]


def _setup(cfg: StudyConfig, cells: list[dict], data_path: str, device: torch.device):
    """Load the data and build the pack; one forward pass of two sequences through every model checks
    that the models take the data before any training starts."""
    from hybridlens.models import build
    from hybridlens.study.pack import PackTrainer
    from hybridlens.study.train import Trainer, seed_everything

    ds, data = _data(data_path, device)
    pack = PackTrainer()
    probe = data.splits["train"][0][:2]
    for cell in cells:
        seed_everything(cell["seed"])
        arch = cell["architecture"]
        model = build(arch, cfg.task, cell["activation"], seed=cell["seed"], **cfg.cell_overrides(cell))
        pack.add(Trainer(model, data, cfg.cell_train(cell)))
    rng = torch.get_rng_state()
    with torch.no_grad():
        for m in pack.members:
            m.trainer.model.eval()
            out = m.trainer.model(probe)
            if out.shape[1] != data.num_outputs:
                raise ValueError(f"the model has {out.shape[1]} outputs but the dataset {data.num_outputs} labels")
    torch.set_rng_state(rng)
    return ds, data, pack


def _fail_deterministically(c, site: Site, trial_id: str, cfg: StudyConfig, cells: list[dict], e: Exception) -> None:
    """Record a setup failure on every cell's run (FAILED, with the cause) and end the trial without
    an error, so that Ray does not retry it ``max_failures`` times; the driver prints each cell's line."""
    from ray import tune

    why = (
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:400]
        + " (not retried: the setup fails the same way every time)"
    )
    events = []
    for cell in cells:
        run_id = c.call(_open_child_run, c, site, trial_id, cfg, cell, "")
        c.set_tag(run_id, layout.TAG_OUTCOME, "failed")
        c.set_tag(run_id, layout.TAG_ERROR, why)
        c.set_terminated(run_id, "FAILED")
        events.append([layout.cell_name(**cell), f"FAILED: {why}"])
    tune.report({"epoch": 0, "events": events, "done": 1, ENDED: 1, MONITOR: float("nan")})


def train_trial(config: dict, site: Site) -> None:
    """Ray Tune function trainable (see the module docstring for ``config`` and ``site``)."""
    import time

    from ray import tune

    start = time.monotonic()
    cfg = parse_config(config["study"], "study config")
    cells = trial_cells(config)
    if any(f.effect == "setup" and f.matches(cell) for f in cfg.faults for cell in cells):
        raise InjectedFault("injected fault (setup): the trial failed before it opened its runs")
    trial_id = tune.get_context().get_trial_id()
    store = site.checkpoints(trial_id)
    if store.done() is not None:  # ended and closed every cell before (Ray restarted it)
        tune.report({"epoch": 0, "events": [], "done": 1, ENDED: 1, MONITOR: float("nan")})
        return
    device = _device(cfg)
    torch.set_num_threads(max(1, int(cfg.resources.cpu)))

    for k, v in tracking.MLFLOW_CLIENT_RETRIES.items():
        os.environ.setdefault(k, v)
    c = tracking.RetryingClient(mlruns.client(site.tracking_uri))
    try:
        ds, data, pack = _setup(cfg, cells, site.data_path, device)
    except Exception as e:
        if isinstance(e, OSError) or tracking.unreachable(e):
            raise  # the file system or a service: worth Ray's retries
        # the data, config or models are wrong: every attempt would fail the same way
        try:
            _fail_deterministically(c, site, trial_id, cfg, cells, e)
        except Exception:
            raise e from None  # could not even record it: let Ray retry and report the original error
        return
    closed = [False] * len(cells)
    latest = store.latest()
    if latest is not None:
        state, _ = latest
        pack.load_state_dict(state)
        closed = list(state["closed"])
    members = []  # the runs of cells closed before the checkpoint stay as they ended
    sizes = {s: len(ds.split(s)) for s in ("train", "valid", "test")}
    inputs = [tracking.dataset_input(site.recorded_data_path(), ds.content_hash, sizes)]
    for cell, cl in zip(cells, closed):
        run_id = c.call(_open_child_run, c, site, trial_id, cfg, cell, ds.content_hash, reopen=not cl, inputs=inputs)
        members.append(_Cell(cell, run_id, tracking.TrialLogger(c, run_id)))
    latest: dict[int, float] = {}  # each member's monitored value at its latest epoch
    try:
        epoch = max(m.trainer.epoch for m in pack.members)

        def close_ended() -> list:
            """Close the runs of members that ended and are not closed yet (before any checkpoint
            records them as closed); their driver lines."""
            events = []
            for i, (member, m) in enumerate(zip(pack.members, members)):
                if not member.active and not closed[i]:
                    events.append(_close(c, member, m, ds, cfg, site, time.monotonic() - start))
                    closed[i] = True
            return events

        while True:
            events = close_ended()
            if pack.done:
                store.finish({"epoch": epoch, "cells": [layout.cell_name(**cell) for cell in cells]})
                # every report names the scheduler's metric: Ray Tune ends the whole fit on one that does not
                tune.report(
                    {"epoch": epoch, "events": events, "done": 1, ENDED: 1, "tracking_retries": c.retries,
                     MONITOR: latest.get(id(pack.members[0]), float("nan"))}
                )  # fmt: skip
                return
            for i, (member, m) in enumerate(zip(pack.members, members)):
                if member.active and any(f.effect == "nan" and f.epoch == epoch + 1 and f.matches(m.cell) for f in cfg.faults):
                    pack.fill_nan(i)
            results = pack.step()
            epoch += 1
            for mb, r in zip(pack.members, results):
                if isinstance(r, dict):
                    latest[id(mb)] = r[mb.trainer.config.monitor]
            for m, r in zip(members, results):
                if isinstance(r, dict):
                    m.pending.append((r["epoch"], {k: v for k, v in r.items() if k not in ("epoch", "best_epoch")}))
            ended = any(not mb.active and not cl for mb, cl in zip(pack.members, closed))
            # every checkpoint_every epochs, and when a cell ends (its closing must be recorded); not at
            # every best epoch: a resumed pack retrains from its checkpoint and finds the same best epoch,
            # and a pack of many cells would write its whole state almost every epoch
            checkpoint_now = epoch % cfg.ray.checkpoint_every == 0 or ended
            if epoch % cfg.ray.report_every == 0 or checkpoint_now:
                for member, m, cl in zip(pack.members, members, closed):
                    if not cl:  # a cell closed before a resume keeps the tags its own training set
                        m.flush(member)
                events += close_ended()
                if checkpoint_now:
                    store.save({**pack.state_dict(), "closed": closed}, epoch)
                tune.report(
                    {
                        "epoch": epoch,
                        "events": events,
                        "active": sum(mb.active for mb in pack.members),
                        "tracking_retries": c.retries,
                        "note": pack.note or "",
                        # the first member's latest monitored value: what a scheduler (ASHA) ranks trials on
                        MONITOR: latest.get(id(pack.members[0]), float("nan")),
                    }
                )
            for member, m in zip(pack.members, members):
                if member.active:
                    _maybe_fault(cfg, m.cell, epoch, trial_id, Path(site.workdir))
    except Exception as e:
        try:
            for m, cl in zip(members, closed):
                if not cl:
                    c.set_tag(m.run_id, layout.TAG_OUTCOME, "failed")
                    c.set_tag(m.run_id, layout.TAG_ERROR, f"{type(e).__name__}: {e}"[:500])
                    c.set_terminated(m.run_id, "FAILED")
        finally:
            raise


def _end_diverged(c, logger, run_id: str, trainer, message: str) -> None:
    logger.log(
        {"diverged_epoch": trainer.epoch + 1},
        step=trainer.epoch + 1,
        tags={layout.TAG_OUTCOME: "diverged", layout.TAG_ERROR: message},
    )
    c.set_terminated(run_id, "FAILED")
