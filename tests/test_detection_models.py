"""Detectors (Tables 7-8, Appendix A): the paper's c4 design, fpn and the VGG-16 baseline
on torchvision's FasterRCNN, backbone weights with frozen BN, specs, and DetectConfig."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign

from reslab import create_model
from reslab.cli import build_parser
from reslab.cli.detect import config_from_args
from reslab.detection.config import DetectConfig
from reslab.detection.models import (
    DetectorSpec,
    Res5Head,
    create_detector,
    default_anchor_sizes,
    detector_from_spec,
)
from reslab.errors import ReslabError
from reslab.train.checkpoint import Checkpoint

#: RPN/RoI sampling small enough for a CPU test at 64-pixel images.
TINY = dict(min_size=64, max_size=64, rpn_batch_size_per_image=16, box_batch_size_per_image=4,
            rpn_post_nms_top_n_train=16, rpn_post_nms_top_n_test=4)


def images_and_targets() -> tuple[list[torch.Tensor], list[dict]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 72, generator=g), torch.rand(3, 60, 64, generator=g)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    return images, targets


def train_and_test(model: nn.Module) -> None:
    """One training forward/backward (the four losses, finite) and one detection pass."""
    images, targets = images_and_targets()
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                           "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) == {"boxes", "labels", "scores"}
    assert out[0]["boxes"].shape[1] == 4 and len(out[0]["boxes"]) <= 100


def test_c4_is_the_papers_design():
    torch.manual_seed(0)
    det = create_detector("resnet18", "c4", num_classes=3, **TINY)
    net = create_model("resnet18")
    assert isinstance(det, FasterRCNN)
    # conv1..conv4_x: the shared stride-16 feature map the RPN works on
    assert list(dict(det.backbone.named_children())) == ["conv1", "bn1", "relu", "maxpool",
                                                         "layer1", "layer2", "layer3"]
    assert det.backbone.out_channels == 256
    with torch.no_grad():
        fmap = det.backbone(torch.zeros(1, 3, 64, 96))
    assert fmap.shape[-2:] == (4, 6)  # stride 16
    # RoI pooling before conv5_1: 14x14 RoIAlign, then conv5_x (with its stride) + pooling
    pool = det.roi_heads.box_roi_pool
    assert isinstance(pool, MultiScaleRoIAlign) and pool.output_size == (14, 14)
    head = det.roi_heads.box_head
    assert isinstance(head, Res5Head) and head.out_channels == 512
    mine = {k: v.shape for k, v in head.layer4.state_dict().items()}
    assert mine == {k: v.shape for k, v in net.layer4.state_dict().items()}
    assert head(torch.zeros(3, 256, 14, 14)).shape == (3, 512)
    # the two sibling layers: K+1 scores, 4(K+1) box deltas
    pred = det.roi_heads.box_predictor
    assert (pred.cls_score.in_features, pred.cls_score.out_features) == (512, 3)
    assert pred.bbox_pred.out_features == 12
    # Appendix A / Faster R-CNN's settings
    rpn, roi = det.rpn, det.roi_heads
    assert rpn.nms_thresh == 0.7 and rpn._pre_nms_top_n["training"] == 12000
    assert rpn.fg_bg_sampler.positive_fraction == 0.5
    assert roi.fg_bg_sampler.positive_fraction == 0.25
    assert det.rpn.anchor_generator.sizes == ((14, 27, 55),)  # 128/256/512 at 64/600
    assert det.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),)
    # under bf16 autocast the heads' outputs (boxes are decoded from them) stay fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores, deltas = pred(torch.randn(2, 512))
        logits, boxes = det.rpn.head([torch.randn(1, 256, 4, 4)])
    assert {t.dtype for t in (scores, deltas, *logits, *boxes)} == {torch.float32}
    train_and_test(det)


def test_paper_defaults_at_600_pixels():
    det = create_detector("plain34", "c4", num_classes=21)
    rpn, roi = det.rpn, det.roi_heads
    assert det.rpn.anchor_generator.sizes == ((128, 256, 512),)
    assert (det.transform.min_size, det.transform.max_size) == ((600,), 1000)
    assert rpn.fg_bg_sampler.batch_size_per_image == 256
    assert rpn._post_nms_top_n == {"training": 2000, "testing": 300}
    assert roi.fg_bg_sampler.batch_size_per_image == 128
    assert roi.proposal_matcher.high_threshold == 0.5
    # from scratch: every stage trains and BN is ordinary, trainable BN
    assert all(p.requires_grad for p in det.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in det.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in det.modules())
    assert det.reslab_spec.shortcut is None and not det.reslab_spec.frozen_bn


def test_bottleneck_c4_channels():
    det = create_detector("resnet50", "c4", num_classes=81)
    assert det.backbone.out_channels == 1024
    assert det.roi_heads.box_head.out_channels == 2048
    assert det.roi_heads.box_predictor.cls_score.in_features == 2048
    assert det.reslab_spec.stride_in_1x1 is True and det.reslab_spec.shortcut == "B"


def test_fpn_head_trains_and_detects():
    torch.manual_seed(0)
    det = create_detector("resnet18", "fpn", num_classes=3, **TINY)
    assert det.backbone.out_channels == 256
    assert det.rpn.anchor_generator.sizes == ((3,), (5,), (10,), (20,), (41,))  # 32..512 at 64/800
    assert default_anchor_sizes("fpn", 800) == (32, 64, 128, 256, 512)
    assert default_anchor_sizes("c4", 128) == (27, 55, 109)
    train_and_test(det)


def test_vgg16_baseline_row():
    torch.manual_seed(0)
    det = create_detector("vgg16", "c4", num_classes=3, **TINY)
    convs = [m for m in det.backbone if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and not isinstance(det.backbone[-1], nn.MaxPool2d)
    with torch.no_grad():
        assert det.backbone(torch.zeros(1, 3, 64, 96)).shape == (1, 512, 4, 6)  # stride 16
    fcs = [m for m in det.roi_heads.box_head if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(512 * 7 * 7, 4096), (4096, 4096)]
    assert det.roi_heads.box_roi_pool.output_size == (7, 7)
    images, targets = images_and_targets()
    det.train()
    losses = det(images, targets)
    assert torch.isfinite(sum(losses.values()))
    with pytest.raises(ReslabError, match="vgg16 is the paper's single-level baseline"):
        create_detector("vgg16", "fpn", num_classes=3)


def test_weights_freeze_bn_and_early_stages(tmp_path):
    torch.manual_seed(1)
    net = create_model("resnet18", num_classes=10)
    for m in net.modules():  # statistics that differ from a fresh BN's
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    det = create_detector("resnet18", "c4", num_classes=3, weights=path, **TINY)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in det.modules())
    frozen = det.backbone.bn1
    assert isinstance(frozen, FrozenBatchNorm2d)
    assert torch.equal(frozen.running_mean, net.bn1.running_mean)
    assert torch.equal(det.backbone.conv1.weight, net.conv1.weight)
    assert torch.equal(det.roi_heads.box_head.layer4[0].conv1.weight, net.layer4[0].conv1.weight)
    trainable = {n.split(".")[1] for n, p in det.named_parameters()
                 if p.requires_grad and n.startswith("backbone.")}
    assert trainable == {"layer2", "layer3"}  # + layer4 in the head: torchvision's 3
    assert all(p.requires_grad for p in det.roi_heads.box_head.parameters())
    assert det.reslab_spec.frozen_bn and det.reslab_spec.trainable_layers == 3
    train_and_test(det)
    with pytest.raises(ReslabError, match="weights do not fit"):
        create_detector("resnet34", "c4", num_classes=3, weights=path)


def test_reslab_checkpoint_brings_its_mean_and_net(tmp_path):
    net = create_model("resnet18", num_classes=5)
    mean = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1).expand(3, 8, 8).clone()
    Checkpoint(model_spec=net.reslab_spec.to_dict(), model=net.state_dict(),
               preprocess={"mean": mean, "std": None}, classes=list("abcde")).save(
        tmp_path / "cls.pt")
    det = create_detector("resnet18", "fpn", num_classes=3, weights=tmp_path / "cls.pt",
                          trainable_layers=0, **TINY)
    assert det.reslab_spec.image_mean == pytest.approx((0.1, 0.2, 0.3))
    assert det.reslab_spec.image_std == (1.0, 1.0, 1.0)
    assert not any(p.requires_grad for p in det.backbone.body.parameters())
    with pytest.raises(ReslabError, match="holds a resnet18, not a resnet34"):
        create_detector("resnet34", "c4", num_classes=3, weights=tmp_path / "cls.pt")


def test_spec_round_trip_rebuilds_the_same_detector():
    torch.manual_seed(0)
    det = create_detector("resnet18", "c4", num_classes=4, anchor_sizes=(16, 32), **TINY)
    d = det.reslab_spec.to_dict()
    assert d["task"] == "detection" and d["name"] == "fasterrcnn_c4_resnet18"
    again = detector_from_spec(d)
    assert again.reslab_spec == det.reslab_spec
    assert again.rpn.anchor_generator.sizes == ((16, 32),)
    again.load_state_dict(det.state_dict())
    with pytest.raises(ReslabError, match="invalid detector spec"):
        detector_from_spec({"task": "detection", "backbone": "resnet18"})
    with pytest.raises(ReslabError, match="unknown detection backbone"):
        DetectorSpec.from_dict({**d, "backbone": "resnet20"})
    with pytest.raises(ReslabError, match="does not describe a detector"):
        detector_from_spec(create_model("resnet18").reslab_spec.to_dict())


def test_detect_config_recipes_and_validation():
    voc = DetectConfig.voc(backbone="resnet101")
    assert (voc.iterations, voc.batch_size, voc.lr, voc.momentum, voc.weight_decay) == (
        80_000, 1, 0.001, 0.9, 5e-4)
    assert (voc.min_size, voc.max_size, voc.flip) == (600, 1000, True)
    assert voc.milestones_for(voc.iterations) == (60_000,)
    assert (voc.train_split, voc.val_split) == ("trainval", "test")
    coco = DetectConfig.coco()
    assert (coco.iterations, coco.batch_size) == (320_000, 8)
    assert coco.milestones_for(coco.iterations) == (240_000,)
    small = DetectConfig(iterations=8, min_size=96, max_size=128)
    assert small.milestones_for(8) == (6,)  # the drop stays at 3/4 of the run
    assert DetectConfig.from_dict(small.to_dict()) == small
    assert small.model_options()["box_batch_size_per_image"] == 128
    for bad, match in (({"head": "c5"}, "--head"), ({"backbone": "resnet20"}, "--backbone"),
                       ({"min_size": 16}, "--min-size"), ({"min_size": 600, "max_size": 500},
                                                          "--max-size"),
                       ({"lr": float("nan")}, "--lr"), ({"head": "fpn", "anchor_sizes": [8]},
                                                        "5 anchor sizes"),
                       ({"recipe": "imagenet"}, "--recipe")):
        with pytest.raises(ReslabError, match=match):
            DetectConfig(**bad)
    with pytest.raises(dataclasses.FrozenInstanceError):
        small.lr = 1.0  # type: ignore[misc]


def test_test_nms_is_the_papers_0_3_and_old_records_keep_0_5():
    """Faster R-CNN's test-time per-class NMS (py-faster-rcnn cfg.TEST.NMS = 0.3), which
    Appendix A keeps; runs recorded without it were made with torchvision's 0.5."""
    det = create_detector("resnet18", "c4", num_classes=3, **TINY)
    assert det.roi_heads.nms_thresh == 0.3 and det.reslab_spec.options["box_nms_thresh"] == 0.3
    assert create_detector("resnet18", "c4", num_classes=3, box_nms_thresh=0.45,
                           **TINY).roi_heads.nms_thresh == 0.45
    assert DetectConfig().test_nms == 0.3 and DetectConfig().model_options()[
        "box_nms_thresh"] == 0.3
    cli = build_parser().parse_args(["detect", "train", "--data", "synthetic-det",
                                     "--test-nms", "0.4"])
    assert config_from_args(cli).model_options()["box_nms_thresh"] == 0.4
    for bad in (0, 1.5, float("nan")):
        with pytest.raises(ReslabError, match="--test-nms must be in"):
            DetectConfig(test_nms=bad)
    old = {k: v for k, v in DetectConfig().to_dict().items() if k != "test_nms"}
    assert DetectConfig.from_dict(old).test_nms == 0.5
    spec = det.reslab_spec.to_dict()
    spec["options"] = {k: v for k, v in spec["options"].items() if k != "box_nms_thresh"}
    assert detector_from_spec(spec).roi_heads.nms_thresh == 0.5
