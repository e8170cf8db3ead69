"""Forged CIFAR pickles: refused before anything large is allocated (issue 9).

Each forged `data_batch_1` is a few hundred bytes built only from the globals the safe
unpickler allows (numpy's array and dtype constructors, `_codecs.encode`), or from plain
pickle opcodes; before the fix each made numpy or the C unpickler reserve gigabytes.
Memory is measured with tracemalloc, which sees numpy's array buffers and Python's
objects, whether or not the pages are touched.
"""

from __future__ import annotations

import codecs
import pickle
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import reslab.data.cifar as cifar
from reslab.data.cifar import read_cifar_folder
from reslab.errors import ReslabError

_reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own, under its pickled name
_frombuffer = np.zeros(1).__reduce_ex__(5)[0]
ONE_IMAGE = np.zeros((1, 3072), np.uint8)
PEAK_LIMIT = 16 << 20  # bytes; the forgeries ask for gigabytes
S1M = "x" * 1_000_000


@pytest.fixture(autouse=True)
def unchecked_members(monkeypatch):
    """The md5 check refuses every forgery first; these tests empty it to reach the safe
    unpickler behind it (defence in depth: a file with the right md5 is still unpickled
    safely)."""
    monkeypatch.setattr(cifar, "CIFAR_MEMBER_MD5", {k: {} for k in cifar.CIFAR_MEMBER_MD5})


class Call:
    """Pickles as `fn(*args)` (then `BUILD state`), naming `fn` by its import path."""

    def __init__(self, fn, *args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _batch(data, labels, protocol=2) -> bytes:
    d = {b"batch_label": b"x", b"labels": labels, b"data": data}
    return pickle.dumps(d, protocol=protocol)


def _dtype_u1_state():
    return (3, "|", None, None, None, -1, -1, 0)


def _nested_labels(depth: int):
    labels = [0] * 10
    for _ in range(depth - 1):
        labels = [labels] * 10  # shared references: tiny pickle, 10**depth values
    return labels


def _claim(opcode: bytes) -> bytes:
    # PROTO 5, then BINBYTES8 / BYTEARRAY8 declaring 10 GB with 2 bytes behind it.
    return b"\x80\x05" + opcode + struct.pack("<Q", 10**10) + b"xx"


FORGED = {
    # _reconstruct(ndarray, (10**10,), uint8): numpy allocates 10 GB at once
    "reconstruct_shape": lambda: _batch(Call(_reconstruct, np.ndarray, (10**10,), b"B"), [0]),
    # numpy.ndarray((10**10,), "u1") called directly
    "ndarray_call": lambda: _batch(Call(np.ndarray, (10**10,), "u1"), [0]),
    # a dtype whose pickled state gives it a 1 MB item size, then 10,000 items
    "dtype_itemsize": lambda: _batch(
        Call(_reconstruct, np.ndarray, (10**4,),
             Call(np.dtype, "S1", False, True, state=(3, "|", None, None, None, 10**6, 1, 0))),
        [0]),
    # an array state declaring 10**10 bytes with 16 of data
    "state_shape": lambda: _batch(
        Call(_reconstruct, np.ndarray, (0,), b"b",
             state=(1, (10**10,), Call(np.dtype, "u1", False, True, state=_dtype_u1_state()),
                    False, b"\0" * 16)),
        [0]),
    # a length-prefixed string declaring 10 GB (the C unpickler allocates it first)
    "binbytes8_header": lambda: _claim(pickle.BINBYTES8),
    "bytearray8_header": lambda: _claim(pickle.BYTEARRAY8),
    # labels: lists sharing one another, 10**7 values in a few hundred bytes
    "nested_labels": lambda: _batch(ONE_IMAGE, _nested_labels(7)),
    # one 1 MB string decoded to bytes 60 times (60 MB from a 1 MB file)
    "latin1_repeated": lambda: pickle.dumps(
        {b"labels": [0], b"data": ONE_IMAGE,
         b"filenames": [Call(codecs.encode, S1M, "latin1") for _ in range(60)]},
        protocol=2),
    # protocol 5: _frombuffer of 16 bytes viewed as 10**10 elements
    "frombuffer_shape": lambda: _batch(
        Call(_frombuffer, bytearray(16), Call(np.dtype, "u1", False, True,
                                               state=_dtype_u1_state()), (10**10,), "C"),
        [0], protocol=5),
}


def _folder(tmp_path: Path, batch: bytes) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    good = _batch(ONE_IMAGE, [0])
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(batch if i == 1 else good)
    (folder / "test_batch").write_bytes(good)
    (folder / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}, protocol=2))
    return folder


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_batch_refused_without_allocating(tmp_path, case):
    blob = FORGED[case]()
    assert len(blob) < 1_100_000  # the forgeries are small files
    folder = _folder(tmp_path, blob)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ReslabError, match="data_batch_1") as err:
            read_cifar_folder(folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < PEAK_LIMIT, f"{case}: peak {peak / 2**20:.0f} MiB while loading"
    msg = str(err.value)
    assert "\n" not in msg and "official file" in msg


def test_oversized_file_refused_before_reading(tmp_path, monkeypatch):
    import reslab.data.cifar as cifar

    monkeypatch.setattr(cifar, "MAX_FILE_BYTES", 1000)
    folder = _folder(tmp_path, _batch(ONE_IMAGE, [0]) + b"\0" * 2000)
    with pytest.raises(ReslabError, match=r"data_batch_1 is 5,\d{3} bytes, larger than any"):
        read_cifar_folder(folder)


def _py2_batch(images: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the official files hold it: Python 2, protocol 2, raw byte strings."""
    raw = images.tobytes()
    shape = b"M" + struct.pack("<H", images.shape[0]) + b"M" + struct.pack("<H", 3072)
    return b"".join([
        b"\x80\x02}q\x01(U\x04dataq\x02",
        b"cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04K\x00\x85U\x01b\x87Rq\x05",
        b"(K\x01", shape, b"\x86cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07",
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
        b"I00\nT", struct.pack("<I", len(raw)), raw, b"tb",
        b"U\x06labels]q\x08(", b"".join(b"K" + bytes([v]) for v in labels), b"e",
        b"U\x0bbatch_labelU\x05hellou.",
    ])


def test_official_python2_format_still_loads(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    folder = _folder(tmp_path, _py2_batch(images, [1, 2, 3]))
    data = read_cifar_folder(folder)
    assert data.train.images.shape == (7, 3, 32, 32)
    assert np.array_equal(data.train.images[:3].reshape(3, -1).numpy(), images)
    assert data.train.labels[:3].tolist() == [1, 2, 3]
