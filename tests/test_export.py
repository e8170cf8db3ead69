"""Models out to the ecosystem: ONNX (onnxruntime), TorchScript, safetensors; API and CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import reslab
from reslab.cli import main
from reslab.errors import ReslabError
from reslab.interop import export_model, load_weights, model_from_checkpoint


@pytest.fixture(scope="module")
def resnet20() -> torch.nn.Module:
    torch.manual_seed(0)
    m = reslab.create_model("resnet20")
    with torch.no_grad():  # non-trivial BN so equality means something
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_var.uniform_(0.5, 1.5)
                mod.running_mean.normal_(0, 0.1)
    return m.eval()


def _ort(path: Path, x: torch.Tensor) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def test_onnx_dynamic_batch(tmp_path: Path, resnet20: torch.nn.Module) -> None:
    pytest.importorskip("onnxscript")
    path = export_model(resnet20, tmp_path / "r20.onnx", "onnx", 32)
    for n in (1, 5):  # exported with batch 2
        x = torch.randn(n, 3, 32, 32)
        with torch.no_grad():
            np.testing.assert_allclose(_ort(path, x), resnet20(x).numpy(), atol=1e-4)
    assert [p.name for p in tmp_path.iterdir()] == ["r20.onnx"]  # no temp files left


def test_torchscript(tmp_path: Path, resnet20: torch.nn.Module) -> None:
    path = export_model(resnet20, tmp_path / "r20.torchscript.pt", "torchscript", 32)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(_jit_load(path)(x), resnet20(x), atol=1e-5)


def test_safetensors_round_trip(tmp_path: Path, resnet20: torch.nn.Module) -> None:
    path = export_model(resnet20, tmp_path / "r20.safetensors", "safetensors")
    x = torch.randn(2, 3, 32, 32)
    m = load_weights(reslab.create_model("resnet20").eval(), path)
    m2, ck = model_from_checkpoint(path)
    assert ck["model_spec"]["name"] == "resnet20"
    with torch.no_grad():
        assert torch.equal(m(x), resnet20(x)) and torch.equal(m2.eval()(x), resnet20(x))


def test_bad_format(tmp_path: Path, resnet20: torch.nn.Module) -> None:
    with pytest.raises(ReslabError, match="unknown export format"):
        export_model(resnet20, tmp_path / "x", "caffe", 32)


def _checkpoint(tmp_path: Path, model: torch.nn.Module) -> Path:
    path = tmp_path / "best.pt"
    torch.save({"format": "reslab-checkpoint-v1", "model_spec": model.reslab_spec.to_dict(),
                "model": model.state_dict(), "iteration": 1}, path)
    return path


def test_cli_export(tmp_path: Path, resnet20: torch.nn.Module,
                    capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxscript")
    ck = _checkpoint(tmp_path, resnet20)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = resnet20(x)
    assert main(["export", "resnet20", "--weights", str(ck), "--format", "onnx"]) == 0
    np.testing.assert_allclose(_ort(tmp_path / "best.onnx", x), ref.numpy(), atol=1e-4)
    ts = tmp_path / "out" / "m.pt"
    assert main(["export", "--weights", str(ck), "--format", "torchscript", "--out", str(ts)]) == 0
    assert torch.allclose(_jit_load(ts)(x), ref, atol=1e-5)
    assert main(["export", "auto", "--weights", str(ck), "--format", "safetensors"]) == 0
    st = tmp_path / "best.safetensors"
    with torch.no_grad():
        assert torch.equal(model_from_checkpoint(st)[0].eval()(x), ref)
    assert "wrote" in capsys.readouterr().out


def test_cli_export_plain_state_dict_infers_classes(tmp_path: Path) -> None:
    src = reslab.create_model("resnet18", num_classes=7).eval()
    torch.save(src.state_dict(), tmp_path / "r18.pth")
    out = tmp_path / "r18.safetensors"
    assert main(["export", "resnet18", "--weights", str(tmp_path / "r18.pth"),
                 "--format", "safetensors"]) == 0
    m, _ = model_from_checkpoint(out)
    assert m.reslab_spec.num_classes == 7


def test_cli_export_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(reslab.create_model("resnet18").state_dict(), tmp_path / "r18.pth")
    cases = [
        ["export", "resnet34", "--weights", str(tmp_path / "r18.pth"), "--format", "onnx"],
        ["export", "--weights", str(tmp_path / "r18.pth"), "--format", "onnx"],
        ["export", "resnet18", "--weights", str(tmp_path / "missing.pt"), "--format", "onnx"],
        ["export", "resnet21", "--weights", str(tmp_path / "r18.pth"), "--format", "onnx"],
    ]
    for argv in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("reslab export: error:") and err.count("\n") == 1
    assert not list(tmp_path.glob("*.onnx"))
