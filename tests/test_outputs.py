"""distnn.io.outputs: atomic writes, refusing inputs and impossible targets, output checks."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from distnn.errors import DistnnError
from distnn.io.outputs import (
    atomic_savez,
    atomic_write,
    check_output_path,
    check_writable_dir,
    refuse_overwrite,
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_non_root = pytest.mark.skipif(IS_ROOT, reason="root may write anywhere")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None
    return message


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_writes_whole_file_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    atomic_write(str(target), lambda f: f.write(b"hello"))
    assert target.read_bytes() == b"hello"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failed_writer_keeps_the_old_file(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def write(f) -> None:
        f.write(b"half of the new")
        raise error

    with pytest.raises(type(error)):
        atomic_write(str(target), write)
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_oserror_while_writing_is_one_line(tmp_path: Path) -> None:
    def write(f) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(DistnnError) as info:
        atomic_write(str(tmp_path / "out.bin"), write)
    assert "cannot write (No space left on device)" in one_line(info)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("alias", ["same", "dot", "symlink", "hardlink"])
def test_refuses_a_protected_input(tmp_path: Path, alias: str) -> None:
    data = tmp_path / "in.npy"
    data.write_bytes(b"precious")
    target = {"same": data, "dot": tmp_path / "." / "in.npy"}.get(alias, tmp_path / "alias.npy")
    if alias == "symlink":
        target.symlink_to(data)
    elif alias == "hardlink":
        os.link(data, target)
    with pytest.raises(DistnnError) as info:
        atomic_write(str(target), lambda f: f.write(b"clobbered"), protect=[str(data)])
    assert "refusing to overwrite the input" in one_line(info)
    assert data.read_bytes() == b"precious" and leftovers(tmp_path) == []


def test_refuse_overwrite_allows_other_and_new_files(tmp_path: Path) -> None:
    data, other = tmp_path / "in.npy", tmp_path / "other.npy"
    data.write_bytes(b"a")
    other.write_bytes(b"a")  # same content, different file
    refuse_overwrite(str(other), [str(data)])
    refuse_overwrite(str(tmp_path / "new.npy"), [str(data), str(tmp_path / "missing")])


def test_refuses_a_directory_as_output(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    for call in (
        lambda: atomic_write(str(tmp_path / "out"), lambda f: f.write(b"x")),
        lambda: check_output_path(str(tmp_path / "out"), "-o"),
    ):
        with pytest.raises(DistnnError) as info:
            call()
        assert "is a directory" in one_line(info)
    assert (tmp_path / "out").is_dir() and leftovers(tmp_path) == []


def test_refuses_a_missing_directory(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "out.json"
    with pytest.raises(DistnnError) as info:
        atomic_write(str(target), lambda f: f.write(b"x"))
    assert "no such directory" in one_line(info)
    with pytest.raises(DistnnError) as info:
        check_output_path(str(target), "--json")
    message = one_line(info)
    assert message.startswith(f"--json {target}: no such directory")
    assert not (tmp_path / "no").exists()


def test_a_file_in_the_way_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "model.npz").write_bytes(b"x")
    for create in (False, True):
        with pytest.raises(DistnnError) as info:
            check_writable_dir(str(tmp_path / "model.npz"), "--checkpoint-dir", create=create)
        assert one_line(info).startswith("--checkpoint-dir: cannot write to")


def test_create_makes_the_folder(tmp_path: Path) -> None:
    check_writable_dir(str(tmp_path / "a" / "b"), "--checkpoint-dir", create=True)
    check_output_path(str(tmp_path / "c" / "m.npz"), "--save", create=True)
    assert (tmp_path / "a" / "b").is_dir() and (tmp_path / "c").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe leaves nothing


@needs_non_root
def test_unwritable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(DistnnError) as info:
            check_writable_dir(str(locked), "--checkpoint-dir")
        assert "--checkpoint-dir: cannot write to" in one_line(info)
        with pytest.raises(DistnnError) as info:
            check_output_path(str(locked / "m.npz"), "--save")
        assert one_line(info).startswith(f"--save {locked / 'm.npz'}: cannot write to")
        with pytest.raises(DistnnError) as info:
            atomic_write(str(locked / "m.npz"), lambda f: f.write(b"x"))
        assert "cannot write" in one_line(info)
    finally:
        locked.chmod(0o700)


def test_atomic_savez_round_trip(tmp_path: Path) -> None:
    target = tmp_path / "new" / "c.npz"  # the folder is made, as for checkpoints
    atomic_savez(str(target), {"a": np.arange(3), "b": np.array("text")})
    with np.load(target, allow_pickle=False) as f:
        assert f["a"].tolist() == [0, 1, 2] and str(f["b"]) == "text"
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask()
    assert leftovers(target.parent) == []
