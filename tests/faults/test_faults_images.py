"""Images that cannot mislead or hurt (issue 17): 16-bit images are scaled to 8 bits by
every reader, images over the pixel limit (decompression bombs) are refused from their
header before decoding, a corrupt image met by a DataLoader worker is the same one line as
without workers, and symbolic links leading outside the data set are not followed.

Every image is tiny and made in tmp_path; the bombs are crafted headers (a 20000x20000
PNG of ~50 KB, a ~700-byte JPEG whose SOF says 20000x20000).
"""

from __future__ import annotations

import io
import json
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.io import encode_jpeg, encode_png

from reslab.cli import build_parser, main
from reslab.data import decode as decode_mod
from reslab.data import load_image_data
from reslab.data.decode import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_PIXELS_ENV,
    decode_image_bytes,
    decode_image_file,
)
from reslab.data.imagenet import ImageFolderDataset, estimate_mean, list_collate
from reslab.errors import ReslabError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

CLASSES = ("cat", "dog")
BOMB = 20_000  # pixels per side: 400M pixels, 1.2 GB decoded as RGB


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("RESLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(MAX_PIXELS_ENV, "")  # the default limit; restored after each test


# ---- crafted images ---------------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, idat: bytes, depth: int = 8, color: int = 2) -> bytes:
    """A PNG file from its parts (color 2: RGB, 0: grey)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def image8(seed: int, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)


def png8(img: torch.Tensor) -> bytes:
    return encode_png(img).numpy().tobytes()


def png16(img: torch.Tensor) -> bytes:
    """A 16-bit RGB PNG whose top bytes are `img` (uint8) and low bytes 0x7F: it shows the
    same picture, and a reader that wraps 16-bit values modulo 256 sees a flat 0x7F."""
    hwc = ((img.permute(1, 2, 0).numpy().astype(np.uint16) << 8) | 0x7F).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in hwc)
    return png(img.shape[2], img.shape[1], zlib.compress(raw), depth=16, color=2)


@pytest.fixture(scope="module")
def png_bomb() -> bytes:
    """A valid all-zero 20000x20000 1-bit grey PNG (~50 KB)."""
    z = zlib.compressobj(9)
    row_block = bytes((1 + BOMB // 8) * 1000)  # 1000 rows: filter byte + 2500 zero bytes
    idat = b"".join(z.compress(row_block) for _ in range(BOMB // 1000)) + z.flush()
    return png(BOMB, BOMB, idat, depth=1, color=0)


def jpeg_bomb() -> bytes:
    """A tiny JPEG whose SOF0 header is patched to say 20000x20000."""
    data = bytearray(encode_jpeg(image8(0)).numpy().tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", BOMB, BOMB)
    return bytes(data)


def make_folder(root: Path, splits=("train", "test"), n: int = 2, seed: int = 0) -> Path:
    for split in splits:
        for c, cls in enumerate(CLASSES):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i}.png").write_bytes(png8(image8(seed + 10 * c + i)))
    return root


def never_decoded(monkeypatch, bomb: bytes) -> None:
    """Fail the test if the pixels of `bomb` reach torchvision's decoder."""
    real = decode_mod.decode_image

    def guarded(data, *a, **k):
        assert len(data) != len(bomb), "the bomb's pixels were decoded"
        return real(data, *a, **k)

    monkeypatch.setattr(decode_mod, "decode_image", guarded)


# ---- 16-bit images ---------------------------------------------------------------------------


def test_16bit_png_decodes_to_its_8bit_picture(tmp_path):
    img = image8(1)
    (tmp_path / "x16.png").write_bytes(png16(img))
    got = decode_image_file(tmp_path / "x16.png")
    assert got.dtype == torch.uint8 and torch.equal(got, img)
    # 65535 -> 255, 0 -> 0 (the scale of torchvision's to_dtype)
    grey = np.array([[0, 65535]], dtype=">u2")
    data = png(2, 1, zlib.compress(b"\0" + grey.tobytes()), depth=16, color=0)
    assert decode_image_bytes(data, "g.png").tolist() == [[[0, 255]]] * 3


def test_16bit_image_among_8bit_ones_in_a_cifar_folder(tmp_path):
    root = make_folder(tmp_path / "f")
    img = image8(99)
    (root / "train" / "dog" / "9.png").write_bytes(png16(img))
    data = load_image_data(str(root), progress=False)
    assert data.train.images.dtype == torch.uint8 and len(data.train) == 5
    assert torch.equal(data.train.images[-1], img)  # dog/9.png sorts last
    assert data.train.labels.tolist() == [0, 0, 1, 1, 1]


def test_16bit_images_in_an_imagenet_folder(tmp_path):
    root = tmp_path / "inet"
    for c, cls in enumerate(CLASSES):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(2):
            img = image8(10 * c + i)
            (root / "train" / cls / f"{i}.png").write_bytes(png16(img) if i else png8(img))
    ds = ImageFolderDataset(root / "train")
    images, labels = list_collate([ds[i] for i in range(len(ds))])
    assert all(x.dtype == torch.uint8 for x in images)
    assert torch.equal(torch.stack(images), torch.stack(
        [image8(10 * c + i) for c in range(2) for i in range(2)]))
    # the training mean is that of the 8-bit pictures (it was ~32765/255 before)
    mean = estimate_mean(ds, "per-channel", n=4)
    want = torch.stack(images).float().mean((0, 2, 3)) / 255
    assert torch.allclose(mean, want, atol=1e-4)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert main(["train", "--model", "resnet8", "--data", "synthetic:64:32", "--out", str(out),
                 "--iterations", "2", "--batch-size", "8", "--eval-every", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    return out / "last.pt"


def test_predict_on_a_16bit_png_is_that_of_its_8bit_twin(checkpoint, tmp_path, capsys):
    img = image8(5, size=32)
    (tmp_path / "a8.png").write_bytes(png8(img))
    (tmp_path / "a16.png").write_bytes(png16(img))
    capsys.readouterr()
    assert main(["predict", "--weights", str(checkpoint), str(tmp_path / "a8.png"),
                 str(tmp_path / "a16.png"), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("a8.png") and lines[6].endswith("a16.png")
    assert lines[1:6] == lines[7:12]


# ---- decompression bombs ---------------------------------------------------------------------


def test_a_jpeg_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.jpg"
    bomb.write_bytes(jpeg_bomb())
    assert bomb.stat().st_size < 1000
    never_decoded(monkeypatch, jpeg_bomb())
    with pytest.raises(ReslabError, match=r"bomb\.jpg is .*over the limit of 89,478,485.*"
                       r"--max-image-pixels") as e:
        decode_image_file(bomb)
    assert "\n" not in str(e.value)


def test_a_png_bomb_is_refused_by_every_reader(tmp_path, monkeypatch, png_bomb, checkpoint,
                                               capsys):
    assert len(png_bomb) < 100_000
    never_decoded(monkeypatch, png_bomb)
    root = make_folder(tmp_path / "f")
    (root / "train" / "cat" / "bomb.png").write_bytes(png_bomb)
    over = r"bomb\.png is more than 178,956,970 pixels, over the limit of 89,478,485"
    with pytest.raises(ReslabError, match=over):  # CIFAR-style folder
        load_image_data(str(root), progress=False)
    ds = ImageFolderDataset(root / "train")  # ImageNet-style folder (train, eval)
    with pytest.raises(ReslabError, match=over):
        ds[[p for p, _ in ds.samples].index(str(root / "train" / "cat" / "bomb.png"))]
    capsys.readouterr()
    assert main(["predict", "--weights", str(checkpoint), "--device", "cpu",
                 str(root / "train" / "cat" / "bomb.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reslab predict: error: image ") and err.count("\n") == 1
    assert "over the limit" in err


def test_an_image_over_a_lowered_limit_is_refused_and_a_raised_limit_lets_it_through(
        tmp_path, monkeypatch, capsys, checkpoint):
    img = image8(3, size=32)
    path = tmp_path / "x.png"
    path.write_bytes(png8(img))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(ReslabError, match="32x32 = 1,024 pixels, over the limit of 1,000"):
        decode_image_file(path)
    assert torch.equal(decode_image_file(path, max_pixels=1024), img)
    # the flag sets the limit for the command (and the processes it starts)
    capsys.readouterr()
    assert main(["predict", "--weights", str(checkpoint), "--device", "cpu",
                 "--max-image-pixels", "1024", str(path)]) == 0
    assert capsys.readouterr().out.startswith(str(path))
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(ReslabError, match=f"{MAX_PIXELS_ENV}='lots' is not a pixel count"):
        decode_image_file(path)


@pytest.mark.parametrize("argv", [
    ["train"], ["eval", "--weights", "w.pt"], ["predict", "--weights", "w.pt", "x.png"],
    ["reproduce", "figure1", "--out", "o"], ["detect", "train"],
    ["detect", "eval", "--weights", "w.pt", "--data", "d"],
    ["detect", "predict", "--weights", "w.pt", "x.png"]])
def test_max_image_pixels_flag_on_every_command_that_reads_images(argv, monkeypatch):
    build_parser().parse_args([*argv, "--max-image-pixels", "400000000"])
    assert decode_mod.max_image_pixels() == 400_000_000
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--max-image-pixels", "0"])


def test_pillows_own_limit_does_not_override_ours(tmp_path, monkeypatch):
    # Pillow refuses to even report the size of an image over twice its MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    img = image8(4, size=16)  # 256 pixels: over Pillow's 2 x 100, under ours
    assert torch.equal(decode_image_bytes(png8(img), "x.png"), img)
    assert Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(ReslabError, match="over the limit of 150"):
        decode_image_bytes(png8(img), "x.png", max_pixels=150)
    monkeypatch.undo()
    monkeypatch.setenv(MAX_PIXELS_ENV, "")
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS


def test_every_frame_of_an_animated_gif_counts(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10)
    first = decode_image_bytes(buf.getvalue(), "a.gif")
    assert first.shape == (3, 8, 8) and first[0].float().mean() > 200  # the red frame
    with pytest.raises(ReslabError, match=r"8x8 x 3 frames = 192 pixels"):
        decode_image_bytes(buf.getvalue(), "a.gif", max_pixels=150)


# ---- corrupt images under DataLoader workers, and reproduce --skip-corrupt ---------------------


def test_a_corrupt_image_in_a_worker_is_the_one_line_of_no_workers(tmp_path):
    root = make_folder(tmp_path / "inet", splits=("train",))
    (root / "train" / "dog" / "0.png").write_bytes(b"\x89PNG not really")
    ds = ImageFolderDataset(root / "train")
    messages = []
    for workers in (0, 1):
        with pytest.raises(ReslabError) as e:
            list(DataLoader(ds, batch_size=4, num_workers=workers, collate_fn=list_collate))
        messages.append(str(e.value))
    assert "dog/0.png" in messages[0] and "\n" not in messages[0]
    assert messages[1] == messages[0]


def test_reproduce_skip_corrupt(tmp_path, capsys):
    root = make_folder(tmp_path / "f", n=4)
    (root / "train" / "cat" / "9.png").write_bytes(b"not a png")
    tiny = ["--data", str(root), "--models", "resnet8", "--budget", "0.0001", "--batch-size",
            "8", "--eval-points", "1", "--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert main(["reproduce", "table6", "--out", str(tmp_path / "a"), *tiny]) == 2
    err = capsys.readouterr().err
    assert "9.png" in err and "--skip-corrupt" in err and err.count("\n") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["reproduce", "table6", "--out", str(tmp_path / "b"), "--skip-corrupt",
                     *tiny]) == 0
    run = json.loads((tmp_path / "b" / "runs" / "resnet8" / "run.json").read_text())
    assert run["config"]["skip_corrupt"] is True


# ---- symbolic links leading outside the data set --------------------------------------------


def _foreign(tmp_path: Path, n: int = 3) -> list[Path]:
    d = tmp_path / "elsewhere"
    d.mkdir()
    paths = []
    for i in range(n):
        paths.append(d / f"f{i}.png")
        paths[-1].write_bytes(png8(image8(500 + i)))
    return paths


def test_links_outside_the_data_set_are_skipped_with_a_count(tmp_path):
    root = make_folder(tmp_path / "f")
    foreign = _foreign(tmp_path)
    for i, target in enumerate(foreign):  # 3 file links and 1 folder link lead outside
        (root / "train" / "cat" / f"x{i}.png").symlink_to(target)
    (root / "train" / "dog" / "more").symlink_to(foreign[0].parent, target_is_directory=True)
    # a link inside the data set is followed
    (root / "train" / "dog" / "alias.png").symlink_to(root / "test" / "dog" / "0.png")
    with pytest.warns(UserWarning, match=r"skipping 4 symbolic links .* outside the data set"):
        data = load_image_data(str(root), progress=False)
    assert len(data.train) == 5 and data.train.labels.tolist() == [0, 0, 1, 1, 1]
    with pytest.warns(UserWarning, match=r"skipping 4 symbolic links"):
        ds = ImageFolderDataset(root / "train")
    assert len(ds) == 5 and not any("elsewhere" in p or "/x" in p for p, _ in ds.samples)


def test_a_class_folder_linked_whole_is_still_read(tmp_path):
    # linking whole class folders (e.g. an ImageNet subset) is visible as a class and kept
    root = make_folder(tmp_path / "f")
    foreign = _foreign(tmp_path)
    (root / "train" / "emu").symlink_to(foreign[0].parent, target_is_directory=True)
    (root / "test" / "emu").symlink_to(foreign[0].parent, target_is_directory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolderDataset(root / "train")
    assert ds.classes == ["cat", "dog", "emu"] and len(ds) == 7
