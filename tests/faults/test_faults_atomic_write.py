"""Atomic writes: OS errors say what failed and what is intact, files get ordinary
permissions, and the temporary files of a killed writer are cleaned up (issue 9)."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import reslab.atomic_write as aw
from reslab.atomic_write import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_via_path,
    clean_stale_temps,
)
from reslab.errors import ReslabError

DEAD_PID = 4 * 1024 * 1024 + 1  # above Linux's largest pid_max: never a live process


def _full(f):
    f.write(b"half of it")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_no_space_keeps_previous_file(tmp_path):
    path = tmp_path / "runs" / "x" / "last.pt"
    atomic_write_bytes(path, b"the previous checkpoint")
    with pytest.raises(ReslabError) as err:
        atomic_write(path, _full)
    assert str(err.value) == (f"no space left on device writing {path}; the previous last.pt "
                              "is intact: free some space and try again")
    assert isinstance(err.value.__cause__, OSError)
    assert err.value.__cause__.errno == errno.ENOSPC
    assert path.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp left


def test_no_space_new_file_says_nothing_written(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with pytest.raises(ReslabError, match=r"no space left .*; no metrics\.jsonl was written"):
        atomic_write(path, _full)
    assert list(tmp_path.iterdir()) == []


def _raiser(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("code, what", [(errno.EROFS, "read-only file system: cannot write"),
                                        (errno.EACCES, "permission denied writing")])
@pytest.mark.parametrize("where", ["mkstemp", "replace"])
def test_read_only_or_forbidden_folder(tmp_path, monkeypatch, code, what, where):
    # We run as root, where chmod 0o555 does not stop writes: simulate the OS refusing.
    path = tmp_path / "run.json"
    atomic_write_bytes(path, b"{}")
    if where == "mkstemp":
        monkeypatch.setattr(tempfile, "mkstemp", _raiser(code))
    else:
        monkeypatch.setattr(os, "replace", _raiser(code))
    with pytest.raises(ReslabError) as err:
        atomic_write_bytes(path, b'{"new": 1}')
    monkeypatch.undo()
    msg = str(err.value)
    assert msg.startswith(f"{what} {path}; the previous run.json is intact")
    assert "\n" not in msg and err.value.__cause__.errno == code
    assert path.read_bytes() == b"{}" and [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_destination_is_a_folder(tmp_path):
    folder = tmp_path / "last.pt"
    (folder / "inside").mkdir(parents=True)
    for write in (lambda: atomic_write_bytes(folder, b"x"),
                  lambda: atomic_write_via_path(folder, lambda tmp: Path(tmp).write_bytes(b"x"))):
        with pytest.raises(ReslabError, match="last.pt is a folder, not a file; nothing was"):
            write()
    assert [p.name for p in folder.iterdir()] == ["inside"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_write_via_path_errors_and_cleanup(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old model")

    def exporter(tmp: str) -> None:
        Path(tmp).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ReslabError, match="the previous model.onnx is intact"):
        atomic_write_via_path(path, exporter)
    assert path.read_bytes() == b"old model" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_new_file_permissions_follow_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        a = atomic_write_bytes(tmp_path / "a.json", b"{}")
        b = atomic_write_via_path(tmp_path / "b.onnx", lambda tmp: Path(tmp).write_bytes(b"x"))
    finally:
        os.umask(old)
    for p in (a, b):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_replaced_file_keeps_its_permissions(tmp_path):
    path = atomic_write_bytes(tmp_path / "results.json", b"{}")
    path.chmod(0o640)
    atomic_write_bytes(path, b'{"a": 1}')
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def _temp(folder: Path, name: str, pid: int, host: str = aw._HOST, age_s: float = 0) -> Path:
    p = folder / f".{name}.{host}.{pid}.abc12345.tmp"
    p.write_bytes(b"partial")
    if age_s:
        t = time.time() - age_s
        os.utime(p, (t, t))
    return p


def test_clean_stale_temps_rules(tmp_path):
    dead = _temp(tmp_path, "last.pt", DEAD_PID)
    mine = _temp(tmp_path, "last.pt", os.getpid())  # a write in progress in this process
    other_host = _temp(tmp_path, "last.pt", DEAD_PID, host="elsewhere")
    other_host_old = _temp(tmp_path, "run.json", 7, host="elsewhere", age_s=3 * 24 * 3600)
    unrelated = tmp_path / ".notes.tmp"
    unrelated.write_text("keep")
    assert clean_stale_temps(tmp_path, "run.json") == [other_host_old]
    assert clean_stale_temps(tmp_path) == [dead]
    assert mine.exists() and other_host.exists() and unrelated.exists()
    assert clean_stale_temps(tmp_path / "missing") == []  # never raises


def test_each_write_cleans_its_targets_stale_temps(tmp_path):
    stale = _temp(tmp_path, "last.pt", DEAD_PID)
    other = _temp(tmp_path, "best.pt", DEAD_PID)
    atomic_write_bytes(tmp_path / "last.pt", b"new")
    assert not stale.exists() and other.exists()


_KILLED_WRITER = """
import sys, time
from reslab.atomic_write import atomic_write

def slow(f):
    f.write(b"half a checkpoint")
    f.flush()
    print("writing", flush=True)
    time.sleep(120)

atomic_write(sys.argv[1], slow)
"""


def test_temp_of_writer_killed_mid_write_is_cleaned(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"previous")
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(path)],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"writing\n"
        temps = sorted(tmp_path.glob(".last.pt.*.tmp"))
        assert len(temps) == 1 and f".{proc.pid}." in temps[0].name
        assert clean_stale_temps(tmp_path) == []  # its writer still lives
    finally:
        proc.kill()  # SIGKILL: no cleanup code runs
        proc.wait()
        proc.stdout.close()
    assert temps[0].exists()
    assert clean_stale_temps(tmp_path) == temps
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert path.read_bytes() == b"previous"
