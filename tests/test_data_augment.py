"""Preprocess (per-pixel mean, Sec. 4.2) and batched pad-crop-flip augmentation."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from reslab.data import (
    Preprocess,
    load_image_data,
    per_channel_mean_std,
    per_pixel_mean,
    random_crop_flip,
)


def _windows(padded: torch.Tensor, h: int, w: int) -> list[torch.Tensor]:
    """Every HxW sub-window of one padded image, and its horizontal flip."""
    out = []
    for oy in range(padded.shape[1] - h + 1):
        for ox in range(padded.shape[2] - w + 1):
            win = padded[:, oy : oy + h, ox : ox + w]
            out += [win, win.flip(-1)]
    return out


def test_shapes_and_dtypes():
    x = torch.randn(7, 3, 32, 32)
    y = random_crop_flip(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.dtype == x.dtype and y.is_contiguous()
    u = torch.randint(0, 256, (5, 3, 10, 12), dtype=torch.uint8)
    v = random_crop_flip(u, pad=2, generator=torch.Generator().manual_seed(0))
    assert v.shape == u.shape and v.dtype == torch.uint8
    assert random_crop_flip(x[:0]).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_crops_are_subwindows_of_padded(dtype):
    x = (torch.rand(16, 3, 6, 5) * 200 + 1).to(dtype)  # no zeros inside the image
    pad = 2
    y = random_crop_flip(x, pad=pad, generator=torch.Generator().manual_seed(3))
    padded = F.pad(x, (pad, pad, pad, pad))
    for i in range(x.shape[0]):
        assert any(torch.equal(y[i], win) for win in _windows(padded[i], 6, 5)), i


def test_zero_padding_border():
    # Over many draws some crops sit at offset 0 (top-left): the border rows/cols are zero.
    x = torch.rand(400, 1, 8, 8) + 1.0
    y = random_crop_flip(x, pad=4, generator=torch.Generator().manual_seed(1))
    top_left = (y[:, 0, :4, :] == 0).all(dim=(1, 2)) & (y[:, 0, 4:, :] > 0).all(dim=(1, 2))
    assert top_left.any()
    # Zeros appear only as whole padded rows/columns, never inside the image.
    zero_frac = (y == 0).float().mean()
    assert 0.05 < zero_frac < 0.6


def test_flip_rate_about_half():
    n = 4000
    ramp = torch.arange(8.0).expand(n, 1, 8, 8).contiguous() + 1
    y = random_crop_flip(ramp, pad=0, generator=torch.Generator().manual_seed(2))
    flipped = (y[:, 0, 0, 0] > y[:, 0, 0, -1]).float().mean().item()
    assert abs(flipped - 0.5) < 0.05
    # pad=0: the crop is the whole image, so every output is the image or its mirror.
    assert ((y == ramp) | (y == ramp.flip(-1))).all(dim=(1, 2, 3)).all()


def test_offsets_cover_the_range():
    n = 2000
    x = torch.ones(n, 1, 4, 4)
    y = random_crop_flip(x, pad=4, generator=torch.Generator().manual_seed(4))
    counts = (y != 0).sum(dim=(1, 2, 3))  # visible image pixels depend on the offset
    assert counts.min() == 0 and counts.max() == 16  # fully off and fully on both occur


def test_same_seed_same_output():
    x = torch.randn(32, 3, 16, 16)
    a = random_crop_flip(x, generator=torch.Generator().manual_seed(7))
    b = random_crop_flip(x, generator=torch.Generator().manual_seed(7))
    c = random_crop_flip(x, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, x.clone())  # input untouched


def test_per_pixel_mean_matches():
    images = torch.randint(0, 256, (2500, 3, 8, 8), dtype=torch.uint8)
    m = per_pixel_mean(images, chunk=300)
    assert m.shape == (3, 8, 8) and m.dtype == torch.float32
    torch.testing.assert_close(m, images.float().mean(0) / 255, atol=1e-6, rtol=0)


def test_one_estimator_for_a_tensor_or_an_iterable():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (50, 3, 6, 7), dtype=torch.uint8, generator=g)
    m = per_pixel_mean(images)
    chunks = [images[:17], images[17:20], *images[20:]]  # batches and single images
    assert torch.equal(per_pixel_mean(iter(chunks)), m)
    assert torch.equal(per_pixel_mean(images, chunk=7), m)
    cm, cs = per_channel_mean_std(images)
    for got, want in zip(per_channel_mean_std(iter(chunks)), (cm, cs), strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    pixels = images.permute(1, 0, 2, 3).reshape(3, -1).double() / 255
    torch.testing.assert_close(cm, pixels.mean(1).float())
    torch.testing.assert_close(cs, pixels.std(1, correction=0).float())
    # per channel: images of different sizes, every pixel counted once
    mixed = [images[0], images[1, :, :4, :5]]
    flat = torch.cat([mixed[0].flatten(1), mixed[1].flatten(1)], 1).double() / 255
    torch.testing.assert_close(per_channel_mean_std(mixed)[0], flat.mean(1).float())
    with pytest.raises(ValueError, match="one size"):
        per_pixel_mean(mixed)
    with pytest.raises(ValueError):
        per_pixel_mean([])
    with pytest.raises(ValueError):
        per_channel_mean_std(images[:0])


def test_preprocess_resizes_a_per_pixel_mean_to_any_size():
    g = torch.Generator().manual_seed(0)
    mean = torch.rand(3, 8, 8, generator=g)
    pre = Preprocess(mean)
    for h, w in ((5, 6), (12, 16), (8, 8)):
        x = torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g)
        # what reslab.data.imagenet.Normalize computed: bilinear, antialiased, no corners
        resized = F.interpolate(mean[None], size=(h, w), mode="bilinear",
                                align_corners=False, antialias=True)[0]
        want = x.float() / 255 - resized
        torch.testing.assert_close(pre(x), want)
        torch.testing.assert_close(pre(x.float() / 255), want)
        torch.testing.assert_close(pre(x[1]), want[1])  # one (C, H, W) image
    x = torch.rand(2, 3, 5, 6)
    assert pre.stats_for(x)[0] is pre.stats_for(x)[0]  # resized once per (size, device, dtype)
    assert pre(x.double()).dtype == torch.float64
    assert Preprocess(mean).to_dict()["mean"].shape == (3, 8, 8)  # the stored mean, not resized
    clone = pickle.loads(pickle.dumps(pre))  # to DataLoader workers: without the cache
    assert clone._cache == {} and torch.equal(clone(x), pre(x))


def test_preprocess_centres_training_set():
    data = load_image_data("synthetic:600:100")
    pre = Preprocess(per_pixel_mean(data.train.images))
    x = pre(data.train.images)
    assert x.dtype == torch.float32 and x.shape == data.train.images.shape
    assert x.mean(0).abs().max() < 1e-5  # per pixel, not just overall
    torch.testing.assert_close(
        pre(data.test.images[:4]), data.test.images[:4].float() / 255 - pre.mean
    )


def test_preprocess_per_channel_std_and_roundtrip():
    mean = torch.tensor([0.5, 0.4, 0.3])
    std = torch.tensor([0.2, 0.25, 0.5])
    pre = Preprocess(mean, std)
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    expected = (x.float() / 255 - mean[:, None, None]) / std[:, None, None]
    torch.testing.assert_close(pre(x), expected)
    d = pre.to_dict()
    assert set(d) == {"mean", "std"} and d["mean"].shape == (3, 1, 1)
    torch.testing.assert_close(Preprocess.from_dict(d)(x), expected)
    assert Preprocess.from_dict({"mean": torch.zeros(3, 5, 5), "std": None}).std is None
    with pytest.raises(ValueError):
        pre(torch.zeros(1, 1, 5, 5, dtype=torch.uint8))


def test_test_view_is_plain_preprocess():
    # The test view (Sec. 4.2): the single original image, only mean-subtracted.
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    pre = Preprocess(per_pixel_mean(images))
    before = images.clone()
    out = pre(images)
    assert torch.equal(images, before)
    torch.testing.assert_close(out, images.float() / 255 - images.float().mean(0) / 255)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda():
    x = torch.randn(8, 3, 32, 32, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    y = random_crop_flip(x, generator=g)
    assert y.device == x.device
    pre = Preprocess(torch.zeros(3))
    assert pre(torch.zeros(2, 3, 4, 4, dtype=torch.uint8, device="cuda")).device == x.device
