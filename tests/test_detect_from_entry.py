"""A detector starts from a registry entry of reslab's own ImageNet-recipe classifiers
(issue 23: `reslab detect train --backbone resnet18 --weights imagenette:resnet18`), its
BN frozen as in Appendix A. The entry here is a tiny ResNet-18 trained 2 iterations on a
tiny image folder and published into a registry of the test's own; the detection data are
synthetic."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.ops.misc import FrozenBatchNorm2d

from reslab import ReslabError, create_model
from reslab.cli import main
from reslab.detection.models import create_detector
from reslab.models.publish import publish
from reslab.models.weights import WEIGHTS_DIR_ENV
from reslab.train.checkpoint import Checkpoint
from tiny_imagenet import SMALL, make_tiny_imagenet

ENTRY = "tiny-inet:resnet18"
DET = ["--data", "synthetic-det:train=8,test=2,size=64", "--min-size", "64", "--max-size",
       "64", "--batch-size", "2", "--rpn-test-proposals", "20", "--device", "cpu",
       "--precision", "fp32", "--iterations", "2", "--no-progress"]


@pytest.fixture(scope="module")
def entry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("entry")
    root = make_tiny_imagenet(tmp / "tiny")
    run = tmp / "run"
    assert main(["train", "--model", "resnet18", "--recipe", "imagenet", "--data", str(root),
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress",
                 "--iterations", "2", "--out", str(run), *SMALL]) == 0
    return publish(run / "last.pt", "tiny-inet", str(root), registry=tmp / "registry")


@pytest.fixture
def registry(entry, monkeypatch):
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(entry.folder))
    return entry


def detector_key(key: str) -> str | None:
    """Where a classifier's tensor lives in the c4 detector (None: not in it)."""
    if key.startswith("fc.") or key.endswith("num_batches_tracked"):
        return None
    return f"roi_heads.box_head.{key}" if key.startswith("layer4.") else f"backbone.{key}"


def test_the_entry_initialises_the_backbone_with_frozen_bn(registry):
    net = create_model("resnet18", weights=ENTRY)
    det = create_detector("resnet18", "c4", num_classes=3, weights=ENTRY, min_size=64,
                          max_size=64)
    state = det.state_dict()
    own = {k: v for k, v in net.state_dict().items() if detector_key(k)}
    assert own and all(torch.equal(state[detector_key(k)], v) for k, v in own.items())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in det.modules())
    assert isinstance(det.backbone.bn1, FrozenBatchNorm2d) and det.reslab_spec.frozen_bn
    mean = registry.preprocess().mean.reshape(3, -1).mean(1)
    assert det.reslab_spec.image_mean == pytest.approx(tuple(mean.tolist()))
    assert det.reslab_spec.shortcut == net.reslab_spec.shortcut


def test_detect_train_starts_from_the_entry(registry, tmp_path):
    """Acceptance (issue 23): `reslab detect train --weights NAME:resnet18` on synthetic
    detection data; what Appendix A keeps fixed (BN, conv1, conv2_x) still equals the
    entry's after training, and run.json names the entry and its file's sha256."""
    out = tmp_path / "det"
    assert main(["detect", "train", "--backbone", "resnet18", "--weights", ENTRY,
                 "--out", str(out), *DET]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["backbone_weights"]["entry"] == ENTRY
    assert info["backbone_weights"]["sha256"] == registry.sha256
    assert ENTRY in info["init"] and "BN frozen" in info["init"]
    trained = Checkpoint.load(out / "last.pt").model
    net = create_model("resnet18", weights=ENTRY).state_dict()
    fixed = [k for k in net if detector_key(k) and (k.startswith(("conv1.", "layer1."))
                                                    or ".bn" in k or k.startswith("bn1."))]
    assert len(fixed) > 20
    assert all(torch.equal(trained[detector_key(k)], net[k]) for k in fixed)
    moved = detector_key("layer3.0.conv1.weight")  # trainable from conv3_x up
    assert not torch.equal(trained[moved], net["layer3.0.conv1.weight"])


def test_entries_that_cannot_start_a_detector_are_refused(registry, tmp_path, capsys):
    capsys.readouterr()
    assert main(["detect", "train", "--backbone", "resnet34", "--weights", ENTRY, "--out",
                 str(tmp_path / "a"), *DET]) == 2
    assert "holds a resnet18, not a resnet34" in capsys.readouterr().err
    assert main(["detect", "train", "--backbone", "resnet18", "--weights", "nope:resnet18",
                 "--out", str(tmp_path / "b"), *DET]) == 2
    err = capsys.readouterr().err
    assert "no weights nope:resnet18" in err and ENTRY in err and err.count("\n") == 1
    net = create_model("resnet18", num_classes=10)  # trained the CIFAR way: refused
    Checkpoint(model_spec=net.reslab_spec.to_dict(), model=net.state_dict(),
               preprocess={"mean": torch.zeros(3, 32, 32), "std": None},
               classes=[str(i) for i in range(10)], config={"recipe": "cifar"}).save(
        tmp_path / "cifar.pt")
    with pytest.raises(ReslabError, match="CIFAR recipe"):
        create_detector("resnet18", "c4", num_classes=3, weights=tmp_path / "cifar.pt")
