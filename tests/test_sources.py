"""TensorSource (Sec. 4.2 on device tensors): batches are a pure function of (seed,
iteration), ranks split the global batch, evaluation shards add up to the whole split."""

from __future__ import annotations

import pytest
import torch

from reslab.data import Preprocess, load_image_data, per_pixel_mean
from reslab.engine import make_engine
from reslab.errors import ReslabError
from reslab.models import create_model
from reslab.train.distributed import World
from reslab.train.recipes import TrainConfig
from reslab.train.sources import TensorSource, data_identity


@pytest.fixture(scope="module")
def data():
    return load_image_data("synthetic:96:40", progress=False)


def source(data, world=None, **kw):
    cfg = TrainConfig.cifar(data="synthetic:96:40", batch_size=16, device="cpu", **kw)
    pre = Preprocess(per_pixel_mean(data.train.images))
    return TensorSource(data, pre, cfg, make_engine("cpu", "fp32"), world or World())


def test_batch_is_a_pure_function_of_seed_and_iteration(data):
    a, b = source(data), source(data)
    for it in (0, 1, 7, 5, 6, 12):  # out of order, across epochs (6 steps per epoch)
        xa, ya = a.batch(it)
        xb, yb = source(data).batch(it)  # a fresh source, straight to this iteration
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    assert not torch.equal(source(data, seed=1).batch(0)[0], b.batch(0)[0])
    # an epoch visits every image once: 6 steps of 16 = all 96 labels, each once
    labels = torch.cat([a.batch(i)[1] for i in range(6)])
    assert torch.equal(labels.sort().values, data.train.labels.sort().values)


def test_ranks_split_the_global_batch(data):
    whole = source(data)
    ranks = [source(data, World(rank=r, size=2)) for r in range(2)]
    for it in (0, 3, 6):
        _, y = whole.batch(it)
        y0, y1 = ranks[0].batch(it)[1], ranks[1].batch(it)[1]
        assert torch.equal(y0, y[0::2]) and torch.equal(y1, y[1::2])
    with pytest.raises(ReslabError, match="divide by the 3 ranks"):
        source(data, World(rank=0, size=3))


def test_evaluation_shards_add_up(data):
    model = create_model("resnet8").eval()
    whole = source(data).evaluate(model)
    parts = [source(data, World(rank=r, size=2)).evaluate(model) for r in range(2)]
    summed = [a + b for a, b in zip(*parts, strict=True)]
    assert summed[3] == whole[3] == 40 and summed[1:3] == whole[1:3]
    assert summed[0] == pytest.approx(whole[0], rel=1e-5)


def test_identity_changes_with_the_data(data):
    other = load_image_data("synthetic:96:40", progress=False, val_split=8)
    assert data_identity(source(data)) == data_identity(source(data))
    assert data_identity(source(data))["fingerprint"] != data_identity(source(other))[
        "fingerprint"]
