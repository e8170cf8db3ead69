"""ImageNet nets as Faster R-CNN backbones (Sec. 4.3, Tables 7-8)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

import reslab
from reslab.errors import ReslabError
from reslab.models.backbone import create_backbone


@pytest.mark.parametrize("name,channels", [("resnet18", (64, 128, 256, 512)),
                                           ("resnet50", (256, 512, 1024, 2048))])
def test_fpn_backbone_in_faster_rcnn(name: str, channels: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    bb = create_backbone(name)  # resnet50: the paper's stride placement (on the 1x1)
    assert bb.out_channels == 256
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = bb.body(x)  # C2..C5
        assert [tuple(f.shape[1:]) for f in feats.values()] == [
            (c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)
        ]
        assert len(bb(x)) == 5  # P2..P5 + max-pooled P6
    model = FasterRCNN(bb, num_classes=3, min_size=128, max_size=160).eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 120, 150)])
    assert set(det) == {"boxes", "labels", "scores"} and det["boxes"].shape[-1] == 4


def test_c5_backbone_without_fpn() -> None:
    bb = create_backbone("resnet34", fpn=False, trainable_layers=0)
    assert bb.out_channels == 512
    model = FasterRCNN(
        bb, num_classes=2, min_size=96, max_size=128,
        rpn_anchor_generator=AnchorGenerator(((32, 64, 128),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
    ).eval()
    with torch.no_grad():
        assert bb(torch.randn(1, 3, 64, 64))["0"].shape == (1, 512, 2, 2)
        model([torch.rand(3, 96, 100)])


def test_frozen_layers_and_bn() -> None:
    bb = create_backbone("resnet18", trainable_layers=2, returned_layers=(2, 3, 4))
    trainable = {n.split(".")[0] for n, p in bb.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert len(bb.body(torch.randn(1, 3, 64, 64))) == 3


def test_backbone_weights_keep_classifier_features(tmp_path) -> None:
    src = reslab.create_model("resnet18").eval()
    with torch.no_grad():
        for m in src.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    bb = create_backbone("resnet18", weights=tmp_path / "r18.pth").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = src.forward_features(x)["layer4"]
        assert torch.allclose(bb.body(x)["3"], ref, atol=1e-5)


def test_cifar_nets_are_rejected() -> None:
    with pytest.raises(ReslabError, match="CIFAR"):
        create_backbone("resnet20")
    with pytest.raises(ReslabError):
        create_backbone("resnet18", trainable_layers=7)
