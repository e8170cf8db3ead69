"""CIFAR official python format: reading, md5, download, offline errors, safe unpickling."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

import reslab.data.cifar as cifar
from reslab.data import load_image_data
from reslab.errors import ReslabError

C10_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("RESLAB_HOME", str(h))
    return h


@pytest.fixture(autouse=True)
def hand_made_members(monkeypatch):
    """These tests read small hand-made files in the official layout: their md5s are not
    the official ones, so the member check is emptied (tests that check it restore it)."""
    official = cifar.CIFAR_MEMBER_MD5
    monkeypatch.setattr(cifar, "CIFAR_MEMBER_MD5", {k: {} for k in official})
    return official


def _batch(rng, n, label_key, n_classes, protocol):
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, n_classes, size=n)]
    d = {b"batch_label": b"batch", label_key: labels, b"data": data, b"filenames": [b"x.png"] * n}
    return pickle.dumps(d, protocol=protocol), data, labels


def make_cifar10_files(rng, per_batch=4, n_test=6, protocol=2):
    """The official file set (contents small): name -> bytes, plus expected arrays."""
    files, train_x, train_y = {}, [], []
    for i in range(1, 6):
        blob, x, y = _batch(rng, per_batch, b"labels", 10, protocol)
        files[f"data_batch_{i}"] = blob
        train_x.append(x)
        train_y += y
    files["test_batch"], test_x, test_y = _batch(rng, n_test, b"labels", 10, protocol)
    meta = {b"label_names": [n.encode() for n in C10_NAMES], b"num_vis": 3072}
    files["batches.meta"] = pickle.dumps(meta, protocol=protocol)
    files["readme.html"] = b"<html></html>"
    return files, (np.concatenate(train_x), train_y, test_x, test_y)


def make_cifar100_files(rng, n_train=12, n_test=5):
    files = {}
    files["train"], train_x, train_y = _batch(rng, n_train, b"fine_labels", 100, 4)
    files["test"], test_x, test_y = _batch(rng, n_test, b"fine_labels", 100, 4)
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    files["meta"] = pickle.dumps(meta, protocol=4)
    return files, (train_x, train_y, test_x, test_y)


def write_folder(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return folder


def write_tar(path: Path, top: str, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def check(data, expected, n_classes):
    train_x, train_y, test_x, test_y = expected
    assert data.train.images.dtype == torch.uint8
    assert data.train.images.shape == (len(train_y), 3, 32, 32)
    assert data.train.images.is_contiguous()
    assert torch.equal(data.train.images.reshape(len(train_y), -1), torch.from_numpy(train_x))
    assert data.train.labels.tolist() == train_y
    assert data.train.labels.dtype == torch.int64
    assert torch.equal(data.test.images.reshape(len(test_y), -1), torch.from_numpy(test_x))
    assert data.test.labels.tolist() == test_y
    assert len(data.classes) == n_classes


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_folder(tmp_path, protocol):
    files, expected = make_cifar10_files(np.random.default_rng(0), protocol=protocol)
    folder = write_folder(tmp_path / "cifar-10-batches-py", files)
    data = load_image_data(str(folder))
    check(data, expected, 10)
    assert data.classes == C10_NAMES and data.name == "cifar10"
    # The parent folder is detected too.
    check(load_image_data(str(tmp_path)), expected, 10)


def test_cifar10_targz_path(tmp_path):
    files, expected = make_cifar10_files(np.random.default_rng(1))
    archive = write_tar(tmp_path / "c10.tar.gz", "cifar-10-batches-py", files)
    check(load_image_data(str(archive)), expected, 10)


def test_cifar100_folder_and_targz(tmp_path):
    files, expected = make_cifar100_files(np.random.default_rng(2))
    folder = write_folder(tmp_path / "cifar-100-python", files)
    data = load_image_data(str(folder))
    check(data, expected, 100)
    assert data.name == "cifar100" and data.classes[:2] == ["fine0", "fine1"]
    archive = write_tar(tmp_path / "c100.tar.gz", "cifar-100-python", files)
    check(load_image_data(str(archive)), expected, 100)


def test_named_cifar_from_root_folder(tmp_path):
    files, expected = make_cifar10_files(np.random.default_rng(3))
    write_folder(tmp_path / "d" / "cifar-10-batches-py", files)
    check(load_image_data("cifar10", root=tmp_path / "d", download=False), expected, 10)


def test_named_cifar_from_home(home):
    files, expected = make_cifar100_files(np.random.default_rng(4))
    write_folder(home / "data" / "cifar-100-python", files)
    check(load_image_data("cifar100", download=False), expected, 100)


def _point_table(monkeypatch, kind, url, md5sum):
    table = {k: dict(v) for k, v in cifar.CIFAR_ARCHIVES.items()}
    table[kind]["url"] = url
    table[kind]["md5"] = md5sum
    monkeypatch.setattr(cifar, "CIFAR_ARCHIVES", table)


def _official(monkeypatch, files, kind="cifar10", wrong=()):
    """Make the hand-made `files` the 'official' ones, except the members in `wrong`."""
    table = {k: {} for k in cifar.CIFAR_MEMBER_MD5}
    table[kind] = {n: hashlib.md5(b).hexdigest() for n, b in files.items()
                   if n != "readme.html" and n not in wrong}
    for n in wrong:
        table[kind][n] = "0" * 32
    monkeypatch.setattr(cifar, "CIFAR_MEMBER_MD5", table)


def test_repacked_archive_in_root_accepted_by_its_members(tmp_path, monkeypatch):
    """An archive whose own md5 is not the official one (repacked) loads when its members
    are right; it is unpacked for the next run."""
    files, expected = make_cifar10_files(np.random.default_rng(5))
    _official(monkeypatch, files)
    root = tmp_path / "root"
    root.mkdir()
    archive = write_tar(root / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    assert md5(archive) != cifar.CIFAR_ARCHIVES["cifar10"]["md5"]
    check(load_image_data("cifar10", root=root, download=False), expected, 10)
    assert (root / "cifar-10-batches-py" / "data_batch_5").is_file()  # unpacked
    check(load_image_data("cifar10", root=root, download=False), expected, 10)  # from folder


@pytest.mark.parametrize("route", ["home-archive", "home-folder", "data-archive", "data-folder"])
def test_wrong_member_is_one_error_naming_it(tmp_path, monkeypatch, home, route):
    """A member whose md5 is not the official one is refused, by name, on every route."""
    files, _ = make_cifar10_files(np.random.default_rng(6))
    _official(monkeypatch, files, wrong=("data_batch_3",))
    (home / "data").mkdir(parents=True)
    if route == "home-archive":
        write_tar(home / "data" / "cifar-10-python.tar.gz", "cifar-10-batches-py", files)
    elif route == "home-folder":
        write_folder(home / "data" / "cifar-10-batches-py", files)
    elif route == "data-archive":
        spec = str(write_tar(tmp_path / "c10.tar.gz", "cifar-10-batches-py", files))
    else:
        spec = str(write_folder(tmp_path / "cifar-10-batches-py", files))
    with pytest.raises(ReslabError, match=r"data_batch_3 has md5 \w+, not the official") as e:
        load_image_data("cifar10" if route.startswith("home") else spec, download=False)
    assert "\n" not in str(e.value)
    if route == "home-archive":  # the wrong member was not unpacked into place
        assert not (home / "data" / "cifar-10-batches-py").exists()


def test_official_md5s_are_torchvisions(hand_made_members):
    """The table is torchvision's own list (CIFAR10/CIFAR100 train_list, test_list, meta)."""
    for kind, cls in (("cifar10", tvd.CIFAR10), ("cifar100", tvd.CIFAR100)):
        theirs = dict(cls.train_list + cls.test_list)
        theirs[cls.meta["filename"]] = cls.meta["md5"]
        assert hand_made_members[kind] == theirs


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=served))
    t = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    t.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_cifar10(server, monkeypatch, home):
    served, base = server
    files, expected = make_cifar10_files(np.random.default_rng(6))
    archive = write_tar(served / "c10.tar.gz", "cifar-10-batches-py", files)
    _point_table(monkeypatch, "cifar10", f"{base}/c10.tar.gz", md5(archive))
    data = load_image_data("cifar10", progress=False)
    check(data, expected, 10)
    got = home / "data" / "cifar-10-python.tar.gz"
    assert got.read_bytes() == archive.read_bytes()
    assert not [p for p in got.parent.iterdir() if p.name.endswith(".part")]
    # Second time: no server needed.
    _point_table(monkeypatch, "cifar10", "http://127.0.0.1:9/gone", md5(archive))
    check(load_image_data("cifar10", progress=False), expected, 10)


def test_download_cifar100(server, monkeypatch, home):
    served, base = server
    files, expected = make_cifar100_files(np.random.default_rng(7))
    archive = write_tar(served / "c100.tar.gz", "cifar-100-python", files)
    _point_table(monkeypatch, "cifar100", f"{base}/c100.tar.gz", md5(archive))
    check(load_image_data("cifar100", progress=False), expected, 100)


def test_download_md5_mismatch_deletes(server, monkeypatch, home):
    served, base = server
    files, _ = make_cifar10_files(np.random.default_rng(8))
    write_tar(served / "c10.tar.gz", "cifar-10-batches-py", files)
    _point_table(monkeypatch, "cifar10", f"{base}/c10.tar.gz", "0" * 32)
    with pytest.raises(ReslabError, match="md5"):
        load_image_data("cifar10", progress=False)
    data_dir = home / "data"
    assert not data_dir.exists() or list(data_dir.iterdir()) == []


def test_offline_error_names_folder(monkeypatch, home):
    _point_table(monkeypatch, "cifar10", "http://127.0.0.1:9/cifar-10-python.tar.gz", "0" * 32)
    with pytest.raises(ReslabError) as e:
        load_image_data("cifar10", progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert str(home / "data") in msg
    assert "cifar-10-python.tar.gz" in msg and "synthetic" in msg
    assert not list((home / "data").glob("*"))


def test_missing_no_download(tmp_path):
    with pytest.raises(ReslabError, match=str(tmp_path)):
        load_image_data("cifar100", root=tmp_path, download=False)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    files, _ = make_cifar10_files(np.random.default_rng(9))
    files["data_batch_1"] = pickle.dumps({b"data": Evil(), b"labels": [0]})
    folder = write_folder(tmp_path / "cifar-10-batches-py", files)
    with pytest.raises(ReslabError, match="data_batch_1"):
        load_image_data(str(folder))
    assert not marker.exists()


def test_truncated_pickle(tmp_path):
    files, _ = make_cifar10_files(np.random.default_rng(10))
    files["test_batch"] = files["test_batch"][:100]
    folder = write_folder(tmp_path / "cifar-10-batches-py", files)
    with pytest.raises(ReslabError, match="test_batch"):
        load_image_data(str(folder))
