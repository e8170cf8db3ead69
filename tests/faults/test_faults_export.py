"""`reslab export --out FOLDER`: one clear line and exit status 2, not a traceback (issue 9)."""

from __future__ import annotations

import pytest
import torch

from reslab import create_model
from reslab.cli import main
from reslab.errors import ReslabError
from reslab.interop import export_model


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(create_model("resnet8").state_dict(), path)
    return path


@pytest.mark.parametrize("fmt, suffix", [("safetensors", ".safetensors"),
                                         ("torchscript", ".torchscript.pt")])
def test_cli_export_out_is_a_folder(tmp_path, weights, capsys, fmt, suffix):
    out = tmp_path / "exports"
    out.mkdir()
    rc = main(["export", "resnet8", "--weights", str(weights), "--format", fmt, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err == (f"reslab export: error: --out {out} is a folder: give the output file, "
                   f"e.g. --out {out / ('w' + suffix)}\n")
    assert list(out.iterdir()) == []


def test_export_model_to_a_folder(tmp_path):
    with pytest.raises(ReslabError, match=r"is a folder: export to a file, e\.g\. .*model\.onnx"):
        export_model(create_model("resnet8"), tmp_path, "onnx", 32)
    assert list(tmp_path.iterdir()) == []
