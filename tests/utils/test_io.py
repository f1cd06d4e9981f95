"""clipdistill.utils.io: atomic writes leave the old file or the new one, never a partial one; a
full disk is an ``OutputError`` naming the file and its folder; temporary files are recognised."""

import json
import os

import pytest

from clipdistill.utils.errors import OutputError, is_user_error
from clipdistill.utils.io import (
    atomic_path,
    atomic_save_json,
    atomic_write,
    ensure_writable_dir,
    is_temp_name,
    remove_stale_temps,
)
from common import file_size_limit


def test_atomic_write_replaces_or_keeps(tmp_path):
    p = tmp_path / "a.json"
    atomic_save_json(str(p), {"v": 1})
    assert json.loads(p.read_text()) == {"v": 1}
    with pytest.raises(RuntimeError):
        with atomic_write(str(p), "w") as f:
            f.write('{"v": 2, "half')
            raise RuntimeError("killed mid-write")
    assert json.loads(p.read_text()) == {"v": 1}  # the old file, untouched
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary file left
    with atomic_path(str(tmp_path / "v.mp4"), keep_extension=True) as tmp:
        assert tmp.endswith(".tmp.mp4") and is_temp_name(os.path.basename(tmp))
        open(tmp, "wb").write(b"x")
    assert (tmp_path / "v.mp4").read_bytes() == b"x"
    mode = os.stat(tmp_path / "v.mp4").st_mode & 0o777
    assert mode & 0o044  # readable by others under a usual umask (mkstemp makes 0600 files)


def test_full_disk_is_a_named_output_error_without_leftovers(tmp_path):
    p = tmp_path / "big.bin"
    p.write_bytes(b"old")
    with file_size_limit(4096), pytest.raises(OutputError) as e:
        with atomic_write(str(p)) as f:
            f.write(b"x" * 100_000)
    assert is_user_error(e.value)
    assert str(p) in str(e.value) and str(tmp_path) in str(e.value) and "too large" in str(e.value)
    assert p.read_bytes() == b"old" and os.listdir(tmp_path) == ["big.bin"]


def test_unwritable_folders_are_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        ensure_writable_dir(str(tmp_path / "file"), "output folder")
    with pytest.raises(OutputError, match="file/sub"):
        ensure_writable_dir(str(tmp_path / "file" / "sub"))
    with pytest.raises(OutputError, match="cannot write"):
        with atomic_write(str(tmp_path / "file" / "a.txt"), "w") as f:
            f.write("x")
    with atomic_write(str(tmp_path / "new" / "a.txt"), "w") as f:  # parents are created
        f.write("x")
    assert (tmp_path / "new" / "a.txt").read_text() == "x"


def test_stale_temporary_files_are_removed(tmp_path):
    names = [".m.pth.ab12cd.tmp", ".a.png.tmp", ".tmp-x.safetensors", ".v.mp4.k3j9x2.tmp.mp4"]
    keep = ["m.pth", ".hidden", "x.tmp", "last_checkpoint"]
    for n in names + keep:
        (tmp_path / n).write_text("x")
    assert remove_stale_temps(str(tmp_path)) == len(names)
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
