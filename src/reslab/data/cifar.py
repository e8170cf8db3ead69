"""CIFAR-10 / CIFAR-100 in the official python format (Sec. 4.2 of the paper).

Finds the data in a folder (`cifar-10-batches-py/` or `cifar-100-python/`) or a
`.tar.gz` of one, downloading the official archive when absent (as torchvision does): to
a temporary name, md5-checked, then renamed into place and unpacked. Whatever the route,
every batch file is checked against the md5 torchvision's `CIFAR10`/`CIFAR100` check
(`CIFAR_MEMBER_MD5`) before it is unpickled, so an archive repacked by a user is accepted
when its members are the official ones, and a wrong member is an error naming it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import struct
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

# The md5 of every official file, as torchvision's CIFAR10/CIFAR100 classes list them
# (the members, not the archive: a repacked archive of the right files is the same data).
# Module-level so tests of the parser can use small hand-made files.
CIFAR_MEMBER_MD5: dict[str, dict[str, str]] = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
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
# a crafted "data_batch_1" could execute arbitrary code, or, with numpy's own constructors
# alone, ask for a 10 GB array in 240 bytes. CIFAR pickles hold only dicts, lists, bytes,
# ints, strings and numpy arrays, so this unpickler refuses every global except numpy's
# array and dtype constructors, and checks every size against the file's before anything
# is allocated:
#   * arrays come only from data stored in the file (`_reconstruct` makes an empty array,
#     filled by its pickled state; `_frombuffer` views a buffer of the file), of a plain
#     numeric dtype, at most MAX_ARRAY_BYTES;
#   * what the constructors build (array copies, bytes decoded from text) may not exceed
#     twice the file's size, so shared references cannot multiply it;
#   * the pure-Python unpickler reads a length-prefixed string only as far as the file
#     goes (the C one allocates the declared length first: 10 GB for a forged header).
# Official files: 10,000 images of 3,072 bytes per batch (CIFAR-100's train file 50,000).

IMAGE_BYTES = 3 * 32 * 32
MAX_IMAGES = 60_000
MAX_ARRAY_BYTES = MAX_IMAGES * IMAGE_BYTES
# The images (up to twice their size when Python 3 pickles bytes as text at protocol 2),
# plus labels, file names, ...
MAX_FILE_BYTES = 2 * MAX_ARRAY_BYTES + (64 << 20)

_DTYPE_KINDS = "biuf"  # bool, signed, unsigned, float: no strings, records or objects


class _TooLarge(pickle.UnpicklingError):
    """A size beyond what an official CIFAR file holds."""


def _too_large(what: str, n: int, limit: int) -> _TooLarge:
    return _TooLarge(f"it declares {what} of {n:,} bytes, more than an official CIFAR file "
                     f"holds (at most {limit:,})")


class _Budget:
    """Bytes the constructors may still allocate while one file is unpickled."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def spend(self, n: int, what: str) -> None:
        if n > self.left:
            raise _TooLarge(f"{what} of {n:,} bytes more than its own size can hold")
        self.left -= n


def _plain_dtype(code: Any) -> np.dtype:
    """A plain numeric dtype from its pickled name (b'u1', '<i8', ...) or a `_Dtype`."""
    if isinstance(code, _Dtype):
        return code.resolve()
    if isinstance(code, bytes):
        code = code.decode("latin1")
    if not isinstance(code, str) or len(code) > 8:
        raise pickle.UnpicklingError(f"refused dtype {code!r:.40}")
    dt = np.dtype(code)
    if dt.kind not in _DTYPE_KINDS or dt.subdtype is not None or dt.names or dt.itemsize > 8:
        raise pickle.UnpicklingError(f"refused dtype {dt}")
    return dt


class _Dtype:
    """`numpy.dtype(code, align, copy)` as a pickle builds it, then its state (byte order).

    Kept apart from a real dtype: numpy's `dtype.__setstate__` would accept any item size
    for flexible types, so only the byte order of the state is used."""

    __slots__ = ("code", "order")

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        self.code = _plain_dtype(code)
        self.order = "="

    def __setstate__(self, state: Any) -> None:
        order = state[1] if isinstance(state, tuple) and len(state) >= 2 else None
        if isinstance(order, bytes):
            order = order.decode("latin1")
        if order not in ("<", ">", "|", "=") or any(x is not None for x in state[2:5]):
            raise pickle.UnpicklingError("refused dtype state")
        self.order = order

    def resolve(self) -> np.dtype:
        return self.code.newbyteorder(self.order) if self.order in "<>" else self.code


def _shape(shape: Any, dt: np.dtype) -> tuple[tuple[int, ...], int]:
    """A checked shape and its size in bytes (<= MAX_ARRAY_BYTES), computed without
    allocating anything."""
    if isinstance(shape, int):
        shape = (shape,)
    if not isinstance(shape, tuple) or len(shape) > 8:
        raise pickle.UnpicklingError(f"refused array shape {shape!r:.60}")
    nbytes = dt.itemsize
    for d in shape:
        if type(d) is not int or d < 0:
            raise pickle.UnpicklingError(f"refused array shape {shape!r:.60}")
        nbytes *= d
        if nbytes > MAX_ARRAY_BYTES:
            # (keep multiplying only while small: 10**10 x 10**10 ... stays cheap)
            raise _too_large(f"an array of shape {shape} ({dt})", nbytes, MAX_ARRAY_BYTES)
    return shape, nbytes


class _Array(np.ndarray):
    """An ndarray whose pickled state (shape, dtype, raw bytes) is checked before numpy
    allocates it; `np.asarray` turns it back into a plain ndarray."""

    _budget: _Budget

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("refused array state")
        shape, dtype, fortran, raw = state[-4:]
        dt = _plain_dtype(dtype)
        shape, nbytes = _shape(shape, dt)
        if not isinstance(raw, bytes | bytearray) or len(raw) != nbytes:
            raise pickle.UnpicklingError(f"array data does not match its shape {shape}")
        self._budget.spend(nbytes, "it builds an array")
        super().__setstate__((1, shape, dt, bool(fortran), bytes(raw)))


class _Refused:
    """`numpy.ndarray` as a pickle names it: only an argument of `_reconstruct`."""

    __slots__ = ()

    def __call__(self, *args: Any) -> Any:
        raise pickle.UnpicklingError("refused to call numpy.ndarray")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("refused state for numpy.ndarray")


_NDARRAY = _Refused()


class _Global:
    """An allowed callable; refuses pickled state (which would rebind its attributes)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("refused state for a function")


class _BoundedReader:
    """A binary stream that gives at most `left` more bytes (the file's size)."""

    __slots__ = ("f", "left")

    def __init__(self, f: BinaryIO, left: int) -> None:
        self.f, self.left = f, left

    def read(self, n: int = -1) -> bytes:
        want = self.left if n is None or n < 0 else n
        data = self.f.read(min(want, self.left))
        self.left -= len(data)
        if len(data) < want:  # a pickle always ends with STOP: this is no pickle's end
            raise pickle.UnpicklingError(
                f"the file ends early ({want:,} more bytes wanted, {len(data):,} left)"
            )
        return data

    def readline(self) -> bytes:
        line = self.f.readline(self.left)
        self.left -= len(line)
        return line


class _SafeUnpickler(pickle._Unpickler):  # the pure-Python one: see the comment above
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, f: BinaryIO, size: int) -> None:
        super().__init__(_BoundedReader(f, size), encoding="bytes")
        self._size = size
        self._budget = _Budget(2 * size + (1 << 20))
        g = {
            "_reconstruct": _Global(self._reconstruct),
            "_frombuffer": _Global(self._frombuffer),
            "dtype": _Global(_Dtype),
            "encode": _Global(self._latin1_encode),
        }
        self._allowed: dict[tuple[str, str], Any] = {
            ("numpy.core.multiarray", "_reconstruct"): g["_reconstruct"],
            ("numpy._core.multiarray", "_reconstruct"): g["_reconstruct"],
            ("numpy.core.numeric", "_frombuffer"): g["_frombuffer"],
            ("numpy._core.numeric", "_frombuffer"): g["_frombuffer"],
            ("numpy", "ndarray"): _NDARRAY,
            ("numpy", "dtype"): g["dtype"],
            ("_codecs", "encode"): g["encode"],
        }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name}: CIFAR files hold only plain data"
            ) from None

    def _load_bytearray8(self) -> None:
        # The base class allocates the declared length before reading.
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size:
            raise _TooLarge(f"it declares a byte string of {n:,} bytes in a file of "
                            f"{self._size:,}")
        data = self.read(n)
        if len(data) != n:
            raise pickle.UnpicklingError("pickle data was truncated")
        self.append(bytearray(data))

    dispatch[pickle.BYTEARRAY8[0]] = _load_bytearray8

    def _reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        # numpy pickles `_reconstruct(ndarray, (0,), b"b")`, then fills it from its state.
        if subtype is not _NDARRAY:
            raise pickle.UnpicklingError("refused array subtype")
        shape, nbytes = _shape(shape, _plain_dtype(dtype))
        if nbytes:
            raise pickle.UnpicklingError("refused non-empty array without data")
        arr = np.ndarray.__new__(_Array, shape, _plain_dtype(dtype))
        arr._budget = self._budget
        return arr

    def _frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        dt = _plain_dtype(dtype)
        shape, nbytes = _shape(shape, dt)
        if isinstance(order, bytes):
            order = order.decode("latin1")
        if not isinstance(buf, bytes | bytearray) or len(buf) != nbytes or order not in "CF":
            raise pickle.UnpicklingError(f"array data does not match its shape {shape}")
        return np.frombuffer(buf, dtype=dt).reshape(shape, order=order).view(_Array)

    def _latin1_encode(self, s: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
        # How Python 3 pickles `bytes` at protocol <= 2: _codecs.encode(str, "latin1").
        if encoding not in ("latin1", "latin-1") or not isinstance(s, str):
            raise pickle.UnpicklingError(f"refused codec {encoding!r:.20}")
        self._budget.spend(len(s), "it decodes a byte string")
        return s.encode("latin1", errors)


def _stream_size(f: BinaryIO) -> int | None:
    try:
        pos = f.tell()
        end = f.seek(0, os.SEEK_END)
        f.seek(pos)
        return end - pos
    except (OSError, AttributeError, ValueError):
        return None


def check_file_size(size: int, what: str) -> None:
    """ReslabError if a file is larger than any official CIFAR file."""
    if size > MAX_FILE_BYTES:
        raise ReslabError(
            f"{what} is {size:,} bytes, larger than any official CIFAR file (at most "
            f"{MAX_FILE_BYTES:,}): replace it with the official file"
        )


def safe_unpickle(f: BinaryIO, what: str) -> dict[str, Any]:
    """Load a CIFAR pickle without running any code it names or allocating more than its
    size warrants; keys become `str`. ReslabError naming `what` otherwise."""
    size = _stream_size(f)
    if size is not None:
        check_file_size(size, what)
    try:
        obj = _SafeUnpickler(f, MAX_FILE_BYTES if size is None else size).load()
    except _TooLarge as e:
        raise ReslabError(
            f"{what} is not an official CIFAR file ({e}); delete it and get the official "
            "files again (reslab downloads them when they are absent)"
        ) from None
    except Exception as e:
        raise ReslabError(
            f"{what} is not a valid CIFAR python-format file ({e}); replace it with the "
            "official file"
        ) from None
    if not isinstance(obj, dict):
        raise ReslabError(f"{what} is not a valid CIFAR file (expected a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


# --- Verifying --------------------------------------------------------------------------


def check_member_md5(f: BinaryIO, kind: str, fname: str, what: str) -> None:
    """ReslabError naming `what` unless the open file `f` is the official `kind` file
    `fname` (its md5 in `CIFAR_MEMBER_MD5`); `f` is left at its start. Checked before
    unpickling, so only the official bytes ever reach the unpickler."""
    expected = CIFAR_MEMBER_MD5[kind].get(fname)
    if expected is None:
        return
    size = _stream_size(f)
    if size is not None:
        check_file_size(size, what)
    h = hashlib.md5(usedforsecurity=False)
    while block := f.read(1 << 20):
        h.update(block)
    f.seek(0)
    if h.hexdigest() != expected:
        label = "CIFAR-10" if kind == "cifar10" else "CIFAR-100"
        raise ReslabError(
            f"{what} has md5 {h.hexdigest()}, not the official {label} file's {expected} "
            "(the md5 torchvision checks): it is corrupt, incomplete or modified; replace it "
            f"with the official file (a modified {label} trains as an image folder: "
            "ROOT/train/<class>/*, ROOT/test/<class>/*)"
        )


# --- Parsing ----------------------------------------------------------------------------


def _get(d: dict[str, Any], key: str, what: str) -> Any:
    if key not in d:
        raise ReslabError(f"{what} has no {key!r} entry; is it a CIFAR python-format file?")
    return d[key]


def _images(data: Any, what: str) -> np.ndarray:
    """The (N, 3, 32, 32) uint8 images of a batch's 'data' (bytes or a uint8 array)."""
    if isinstance(data, bytes | bytearray):
        arr = np.frombuffer(data, dtype=np.uint8)
    elif isinstance(data, np.ndarray) and data.dtype == np.uint8:
        arr = np.asarray(data)
    else:
        kind = f"a {data.dtype} array" if isinstance(data, np.ndarray) else type(data).__name__
        raise ReslabError(
            f"{what}: malformed CIFAR batch ('data' is {kind}, expected uint8 images); "
            "replace it with the official file"
        )
    if arr.size % IMAGE_BYTES:
        raise ReslabError(
            f"{what}: malformed CIFAR batch ({arr.size} bytes of images, not a multiple of "
            f"{IMAGE_BYTES}); replace it with the official file"
        )
    return arr.reshape(-1, 3, 32, 32)


def _labels(labels: Any, what: str) -> np.ndarray:
    """A batch's labels (a flat list of ints, or an integer array) as int64."""
    n = labels.size if isinstance(labels, np.ndarray) else len(labels) if isinstance(
        labels, list | tuple) else None
    if n is not None and n > MAX_IMAGES:
        raise ReslabError(
            f"{what}: {n:,} labels, more than an official CIFAR file holds ({MAX_IMAGES:,}); "
            "replace it with the official file"
        )
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        return np.asarray(labels).astype(np.int64).reshape(-1)
    # Only plain ints: a list of lists sharing one another could stand for 10**10 values.
    if isinstance(labels, list | tuple) and all(type(v) is int for v in labels):
        try:
            return np.array(labels, dtype=np.int64)
        except OverflowError:
            pass
    raise ReslabError(
        f"{what}: malformed CIFAR batch (labels must be a list of integers); replace it "
        "with the official file"
    )


def _parse_batch(d: dict[str, Any], label_key: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    arr = _images(_get(d, "data", what), what)
    lab = _labels(_get(d, label_key, what), what)
    if lab.shape[0] != arr.shape[0]:
        raise ReslabError(f"{what}: {arr.shape[0]} images but {lab.shape[0]} labels")
    return torch.from_numpy(arr.copy()), torch.from_numpy(lab.copy())


def _names(d: dict[str, Any], key: str, what: str) -> list[str]:
    names = _get(d, key, what)
    if (not isinstance(names, list | tuple) or len(names) > MAX_IMAGES
            or not all(isinstance(n, bytes | str) for n in names)):
        raise ReslabError(f"{what}: {key!r} must be a list of class names; replace it with "
                          "the official file")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def parse_cifar(kind: str, open_member: Callable[[str], BinaryIO], name: str,
                test_only: bool = False) -> ImageData:
    """Build ImageData from the official files; `open_member(filename)` opens each one
    (each md5-checked, then safely unpickled).
    `test_only`: read only the test batch (evaluation; the training split is empty)."""
    fmt = _FORMATS[kind]

    def load(fname: str) -> dict[str, Any]:
        with open_member(fname) as f:
            check_member_md5(f, kind, fname, f"{name}/{fname}")
            return safe_unpickle(f, f"{name}/{fname}")

    classes = _names(load(fmt["meta"]), fmt["names"], f"{name}/{fmt['meta']}")
    parts = [_parse_batch(load(f), fmt["labels"], f"{name}/{f}")
             for f in ([] if test_only else fmt["train"])]
    train = (ImageSplit(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
             if parts else ImageSplit(torch.empty((0, 3, 32, 32), dtype=torch.uint8),
                                      torch.empty(0, dtype=torch.int64)))
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


def read_cifar_folder(folder: str | Path, test_only: bool = False) -> ImageData:
    """Read an official-format folder (`cifar-10-batches-py` or `cifar-100-python`)."""
    folder = Path(folder)
    kind = cifar_kind_of_names([p.name for p in folder.iterdir() if p.is_file()])
    if kind is None:
        raise ReslabError(
            f"{folder} is not a complete CIFAR folder: CIFAR-10 needs data_batch_1..5, "
            "test_batch, batches.meta; CIFAR-100 needs train, test, meta"
        )
    return parse_cifar(kind, lambda f: open(folder / f, "rb"), str(folder), test_only)


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


def read_cifar_archive(archive: str | Path, test_only: bool = False) -> ImageData:
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
                check_file_size(members[fname].size, f"{archive}:{fname}")
                f = tf.extractfile(members[fname])
                assert f is not None
                return io.BytesIO(f.read())

            return parse_cifar(kind, open_member, str(archive), test_only)
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
                with open(tmp / base, "rb") as written:  # a wrong member is never put in place
                    check_member_md5(written, kind, base, f"{archive}:{m.name}")
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
    kind: str, root: str | Path | None = None, download_ok: bool = True, progress: bool = True,
    test_only: bool = False,
) -> ImageData:
    """CIFAR-10/100 from `root` (default `reslab_home()/data`), downloading if allowed.

    Looks for, in order: `root` itself being the batches folder, `root/<folder>`, and
    `root/<archive>.tar.gz` (unpacked; a repacked archive is fine), else downloads the
    official archive (its md5 checked). Every member's md5 is checked as it is read.
    """
    info = CIFAR_ARCHIVES[kind]
    base = Path(root).expanduser() if root is not None else reslab_home() / "data"
    if base.is_dir() and cifar_kind_of_names([p.name for p in base.iterdir()]) == kind:
        return read_cifar_folder(base, test_only)
    folder = base / info["folder"]
    if folder.is_dir():
        return read_cifar_folder(folder, test_only)
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
    return read_cifar_folder(_unpack(archive, kind, base), test_only)
