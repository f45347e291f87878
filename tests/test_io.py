"""eval/io.py: atomic files and folders (normal permissions; the old folder survives until the new one is in
place, whatever moment a writer dies at) and the one percentile definition."""

from __future__ import annotations

import os
import stat

import pytest

from eval import io
from eval.io import DistillError, atomic_folder, atomic_write, percentile, restore_interrupted_swap


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_files_and_folders_get_the_permissions_open_and_mkdir_would_give(tmp_path, umask_022):
    with atomic_write(tmp_path / "tasks.jsonl") as f:
        f.write("{}\n")
    assert stat.S_IMODE((tmp_path / "tasks.jsonl").stat().st_mode) == 0o644
    with atomic_folder(tmp_path / "pairs") as tmp:
        (tmp / "train.jsonl").write_text("{}\n")
    assert stat.S_IMODE((tmp_path / "pairs").stat().st_mode) == 0o755


def test_a_failed_build_leaves_the_old_folder_and_no_temporary_one(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError("killed mid-build")
    assert (out / "v").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_kill_between_the_two_renames_loses_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "v").write_text("old")
    real_rename, calls = os.rename, []

    def dies_on_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the old folder is aside, the new one not yet in: the worst moment to die
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(io.os, "rename", dies_on_second_rename)
    with pytest.raises(KeyboardInterrupt), atomic_folder(out) as tmp:
        (tmp / "v").write_text("new")
    monkeypatch.setattr(io.os, "rename", real_rename)
    assert not out.exists()  # what a reader sees right after such a kill ...
    restore_interrupted_swap(out)  # ... and what the next writer (or a reader) does first
    assert (out / "v").read_text() == "old"
    with atomic_folder(out) as tmp:
        (tmp / "v").write_text("newer")
    assert (out / "v").read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_refusals_name_the_path(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DistillError, match="is not a folder"), atomic_folder(tmp_path / "f"):
        pass
    (tmp_path / "d").mkdir()
    with pytest.raises(DistillError, match="already exists"), atomic_folder(tmp_path / "d", overwrite=False):
        pass


def test_percentile_interpolates_between_ranks():
    assert percentile([], 0.5) is None
    assert percentile([7], 0.99) == 7
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile(list(range(1, 101)), 0.9) == pytest.approx(90.1)
