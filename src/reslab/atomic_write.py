"""Atomic file writes: write to a temporary file in the same folder, fsync, rename.

A crash mid-write leaves the previous file intact, never a truncated one (docs/architecture.md).

- The temporary file is `.NAME.HOST.PID.XXXXXXXX.tmp`: a writer killed mid-way (kill -9,
  power loss) leaves it behind, and `clean_stale_temps` removes it once that process is
  gone (each write cleans its own target's; call it for a whole folder when opening one).
- The file gets the permissions an ordinary `open(path, "w")` would give: those of the
  file it replaces, or 0666 & ~umask for a new one (not mkstemp's 0600).
- An OSError (no space, read-only or forbidden folder, a folder in the way) becomes a
  ReslabError on one line that says what failed and whether the previous file is intact;
  the OSError stays chained as its cause.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from reslab.errors import ReslabError

#: Temporary files of writes whose writer is not known to be gone are removed after this.
STALE_AFTER_S = 24 * 3600

_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.\w{8}\.tmp$")


def _read_umask() -> int:
    # os.umask can only be read by setting it: done once, at import, before any thread
    # of ours can create files.
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK_AT_IMPORT = _read_umask()


def current_umask() -> int:
    """The process's umask: from /proc (Linux, no side effect) or as it was at import."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def _pid_gone(pid: int) -> bool:
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but another user's
        return False
    return False


def clean_stale_temps(
    folder: str | os.PathLike, name: str | None = None, stale_after_s: float = STALE_AFTER_S
) -> list[Path]:
    """Remove the temporary files (`.NAME.HOST.PID.*.tmp`) that interrupted atomic writes
    left in `folder` (not its sub-folders): those of a process of this host that no longer
    runs, and any older than `stale_after_s`. Only `name`'s when given. Never raises;
    returns the paths removed."""
    removed: list[Path] = []
    now = time.time()
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for e in entries:
        m = _TEMP.match(e.name)
        if m is None or (name is not None and m["name"] != name):
            continue
        try:
            st = e.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                continue
            gone = m["host"] == _HOST and _pid_gone(int(m["pid"]))
            if gone or now - st.st_mtime > stale_after_s:
                os.unlink(e.path)
                removed.append(Path(e.path))
        except OSError:
            continue
    return removed


_FREE = "free some space and try again"
_WRITABLE = "choose a writable folder"
# errno -> (what failed, what to do); {} is the path
_FAILURES = {
    errno.ENOSPC: ("no space left on device writing {}", _FREE),
    getattr(errno, "EDQUOT", -1): ("disk quota exceeded writing {}", _FREE),
    errno.EROFS: ("read-only file system: cannot write {}", _WRITABLE),
    errno.EACCES: ("permission denied writing {}", _WRITABLE),
    errno.EPERM: ("operation not permitted writing {}", _WRITABLE),
    errno.EISDIR: ("a folder stands in the way of {}", "give a file path"),
    errno.ENOTDIR: ("a file stands where a folder of {} should be", "check the path"),
}


def _os_error(e: OSError, path: Path, existed: bool) -> ReslabError:
    """One line: what failed, what is intact, what to do."""
    what, todo = _FAILURES.get(e.errno or 0) or (
        f"cannot write {{}} ({e.strerror or type(e).__name__})", "check the path")
    outcome = f"the previous {path.name} is intact" if existed else f"no {path.name} was written"
    return ReslabError(f"{what.format(path)}; {outcome}: {todo}")


def _target(path: str | os.PathLike) -> tuple[Path, os.stat_result | None]:
    """The path, and the stat of the file it would replace (None if none)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:
        return path, None
    if stat.S_ISDIR(st.st_mode):
        raise ReslabError(f"{path} is a folder, not a file; nothing was written: give a "
                          "file path")
    return path, st


def _temp_beside(path: Path, existed: bool) -> tuple[int, str]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(path.parent, path.name)
        return tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp"
        )
    except OSError as e:
        raise _os_error(e, path, existed) from e


def _mode_like_open(old: os.stat_result | None) -> int:
    """What `open(path, "w")` would leave: the replaced file's mode, or 0666 & ~umask."""
    return stat.S_IMODE(old.st_mode) if old is not None else 0o666 & ~current_umask()


def _chmod(fd_or_path: int | str, mode: int) -> None:
    try:
        os.chmod(fd_or_path, mode)
    except OSError:
        pass  # e.g. a file system without permissions: keep what it gives


def _finish(tmp: str, path: Path, old: os.stat_result | None, run: Callable[[], None]) -> Path:
    """Run the write, rename `tmp` onto `path`; on any failure remove `tmp`."""
    try:
        run()
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise _os_error(e, path, old is not None) from e
        raise
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temporary file beside `path`, then rename it onto `path`.

    ReslabError (the OSError chained) if the file system refuses; the previous file is
    then unchanged."""
    path, old = _target(path)
    fd, tmp = _temp_beside(path, old is not None)

    def run() -> None:
        with os.fdopen(fd, "wb") as f:
            _chmod(f.fileno(), _mode_like_open(old))
            write(f)
            f.flush()
            os.fsync(f.fileno())

    return _finish(tmp, path, old, run)


def atomic_write_via_path(path: str | os.PathLike, write_to: Callable[[str], None]) -> Path:
    """`atomic_write` for writers that want a file name (ONNX exporters): `write_to(tmp)`
    writes the temporary file, which is then renamed onto `path`."""
    path, old = _target(path)
    fd, tmp = _temp_beside(path, old is not None)
    os.close(fd)

    def run() -> None:
        write_to(tmp)  # may replace the file: set its mode afterwards
        _chmod(tmp, _mode_like_open(old))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())

    return _finish(tmp, path, old, run)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save to `path` atomically. Keep `obj` to tensors and plain Python values so
    that `torch.load(..., weights_only=True)` can read it back."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
