"""The run folder (`--out`): checked before any data is read, locked while a run lives.

One place for the failures a folder meets: a path that is a file or cannot be written is
refused at once; a second `reslab train` (or a second sweep process) on the same folder
is refused while the first lives; a lock left by a killed run never blocks a `--resume`
(the lock is an `fcntl.flock`, which the kernel drops when its process dies); temporary
files of writes that a kill -9 interrupted are removed.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from reslab.atomic_write import clean_stale_temps
from reslab.errors import ReslabError
from reslab.train.checkpoint import Checkpoint

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the other checks still apply
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunFolder:
    """`--out` of one run: `open()` checks and locks it; `close()` unlocks it."""

    def __init__(self, out: str | os.PathLike) -> None:
        self.path = Path(out)
        self._lock_fd: int | None = None

    def open(self, resume: bool) -> RunFolder:
        """Create the folder if needed, check that it can be written, lock it, and refuse
        to overwrite a run (`last.pt`) unless `resume`."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise ReslabError(f"--out {path} is a file, not a folder: choose another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
            fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise ReslabError(f"cannot write to --out {path}: {e.strerror or e}; choose a "
                              "writable folder") from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ReslabError(
                        f"another reslab process is writing to {path} (it holds "
                        f"{path / LOCK_NAME}); wait for it to finish, or use another --out"
                    ) from None
                raise
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as e:
            self.close()
            raise ReslabError(f"cannot write to --out {path}: {e.strerror or e}; free space "
                              "or choose a writable folder") from None
        if (path / "last.pt").exists() and not resume:
            self.close()
            raise ReslabError(f"{path} already holds a run (last.pt): pass --resume to "
                              "continue it, or choose another --out")
        clean_stale_temps(path)
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def recorded_run(out: str | os.PathLike) -> dict | None:
    """What the run.json of `out` records when `out` holds no last.pt: a run killed (kill -9,
    a full disk, a power cut) before its first checkpoint. None when there is a last.pt
    (the checkpoint records the run) or no run.json; ReslabError naming the file when it
    is not a run's record, since a resume could not know which run to continue, or when
    it records a run that ended (its last.pt was saved, and is gone)."""
    path = Path(out) / "run.json"
    if (Path(out) / "last.pt").exists() or not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        info, why = None, f"{type(e).__name__}: {e}"
    else:
        why = "it records no config"
    if isinstance(info, dict) and isinstance(info.get("config"), dict):
        if info.get("status") is not None:  # it ended, saving a last.pt that is gone now
            raise ReslabError(f"cannot resume {out}: its run.json says the run ended "
                              f"({info['status']} at iteration "
                              f"{info.get('finished_iteration')}) but its last.pt is missing; "
                              "restore last.pt to continue it, or start again without "
                              "--resume")
        return info
    raise ReslabError(f"cannot resume {out}: it has no last.pt and {path} is not a run's "
                      f"record ({why}); start the run again without --resume")


def recorded_config(out: str | os.PathLike) -> tuple[dict | None, Path] | None:
    """The config a resume of `out` continues and the file it comes from: last.pt's, or
    run.json's when the run stopped before its first checkpoint (`recorded_run`); None
    when `out` records no run."""
    recorded = recorded_run(out)
    if recorded is not None:
        return recorded["config"], Path(out) / "run.json"
    path = Path(out) / "last.pt"
    if path.exists():
        return Checkpoint.load(path).config, path
    return None
