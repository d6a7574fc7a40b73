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
    with pytest.raises(UserError, match="is the current folder or holds it"):
        check_replaceable(".", MARK)
    assert (mine / "notes.txt").read_text() == "keep" and data.read_bytes() == b"hdf5"


def test_the_current_folder_is_refused_even_when_ours(tmp_path, monkeypatch):
    """An analysis run from inside its own output folder (or a folder above it) would swap out the
    process's working folder: refused although the marker is there."""
    out = tmp_path / "a" / "out"
    with atomic_dir(out, marker=MARK):
        pass
    (out / "sub").mkdir()
    for cwd in (out, out / "sub"):
        monkeypatch.chdir(cwd)
        with pytest.raises(UserError, match="is the current folder or holds it"):
            check_replaceable(out, MARK)
    monkeypatch.chdir(tmp_path)
    assert check_replaceable(out, MARK) == out


def test_a_place_that_takes_no_files_is_refused_before_any_work(tmp_path):
    """/proc takes no new files whatever its permission bits say; a read-only folder neither (unless
    root): both refused by a real attempt, in one line."""
    with pytest.raises(UserError, match="does not take new files"):
        check_replaceable("/proc/hybridlens-out", MARK)
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(UserError, match="does not take new files"):
                check_replaceable(ro / "out", MARK)
        finally:
            ro.chmod(0o755)


def test_a_folder_that_stops_being_ours_meanwhile_is_not_replaced(tmp_path):
    """The check runs again just before the swap: a folder whose marker went during the work (a user
    put their own files there) is left alone and the new one discarded."""
    out = tmp_path / "out"
    with atomic_dir(out, marker=MARK):
        pass
    with pytest.raises(UserError, match="was not written by hybridlens"):
        with atomic_dir(out, marker=MARK, check=lambda p: check_replaceable(p, MARK)) as d:
            (d / "new.csv").write_text("x")
            (out / MARK).unlink()
            (out / "mine.txt").write_text("keep")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left
