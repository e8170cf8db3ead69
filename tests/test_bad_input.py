"""User errors raise ReslabError saying what to do; the CLI prints one line, exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import reslab
from reslab.cli import main
from reslab.errors import ReslabError


def test_unknown_name_lists_close_names() -> None:
    with pytest.raises(ReslabError, match="resnet50") as e:
        reslab.create_model("resnt50")
    assert "Did you mean" in str(e.value)
    with pytest.raises(ReslabError, match="unknown model"):
        reslab.create_model("vgg19")


def test_depth_not_6n_plus_2() -> None:
    with pytest.raises(ReslabError, match="6n\\+2"):
        reslab.create_model("resnet21")


def test_wrong_input_channels() -> None:
    m = reslab.create_model("resnet20")
    with pytest.raises(ReslabError, match="N, 3, H, W"):
        m(torch.randn(2, 1, 32, 32))
    with pytest.raises(ReslabError):
        m(torch.randn(3, 32, 32))


def test_weights_of_another_architecture(tmp_path: Path) -> None:
    torch.save(reslab.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(ReslabError, match="missing keys.*layer1.2"):
        reslab.load_weights(reslab.create_model("resnet34"), tmp_path / "r18.pth")


def test_shortcut_for_plain_net() -> None:
    with pytest.raises(ReslabError, match="plain"):
        reslab.create_model("plain34", shortcut="B")
    with pytest.raises(ReslabError, match="shortcut"):
        reslab.create_model("resnet34", shortcut="D")


@pytest.mark.parametrize("argv", [
    ["info", "resnt50"],
    ["info", "resnet21"],
    ["info", "plain20", "--shortcut", "A"],
    ["info", "resnet20", "--input", "0"],
])
def test_cli_one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"reslab {argv[0]}: error:")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
