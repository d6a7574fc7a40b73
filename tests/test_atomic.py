"""Atomic folders: an analysis replaces only a folder it wrote, never a user's files."""

import os
import stat

import pytest

from hybridlens.analysis.atomic import atomic_dir, check_replaceable
from hybridlens.analysis.errors import UserError

MARK = ".ours"


def test_a_new_folder_is_written_with_its_marker_and_plain_permissions(tmp_path):
    out = check_replaceable(tmp_path / "new" / "out", MARK)
    with atomic_dir(out, marker=MARK) as d:
        (d / "t.csv").write_text("x")
    assert sorted(p.name for p in out.iterdir()) == [MARK, "t.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    assert check_replaceable(out, MARK) == out  # ours now: the next one may replace it
    with atomic_dir(out, marker=MARK) as d:
        (d / "u.csv").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == [MARK, "u.csv"]


def test_anything_else_is_refused_and_left_alone(tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(UserError, match="exists and was not written by hybridlens"):
        check_replaceable(mine, MARK)
    data = tmp_path / "data.h5"
    data.write_bytes(b"hdf5")
    with pytest.raises(UserError, match="is a file; give a new folder"):
        check_replaceable(data, MARK)
    with pytest.raises(UserError, match="data.h5 is a file, not a folder"):
        check_replaceable(data / "out", MARK)
    monkeypatch.chdir(mine)
    with pytest.raises(UserError, match="exists and was not written by hybridlens"):
        check_replaceable(".", MARK)
    assert (mine / "notes.txt").read_text() == "keep" and data.read_bytes() == b"hdf5"
