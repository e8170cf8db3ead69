"""Top-k errors and the ImageNet testing protocols (Sec. 3.4) on small images."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.io import encode_jpeg
from torchvision.transforms.v2 import functional as TF

from reslab.data.augment import Preprocess
from reslab.data.imagenet import ImageFolderDataset
from reslab.engine import Engine
from reslab.errors import ReslabError
from reslab.evaluate import (
    accumulate_errors,
    error_sums,
    evaluate_imagenet,
    evaluate_tensors,
    multiscale_logits,
    ten_crop_logits,
    ten_crops,
    topk_correct,
    topk_errors,
)


def _net(classes: int = 7) -> nn.Module:
    """A tiny fully-convolutional net ending in AdaptiveAvgPool2d, with BN (eval mode
    matters) and position-sensitive features (so crops give different scores)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(16, classes))
    with torch.no_grad():  # non-trivial running stats
        net[1].running_mean.uniform_(-0.1, 0.1)
        net[1].running_var.uniform_(0.5, 2)
    return net


def test_topk_errors_basic():
    logits = torch.tensor([[0.9, 0.05, 0.05, 0.0],   # label 0: top-1 hit
                           [0.1, 0.2, 0.3, 0.4],     # label 1: rank 3
                           [0.5, 0.3, 0.15, 0.05]])  # label 3: rank 4
    labels = torch.tensor([0, 1, 3])
    assert topk_correct(logits, labels, (1, 3))[1] == 1
    errs = topk_errors(logits, labels, (1, 3, 5))
    assert errs[1] == pytest.approx(2 / 3)
    assert errs[3] == pytest.approx(1 / 3)
    assert errs[5] == 0.0  # k capped at the class count


def test_ten_crops_positions():
    img = torch.rand(3, 30, 40)
    c = ten_crops(img, 20)
    assert c.shape == (10, 3, 20, 20)
    f = img.flip(-1)
    slices = [(slice(0, 20), slice(0, 20)), (slice(0, 20), slice(20, 40)),
              (slice(10, 30), slice(0, 20)), (slice(10, 30), slice(20, 40)),
              (slice(5, 25), slice(10, 30))]
    for i, (r, s) in enumerate(slices):
        assert torch.equal(c[i], img[:, r, s]), i
        assert torch.equal(c[5 + i], f[:, r, s]), 5 + i
    assert torch.equal(c[5], img[:, :20, 20:].flip(-1))  # flipped top-left = flip of top-right
    assert ten_crops(torch.rand(2, 3, 30, 40), 20).shape == (10, 2, 3, 20, 20)
    with pytest.raises(ReslabError):
        ten_crops(img, 31)


@pytest.mark.parametrize("average", ["softmax", "logits"])
def test_ten_crop_equals_mean_of_single_crops(average):
    net = _net().train()
    imgs = torch.rand(3, 3, 30, 40)
    got = ten_crop_logits(net, imgs, 20, average=average)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        for n in range(3):
            views = [imgs[n][:, :20, :20], imgs[n][:, :20, 20:], imgs[n][:, 10:, :20],
                     imgs[n][:, 10:, 20:], imgs[n][:, 5:25, 10:30]]
            f = imgs[n].flip(-1)
            views += [f[:, :20, :20], f[:, :20, 20:], f[:, 10:, :20], f[:, 10:, 20:],
                      f[:, 5:25, 10:30]]
            one = [net(v[None])[0] for v in views]
            one = [o.softmax(0) if average == "softmax" else o for o in one]
            assert torch.allclose(got[n], torch.stack(one).mean(0), atol=1e-6)
    assert ten_crop_logits(net, imgs[0], 20, average=average).shape == (7,)
    if average == "softmax":
        assert torch.allclose(got.sum(1), torch.ones(3))


def test_multiscale_single_scale_is_full_image_eval():
    net = _net().eval()
    img = torch.rand(3, 24, 32)  # shorter side already 24: resize is the identity
    with torch.no_grad():
        full = net(img[None])[0].softmax(0)
    assert torch.allclose(multiscale_logits(net, img, scales=(24,)), full, atol=1e-6)
    two = multiscale_logits(net, img, scales=(24, 36), flip=True)
    with torch.no_grad():
        big = TF.resize(img[None], [36], antialias=True)
        views = [img[None], img[None].flip(-1), big, big.flip(-1)]
        ref = torch.stack([net(v)[0].softmax(0) for v in views]).mean(0)
    assert two.shape == (7,) and torch.allclose(two, ref, atol=1e-6)
    assert multiscale_logits(net, img[None], (20, 28, 40)).shape == (1, 7)


def _folder(tmp_path, n=4):
    root = tmp_path / "val"
    for c in range(3):
        d = root / f"c{c}"
        d.mkdir(parents=True)
        for i in range(n):
            img = torch.randint(0, 256, (3, 30 + 2 * i, 40), dtype=torch.uint8,
                                generator=torch.Generator().manual_seed(10 * c + i))
            (d / f"{i}.JPEG").write_bytes(encode_jpeg(img, quality=90).numpy().tobytes())
    return ImageFolderDataset(root)


def test_evaluate_imagenet_protocols(tmp_path):
    ds = _folder(tmp_path)
    net = _net(classes=3)
    norm = Preprocess(torch.rand(3, 20, 20))  # per-pixel: resized for multi-scale views
    r1 = evaluate_imagenet(net, ds, crops=1, normalize=norm, resize=24, crop=20,
                           images_per_batch=5)
    r10 = evaluate_imagenet(net, ds, crops=10, normalize=norm, resize=24, crop=20)
    rms = evaluate_imagenet(net, ds, scales=(20, 24, 28), flip=True, normalize=norm)
    for r in (r1, r10, rms):
        assert r.images == 12 and 0 <= r.top1_error <= 1 and r.top5_error == 0.0
        assert r.loss > 0

    # 10-crop error equals the error of ten_crop_logits image by image
    net.eval()
    scores, labels = [], []
    for img, y in ds:
        x = TF.resize(img, [24], antialias=True).float() / 255
        scores.append(ten_crop_logits(net, x, 20, normalize=norm))  # the mean of each crop
        labels.append(y)
    want = topk_errors(torch.stack(scores), torch.tensor(labels))
    assert r10.top1_error == pytest.approx(want[1])

    # model-ready float batches (a val loader's) go straight to the model
    x = torch.stack([norm(TF.center_crop(TF.resize(img, [24], antialias=True),
                                         [20]).float() / 255) for img, _ in ds])
    y = torch.tensor([lab for _, lab in ds])
    rb = evaluate_imagenet(net, [(x[:7], y[:7]), (x[7:], y[7:])])
    assert rb.top1_error == pytest.approx(r1.top1_error)
    assert rb.loss == pytest.approx(r1.loss, rel=1e-5)

    with pytest.raises(ReslabError):
        evaluate_imagenet(net, ds, crops=5)
    with pytest.raises(ReslabError):
        evaluate_imagenet(net, ds, crops=10, scales=(24,))


def test_error_sums_is_the_one_loop():
    net = _net(classes=5).train()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (11, 3, 12, 12), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 5, (11,), generator=g)
    pre = Preprocess(images.float().mean(0) / 255)
    engine = Engine(torch.device("cpu"))
    sums = error_sums(net, [(images[:6], labels[:6]), (images[6:], labels[6:])], pre, engine)
    assert net.training  # mode restored
    net.eval()
    want = [0.0] * 4
    with torch.no_grad():
        accumulate_errors(want, net(pre(images)), labels)
    assert sums[1:] == want[1:] and sums[3] == 11
    assert sums[0] == pytest.approx(want[0], rel=1e-5)
    # float [0, 1] batches give the same, and evaluate_tensors is error_sums over slices
    fsums = error_sums(net, [(images.float() / 255, labels)], pre, engine)
    assert fsums[0] == pytest.approx(sums[0], rel=1e-5) and fsums[1:] == sums[1:]
    r = evaluate_tensors(net, images, labels, pre, batch_size=4, channels_last=True)
    assert (r.images, r.top1_error, r.top5_error) == (11, sums[1] / 11, sums[2] / 11)
    assert r.loss == pytest.approx(sums[0] / 11, rel=1e-5)


def test_ten_crop_of_a_view_invariant_net_scores_what_the_centre_view_scores():
    """On images of one colour each, every crop (and its flip) shows the same thing: a net
    that pools globally then classifies must score the same under 1 and 10 crops, and
    multi-scale too. Labels are chosen so that some images are misclassified."""
    g = torch.Generator().manual_seed(0)
    colours = torch.randint(0, 256, (12, 3, 1, 1), generator=g, dtype=torch.uint8)
    images = [c.expand(3, 30 + i, 40).clone() for i, c in enumerate(colours)]
    labels = torch.randint(0, 4, (12,), generator=g)
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(3, 4))

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(images)

        def __getitem__(self, i):
            return images[i], int(labels[i])

    data = Images()
    one = evaluate_imagenet(net, data, crops=1, resize=24, crop=20, images_per_batch=5)
    ten = evaluate_imagenet(net, data, crops=10, resize=24, crop=20, images_per_batch=5)
    multi = evaluate_imagenet(net, data, scales=(20, 28), images_per_batch=5)
    assert 0 < one.top1_error < 1
    assert ten.top1_error == one.top1_error == multi.top1_error
    assert ten.loss == pytest.approx(one.loss, rel=1e-5)
