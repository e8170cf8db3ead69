"""The networks of Table 1 and Sec. 4.2, built exactly: parameters, layers, blocks, shortcuts."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import reslab
from reslab.analysis.complexity import count_parameters
from reslab.models.blocks import BasicBlock, Bottleneck, ZeroPadShortcut

CIFAR_PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962}
IMAGENET_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160,
                   152: 60_192_808}


@pytest.mark.parametrize("depth", sorted(CIFAR_PARAMS))
def test_cifar_parameter_counts_and_plain_twins(depth: int) -> None:
    # Table 6 / Sec. 4.2: option A adds no parameters, so the plain twin has the same.
    assert count_parameters(reslab.create_model(f"resnet{depth}")) == CIFAR_PARAMS[depth]
    assert count_parameters(reslab.create_model(f"plain{depth}")) == CIFAR_PARAMS[depth]


def test_resnet1202_parameter_count() -> None:
    assert count_parameters(reslab.create_model("resnet1202")) == 19_421_274


@pytest.mark.parametrize("depth", sorted(IMAGENET_PARAMS))
def test_imagenet_parameter_counts_equal_torchvision(depth: int) -> None:
    ours = reslab.create_model(f"resnet{depth}")
    tv = getattr(torchvision.models, f"resnet{depth}")()
    assert count_parameters(ours) == IMAGENET_PARAMS[depth] == count_parameters(tv)
    # Same names and shapes, too: torchvision weights load without conversion.
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in tv.state_dict().items()
    }
    # The plain twin is the residual net without its projection shortcuts.
    projections = sum(p.numel() for n, p in ours.named_parameters() if ".downsample." in n)
    assert projections > 0
    plain = reslab.create_model(f"plain{depth}")
    assert count_parameters(plain) == IMAGENET_PARAMS[depth] - projections


def test_option_c_more_params_than_b_than_a() -> None:
    a, b, c = (count_parameters(reslab.create_model("resnet34", shortcut=s)) for s in "ABC")
    assert c > b > a
    assert a == count_parameters(reslab.create_model("plain34"))


def _weighted_layers(model: nn.Module) -> int:
    """Convs and fc on the main path (projection shortcuts are not counted as layers)."""
    return sum(
        isinstance(m, nn.Conv2d | nn.Linear) and ".downsample." not in f".{n}."
        for n, m in model.named_modules()
    )


@pytest.mark.parametrize("name,depth", [("resnet8", 8), ("resnet74", 74), ("plain14", 14),
                                        ("resnet20", 20), ("cifar_resnet50", 50)])
def test_any_6n_plus_2_depth(name: str, depth: int) -> None:
    model = reslab.create_model(name)
    assert model.reslab_spec.family == "cifar"
    assert _weighted_layers(model) == depth
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("depth", sorted(IMAGENET_PARAMS))
def test_imagenet_weighted_layers(depth: int) -> None:
    assert _weighted_layers(reslab.create_model(f"resnet{depth}")) == depth


def test_cifar_resnet50_is_the_cifar_net() -> None:
    m = reslab.create_model("cifar_resnet50")
    assert m.reslab_spec.name == "cifar_resnet50"
    assert m.reslab_spec.depth == 50 and m.conv1.kernel_size == (3, 3)
    assert count_parameters(m) < 1_000_000
    assert reslab.create_model("resnet50").reslab_spec.family == "imagenet"


@pytest.mark.parametrize("size", [32, 40, 64])
def test_cifar_output_shapes(size: int) -> None:
    m = reslab.create_model("resnet20").eval()
    assert m(torch.randn(2, 3, size, size)).shape == (2, 10)
    feats = m.forward_features(torch.randn(1, 3, size, size))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [
        (16, size, size), (32, math.ceil(size / 2), math.ceil(size / 2)),
        (64, math.ceil(size / 4), math.ceil(size / 4)),
    ]


@pytest.mark.parametrize("name,size", [("resnet18", 64), ("resnet18", 97), ("resnet18", 224),
                                       ("resnet50", 64), ("plain50", 97)])
def test_imagenet_output_shapes(name: str, size: int) -> None:
    m = reslab.create_model(name, num_classes=7).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 3, size, size)).shape == (1, 7)


def test_table1_stage_sizes_at_224() -> None:
    m = reslab.create_model("resnet34").eval()
    with torch.no_grad():
        feats = m.forward_features(torch.randn(1, 3, 224, 224))
    assert [tuple(f.shape[1:]) for f in feats.values()] == [
        (64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)
    ]


def test_he_init_and_bn_init() -> None:
    torch.manual_seed(0)
    m = reslab.create_model("resnet50")
    conv = m.layer3[0].conv2  # 3x3, 256 -> 256: 589,824 weights
    expected = math.sqrt(2.0 / (3 * 3 * conv.out_channels))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert conv.weight.mean().abs().item() < 0.01 * expected
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            assert torch.all(mod.weight == 1) and torch.all(mod.bias == 0)


@pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet34", "resnet50", "plain50"])
def test_bn_after_every_conv(name: str) -> None:
    mods = [m for m in reslab.create_model(name).modules()
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    assert len(convs) * 2 == len(mods)
    for i in convs:
        assert isinstance(mods[i + 1], nn.BatchNorm2d)
        assert mods[i + 1].num_features == mods[i].out_channels
        assert mods[i].bias is None


def test_plain_block_has_no_shortcut() -> None:
    for name in ("plain20", "plain34", "plain50"):
        m = reslab.create_model(name)
        blocks = [b for b in m.modules() if isinstance(b, BasicBlock | Bottleneck)]
        assert blocks and all(b.plain and b.shortcut is None and b.downsample is None
                              for b in blocks)
    block = reslab.create_model("plain20").layer2[1].eval()
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        assert torch.equal(block(x), torch.relu(block.residual(x)))


def test_option_a_zero_pads_and_subsamples() -> None:
    sc = ZeroPadShortcut(16, 32, 2)
    x = torch.randn(2, 16, 8, 8)
    y = sc(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.all(y[:, 16:] == 0)
    assert not list(sc.parameters())
    block = reslab.create_model("resnet20").layer2[0].eval()
    assert isinstance(block.shortcut, ZeroPadShortcut)
    with torch.no_grad():
        assert torch.allclose(block(x), torch.relu(block.residual(x) + y))


def test_option_b_projects_only_where_dims_change() -> None:
    m = reslab.create_model("resnet34", shortcut="B")
    for stage in ("layer1", "layer2", "layer3", "layer4"):
        for j, block in enumerate(getattr(m, stage)):
            changes = j == 0 and stage != "layer1"
            assert (block.downsample is not None) == changes
            if not changes:
                assert isinstance(block.shortcut, nn.Identity)
    # ResNet-50: layer1's first block goes 64 -> 256 channels, so it projects too.
    m50 = reslab.create_model("resnet50")
    assert m50.layer1[0].downsample is not None and m50.layer1[1].downsample is None


def test_option_c_projects_everywhere() -> None:
    m = reslab.create_model("resnet34", shortcut="C")
    blocks = [b for b in m.modules() if isinstance(b, BasicBlock)]
    assert all(b.downsample is not None for b in blocks)


def test_stride_placement() -> None:
    paper = reslab.create_model("resnet50")
    tv = reslab.create_model("resnet50", stride_in_1x1=False)
    for stage in ("layer2", "layer3", "layer4"):
        assert getattr(paper, stage)[0].conv1.stride == (2, 2)
        assert getattr(paper, stage)[0].conv2.stride == (1, 1)
        assert getattr(tv, stage)[0].conv1.stride == (1, 1)
        assert getattr(tv, stage)[0].conv2.stride == (2, 2)
    assert count_parameters(paper) == count_parameters(tv)


def test_residual_addition_stays_fp32_under_bf16_autocast():
    """The precision study's fix: under bf16 autocast F(x) + shortcut(x) is summed in fp32
    (the residual stream stays fp32); plain blocks and fp32 runs are unchanged."""
    torch.manual_seed(0)
    block = reslab.create_model("resnet8").layer2[0].eval()  # option A, stride 2, 16 -> 32
    x = torch.randn(2, 16, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = block(x)
        residual = block.residual(x)
    assert y.dtype == torch.float32 and residual.dtype == torch.bfloat16
    expect = torch.relu(residual.float() + block.shortcut(x).float())
    assert torch.equal(y, expect)
    y32 = block(x)  # fp32: the plain sum, bit for bit
    assert torch.equal(y32, torch.relu(block.residual(x) + block.shortcut(x)))
    plain = reslab.create_model("plain8").layer2[0].eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert plain(x).dtype == torch.bfloat16


def _reference_option_a(x: torch.Tensor, out_channels: int, stride: int) -> torch.Tensor:
    """Option A as autograd differentiates it (strided slice, zero pad)."""
    x = x[:, :, ::stride, ::stride]
    return nn.functional.pad(x, (0, 0, 0, 0, 0, out_channels - x.shape[1]))


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_option_a_and_pool_keep_layout_and_values(channels_last: bool,
                                                          dtype: torch.dtype) -> None:
    """Option A and the global pool in training: the same values and gradients as
    autograd's slice/pad and mean, bit for bit, but gradients in the input's memory format
    (autograd's are NCHW, which sends a channels_last net down slow mixed-layout kernels,
    docs/cpu-profile.md)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 16, 8, 8).to(dtype).contiguous(memory_format=fmt)
    g = torch.randn(4, 32, 4, 4).to(dtype).contiguous(memory_format=fmt)
    sc, pool = ZeroPadShortcut(16, 32, 2).train(), reslab.models.network.GlobalAvgPool().train()
    for ours, reference, grad in ((sc, lambda t: _reference_option_a(t, 32, 2), g),
                                  (pool, lambda t: t.mean((2, 3), keepdim=True),
                                   torch.randn(4, 16, 1, 1).to(dtype))):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(a), reference(b)
        assert torch.equal(ya, yb) and ya.is_contiguous(memory_format=fmt)
        # autograd.grad: the gradients as the backward passes them on (a leaf's .grad would
        # be copied into the leaf's layout)
        (ga,), (gb,) = torch.autograd.grad(ya, a, grad), torch.autograd.grad(yb, b, grad)
        assert torch.equal(ga, gb)
        assert ga.is_contiguous(memory_format=fmt)
        if channels_last:  # what the hand-written backward is for
            assert not gb.is_contiguous(memory_format=torch.channels_last)


def test_resnet20_training_step_equals_autograd_reference(monkeypatch) -> None:
    """A bf16 channels_last training step of ResNet-20 gives bit-identical gradients with
    reslab's option A and pool as with autograd's own (earlier versions')."""
    x = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,))

    def grads() -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = reslab.create_model("resnet20").to(memory_format=torch.channels_last).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return [loss.detach()] + [p.grad for p in model.parameters()]

    ours = grads()
    monkeypatch.setattr(ZeroPadShortcut, "forward",
                        lambda self, t: _reference_option_a(t, self.out_channels, self.stride))
    monkeypatch.setattr(reslab.models.network.GlobalAvgPool, "forward",
                        nn.AdaptiveAvgPool2d.forward)
    assert all(torch.equal(a, b) for a, b in zip(ours, grads(), strict=True))
