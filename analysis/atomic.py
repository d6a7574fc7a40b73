"""Atomic file and folder writes: write next to the target, then rename, so an interrupted write leaves
nothing half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it is renamed to ``path``
    (with the permissions a plain ``open`` would give), on any error or interrupt it is deleted."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


#: The process's umask, read once at import (reading it means setting it for a moment, which another
#: thread creating files at that instant would see).
_UMASK = _read_umask()


def _umask() -> int:
    return _UMASK


def check_can_create(folder: Path, what: str) -> None:
    """Fail with one line when no file can be created in ``folder`` (tried for real: permission bits
    say nothing to root, and /proc or /sys refuse files whatever they say)."""
    from hybridlens.analysis.errors import UserError

    try:
        fd, probe = tempfile.mkstemp(prefix=".hybridlens-probe-", dir=folder)
    except OSError as e:
        raise UserError(f"{what}: {folder} does not take new files ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, *, marker: str | None = None, marker_text: str = "", check: Callable[[Path], object] | None = None
) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (an existing
    folder there is swapped out, then removed), on any error or interrupt it is deleted and ``path``
    is left as it was. The folder gets the permissions a plain ``mkdir`` would give (not the temporary
    folder's 0700); ``marker`` names a file left in it (holding ``marker_text``: whose folder it is), by
    which :func:`check_replaceable` knows the folder as one this code wrote. Check ``path`` with :func:`check_replaceable` first; ``check``
    (that check, say) runs again just before the swap, as the folder may have changed meanwhile."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        if marker:
            (tmp / marker).write_text(marker_text)
        yield tmp
        if check is not None:
            check(path)
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_replaceable(path: str | os.PathLike, marker: str, what: str = "output folder", *, ours: bool = False) -> Path:
    """``path`` (resolved) if :func:`atomic_dir` may write it: it does not exist yet, or it is a folder
    that holds ``marker`` (a folder this code wrote; ``ours``: the caller knows it as one without), and
    the folder it would be made in takes new files. A file, the current folder or one that holds it, or
    a folder of anything else (a user's data), is refused with one line before any work."""
    from hybridlens.analysis.errors import UserError

    p = Path(path).resolve()
    for parent in p.parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"{what} {path}: {parent} is a file, not a folder")
    cwd = Path.cwd().resolve()
    if p == cwd or p in cwd.parents:
        raise UserError(f"{what} {path} is the current folder or holds it; give a new folder")
    # the new folder is made beside p: its nearest existing folder must take files
    check_can_create(next(parent for parent in p.parents if parent.exists()), f"{what} {path}")
    if not p.exists():
        return p
    if not p.is_dir():
        raise UserError(f"{what} {path} is a file; give a new folder (it would be replaced by one)")
    if not ours and not (p / marker).is_file():
        raise UserError(
            f"{what} {path} exists and was not written by hybridlens (no {marker} in it); give a new folder, "
            "or remove this one if its contents can go"
        )
    return p
