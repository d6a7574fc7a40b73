"""The Ray Tune trainable: one grid cell, trained with the paper's recipe and tracked in its MLflow child run.

The trial's ``config`` holds the cell (``architecture``, ``activation``, ``seed``), the resolved study
config (``study``), the absolute dataset path (``data_path``) and where to track (``tracking``:
``uri``, ``experiment_id``, ``parent_run_id``), plus the study's ``workdir`` (fault markers).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from hybridlens.analysis import mlflow_layout as layout
from hybridlens.analysis import runs as mlruns
from hybridlens.study import tracking
from hybridlens.study.config import StudyConfig, parse_config

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


def trial_params(cfg: StudyConfig, cell: dict, dataset_hash: str) -> dict:
    """Every parameter a child run records: the cell, the task, sizes and training hyperparameters."""
    from dataclasses import asdict

    from hybridlens.models import resolve_sizes

    sizes = asdict(resolve_sizes(cfg.task, **cfg.model.overrides(cell["architecture"])))
    train = asdict(cfg.train_config(cell["seed"]))
    return {**cell, "task": cfg.task, **sizes, **train, "dataset_hash": dataset_hash}


class InjectedFault(RuntimeError):
    """Raised by a configured fault (``faults:`` in the study config)."""


def _maybe_fault(cfg: StudyConfig, cell: dict, epoch: int, trial_id: str, workdir: Path) -> None:
    for f in cfg.faults:
        if (
            f.architecture != cell["architecture"]
            or f.activation not in (None, cell["activation"])
            or f.seed not in (None, cell["seed"])
        ):
            continue
        if f.mode == "always" and epoch >= f.epoch:  # every attempt, also one resumed past f.epoch
            raise InjectedFault(f"injected fault (always) at epoch {epoch}")
        if f.epoch != epoch:
            continue
        marker = workdir / "faults" / f"{trial_id}-epoch{epoch}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise InjectedFault(f"injected fault (once) at epoch {epoch}")


def _open_child_run(c, trk: dict, trial_id: str, cfg: StudyConfig, cell: dict, dataset_hash: str) -> str:
    """Find this trial's child run (a retry or resume) or create it; leave it RUNNING."""
    run_id = tracking.find_trial_run(c, trk["experiment_id"], trk["parent_run_id"], trial_id)
    if run_id is not None:
        if c.get_run(run_id).info.status != "RUNNING":
            c.update_run(run_id, status="RUNNING")
        return run_id
    import ray

    run = c.create_run(
        trk["experiment_id"],
        run_name=layout.cell_name(**cell),
        tags={
            layout.TAG_PARENT: trk["parent_run_id"],
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
    return run.info.run_id


def _save_state(trainer) -> "object":
    from ray import tune

    d = tempfile.mkdtemp(prefix="hybridlens-ckpt-")
    torch.save(trainer.state_dict(), Path(d) / "trainer.pt")
    return tune.Checkpoint.from_directory(d)


def _log_artifacts(c, run_id: str, trainer, ds, cfg: StudyConfig, cell: dict, config: dict) -> None:
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
            "data_path": config["data_path"],
            "dataset_hash": ds.content_hash,
        }
        (d / "config" / "trial.json").write_text(json.dumps(resolved, indent=2, sort_keys=True))
        (d / "filters").mkdir()
        write_meme(filter_motifs(trainer.model, ds.test.x), d / "filters" / "filters.meme")
        c.log_artifacts(run_id, str(d))


def train_trial(config: dict) -> None:
    """Ray Tune function trainable (see the module docstring for ``config``)."""
    import ray
    from ray import tune

    from hybridlens.models import build
    from hybridlens.study.train import Diverged, Trainer, seed_everything

    cfg = parse_config(config["study"], "study config")
    cell = {k: config[k] for k in layout.CELL_KEYS}
    trk = config["tracking"]
    workdir = Path(config["workdir"])
    trial_id = tune.get_context().get_trial_id()
    device = _device(cfg)
    torch.set_num_threads(max(1, int(cfg.resources.cpu)))

    for k, v in tracking.MLFLOW_CLIENT_RETRIES.items():
        os.environ.setdefault(k, v)
    c = tracking.RetryingClient(mlruns.client(trk["uri"]))
    ds, data = _data(config["data_path"], device)
    run_id = c.call(_open_child_run, c, trk, trial_id, cfg, cell, ds.content_hash)
    logger = tracking.TrialLogger(c, run_id)
    try:
        seed_everything(cell["seed"])
        model = build(
            cell["architecture"], cfg.task, cell["activation"], seed=cell["seed"], **cfg.model.overrides(cell["architecture"])
        )
        trainer = Trainer(model, data, cfg.train_config(cell["seed"]))
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                trainer.load_state_dict(torch.load(Path(d) / "trainer.pt", weights_only=True, map_location=device))
        pending: list[tuple[int, dict]] = []
        while not trainer.done:
            try:
                m = trainer.step()
            except Diverged as e:
                logger.log_steps(pending)
                _end_diverged(c, logger, run_id, trainer, str(e))
                tune.report({"diverged": 1, "epoch": trainer.epoch + 1, "tracking_retries": c.retries})
                return
            epoch = m["epoch"]
            pending.append((epoch, {k: v for k, v in m.items() if k not in ("epoch", "best_epoch")}))
            checkpoint_now = epoch % cfg.ray.checkpoint_every == 0 or m["best_epoch"] == epoch or trainer.done
            if epoch % cfg.ray.report_every == 0 or checkpoint_now:
                logger.log_steps(pending)
                pending.clear()
                tune.report(
                    {**m, "diverged": 0, "tracking_retries": c.retries},
                    checkpoint=_save_state(trainer) if checkpoint_now else None,
                )
            _maybe_fault(cfg, cell, epoch, trial_id, workdir)
        logger.log_steps(pending)
        trainer.restore_best()
        final = {f"best_val_{k}": v for k, v in trainer.evaluate("valid").items()}
        final |= {f"test_{k}": v for k, v in trainer.evaluate("test").items()}
        final |= {"best_epoch": trainer.best_epoch, "epochs_trained": trainer.epoch}
        logger.log(
            final,
            step=trainer.epoch,
            tags={layout.TAG_OUTCOME: "finished", layout.TAG_NODE: ray.get_runtime_context().get_node_id()},
        )
        _log_artifacts(c, run_id, trainer, ds, cfg, cell, config)
        c.set_terminated(run_id, "FINISHED")
        tune.report({**final, "epoch": trainer.epoch, "diverged": 0, "done": 1, "tracking_retries": c.retries})
    except Exception as e:
        try:
            c.set_tag(run_id, layout.TAG_OUTCOME, "failed")
            c.set_tag(run_id, layout.TAG_ERROR, f"{type(e).__name__}: {e}"[:500])
            c.set_terminated(run_id, "FAILED")
        finally:
            raise


def _end_diverged(c, logger, run_id: str, trainer, message: str) -> None:
    logger.log(
        {"diverged_epoch": trainer.epoch + 1},
        step=trainer.epoch + 1,
        tags={layout.TAG_OUTCOME: "diverged", layout.TAG_ERROR: message},
    )
    c.set_terminated(run_id, "FAILED")
