"""Weights in from the ecosystem: torchvision, timm, pytorch_resnet_cifar10, safetensors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file
from torch import nn

import reslab
from reslab.errors import ReslabError
from reslab.interop import load_weights, model_from_checkpoint


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters, so equal outputs mean equal networks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, nn.Linear):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_weights_give_equal_outputs(depth: int) -> None:
    torch.manual_seed(depth)
    tv = _randomize(getattr(torchvision.models, f"resnet{depth}")())
    ours = reslab.create_model(f"resnet{depth}", stride_in_1x1=False).eval()
    load_weights(ours, tv.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - tv(x)).abs().max().item() < 1e-4


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_weights_from_file(tmp_path: Path, suffix: str) -> None:
    tv = _randomize(torchvision.models.resnet18())
    path = tmp_path / f"tv{suffix}"
    if suffix == ".safetensors":
        save_file(tv.state_dict(), str(path))
    else:
        torch.save(tv.state_dict(), path)
    ours = reslab.load_weights(reslab.create_model("resnet18").eval(), path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - tv(x)).abs().max().item() < 1e-4


def test_wrapped_and_dataparallel_state_dicts(tmp_path: Path) -> None:
    src = _randomize(reslab.create_model("resnet20"))
    sd = src.state_dict()
    x = torch.randn(2, 3, 32, 32)
    for obj in (
        {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        {"model_state_dict": sd},
        {"model": sd},
        {"format": "reslab-checkpoint-v1", "model": sd, "model_spec": src.reslab_spec.to_dict()},
    ):
        torch.save(obj, tmp_path / "ck.pt")
        m = load_weights(reslab.create_model("resnet20").eval(), tmp_path / "ck.pt")
        with torch.no_grad():
            assert torch.equal(m(x), src(x))


def test_model_from_checkpoint(tmp_path: Path) -> None:
    src = _randomize(reslab.create_model("resnet50", num_classes=5, stride_in_1x1=False))
    ck = {"format": "reslab-checkpoint-v1", "model_spec": src.reslab_spec.to_dict(),
          "model": src.state_dict(), "classes": list("abcde"), "iteration": 7}
    torch.save(ck, tmp_path / "best.pt")
    model, got = model_from_checkpoint(tmp_path / "best.pt")
    assert model.reslab_spec == src.reslab_spec and got["classes"] == list("abcde")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), src(x))
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(ReslabError, match="not a reslab checkpoint"):
        model_from_checkpoint(tmp_path / "plain.pt")


def test_timm_resnet50_loads() -> None:
    timm = pytest.importorskip("timm")
    tm = _randomize(timm.create_model("resnet50", pretrained=False))
    ours = reslab.create_model("resnet50", stride_in_1x1=False).eval()
    load_weights(ours, tm.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - tm(x)).abs().max().item() < 1e-4


# --- pytorch_resnet_cifar10 (akamaster), re-implemented faithfully from its resnet.py ---


class LambdaLayer(nn.Module):
    def __init__(self, lambd) -> None:
        super().__init__()
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lambd(x)


class AkaBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:  # option A
            self.shortcut = LambdaLayer(lambda x: F.pad(
                x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class AkaResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(32, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(64, num_blocks[2], stride=2)
        self.linear = nn.Linear(64, num_classes)

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(AkaBasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


@pytest.mark.parametrize("depth", [20, 32])
def test_pytorch_resnet_cifar10_checkpoint(tmp_path: Path, depth: int) -> None:
    torch.manual_seed(depth)
    n = (depth - 2) // 6
    theirs = AkaResNet([n, n, n])
    for m in theirs.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    theirs = _randomize(theirs, seed=depth)
    # Realistic BN statistics (measured on data), so activations stay O(1) and the 1e-5
    # tolerance is about the conversion, not float rounding of huge values.
    for m in theirs.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        theirs.train()(torch.randn(64, 3, 32, 32))
    theirs.eval()
    path = tmp_path / f"resnet{depth}.th"
    state = {"module." + k: v for k, v in theirs.state_dict().items()
             if not k.endswith("num_batches_tracked")}  # their checkpoints predate it
    torch.save({"state_dict": state, "best_prec1": 91.7}, path)
    ours = reslab.load_weights(reslab.create_model(f"resnet{depth}").eval(), path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-5
    # The channel permutation matters: merely renaming linear -> fc gives other outputs.
    naive = reslab.create_model(f"resnet{depth}").eval()
    naive.load_state_dict({k.replace("linear.", "fc."): v for k, v in
                           theirs.state_dict().items()})
    with torch.no_grad():
        assert (naive(x) - theirs(x)).abs().max().item() > 1e-2


# --- bad sources ---


def test_other_architecture_names_missing_and_unexpected(tmp_path: Path) -> None:
    torch.save(reslab.create_model("resnet18").state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ReslabError) as e:
        load_weights(reslab.create_model("resnet34"), tmp_path / "r18.pt")
    msg = str(e.value)
    assert "missing keys" in msg and "layer1.2.conv1.weight" in msg and "resnet34" in msg
    with pytest.raises(ReslabError, match="unexpected keys.*layer1.0.conv3.weight"):
        load_weights(reslab.create_model("resnet18"),
                     reslab.create_model("resnet50").state_dict())
    with pytest.raises(ReslabError, match=r"shape mismatch.*fc.weight"):
        load_weights(reslab.create_model("resnet20", num_classes=100),
                     reslab.create_model("resnet20").state_dict())


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unreadable_sources(tmp_path: Path) -> None:
    m = reslab.create_model("resnet20")
    with pytest.raises(ReslabError, match="not found"):
        load_weights(m, tmp_path / "nope.pt")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": _Evil()}))
    with pytest.raises(ReslabError, match="cannot read"):
        load_weights(m, evil)
    torch.save({"x": _Evil()}, tmp_path / "evil2.pt")
    with pytest.raises(ReslabError, match="never unpickles"):
        load_weights(m, tmp_path / "evil2.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"garbage")
    with pytest.raises(ReslabError):
        load_weights(m, tmp_path / "junk.safetensors")
    with pytest.raises(ReslabError, match="not a state_dict"):
        load_weights(m, {"lr": 0.1})
