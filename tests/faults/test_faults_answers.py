"""Answers never silently wrong, checkpoints that cannot hurt (issue 17, items 2 and 3):
ensemble members of another protocol or other classes, NaN/inf weights, and model specs
of absurd depth are refused on one line naming the file, before anything is scored or
built."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file
from torchvision.io import write_png

import reslab.interop as interop
import reslab.models.registry as registry
from reslab import create_model
from reslab.cli import main
from reslab.errors import ReslabError
from reslab.inference import check_ensemble, load_model
from reslab.interop import CHECKPOINT_FORMAT, export_model, model_from_checkpoint
from reslab.models.registry import resolve, spec_from_dict
from reslab.train.checkpoint import Checkpoint

SYNTH = "synthetic:256:128"
EVAL = ["--data", SYNTH, "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A reslab checkpoint of resnet8 (CIFAR recipe) after 4 iterations."""
    out = tmp_path_factory.mktemp("answers") / "run"
    assert main(["train", "--model", "resnet8", "--data", SYNTH, "--out", str(out),
                 "--iterations", "4", "--batch-size", "32", "--eval-every", "4",
                 "--device", "cpu", "--no-progress"]) == 0
    return out / "last.pt"


def _variant(trained, path, **changes):
    """A copy of the trained checkpoint with config entries, classes or weights changed."""
    ckpt = Checkpoint.load(trained)
    ckpt.config = {**ckpt.config, **changes.pop("config", {})}
    for field, value in changes.items():
        setattr(ckpt, field, value)
    ckpt.save(path)
    return path


def _imagenet_variant(trained, path, test_resize=36):
    """The same net, recorded as trained with the ImageNet recipe (crop 32 of side N)."""
    return _variant(trained, path, config={"recipe": "imagenet", "test_resize": test_resize,
                                           "crop": 32})


def _poisoned(trained, path, value=float("nan")):
    ckpt = Checkpoint.load(trained)
    ckpt.model = {k: v.clone() for k, v in ckpt.model.items()}
    ckpt.model["layer2.0.conv1.weight"][1, 2, 0, 1] = value
    ckpt.save(path)
    return path


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"reslab {command}: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------ ensembles


@pytest.mark.parametrize("imagenet_first", [False, True], ids=["cifar-first", "imagenet-first"])
def test_ensemble_of_cifar_and_imagenet_checkpoints_is_refused(trained, tmp_path, capsys,
                                                               imagenet_first):
    """Either order: once scored silently with the first member's protocol, once a
    TypeError traceback."""
    inet = _imagenet_variant(trained, tmp_path / "inet.pt")
    first, second = (inet, trained) if imagenet_first else (trained, inet)
    rc = main(["eval", "--weights", str(first), str(second), *EVAL])
    line = _one_error_line(capsys.readouterr().err, "eval")
    assert rc == 2 and f"{second} is tested with another protocol" in line
    assert "ensemble members must share it" in line


def test_ensemble_with_other_test_sizes_is_refused(trained, tmp_path):
    a = _imagenet_variant(trained, tmp_path / "a.pt", test_resize=36)
    b = _imagenet_variant(trained, tmp_path / "b.pt", test_resize=40)
    members = [load_model(a), load_model(b)]
    with pytest.raises(ReslabError, match=r"b\.pt is tested with another protocol \(ImageNet: "
                                          r"crop 32 of shorter side 40\)"):
        check_ensemble(members, [a, b])
    members[1].test_resize = 36  # what `eval --test-resize 36` does to every member
    check_ensemble(members, [a, b])


def test_ensemble_with_other_classes_is_refused(trained, tmp_path, capsys):
    other = _variant(trained, tmp_path / "other.pt", classes=[f"c{i}" for i in range(10)])
    rc = main(["eval", "--weights", str(trained), str(other), *EVAL])
    line = _one_error_line(capsys.readouterr().err, "eval")
    assert rc == 2 and f"{other} was trained on other classes" in line


def test_ensemble_of_agreeing_members_still_scores(trained, tmp_path, capsys):
    copy = _variant(trained, tmp_path / "copy.pt")
    assert main(["eval", "--weights", str(trained), str(copy), *EVAL]) == 0
    assert "resnet8 + resnet8" in capsys.readouterr().out


# ------------------------------------------------------------------------ NaN / inf weights


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_checkpoint_with_non_finite_weights_is_refused(trained, tmp_path, value):
    bad = _poisoned(trained, tmp_path / "bad.pt", value)
    with pytest.raises(ReslabError) as err:
        load_model(bad)
    msg = str(err.value)
    assert msg.startswith(f"{bad} holds non-finite weights (NaN or inf)") and "\n" not in msg
    assert "layer2.0.conv1.weight" in msg


def test_ensemble_member_with_nan_weights_is_refused(trained, tmp_path, capsys):
    """One NaN member once turned a perfect ensemble into a 66.7% one without a word."""
    bad = _poisoned(trained, tmp_path / "bad.pt")
    rc = main(["eval", "--weights", str(trained), str(bad), *EVAL])
    line = _one_error_line(capsys.readouterr().err, "eval")
    assert rc == 2 and f"{bad} holds non-finite weights" in line


def test_state_dict_and_safetensors_with_nan_are_refused(tmp_path):
    state = create_model("resnet8").state_dict()
    state["fc.weight"][0, 0] = float("nan")
    pt, st = tmp_path / "w.pt", tmp_path / "w.safetensors"
    torch.save(state, pt)
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    for path in (pt, st):
        with pytest.raises(ReslabError, match=f"^{re.escape(str(path))} holds non-finite "
                                              r"weights .*\(fc\.weight\)"):
            load_model(path, "resnet8", classes=[str(i) for i in range(10)],
                       mean=[0.5, 0.5, 0.5])


def test_checkpoint_with_a_nan_mean_is_refused(trained, tmp_path):
    ckpt = Checkpoint.load(trained)
    mean = torch.tensor(ckpt.preprocess["mean"]) if not isinstance(
        ckpt.preprocess["mean"], torch.Tensor) else ckpt.preprocess["mean"].clone()
    mean.reshape(-1)[0] = float("nan")
    bad = _variant(trained, tmp_path / "mean.pt", preprocess={**ckpt.preprocess, "mean": mean})
    with pytest.raises(ReslabError, match=f"^{re.escape(str(bad))} holds a non-finite .* "
                                          "input mean or std"):
        load_model(bad)


def test_predict_and_export_refuse_nan_weights(trained, tmp_path, capsys):
    bad = _poisoned(trained, tmp_path / "bad.pt")
    image = tmp_path / "img.png"
    write_png(torch.full((3, 32, 32), 128, dtype=torch.uint8), str(image))
    assert main(["predict", "--weights", str(bad), str(image), "--device", "cpu"]) == 2
    assert "holds non-finite weights" in _one_error_line(capsys.readouterr().err, "predict")
    out = tmp_path / "bad.safetensors"
    assert main(["export", "--weights", str(bad), "--format", "safetensors", "--out",
                 str(out)]) == 2
    assert "holds non-finite weights" in _one_error_line(capsys.readouterr().err, "export")
    assert not out.exists()


def test_export_model_refuses_a_model_with_nan_weights(tmp_path):
    model = create_model("resnet8")
    with torch.no_grad():
        model.fc.bias[1] = float("inf")
    with pytest.raises(ReslabError, match=r"the model \(resnet8\) holds non-finite weights"):
        export_model(model, tmp_path / "m.safetensors", "safetensors")
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------- absurd depths, forged specs


@pytest.fixture
def never_build(monkeypatch):
    """Fail (instead of filling memory) if anything builds a network."""
    def never(*args, **kwargs):
        raise AssertionError("built a network from an absurd spec")

    for module in (registry, interop):
        monkeypatch.setattr(module, "build", never, raising=False)
    monkeypatch.setattr(registry, "cifar_resnet", never)
    monkeypatch.setattr(registry, "imagenet_resnet", never)


@pytest.mark.parametrize("name", ["resnet600002", "plain600002", "cifar_resnet2006",
                                  "resnet" + "8" * 5000],
                         ids=["resnet600002", "plain600002", "cifar_resnet2006", "5000-digits"])
def test_create_model_refuses_absurd_depths(never_build, name):
    with pytest.raises(ReslabError, match="too deep: reslab builds nets of at most 2,000 "
                                          r"layers \(the paper's deepest has 1202\)"):
        create_model(name)


def test_paper_depths_and_headroom_still_resolve():
    assert resolve("resnet1202").depth == 1202
    assert resolve("plain1994").depth == 1994  # 6 * 332 + 2, within the bound


def test_forged_checkpoint_of_resnet600002_is_refused_before_building(trained, never_build,
                                                                      tmp_path, capsys):
    spec = {"name": "resnet600002", "family": "cifar", "depth": 600002, "residual": True,
            "num_classes": 10, "shortcut": "A", "stride_in_1x1": True}
    with pytest.raises(ReslabError, match="too deep"):
        spec_from_dict(spec)
    with pytest.raises(ReslabError, match="^the checkpoint has an invalid model_spec: "
                                          "'resnet600002' is too deep"):
        model_from_checkpoint({"format": CHECKPOINT_FORMAT, "model_spec": spec, "model": {}})
    forged = _variant(trained, tmp_path / "forged.pt", model_spec=spec)
    assert main(["eval", "--weights", str(forged), *EVAL]) == 2
    line = _one_error_line(capsys.readouterr().err, "eval")
    assert f"{forged} has an invalid model_spec" in line and "at most 2,000 layers" in line


@pytest.mark.parametrize("flags", [["--crops", "10"], ["--scales", "32", "40"],
                                   ["--test-resize", "36", "--crop", "32"]],
                         ids=["crops", "scales", "sizes"])
def test_imagenet_protocol_options_on_cifar_weights_are_refused(trained, capsys, flags):
    """They were ignored: the CIFAR protocol tests the single original view."""
    assert main(["eval", "--weights", str(trained), *flags, *EVAL]) == 2
    line = _one_error_line(capsys.readouterr().err, "eval")
    assert f"{flags[0]}" in line and "options of the ImageNet protocol" in line
