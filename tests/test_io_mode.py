"""Atomically written files get the permissions of any new file, 0o666 & ~umask (issue 14: they were 0600)."""
import contextlib
import os
import stat

import pytest

from stlib.io import write_bytes_atomic, write_json_atomic, write_text_atomic


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_follow_the_umask(tmp_path, mask):
    with umask(mask):
        write_bytes_atomic(tmp_path / "a.bin", b"x")
        write_text_atomic(tmp_path / "sub" / "b.txt", "y")
        write_json_atomic(tmp_path / "c.json", {"ap": 0.5})
    for name in ("a.bin", "sub/b.txt", "c.json"):
        assert mode(tmp_path / name) == 0o666 & ~mask, name


def test_replacing_a_file_keeps_the_content_right_and_leaves_no_temp(tmp_path):
    path = tmp_path / "metrics.json"
    with umask(0o022):
        write_text_atomic(path, "old")
        write_text_atomic(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "m.txt"
    write_text_atomic(path, "old")
    with pytest.raises(TypeError):
        write_bytes_atomic(path, "not bytes")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.txt"]
