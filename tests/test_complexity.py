"""Multiply-adds of Table 1 and the `reslab info` view."""

from __future__ import annotations

import pytest

import reslab
from reslab.analysis.complexity import count_multiply_adds, stage_table
from reslab.cli import main

TABLE1_GFLOPS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6,
                 "resnet152": 11.3, "plain34": 3.6}


@pytest.mark.parametrize("name", sorted(TABLE1_GFLOPS))
def test_table1_multiply_adds(name: str) -> None:
    macs = count_multiply_adds(reslab.create_model(name), 224)
    assert macs / 1e9 == pytest.approx(TABLE1_GFLOPS[name], rel=0.03)


def test_torchvision_stride_resnet50_is_4_1_gflops() -> None:
    macs = count_multiply_adds(reslab.create_model("resnet50", stride_in_1x1=False), 224)
    assert macs / 1e9 == pytest.approx(4.1, rel=0.03)


def test_stage_table_like_table1() -> None:
    rows = stage_table(reslab.create_model("resnet18"), 224)
    assert [r.paper_name for r in rows] == ["conv1", "conv2_x", "conv3_x", "conv4_x",
                                            "conv5_x", "fc"]
    assert [r.output_size for r in rows] == [(112, 112), (56, 56), (28, 28), (14, 14),
                                             (7, 7), (1, 1)]
    assert "max pool" in rows[1].blocks and "max pool" not in rows[0].blocks


def test_info_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "resnet34"]) == 0
    out = capsys.readouterr().out
    for size in ("112x112", "56x56", "28x28", "14x14", "7x7"):
        assert size in out
    assert "21,797,672" in out
    assert "3.6" in out


def test_info_cli_cifar(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "resnet20"]) == 0
    out = capsys.readouterr().out
    assert "269,722" in out and "32x32" in out and "8x8" in out
