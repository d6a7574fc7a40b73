"""A trial's own checkpoints: complete files only, the previous kept, damaged ones skipped."""

import torch

from hybridlens.study.checkpoints import CheckpointStore


def _state(epoch):
    return {"members": [{"epoch": epoch, "w": torch.full((3,), float(epoch))}], "closed": [False]}


def test_newest_complete_checkpoint_and_the_one_before_are_kept(tmp_path):
    store = CheckpointStore(tmp_path / "t")
    assert store.latest() is None and store.done() is None
    for epoch in (2, 4, 6):
        store.save(_state(epoch), epoch)
    assert [p.name for p in store.files()] == ["pack-000006.pt", "pack-000004.pt"]
    state, path = store.latest()
    assert path.name == "pack-000006.pt" and state["members"][0]["epoch"] == 6
    assert not list((tmp_path / "t").glob("*.tmp"))  # written beside, then renamed


def test_an_interrupted_or_damaged_newest_file_falls_back_to_the_one_before(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(_state(4), 4)
    store.save(_state(6), 6)
    (tmp_path / ".pack-000008.pt.x.tmp").write_bytes(b"half a checkp")  # a write killed half-way: never a pack-*.pt
    path = tmp_path / "pack-000006.pt"
    path.write_bytes(path.read_bytes()[:100])  # damaged after the fact (a disk, a hand)
    state, chosen = store.latest()
    assert chosen.name == "pack-000004.pt" and state["members"][0]["epoch"] == 4
    assert state["members"][0]["w"].device.type == "cpu"


def test_a_finished_trial_leaves_a_marker_and_no_pack_files(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(_state(3), 3)
    store.finish({"epoch": 3, "cells": ["C24-exp-s0"]})
    assert store.done() == {"epoch": 3, "cells": ["C24-exp-s0"]} and store.files() == []


def test_files_not_ours_are_ignored_and_killed_writes_cleared(tmp_path):
    """A stray ``pack-x.pt`` or ``notes.txt`` is no checkpoint (and breaks nothing); the temporary file
    of a write killed half-way is removed by the next save, and by finish."""
    store = CheckpointStore(tmp_path)
    (tmp_path / "pack-x.pt").write_bytes(b"not ours")
    (tmp_path / "notes.txt").write_text("keep")
    killed = tmp_path / ".pack-000002.pt.abc.tmp"
    killed.write_bytes(b"half")
    assert store.files() == [] and store.latest() is None
    store.save(_state(4), 4)
    assert [p.name for p in store.files()] == ["pack-000004.pt"] and not killed.exists()
    killed.write_bytes(b"half")
    store.finish({"epoch": 4})
    assert not killed.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["done.json", "notes.txt", "pack-x.pt"]
