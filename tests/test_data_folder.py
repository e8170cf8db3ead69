"""Image folders: directory and tar layouts, decode cache, corrupt files, sizes."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg, encode_png

import reslab.data.folder as folder_mod
from reslab.data import load_image_data, reslab_home
from reslab.errors import ReslabError

CLASSES = ["cat", "dog", "emu"]

# The tests build images with torchvision's (deprecated since 0.29) encoders.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("RESLAB_HOME", str(h))
    return h


def make_folder(root: Path, n_train=4, n_test=2, size=(8, 8), test_name="test", fmt="png"):
    """ROOT/train/<class>/i.png with class-coloured images; returns {path: tensor}."""
    g = torch.Generator().manual_seed(0)
    made = {}
    for split, n in (("train", n_train), (test_name, n_test)):
        for ci, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                img = torch.randint(0, 256, (3, *size), generator=g, dtype=torch.uint8)
                img[0] = 80 * ci
                if fmt == "png":
                    (d / f"{i:03d}.png").write_bytes(encode_png(img).numpy().tobytes())
                else:
                    (d / f"{i:03d}.jpg").write_bytes(encode_jpeg(img, quality=95).numpy().tobytes())
                made[(split, cls, i)] = img
    return made


def tar_of(src: Path, dest: Path, top: str | None) -> Path:
    with tarfile.open(dest, "w:gz" if dest.name.endswith("gz") else "w") as tf:
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src).as_posix()
            tf.add(p, arcname=f"{top}/{rel}" if top else rel, recursive=False)
    return dest


def test_directory_png_exact(tmp_path):
    root = tmp_path / "tiny"
    made = make_folder(root)
    data = load_image_data(str(root), progress=False)
    assert data.name == "tiny"
    assert data.classes == CLASSES
    assert data.train.images.shape == (12, 3, 8, 8) and data.train.images.dtype == torch.uint8
    assert data.test.images.shape == (6, 3, 8, 8)
    assert data.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    # PNG is lossless: pixels come back exactly, in sorted file order per class.
    assert torch.equal(data.train.images[5], made[("train", "dog", 1)])
    assert torch.equal(data.test.images[4], made[("test", "emu", 0)])
    assert data.val is None


@pytest.mark.parametrize("top", [None, "cifar-tiny"])
@pytest.mark.parametrize("ext", [".tar", ".tar.gz", ".tgz"])
def test_tar_layouts(tmp_path, top, ext):
    src = tmp_path / "src"
    make_folder(src, fmt="jpg")
    archive = tar_of(src, tmp_path / f"tiny{ext}", top)
    data = load_image_data(str(archive), progress=False)
    ref = load_image_data(str(src), progress=False)
    assert data.classes == CLASSES and data.name == "tiny"
    assert torch.equal(data.train.images, ref.train.images)
    assert torch.equal(data.test.labels, ref.test.labels)


def test_directory_with_one_top_folder_and_val(tmp_path):
    make_folder(tmp_path / "outer" / "inner", test_name="val")
    data = load_image_data(str(tmp_path / "outer"), progress=False)
    assert len(data.test) == 6 and data.val is None


def test_cache_created_and_reused(tmp_path, monkeypatch, home):
    src = tmp_path / "src"
    make_folder(src, fmt="jpg")
    archive = tar_of(src, tmp_path / "tiny.tar.gz", "top")
    first = load_image_data(str(archive), progress=False)
    caches = list((reslab_home() / "cache").glob("*.pt"))
    assert len(caches) == 1 and caches[0].parent == home / "cache"
    assert isinstance(torch.load(caches[0], weights_only=True), dict)

    def boom(data, name):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folder_mod, "_decode", boom)
    second = load_image_data(str(archive), progress=False)
    assert torch.equal(first.train.images, second.train.images)
    assert first.classes == second.classes
    # The directory source is cached too, under another key.
    monkeypatch.undo()
    monkeypatch.setenv("RESLAB_HOME", str(home))
    load_image_data(str(src), progress=False)
    assert len(list((home / "cache").glob("*.pt"))) == 2


def test_cache_invalidated_by_change(tmp_path):
    src = tmp_path / "src"
    make_folder(src)
    assert len(load_image_data(str(src), progress=False).train) == 12
    (src / "train" / "cat" / "000.png").unlink()
    assert len(load_image_data(str(src), progress=False).train) == 11


def test_corrupt_image_raises_naming_it(tmp_path):
    src = tmp_path / "src"
    make_folder(src)
    bad = src / "train" / "dog" / "002.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ReslabError, match="002.png"):
        load_image_data(str(src), progress=False)
    assert not list((reslab_home() / "cache").glob("*.pt"))


def test_skip_corrupt_warns_and_skips(tmp_path):
    src = tmp_path / "src"
    make_folder(src)
    (src / "test" / "emu" / "001.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(UserWarning, match="001.png"):
        data = load_image_data(str(src), skip_corrupt=True, progress=False)
    assert len(data.test) == 5 and len(data.train) == 12
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2]
    # From the cache: still warned; without skip_corrupt still an error.
    with pytest.warns(UserWarning, match="001.png"):
        assert len(load_image_data(str(src), skip_corrupt=True, progress=False).test) == 5
    with pytest.raises(ReslabError, match="001.png"):
        load_image_data(str(src), progress=False)


def test_sizes_differ(tmp_path):
    src = tmp_path / "src"
    make_folder(src)
    img = torch.zeros(3, 16, 16, dtype=torch.uint8)
    (src / "train" / "emu" / "big.png").write_bytes(encode_png(img).numpy().tobytes())
    with pytest.raises(ReslabError, match="imagenet"):
        load_image_data(str(src), progress=False)


def test_grayscale_becomes_rgb(tmp_path):
    src = tmp_path / "src"
    make_folder(src)
    gray = torch.full((1, 8, 8), 7, dtype=torch.uint8)
    (src / "train" / "cat" / "gray.png").write_bytes(encode_png(gray).numpy().tobytes())
    data = load_image_data(str(src), progress=False)
    assert data.train.images.shape[1] == 3
    assert (data.train.images[4] == 7).all()  # sorted after 000..003


def test_bad_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReslabError, match="image folder"):
        load_image_data(str(tmp_path / "empty"))
    src = tmp_path / "notest"
    (src / "train" / "a").mkdir(parents=True)
    (src / "train" / "a" / "x.png").write_bytes(
        encode_png(torch.zeros(3, 4, 4, dtype=torch.uint8)).numpy().tobytes()
    )
    with pytest.raises(ReslabError, match="test"):
        load_image_data(str(src), progress=False)
    make_folder(tmp_path / "extra")
    (tmp_path / "extra" / "test" / "yak").mkdir()
    (tmp_path / "extra" / "test" / "yak" / "x.png").write_bytes(
        (tmp_path / "extra" / "test" / "cat" / "000.png").read_bytes()
    )
    with pytest.raises(ReslabError, match="yak"):
        load_image_data(str(tmp_path / "extra"), progress=False)
    (tmp_path / "junk.tar.gz").write_bytes(b"garbage")
    with pytest.raises(ReslabError):
        load_image_data(str(tmp_path / "junk.tar.gz"))
    with pytest.raises(ReslabError, match="synthetic"):
        load_image_data(str(tmp_path / "missing"))


def test_tar_with_stray_files_first(tmp_path):
    src = tmp_path / "src"
    make_folder(src)
    archive = tmp_path / "stray.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(src / "train" / "cat" / "000.png", arcname="preview.png")
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=p.relative_to(src).as_posix(), recursive=False)
    data = load_image_data(str(archive), progress=False)
    assert (len(data.train), len(data.test)) == (12, 6)
