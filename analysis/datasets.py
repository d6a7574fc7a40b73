"""HDF5 dataset files: the original papers' keys plus per-sequence motif placements.

Layout (one file per task)::

    X_{train,valid,test}       (N, 4, 200) float32 one-hot, A,C,G,T, length last
    Y_{train,valid,test}       (N, T)      float32 labels (T = 12 for Task 1, 1 for Task 2)
    model_{train,valid,test}   (N, 4, 200) float32 generating PWM of each sequence (ground truth)
    placements_{split}         compound (seq int32, motif int16, start int16, width int16, strand int8);
                               ``motif`` indexes the ``motif_ids`` attribute, strand is +1 or -1
    attrs: task, generator_version, seed, jaspar_release, motif_ids, motif_names, content_hash, ...

Files from the original papers (only ``X_*``, ``Y_*``, ``model_*``) load unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hybridlens.analysis.atomic import atomic_path, check_can_create
from hybridlens.analysis.errors import UserError

SPLITS = ("train", "valid", "test")
PLACEMENT_DTYPE = np.dtype([("seq", "<i4"), ("motif", "<i2"), ("start", "<i2"), ("width", "<i2"), ("strand", "i1")])


@dataclass
class Split:
    """One split. ``x`` and ``model`` are ``(N, 4, L)``, ``y`` is ``(N, T)``;
    ``placements`` is a structured array of PLACEMENT_DTYPE or None for original-layout files."""

    x: np.ndarray
    y: np.ndarray
    model: np.ndarray | None
    placements: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class Dataset:
    """A task's three splits and the file's attributes."""

    train: Split
    valid: Split
    test: Split
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def num_outputs(self) -> int:
        return int(self.train.y.shape[1])

    @property
    def content_hash(self) -> str:
        """The stored content hash, or one computed from the arrays for original-layout files."""
        return self.attrs.get("content_hash") or content_hash(self.arrays())

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for s in SPLITS:
            sp = self.split(s)
            out[f"X_{s}"], out[f"Y_{s}"] = sp.x, sp.y
            if sp.model is not None:
                out[f"model_{s}"] = sp.model
            if sp.placements is not None:
                out[f"placements_{s}"] = sp.placements
        return out


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over every array's name, dtype, shape and bytes, in sorted key order."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(key.encode())
        h.update(a.dtype.str.encode() if a.dtype.fields is None else json.dumps(a.dtype.descr).encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_output_path(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Validate a path about to be written: parent folder exists, not a folder, no file unless ``force``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"output path {path} is a folder; give a file name such as {path / 'data.h5'}")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists() and not parent.is_dir():
            raise UserError(f"cannot write {path}: {parent} is a file, not a folder")
    if not path.parent.is_dir():
        raise UserError(f"output folder {path.parent} does not exist; create it first")
    if path.exists() and not force:
        raise UserError(f"{path} already exists; pass --force to overwrite it")
    check_can_create(path.parent, f"cannot write {path}")
    return path


def write_dataset(path: str | os.PathLike, dataset: Dataset, *, force: bool = False) -> Path:
    """Write ``dataset`` to ``path`` atomically (temporary file in the same folder, then rename).

    The ``content_hash`` attribute is computed here from the arrays. An interrupted write leaves
    nothing behind.
    """
    import h5py

    path = check_output_path(path, force=force)
    arrays = dataset.arrays()
    attrs = dict(dataset.attrs)
    attrs["content_hash"] = content_hash(arrays)
    with atomic_path(path) as tmp, h5py.File(tmp, "w", track_order=True) as f:
        for key, arr in arrays.items():
            f.create_dataset(key, data=arr, compression="gzip", compression_opts=4, shuffle=True)
        for key, val in attrs.items():
            f.attrs[key] = json.dumps(val) if isinstance(val, (dict, list, tuple)) else val
    dataset.attrs = attrs
    dataset.path = path
    return path


def _decode_attr(val: Any) -> Any:
    if isinstance(val, bytes):
        val = val.decode()
    if isinstance(val, str) and val[:1] in "[{":
        try:
            return json.loads(val)
        except json.JSONDecodeError:
            return val
    if isinstance(val, np.generic):
        return val.item()
    return val


def split_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Sequences per split of a dataset file, from the shapes alone."""
    import h5py

    with h5py.File(path, "r") as f:
        return {s: int(f[f"X_{s}"].shape[0]) for s in SPLITS}


def load_dataset(
    path: str | os.PathLike,
    *,
    splits: tuple[str, ...] = SPLITS,
    require_model: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Dataset:
    """Load a dataset file written by hybridlens or by the original papers' notebooks.

    Parameters
    ----------
    path
        HDF5 file with ``X_*``, ``Y_*`` and (optionally) ``model_*`` keys.
    splits
        Splits to read; the others are returned empty (shape ``(0, 4, L)``).
    require_model
        Raise if ``model_*`` (the ground-truth PWMs) is missing.

    Raises
    ------
    FileNotFoundError, ValueError
        With a message that names the file, the key and the problem.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"dataset {path} does not exist; generate it with 'hybridlens data task1 --out {path}'")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path} is not an HDF5 file") from None
    with f:
        keys = set(f.keys())
        out: dict[str, Split] = {}
        length = None
        for s in SPLITS:
            need = [f"X_{s}", f"Y_{s}"] + ([f"model_{s}"] if require_model else [])
            missing = [k for k in need if k not in keys]
            if missing:
                raise UserError(f"{path}: missing key {missing[0]!r} (found: {', '.join(sorted(keys)) or 'none'})")
            x_ds, y_ds = f[f"X_{s}"], f[f"Y_{s}"]
            if len(x_ds.shape) != 3 or x_ds.shape[1] != 4:
                raise UserError(f"{path}: X_{s} has shape {x_ds.shape}; expected (N, 4, L) one-hot, length last")
            n, _, L = x_ds.shape
            if length is None:
                length = L
            elif L != length:
                raise UserError(f"{path}: X_{s} has length {L} but X_train has length {length}")
            if len(y_ds.shape) != 2 or y_ds.shape[0] != n:
                raise UserError(f"{path}: Y_{s} has shape {y_ds.shape}; expected ({n}, T)")
            if f"model_{s}" in keys and f[f"model_{s}"].shape != x_ds.shape:
                raise UserError(f"{path}: model_{s} has shape {f[f'model_{s}'].shape}; expected {x_ds.shape} like X_{s}")
            if s not in splits:
                out[s] = Split(np.zeros((0, 4, L), np.float32), np.zeros((0, y_ds.shape[1]), np.float32), None)
                continue
            if progress:
                progress(f"reading {s} split ({n} sequences)")
            model = np.asarray(f[f"model_{s}"], dtype=np.float32) if f"model_{s}" in keys else None
            plc = np.asarray(f[f"placements_{s}"]) if f"placements_{s}" in keys else None
            out[s] = Split(np.asarray(x_ds, dtype=np.float32), np.asarray(y_ds, dtype=np.float32), model, plc)
        t = {out[s].y.shape[1] for s in SPLITS}
        if len(t) != 1:
            raise UserError(f"{path}: Y_* splits disagree on the number of labels: {sorted(t)}")
        attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
    return Dataset(out["train"], out["valid"], out["test"], attrs=attrs, path=path)
