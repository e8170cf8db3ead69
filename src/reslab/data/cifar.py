"""CIFAR-10 / CIFAR-100 in the official python format (Sec. 4.2 of the paper).

Finds the data in a folder (`cifar-10-batches-py/` or `cifar-100-python/`) or its
official `.tar.gz`, downloading the archive when absent (as torchvision does): to a
temporary name, md5-checked, then renamed into place and unpacked.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from reslab.data.dataset import ImageData, ImageSplit
from reslab.data.home import reslab_home
from reslab.errors import ReslabError

# Official archives. Module-level so tests can point them at a local server.
CIFAR_ARCHIVES: dict[str, dict[str, str]] = {
    "cifar10": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "filename": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
    },
    "cifar100": {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "filename": "cifar-100-python.tar.gz",
        "folder": "cifar-100-python",
    },
}

# The files of each format: train files, test file, meta file, label key, names key.
_FORMATS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": "test_batch",
        "meta": "batches.meta",
        "labels": "labels",
        "names": "label_names",
    },
    "cifar100": {
        "train": ["train"],
        "test": "test",
        "meta": "meta",
        "labels": "fine_labels",
        "names": "fine_label_names",
    },
}

DATA_HINT = (
    "--data also accepts synthetic, a CIFAR folder or .tar.gz, or an image folder "
    "(ROOT/train/<class>/*, ROOT/test/<class>/*) or a .tar/.tar.gz of one"
)


# --- Safe unpickling --------------------------------------------------------------------
# The CIFAR files are pickles, and `pickle.load` runs whatever callables a pickle names:
# a crafted "data_batch_1" could execute arbitrary code. CIFAR pickles hold only dicts,
# lists, bytes, ints, strings and uint8 numpy arrays, so this unpickler refuses every
# global except the few numpy/codecs constructors needed to rebuild a plain array.

_np_core = getattr(np, "_core", None) or np.core


def _latin1_encode(s: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # How Python 3 pickles `bytes` at protocol <= 2: _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused codec {encoding!r}")
    return s.encode("latin1", errors)


def _plain_dtype(*args: Any) -> np.dtype:
    dt = np.dtype(*args)
    if dt.hasobject:
        raise pickle.UnpicklingError("refused object dtype")
    return dt


_ALLOWED_GLOBALS: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _np_core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_core.multiarray._reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _np_core.numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_core.numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _plain_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: CIFAR files hold only plain data"
            ) from None


def safe_unpickle(f: BinaryIO, what: str) -> dict[str, Any]:
    """Load a CIFAR pickle without running any code it names; keys become `str`."""
    try:
        obj = _SafeUnpickler(f, encoding="bytes").load()
    except Exception as e:
        raise ReslabError(f"{what} is not a valid CIFAR python-format file ({e})") from None
    if not isinstance(obj, dict):
        raise ReslabError(f"{what} is not a valid CIFAR file (expected a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


# --- Parsing ----------------------------------------------------------------------------


def _get(d: dict[str, Any], key: str, what: str) -> Any:
    if key not in d:
        raise ReslabError(f"{what} has no {key!r} entry; is it a CIFAR python-format file?")
    return d[key]


def _parse_batch(d: dict[str, Any], label_key: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    data = _get(d, "data", what)
    labels = _get(d, label_key, what)
    try:
        if isinstance(data, bytes | bytearray):
            arr = np.frombuffer(data, dtype=np.uint8)
        else:
            arr = np.asarray(data)
            if arr.dtype != np.uint8:
                raise ValueError(f"data has dtype {arr.dtype}, expected uint8")
        arr = arr.reshape(-1, 3, 32, 32)
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (ValueError, TypeError) as e:
        raise ReslabError(f"{what}: malformed CIFAR batch ({e})") from None
    if lab.shape[0] != arr.shape[0]:
        raise ReslabError(f"{what}: {arr.shape[0]} images but {lab.shape[0]} labels")
    return torch.from_numpy(arr.copy()), torch.from_numpy(lab.copy())


def _names(d: dict[str, Any], key: str, what: str) -> list[str]:
    names = _get(d, key, what)
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def parse_cifar(kind: str, open_member: Callable[[str], BinaryIO], name: str) -> ImageData:
    """Build ImageData from the official files; `open_member(filename)` opens each one."""
    fmt = _FORMATS[kind]

    def load(fname: str) -> dict[str, Any]:
        with open_member(fname) as f:
            return safe_unpickle(f, f"{name}/{fname}")

    classes = _names(load(fmt["meta"]), fmt["names"], f"{name}/{fmt['meta']}")
    parts = [_parse_batch(load(f), fmt["labels"], f"{name}/{f}") for f in fmt["train"]]
    train = ImageSplit(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = ImageSplit(*_parse_batch(load(fmt["test"]), fmt["labels"], f"{name}/{fmt['test']}"))
    for split, s in (("train", train), ("test", test)):
        if len(s) and (s.labels.min() < 0 or s.labels.max() >= len(classes)):
            raise ReslabError(f"{name}: {split} labels outside 0..{len(classes) - 1}")
    return ImageData(name=kind, classes=classes, train=train, test=test)


def cifar_kind_of_names(names: list[str]) -> str | None:
    """'cifar10' / 'cifar100' if these base file names are an official CIFAR folder."""
    s = set(names)
    for kind, fmt in _FORMATS.items():
        if set(fmt["train"]) | {fmt["test"], fmt["meta"]} <= s:
            return kind
    return None


def read_cifar_folder(folder: str | Path) -> ImageData:
    """Read an official-format folder (`cifar-10-batches-py` or `cifar-100-python`)."""
    folder = Path(folder)
    kind = cifar_kind_of_names([p.name for p in folder.iterdir() if p.is_file()])
    if kind is None:
        raise ReslabError(
            f"{folder} is not a complete CIFAR folder: CIFAR-10 needs data_batch_1..5, "
            "test_batch, batches.meta; CIFAR-100 needs train, test, meta"
        )
    return parse_cifar(kind, lambda f: open(folder / f, "rb"), str(folder))


def _cifar_members(tf: tarfile.TarFile) -> tuple[str, dict[str, tarfile.TarInfo]] | None:
    by_dir: dict[str, dict[str, tarfile.TarInfo]] = {}
    for m in tf.getmembers():
        if m.isfile():
            d, _, base = m.name.rpartition("/")
            by_dir.setdefault(d, {})[base] = m
    for members in by_dir.values():
        kind = cifar_kind_of_names(list(members))
        if kind is not None:
            return kind, members
    return None


def read_cifar_archive(archive: str | Path) -> ImageData:
    """Read an official-format `.tar.gz` directly, without unpacking it."""
    archive = Path(archive)
    try:
        with tarfile.open(archive) as tf:
            found = _cifar_members(tf)
            if found is None:
                raise ReslabError(
                    f"{archive} holds neither CIFAR python-format files nor an image folder "
                    "(train/<class>/*, test/<class>/*)"
                )
            kind, members = found

            def open_member(fname: str) -> BinaryIO:
                f = tf.extractfile(members[fname])
                assert f is not None
                return io.BytesIO(f.read())

            return parse_cifar(kind, open_member, str(archive))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ReslabError(f"cannot read {archive}: {e}; is it a complete .tar.gz?") from None


# --- Finding and downloading ------------------------------------------------------------


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _unpack(archive: Path, kind: str, dest_dir: Path) -> Path:
    """Write the archive's CIFAR files into `dest_dir/<folder>` (atomically, by rename).

    Only the known file names are written, so a crafted archive cannot place files
    elsewhere."""
    folder = dest_dir / CIFAR_ARCHIVES[kind]["folder"]
    with tarfile.open(archive) as tf:
        found = _cifar_members(tf)
        if found is None or found[0] != kind:
            raise ReslabError(f"{archive} does not hold the {kind} python-format files")
        _, members = found
        tmp = Path(tempfile.mkdtemp(dir=dest_dir, prefix=f".{folder.name}."))
        try:
            for base, m in members.items():
                if base.startswith(".") or "/" in base:
                    continue
                src = tf.extractfile(m)
                assert src is not None
                with open(tmp / base, "wb") as out:
                    shutil.copyfileobj(src, out)
            try:
                os.replace(tmp, folder)
            except OSError:
                if not folder.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process unpacked it first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def download(url: str, dest: Path, md5: str, progress: bool = True) -> Path:
    """Download `url` to `dest` via a temporary name; check its md5 before renaming."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=60) as resp:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total,
                    unit="B",
                    unit_scale=True,
                    desc=f"downloading {dest.name}",
                    disable=not progress,
                ) as bar:
                    while block := resp.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
        got = md5sum(tmp)
        if got != md5:
            raise ReslabError(
                f"downloaded {url} has md5 {got}, expected {md5}; the file was deleted, "
                "try again or fetch it by hand into "
                f"{dest.parent}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def load_cifar(
    kind: str, root: str | Path | None = None, download_ok: bool = True, progress: bool = True
) -> ImageData:
    """CIFAR-10/100 from `root` (default `reslab_home()/data`), downloading if allowed.

    Looks for, in order: `root` itself being the batches folder, `root/<folder>`, and
    `root/<archive>.tar.gz` (md5-checked, then unpacked); else downloads the archive.
    """
    info = CIFAR_ARCHIVES[kind]
    base = Path(root).expanduser() if root is not None else reslab_home() / "data"
    if base.is_dir() and cifar_kind_of_names([p.name for p in base.iterdir()]) == kind:
        return read_cifar_folder(base)
    folder = base / info["folder"]
    if folder.is_dir():
        return read_cifar_folder(folder)
    archive = base / info["filename"]
    where = f"put {info['filename']} or its unpacked {info['folder']}/ folder in {base}" + (
        "" if root is not None else " (or set RESLAB_HOME)"
    )
    if not archive.is_file():
        if not download_ok:
            raise ReslabError(f"{kind} not found: {where}; {DATA_HINT}")
        try:
            download(info["url"], archive, info["md5"], progress)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise ReslabError(
                f"could not download {kind} from {info['url']} ({reason}): {where}; {DATA_HINT}"
            ) from None
    else:
        got = md5sum(archive)
        if got != info["md5"]:
            raise ReslabError(
                f"{archive} has md5 {got}, expected {info['md5']} (corrupt or incomplete): "
                "delete it and run again to re-download"
            )
    return read_cifar_folder(_unpack(archive, kind, base))
