"""train_core.files: the one atomic write that checkpoints, token files and DONE markers share."""

import pytest

from train_core.files import atomic_write, atomic_write_bytes


def test_a_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    assert atomic_write_bytes(path, b"abc", b"de") == 5
    assert atomic_write_bytes(path, b"xyz") == 3
    assert path.read_bytes() == b"xyz" and [p.name for p in path.parent.iterdir()] == ["f.bin"]


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")

    def half_then_fail(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]
