"""Pre-flight: everything checked before Ray or MLflow start (services, resources, the dataset), and
the generated dataset's path and generation."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from hybridlens.analysis.errors import UserError
from hybridlens.analysis.tasks import TASKS
from hybridlens.study.config import StudyConfig
from hybridlens.study.launches import Echo


def check_ray_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast if a Ray cluster address does not answer (``auto`` is left to Ray)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT, or auto)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise UserError(
            f"Ray cluster at {address} is unreachable ({e.strerror or e}); start it with 'ray start --head' or fix --ray-address"
        ) from None


def check_resources(cfg: StudyConfig, ray_address: str | None, *, smoke_test: bool = False, echo: Echo = print) -> StudyConfig:
    """Fail fast on a per-trial request that a local Ray could never schedule (Ray would wait
    silently). ``--smoke-test`` on a machine without a GPU runs on the CPU instead (one line says so).
    A cluster (``ray_address``) is left to Ray: its nodes may have what this machine lacks."""
    if ray_address:
        return cfg
    import torch

    gpus = torch.cuda.device_count()
    cpus = cfg.ray.num_cpus or os.cpu_count() or 1
    res = cfg.resources
    if res.gpu > 0 and gpus == 0 and smoke_test:
        echo(f"no GPU on this machine: the smoke test runs on the CPU (resources.gpu {res.gpu:g} -> 0)")
        return cfg.model_copy(update={"resources": res.model_copy(update={"gpu": 0.0})})
    if res.gpu > gpus:
        have = "has no GPU" if gpus == 0 else f"has {gpus} GPU(s)"
        raise UserError(
            f"resources.gpu is {res.gpu:g} per trial but this machine {have}; set resources.gpu: 0 (CPU) or run on a cluster with --ray-address"
        )
    if res.cpu > cpus:
        raise UserError(
            f"resources.cpu is {res.cpu:g} per trial but the local Ray has {cpus} CPU(s); lower resources.cpu (or raise ray.num_cpus)"
        )
    return cfg


#: A grid with more cells than this is refused unless the user confirms it (``--yes``): a typo such as
#: ``seeds: 100000`` would otherwise launch millions of trials without a word.
MAX_CELLS_UNCONFIRMED = 10_000


def _factors(cfg: StudyConfig) -> str:
    """``3 architectures x 2 activations x 10 seeds x 6 model.first_pool``."""
    return " x ".join(f"{n:,} {what}" for n, what in cfg.size_factors())


def grid_size_line(cfg: StudyConfig) -> str:
    """The launch's size, printed once pre-flight has passed: cells, their factors, trials, epochs."""
    cells, trials, per = cfg.num_cells(), cfg.num_packs(), cfg.resources.models_per_trial
    samples = cfg.num_samples()
    return (
        f"study {cfg.name}: {cells:,} grid cells ({_factors(cfg)})"
        + (f" x {samples:,} samples = {cells * samples:,} trials" if cfg.search else "")
        + (f" in {trials:,} trials of up to {per} models" if per > 1 else "")
        + f", {cfg.train.epochs} epochs max"
    )


def check_grid_size(cfg: StudyConfig, *, yes: bool) -> None:
    """Refuse a grid (times a search's samples) above :data:`MAX_CELLS_UNCONFIRMED` cells unless ``yes``."""
    total = cfg.num_cells() * cfg.num_samples()
    if total > MAX_CELLS_UNCONFIRMED and not yes:
        samples = f" x {cfg.num_samples():,} samples" if cfg.search else ""
        raise UserError(
            f"the grid has {total:,} cells ({_factors(cfg)}{samples}), more than {MAX_CELLS_UNCONFIRMED:,}; "
            "check grid.seeds, grid.architectures, grid.axes and search.num_samples, or pass --yes to launch it"
        )


def default_data_path(cfg: StudyConfig, workdir: Path) -> Path:
    spec = TASKS[cfg.task]
    n = cfg.data.num_seqs or spec.num_seqs
    seed = cfg.data.seed if cfg.data.seed is not None else spec.data_seed
    extra = f"-m{cfg.data.max_motifs}" if cfg.task == "task2" else ""
    extra += "-bgcode" if cfg.data.background == "code" else ""
    return workdir / "data" / f"{cfg.task}-seed{seed}-n{n}{extra}.h5"


def check_data_path(cfg: StudyConfig) -> Path | None:
    """The config's explicit dataset path, checked (:func:`check_dataset`); None when generated."""
    if not cfg.data.path:
        return None
    path = Path(cfg.data.path).expanduser().resolve()
    if not path.is_file():
        raise UserError(
            f"dataset {path} (data.path) does not exist; generate it with 'hybridlens data {cfg.task} --out {path}' or drop data.path"
        )
    check_dataset(cfg, path)
    return path


#: Rows read at a time by the dataset scan (a 25,000-sequence Task 1 file is 80 MB; memory stays flat).
SCAN_ROWS = 8192


def check_dataset(cfg: StudyConfig, path: Path) -> None:
    """Everything about the dataset that would make every trial fail, found before Ray starts: the
    layout (``load_dataset``'s checks), non-empty splits, a sequence length and a label width that
    the config's models take, and finite values in every chunk (read in slices of
    :data:`SCAN_ROWS` rows, so unreadable chunks of a damaged file show up here too)."""
    import h5py
    import numpy as np

    from hybridlens.analysis.datasets import SPLITS, load_dataset
    from hybridlens.models import resolve_sizes

    ds = load_dataset(path, splits=())  # keys, ranks, split agreement
    expected = TASKS[cfg.task].num_outputs
    if ds.num_outputs != expected:
        raise UserError(f"dataset {path} has {ds.num_outputs} labels but {cfg.task} expects {expected}")
    length = ds.train.x.shape[2]
    for arch in cfg.grid.architecture_names():
        want = resolve_sizes(cfg.task, arch, **cfg.model.overrides(arch)).seq_len
        if length != want:
            raise UserError(
                f"dataset {path} has sequences of length {length} but the models take {want} "
                f"(architecture {arch}); use a {cfg.task} dataset of length {want} or set model.seq_len"
            )
    with h5py.File(path, "r") as f:
        for split in SPLITS:
            for key in (f"X_{split}", f"Y_{split}"):
                d = f[key]
                if d.shape[0] == 0:
                    raise UserError(f"dataset {path}: split {split!r} is empty ({key} has 0 rows); every split needs sequences")
                for start in range(0, d.shape[0], SCAN_ROWS):
                    try:
                        chunk = np.asarray(d[start : start + SCAN_ROWS])
                    except (OSError, ValueError) as e:
                        raise UserError(
                            f"dataset {path}: {key} rows {start}-{start + SCAN_ROWS} cannot be read ({e}); regenerate the file"
                        ) from None
                    if not np.isfinite(chunk).all():
                        row = start + int(np.argwhere(~np.isfinite(chunk))[0][0])
                        raise UserError(f"dataset {path}: {key} has a non-finite value (NaN or inf) in row {row}")


def ensure_dataset(cfg: StudyConfig, workdir: Path, echo: Echo) -> Path:
    """The generated dataset's absolute path (for a config without ``data.path``; check an explicit
    path with :func:`check_data_path`), generated with progress when missing."""
    from hybridlens.analysis.datasets import write_dataset
    from hybridlens.study.simulate import simulate

    path = default_data_path(cfg, workdir).resolve()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if cfg.data.num_seqs:
        kwargs["num_seqs"] = cfg.data.num_seqs
    if cfg.data.seed is not None:
        kwargs["seed"] = cfg.data.seed
    if cfg.task == "task2":
        kwargs.update(max_motifs=cfg.data.max_motifs, background=cfg.data.background)
    echo(f"generating {cfg.task} dataset -> {path}")
    step = [0]

    def progress(done: int, total: int) -> None:
        if done * 4 // total > step[0] or done == total:
            step[0] = done * 4 // total
            echo(f"  {done:,}/{total:,} sequences")

    write_dataset(path, simulate(cfg.task, progress=progress, **kwargs))
    return path


def prepare_dataset(cfg: StudyConfig, workdir: Path, explicit: Path | None, echo: Echo) -> Path:
    """The study's dataset: the checked explicit path, or the generated file (made when missing) checked."""
    if explicit is not None:
        return explicit
    path = ensure_dataset(cfg, workdir, echo)
    check_dataset(cfg, path)
    return path
