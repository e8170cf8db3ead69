"""Image folders: what is not an image file is never opened, no class is ever dropped,
splits agree on their classes, and a big folder scans fast (issues 9 and 11).

For CIFAR-style folders (`load_image_folder`, directories and tars) and ImageNet-style
ones (`ImageFolderDataset`), both scanned by `reslab.data.scan`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tarfile
import time
import warnings
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_png

from reslab.data import folder as folder_mod
from reslab.data import load_image_data
from reslab.data.imagenet import ImageFolderDataset, decode_image_file
from reslab.data.scan import read_regular_file
from reslab.errors import ReslabError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

CLASSES = ("cat", "dog", "emu")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_HOME", str(tmp_path / "home"))


@contextlib.contextmanager
def deadline(seconds: int = 10):
    """Fail instead of hanging (opening a FIFO blocks until a writer comes)."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _png(seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    return encode_png(torch.randint(0, 256, (3, 8, 8), generator=g, dtype=torch.uint8)).numpy(
    ).tobytes()


def make_folder(root: Path, splits=("train", "test"), classes=CLASSES, n: int = 2) -> Path:
    for split in splits:
        for c, cls in enumerate(classes):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.png").write_bytes(_png(10 * c + i))
    return root


# ---- special files and broken links --------------------------------------------------------


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _dangling(path: Path) -> Path:
    path.symlink_to(path.parent / "nowhere.png")
    return path


MAKERS = {"fifo": (_fifo, "FIFO"), "dangling_link": (_dangling, "broken symbolic link")}


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_cifar_folder_special_file(tmp_path, kind):
    make, what = MAKERS[kind]
    root = make_folder(tmp_path / "src")
    bad = make(root / "train" / "dog" / "x.png")
    with deadline(), pytest.raises(ReslabError, match=f"x.png is a {what}.*skip-corrupt"):
        load_image_data(str(root), progress=False)
    with deadline(), pytest.warns(UserWarning, match="x.png"):
        data = load_image_data(str(root), skip_corrupt=True, progress=False)
    assert data.classes == list(CLASSES) and len(data.train) == 6
    assert bad.is_symlink() or bad.exists()  # left alone


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_imagenet_folder_special_file(tmp_path, kind):
    make, what = MAKERS[kind]
    root = make_folder(tmp_path / "imnet", splits=("train",))
    make(root / "train" / "cat" / "x.JPEG")
    with deadline(), pytest.raises(ReslabError, match=f"x.JPEG is a {what}"):
        ImageFolderDataset(root / "train")
    with deadline(), pytest.warns(UserWarning, match="x.JPEG"):
        ds = ImageFolderDataset(root / "train", skip_corrupt=True)
    assert len(ds) == 6 and all("x.JPEG" not in p for p, _ in ds.samples)
    assert [ds[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]


def test_fifo_never_read(tmp_path):
    fifo = _fifo(tmp_path / "pipe.jpg")
    with deadline(), pytest.raises(ReslabError, match="FIFO"):
        read_regular_file(fifo)
    with deadline(), pytest.raises(ReslabError, match="pipe.jpg"):
        decode_image_file(fifo)


def test_tar_link_member_to_nothing(tmp_path):
    src = make_folder(tmp_path / "src")
    archive = tmp_path / "x.tar"
    with tarfile.open(archive, "w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=p.relative_to(src).as_posix(), recursive=False)
        link = tarfile.TarInfo("train/cat/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "missing.png"
        tf.addfile(link)
    with pytest.raises(ReslabError, match="link.png is not a regular file"):
        load_image_data(str(archive), progress=False)
    with pytest.warns(UserWarning, match="link.png"):
        assert len(load_image_data(str(archive), skip_corrupt=True, progress=False).train) == 6


# ---- empty class folders and class lists that disagree --------------------------------------


@pytest.mark.parametrize("skip", [False, True])
def test_cifar_folder_empty_class(tmp_path, skip):
    root = make_folder(tmp_path / "src")
    (root / "train" / "yak").mkdir()
    (root / "test" / "yak").mkdir()
    with pytest.raises(ReslabError, match=r"yak has no images.*number of classes"):
        load_image_data(str(root), skip_corrupt=skip, progress=False)


def test_cifar_folder_class_only_unreadable_images(tmp_path):
    root = make_folder(tmp_path / "src")
    for p in (root / "test" / "emu").iterdir():
        p.write_bytes(b"not a png")
    with pytest.warns(UserWarning), pytest.raises(ReslabError, match="class emu in test/"):
        load_image_data(str(root), skip_corrupt=True, progress=False)


def test_cifar_folder_test_lacks_a_class(tmp_path):
    root = make_folder(tmp_path / "src")
    for p in (root / "test" / "dog").iterdir():
        p.unlink()
    (root / "test" / "dog").rmdir()
    with pytest.raises(ReslabError, match="test/ lacks dog"):
        load_image_data(str(root), progress=False)


def test_tar_empty_class_directory(tmp_path):
    src = make_folder(tmp_path / "src")
    (src / "train" / "yak").mkdir()
    (src / "test" / "yak").mkdir()
    archive = tmp_path / "x.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=f"top/{p.relative_to(src).as_posix()}", recursive=False)
    with pytest.raises(ReslabError, match="yak has no images"):
        load_image_data(str(archive), progress=False)


@pytest.mark.parametrize("skip", [False, True])
def test_imagenet_folder_empty_class(tmp_path, skip):
    root = make_folder(tmp_path / "imnet", splits=("train",))
    (root / "train" / "bee").mkdir()
    with pytest.raises(ReslabError, match=r"train/bee has no images.*even with --skip-corrupt"):
        ImageFolderDataset(root / "train", skip_corrupt=skip)


def test_imagenet_val_classes_must_match_train(tmp_path):
    root = make_folder(tmp_path / "imnet", splits=("train", "val"))
    ImageFolderDataset(root / "val")  # same classes: fine
    for p in (root / "val" / "dog").iterdir():
        p.unlink()
    (root / "val" / "dog").rmdir()
    with pytest.raises(ReslabError, match="val lacks dog"):
        ImageFolderDataset(root / "val")
    with pytest.raises(ReslabError, match="lacks dog"):
        ImageFolderDataset(root / "val", classes=list(CLASSES))
    assert ImageFolderDataset(root / "val", classes=["cat", "emu"]).classes == ["cat", "emu"]


def test_imagenet_corrupt_image_under_skip_corrupt(tmp_path):
    root = make_folder(tmp_path / "imnet", splits=("train",))
    (root / "train" / "dog" / "0.png").write_bytes(b"broken")
    ds = ImageFolderDataset(root / "train")
    with pytest.raises(ReslabError, match="0.png"):
        ds[2]
    ds = ImageFolderDataset(root / "train", skip_corrupt=True)
    with pytest.warns(UserWarning, match="dog/0.png"):
        img, label = ds[2]
    assert img.shape == (3, 8, 8) and label == 1  # dog/1.png stands in


# ---- an image deleted between the scan and its read -------------------------------------------


def test_imagenet_image_deleted_after_the_scan_is_one_line_naming_it(tmp_path):
    root = make_folder(tmp_path / "imnet", splits=("train", "val"))
    ds = ImageFolderDataset(root / "val")
    gone = Path(ds.samples[2][0])  # val/dog/0.png
    gone.unlink()
    with pytest.raises(ReslabError, match=r"image .*dog.0.png was gone when read \(deleted or "
                       r"moved after .*val was scanned\)") as e:
        ds[2]
    assert "Errno" not in str(e.value) and "\n" not in str(e.value)
    ds = ImageFolderDataset(root / "train", skip_corrupt=True)
    Path(ds.samples[2][0]).unlink()
    with pytest.warns(UserWarning, match="dog/0.png"):
        img, label = ds[2]
    assert img.shape == (3, 8, 8) and label == 1  # dog/1.png stands in


@pytest.mark.parametrize("skip", [False, True])
def test_cifar_folder_image_deleted_after_the_scan(tmp_path, monkeypatch, skip):
    root = make_folder(tmp_path / "src")
    real = folder_mod._dir_listing

    def listed_then_deleted(*a, **k):
        listing = real(*a, **k)
        (root / "test" / "dog" / "0.png").unlink()
        return listing

    monkeypatch.setattr(folder_mod, "_dir_listing", listed_then_deleted)
    if not skip:
        with pytest.raises(ReslabError, match=r"image .*dog.0.png was gone when read.*"
                           "skip-corrupt") as e:
            load_image_data(str(root), progress=False)
        assert "Errno" not in str(e.value) and "FileNotFoundError" not in str(e.value)
        return
    with pytest.warns(UserWarning, match="dog/0.png"):
        data = load_image_data(str(root), skip_corrupt=True, progress=False)
    assert len(data.test) == 5 and data.classes == list(CLASSES)


def test_cifar_image_rewritten_with_its_mtime_set_back_is_decoded_again(tmp_path):
    """The decoded-image cache must not give an old picture for a file rewritten with the
    same size and modification time (`cp -p` of another image, `touch -r`)."""
    root = make_folder(tmp_path / "src")
    img = root / "test" / "dog" / "0.png"

    def png(value: int) -> bytes:  # uncompressed: the same size whatever the pixels
        return encode_png(torch.full((3, 8, 8), value, dtype=torch.uint8),
                          compression_level=0).numpy().tobytes()

    img.write_bytes(png(10))
    before = load_image_data(str(root), progress=False).test.images
    st = img.stat()
    time.sleep(0.05)  # past the file system's time granularity (ctime is the kernel's clock)
    img.write_bytes(png(200))
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (img.stat().st_size, img.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    after = load_image_data(str(root), progress=False).test.images
    changed = (before != after).flatten(1).any(1).nonzero().flatten().tolist()
    assert len(changed) == 1 and int(after[changed[0]].max()) == 200


# ---- a big folder scans fast (issue 11) ------------------------------------------------------


def test_scan_100k_files_fast(tmp_path):
    # 100 classes x 1,000 empty files, made as hard links of one empty file per class:
    # plain regular files to a scan, and ~20x faster to create than new inodes.
    root = tmp_path / "train"
    for c in range(100):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        src = tmp_path / f"empty{c}"
        os.close(os.open(src, os.O_CREAT | os.O_WRONLY, 0o644))
        for i in range(1000):
            os.link(src, d / f"n{c:08d}_{i}.JPEG")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolderDataset(root)
    elapsed = time.perf_counter() - t0
    assert len(ds) == 100_000 and len(ds.classes) == 100
    assert ds.samples[1000] == (str(root / "n00000001" / "n00000001_0.JPEG"), 1)
    assert type(ds.samples) is list and type(ds.samples[0]) is tuple
    assert ds.targets[-1] == 99
    assert elapsed < 10, f"scanning 100,000 files took {elapsed:.1f} s"
