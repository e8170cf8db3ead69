"""FolderSource (the ImageNet recipe, Sec. 3.4, from an image folder) on a tiny folder:
batches are a pure function of (seed, iteration, rank), one DataLoader per run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reslab.data.imagenet import ImageFolderDataset
from reslab.engine import make_engine
from reslab.errors import ReslabError
from reslab.evaluate import evaluate_imagenet
from reslab.train.distributed import World
from reslab.train.folder_source import EpochSampler, FolderSource
from reslab.train.recipes import TrainConfig
from tiny_imagenet import make_tiny_imagenet

SIZES = dict(scale=(40, 56), crop=32, test_resize=36)  # tiny_imagenet.SMALL


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_tiny_imagenet(tmp_path_factory.mktemp("tiny") / "imnet")  # 3 x (8, 3)


def _source(root, world: World | None = None, resumed=None, **options) -> FolderSource:
    cfg = TrainConfig.imagenet(**{"data": str(root), "batch_size": 4, "workers": 0,
                                  "device": "cpu", **SIZES, **options})
    return FolderSource(cfg, make_engine("cpu", "fp32"), world or World(), resumed)


def _net(classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


def test_batches_are_a_pure_function_of_the_iteration(root):
    src = _source(root)
    assert (src.name, src.eval_name, src.classes) == (str(root), "val", ["class0", "class1",
                                                                          "class2"])
    assert (src.train_size, src.eval_size, src.steps_per_epoch) == (24, 9, 6)
    assert src.preprocess.mean.shape == (3, 32, 32)  # per-pixel, the test view's size
    loader = src.loader
    run = [src.batch(i) for i in range(2)]
    it = src._iter
    run += [src.batch(i) for i in range(2, 14)]  # two epochs and a bit
    assert src.loader is loader and src._iter is it  # one loader, one pass, no restart
    x, y = run[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    assert not torch.equal(run[0][0], run[1][0])
    # an epoch sees every image once: labels of epoch 0 are 8 of each class
    assert torch.bincount(torch.cat([y for _, y in run[:6]]), minlength=3).tolist() == [8] * 3

    # a fresh source (a resumed run) started mid-epoch, in the next epoch, or jumping
    fresh = _source(root)
    assert torch.equal(fresh.preprocess.mean, src.preprocess.mean)
    for i in (9, 10, 3, 13, 0):
        fx, fy = fresh.batch(i)
        assert torch.equal(fx, run[i][0]) and torch.equal(fy, run[i][1]), i
    # the global RNG is not used (nor changed) by the batches
    torch.manual_seed(5)
    fresh.batch(7)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
    src.close()
    fresh.close()


def test_workers_do_not_change_the_batches(root):
    a, b = _source(root), _source(root, workers=1)
    try:
        assert b.loader.persistent_workers
        for i in (0, 1, 2, 8, 9, 6):  # a jump restarts the same (persistent) workers
            xa, ya = a.batch(i)
            xb, yb = b.batch(i)
            assert torch.equal(xa, xb) and torch.equal(ya, yb), i
        assert a.evaluate(_net()) == b.evaluate(_net())
    finally:
        a.close()
        b.close()


def test_lighting_is_one_offset_per_image_and_channel(root):
    lit, flat = _source(root), _source(root, lighting=0.0)
    assert flat.lighting is None
    d = lit.batch(4)[0] - flat.batch(4)[0]  # the same crops, flips and mean
    assert torch.allclose(d, d[:, :, :1, :1].expand_as(d), atol=1e-5)
    assert d.abs().max() > 0


def test_world_shards_make_the_global_batch():
    one = list(zip(range(3 * 6), EpochSampler(25, 4, seed=3, start=5), strict=False))
    ranks = [EpochSampler(25, 2, seed=3, rank=r, world_size=2, start=5) for r in range(2)]
    assert ranks[0].steps_per_epoch == 6
    streams = [list(zip(range(3 * 2), iter(s), strict=False)) for s in ranks]
    for k in range(3):  # global batch k: the same images and per-image seeds
        glob = {v for _, v in one[4 * k : 4 * k + 4]}
        parts = {v for r in range(2) for _, v in streams[r][2 * k : 2 * k + 2]}
        assert parts == glob
    # every image at most once per epoch (25 images: one left out by drop_last)
    epoch = [idx for _, (idx, _) in zip(range(24), EpochSampler(25, 4, seed=3), strict=False)]
    assert len(set(epoch)) == 24


def test_evaluate_is_the_centre_crop_protocol(root):
    src = _source(root)
    net = _net().train()
    loss, top1, top5, n = src.evaluate(net)
    assert n == 9 and top5 == 0 and 0 <= top1 <= 9 and net.training
    ref = evaluate_imagenet(net, ImageFolderDataset(root / "val"), crops=1,
                            normalize=src.preprocess, resize=36, crop=32)
    assert ref.images == 9 and ref.top1_error == pytest.approx(top1 / 9)
    assert ref.loss == pytest.approx(loss / 9, rel=1e-5)
    # two ranks: disjoint shards that add up to the whole val set
    shards = [_source(root, World(r, 2), src.preprocess.mean).evaluate(net)
              for r in range(2)]
    assert [s[3] for s in shards] == [5, 4]
    assert sum(s[0] for s in shards) == pytest.approx(loss, rel=1e-5)


def test_mean_resumed_or_per_channel_and_errors(root):
    mean = torch.full((3, 32, 32), 0.5)
    assert torch.equal(_source(root, resumed=mean).preprocess.mean, mean)
    assert _source(root, mean="per-channel").preprocess.mean.shape == (3, 1, 1)
    with pytest.raises(ReslabError, match="divide"):
        _source(root, World(0, 3))
    with pytest.raises(ReslabError, match="larger than the training set"):
        _source(root, batch_size=32)
    with pytest.raises(ReslabError, match="does not exist"):
        _source(root / "nowhere")


def test_skip_corrupt_reaches_the_training_folder(tmp_path):
    root = make_tiny_imagenet(tmp_path / "imnet", classes=2, train=4, val=1)
    (root / "train" / "class0" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(ReslabError, match="broken.JPEG"):  # the mean estimate reads it
        _source(root)
    with pytest.warns(UserWarning, match="broken.JPEG"):
        src = _source(root, skip_corrupt=True)
        batches = [src.batch(i) for i in range(4)]
    assert all(x.shape == (4, 3, 32, 32) for x, _ in batches)  # full batches
    assert src.evaluate(_net(2))[3] == 2


def test_seeded_transform_draws_torch_manual_seeds_stream_and_restores_the_rng(root):
    """The per-image seeding (the CPU generator only, ~100x cheaper than torch.manual_seed,
    which seeds every backend) gives the crops torch.manual_seed gave, and leaves the
    caller's RNG where it was."""
    from reslab.data.imagenet import imagenet_train_transform
    from reslab.train.folder_source import SeededTransform

    tf = imagenet_train_transform(scale=(40, 56), crop=32, to_float=False)
    seeded = SeededTransform(ImageFolderDataset(root / "train"), tf)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    for i, seed in ((0, 7), (5, 2**62 + 11), (23, 0)):
        got, label = seeded[(i, seed)]
        image, want_label = seeded.dataset[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            want = tf(image)
        assert torch.equal(got, want) and label == want_label
    assert torch.equal(torch.get_rng_state(), before)
