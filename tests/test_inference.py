"""Weights -> model + preprocessing + protocol (`reslab.inference`), `reslab eval` on a
checkpoint's own recipe, ensembles (Table 5: the mean of the members' softmax scores)."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.io import write_png

from reslab.cli import main
from reslab.data import load_image_data
from reslab.engine import make_engine
from reslab.inference import cifar_scores, errors_of, load_model
from tiny_imagenet import SMALL, make_tiny_imagenet

SYNTH = "synthetic:256:128"


def train_cifar(out, seed, model="resnet8"):
    assert main(["train", "--model", model, "--data", SYNTH, "--out", str(out),
                 "--iterations", "8", "--batch-size", "32", "--eval-every", "8",
                 "--seed", str(seed), "--device", "cpu", "--no-progress"]) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def two_nets(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ens")
    return train_cifar(tmp / "a", 0), train_cifar(tmp / "b", 1, model="plain8")


def test_ensemble_is_the_mean_of_the_members_probabilities(two_nets, capsys):
    a, b = two_nets
    capsys.readouterr()
    assert main(["eval", "--weights", str(a), str(b), "--data", SYNTH, "--json",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["precision"] == "fp32"
    # by hand: each member's softmax over the test split, averaged, then top-1/top-5
    data = load_image_data(SYNTH, progress=False)
    engine = make_engine("cpu", "fp32")
    probs = []
    for w in (a, b):
        loaded = load_model(w)
        model = loaded.model.eval()
        with torch.no_grad():
            probs.append(model(loaded.preprocess(data.test.images)).softmax(1))
    mean = (probs[0] + probs[1]) / 2
    top1 = (mean.argmax(1) != data.test.labels).float().mean().item()
    assert got["top1_error"] == pytest.approx(top1)
    assert got["members"] == ["resnet8", "plain8"] and got["images"] == 128
    single = errors_of(cifar_scores(load_model(a), data.test.images, engine),
                       data.test.labels)
    assert single.top1_error == pytest.approx(
        (probs[0].argmax(1) != data.test.labels).float().mean().item())


def test_eval_reads_only_the_test_split(two_nets, tmp_path, capsys):
    # An image folder whose training split has a corrupt image: training would stop on
    # it, evaluation never decodes it.
    data = load_image_data(SYNTH, progress=False)
    for split, ds in (("train", data.train), ("test", data.test)):
        for i in range(20):
            d = tmp_path / "f" / split / data.classes[int(ds.labels[i])]
            d.mkdir(parents=True, exist_ok=True)
            write_png(ds.images[i], str(d / f"{i}.png"))
    for c in data.classes:  # every class in both splits
        for split in ("train", "test"):
            d = tmp_path / "f" / split / c
            if not d.exists() or not any(d.iterdir()):
                d.mkdir(parents=True, exist_ok=True)
                write_png(data.test.images[0], str(d / "pad.png"))
    bad = next((tmp_path / "f" / "train").iterdir()) / "broken.png"
    bad.write_bytes(b"not a png")
    capsys.readouterr()
    assert main(["eval", "--weights", str(two_nets[0]), "--data", str(tmp_path / "f"),
                 "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] >= 20
    assert main(["train", "--model", "resnet8", "--data", str(tmp_path / "f"), "--out",
                 str(tmp_path / "t"), "--iterations", "1", "--no-progress"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_imagenet_checkpoint_evaluates_without_recipe(tmp_path, capsys):
    root = make_tiny_imagenet(tmp_path / "tiny")
    out = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--recipe", "imagenet", "--data", str(root),
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress",
                 "--iterations", "2", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    assert main(["eval", "--weights", str(out / "last.pt"), "--data", str(root),
                 "--crops", "10", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 9
    assert main(["eval", "--weights", str(out / "last.pt"), "--data", str(root),
                 "--device", "cpu"]) == 0
    assert "1-crop 32 of shorter side 36" in capsys.readouterr().out
