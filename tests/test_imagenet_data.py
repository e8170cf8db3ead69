"""The ImageNet input pipeline (Sec. 3.4) on small images: 40x30 with scale (24, 36), crop 20."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import encode_jpeg
from torchvision.transforms.v2 import functional as TF

from reslab.data.augment import Preprocess, per_channel_mean_std, per_pixel_mean
from reslab.data.imagenet import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    ImageFolderDataset,
    Lighting,
    RandomScaleCrop,
    RandomShorterSideResize,
    ShardSampler,
    estimate_mean,
    imagenet_batch_transform,
    imagenet_eval_transform,
    imagenet_train_transform,
    list_collate,
    mean_sample,
    photometric,
    scale_crop,
)
from reslab.errors import ReslabError


def _img(h: int = 30, w: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def test_shorter_side_in_range_and_covers_it():
    torch.manual_seed(0)
    t = RandomShorterSideResize((24, 36))
    seen = set()
    for _ in range(400):
        for h, w in ((30, 40), (40, 30), (31, 17)):
            out = t(_img(h, w))
            short, long = sorted(out.shape[-2:])
            assert 24 <= short <= 36
            assert (out.shape[-2] < out.shape[-1]) == (h < w)  # orientation kept
            seen.add(short)
    assert seen == set(range(24, 37))  # both ends included, every size reachable


def _smooth(h: int = 30, w: int = 40) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return (torch.stack([x, y, (x + y) / 2]) * 255).round().to(torch.uint8)


def test_fused_scale_crop_matches_resize_then_crop():
    g = torch.Generator().manual_seed(0)
    img = _smooth()
    for _ in range(100):
        short = int(torch.randint(24, 37, (), generator=g))
        r = TF.resize(img, [short], antialias=True)
        top = int(torch.randint(0, r.shape[-2] - 19, (), generator=g))
        left = int(torch.randint(0, r.shape[-1] - 19, (), generator=g))
        want = TF.crop(r, top, left, 20, 20).float()
        got = scale_crop(img, short, top, left, 20).float()
        assert got.shape == (3, 20, 20)
        # off by under one source pixel: the ramp rises 255/39 gray levels per pixel
        assert (got - want).abs().mean() < 255 / 39
    torch.manual_seed(0)
    t = RandomScaleCrop((24, 36), 20)
    assert all(t(_img(h, w)).shape == (3, 20, 20) for h, w in ((30, 40), (40, 30), (20, 20)))
    with pytest.raises(ReslabError):
        RandomScaleCrop((24, 36), 30)


@pytest.mark.parametrize("fused", [True, False])
def test_train_transform_sizes_dtype_and_flips(fused):
    torch.manual_seed(0)
    mean = torch.full((3, 20, 20), 0.5)
    t = imagenet_train_transform(mean, scale=(24, 36), crop=20, lighting=0.1, fused=fused)
    out = t(_img())
    assert out.shape == (3, 20, 20) and out.dtype == torch.float32
    assert -0.8 < float(out.min()) and float(out.max()) < 0.8  # mean-subtracted [0,1] + noise

    # flips happen, about half the time: a left-right ramp decides the direction
    ramp = torch.arange(40, dtype=torch.uint8).mul(6).expand(3, 30, 40).contiguous()
    geo = imagenet_train_transform(scale=(30, 30), crop=20, to_float=False, fused=fused)
    flips = 0
    for _ in range(200):
        out = geo(ramp)
        assert out.dtype == torch.uint8 and out.shape == (3, 20, 20)
        row = out[0, 10].int()
        flips += int(row[0] > row[-1])
    assert 60 < flips < 140


def test_eval_transform_center_crop():
    t = imagenet_eval_transform(mean=None, resize=None, crop=20)
    img = _img()
    out = t(img)
    assert torch.allclose(out, img[:, 5:25, 10:30].float() / 255)
    assert imagenet_eval_transform(resize=24, crop=None)(img).shape == (3, 24, 32)


def test_lighting_zero_mean_shape_and_off():
    torch.manual_seed(0)
    x = torch.rand(4096, 3, 2, 2)
    light = Lighting(0.1)
    out = light(x)
    assert out.shape == x.shape
    d = out - x
    assert torch.allclose(d, d[..., :1, :1].expand_as(d), atol=1e-6)  # one offset per image
    offs = d[:, :, 0, 0]
    assert offs.mean(0).abs().max() < 0.004  # std of the R offset is ~0.012
    # covariance of the offsets = eigvec diag((0.1 * eigval)^2) eigvec^T
    v = torch.tensor(IMAGENET_EIGVEC)
    cov = v @ torch.diag((0.1 * torch.tensor(IMAGENET_EIGVAL)) ** 2) @ v.T
    assert torch.allclose(offs.T.cov(), cov, atol=2e-5)
    single = torch.rand(3, 5, 6)
    assert light(single).shape == single.shape
    assert torch.equal(Lighting(0.0)(single), single)
    with pytest.raises(ReslabError):
        light(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_preprocess_on_float_images_per_pixel_and_channel():
    x = torch.rand(2, 3, 8, 8)
    assert torch.allclose(Preprocess([0.1, 0.2, 0.3], [0.5, 0.5, 0.5])(x),
                          (x - torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1)) / 0.5)
    mean = torch.rand(3, 8, 8)
    assert torch.allclose(Preprocess(mean)(x), x - mean)
    assert torch.allclose(Preprocess(mean)(x[0]), x[0] - mean)  # one image (C, H, W)
    const = Preprocess(torch.full((3, 16, 16), 0.25))(x)  # resized to the input's size
    assert torch.allclose(const, x - 0.25, atol=1e-6)
    assert torch.equal(x, x.clone())  # input untouched


def test_batch_transform_on_uint8_batches():
    out = imagenet_batch_transform([0.5] * 3, lighting=0.1)(_img()[None].repeat(4, 1, 1, 1))
    assert out.shape == (4, 3, 30, 40) and out.dtype == torch.float32


def test_photometric_is_lighting_then_mean_with_a_seeded_generator():
    x = _img()[None].repeat(4, 1, 1, 1)
    mean, std = torch.rand(3, 20, 20), torch.tensor([0.2, 0.25, 0.5])
    pre, light = Preprocess(mean, std), Lighting(0.1)
    a = photometric(x, pre, light, torch.Generator().manual_seed(1))
    b = photometric(x, pre, light, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (4, 3, 30, 40) and a.dtype == torch.float32
    # literally: float [0, 1] + one RGB offset per image, then (x - mean) / std
    rgb = light.noise((4,), generator=torch.Generator().manual_seed(1))[:, :, None, None]
    want = pre(x.float() / 255 + rgb)
    assert torch.allclose(a, want, atol=1e-5)
    assert torch.equal(photometric(x, pre, None), pre(x))
    assert torch.equal(photometric(x, pre, Lighting(0.0)), pre(x))
    assert photometric(x[0], pre, light).shape == (3, 30, 40)


def _make_folder(root: Path, per_class: int = 3) -> Path:
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                img = _img(30 + i, 40, seed=c * 100 + i)
                (d / f"{i}.JPEG").write_bytes(encode_jpeg(img, quality=90).numpy().tobytes())
    return root


def test_image_folder_dataset(tmp_path):
    root = _make_folder(tmp_path / "imnet")
    ds = ImageFolderDataset(root / "train")
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    img, label = ds[4]
    assert img.dtype == torch.uint8 and img.shape == (3, 31, 40) and label == 1


def test_mean_estimates(tmp_path):
    root = _make_folder(tmp_path / "imnet")
    ds = ImageFolderDataset(root / "train", transform=lambda x: x[:, :1])  # bypassed
    whole = list(mean_sample(ds, n=100))
    assert len(whole) == 6 and {tuple(img.shape) for img in whole} == {(3, 30, 40),
                                                                        (3, 31, 40),
                                                                        (3, 32, 40)}
    m, s = per_channel_mean_std(whole)
    assert m.shape == (3,) and 0.4 < float(m.mean()) < 0.6 and 0.2 < float(s.mean()) < 0.35
    assert torch.equal(estimate_mean(ds, "per-channel", n=100), m)
    pm = estimate_mean(ds, "per-pixel", n=100, resize=24, crop=20)
    assert pm.shape == (3, 20, 20) and 0.4 < float(pm.mean()) < 0.6
    crops = [TF.center_crop(TF.resize(img, [24], antialias=True), [20]) for img in whole]
    torch.testing.assert_close(pm, per_pixel_mean(torch.stack(crops)))
    assert len(list(mean_sample(ds, n=4, seed=1))) == 4
    with pytest.raises(ReslabError):
        estimate_mean(ds, "per-image")
    images, labels = list_collate([(whole[0], 1), (whole[1], 0)])
    assert images[0] is whole[0] and labels.tolist() == [1, 0]


def test_corrupt_and_missing_files(tmp_path):
    root = _make_folder(tmp_path / "imnet", per_class=1)
    bad = root / "train" / "cat" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    ds = ImageFolderDataset(root / "train")
    idx = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(ReslabError, match="broken.JPEG"):
        ds[idx]
    with pytest.raises(ReslabError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ReslabError):
        ImageFolderDataset(tmp_path / "empty")


def test_shard_sampler_disjoint_and_complete():
    shards = [list(ShardSampler(10, rank=r, world=3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
