"""A trial's own checkpoints: files the trainable writes and reads, whatever Ray's checkpoint pointer says.

Ray Tune deletes a trial's oldest checkpoint before it writes the experiment snapshot that stops
pointing at it, so a driver killed in between leaves a trial pointing at a checkpoint that no longer
exists ("checkpoint does not exist" on resume). The trainable keeps its pack's state in a folder of its
own instead, ``WORKDIR/checkpoints/<Ray experiment>/<trial id>/``:

- ``pack-<epoch>.pt``: written to a ``.tmp`` file, flushed to disk and renamed, so a file with that name
  is always complete; the previous one is deleted only once the new one is in place (the newest two
  are kept).
- :meth:`CheckpointStore.latest` loads the newest complete file that loads (a damaged one falls back
  to the one before it).
- ``done.json``: the trial ended and closed every cell's run; its pack files are then deleted (a
  restarted trial that finds it ends at once).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from hybridlens.analysis.atomic import atomic_path

log = logging.getLogger(__name__)

#: Complete checkpoint files kept per trial (the newest and the one before it).
KEEP = 2
_PACK_FILE = re.compile(r"pack-(\d+)\.pt")


def _sync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or unlink in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointStore:
    """The checkpoint folder of one trial; see the module docstring."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def files(self) -> list[Path]:
        """Complete checkpoint files, newest first (other files in the folder are not ours: ignored)."""
        if not self.folder.is_dir():
            return []
        numbered = [(int(m.group(1)), p) for p in self.folder.iterdir() if (m := _PACK_FILE.fullmatch(p.name))]
        return [p for _, p in sorted(numbered, reverse=True)]

    def _drop_killed_writes(self) -> None:
        """Temporary files of writes killed half-way (never complete: nothing reads them)."""
        for tmp in self.folder.glob(".pack-*.tmp"):
            tmp.unlink(missing_ok=True)

    def save(self, state: dict[str, Any], epoch: int) -> Path:
        """Write ``state`` (``torch.save``) as ``pack-<epoch>.pt``, atomically and durably; then drop all
        but the newest :data:`KEEP` files."""
        import torch

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"pack-{epoch:06d}.pt"
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())
        _sync_dir(self.folder)  # the rename on disk before the older file goes
        for old in self.files()[KEEP:]:
            old.unlink(missing_ok=True)
        self._drop_killed_writes()
        return path

    def latest(self) -> tuple[dict[str, Any], Path] | None:
        """The newest checkpoint that loads, and its file; None when there is none."""
        from hybridlens.study.pack import load_pack_state

        for path in self.files():
            try:
                return load_pack_state(path), path
            except Exception as e:  # noqa: BLE001 - a damaged file: the one before it is complete
                log.warning("checkpoint %s cannot be loaded (%s); trying the one before it", path, type(e).__name__)
        return None

    def finish(self, summary: dict[str, Any]) -> None:
        """Record that the trial ended (``done.json``, with ``summary``) and delete its pack files."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / "done.json") as tmp:
            tmp.write_text(json.dumps(summary))
        _sync_dir(self.folder)
        for path in self.files():
            path.unlink(missing_ok=True)
        self._drop_killed_writes()

    def done(self) -> dict[str, Any] | None:
        """The ``done.json`` summary of a trial that ended, or None."""
        path = self.folder / "done.json"
        return json.loads(path.read_text()) if path.is_file() else None
