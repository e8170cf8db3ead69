"""The weights registry (`reslab.models.weights`, `reslab weights publish`): a published
checkpoint loads by name through create_model and every --weights, equal to the
checkpoint's own model and scoring the error the registry records; its file is verified
by sha256 and never unpickled. The shipped entry, when there is one, scores its figure on
the CIFAR copy (docs/weights.md)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from published_weights import SYNTH, publish_tiny
from reslab import ReslabError, create_model, load_weights
from reslab.cli import main
from reslab.data import load_image_data
from reslab.inference import load_model
from reslab.interop import model_from_checkpoint, read_file
from reslab.models.publish import publish
from reslab.models.weights import (
    REGISTRY_FILE,
    WEIGHTS_DIR_ENV,
    get_weights,
    list_weights,
    read_registry,
)
from reslab.train.checkpoint import Checkpoint
from tiny_imagenet import SMALL, make_tiny_imagenet

REPO = Path(__file__).resolve().parents[1]
PACKAGE_REGISTRY = REPO / "src" / "reslab" / "weights"
CIFAR_COPY = REPO.parent / "shared" / "data" / "cifar10-jpeg75.tar.gz"
SHIPPED = "cifar10-jpeg75:resnet20"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(entry, checkpoint path) of a resnet8 trained 8 iterations, published as
    synth-test:resnet8 into a registry folder of its own."""
    tmp = tmp_path_factory.mktemp("published")
    return publish_tiny(tmp), tmp / "run" / "last.pt"


@pytest.fixture
def registry(published, monkeypatch):
    entry, _ = published
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(entry.folder))
    return entry


def test_publish_writes_the_file_and_an_entry(published):
    entry, checkpoint = published
    ckpt = Checkpoint.load(checkpoint)
    blob = entry.path.read_bytes()
    assert entry.key == "synth-test:resnet8" and entry.path.name == entry.file
    assert entry.sha256 == hashlib.sha256(blob).hexdigest() and entry.bytes == len(blob)
    assert entry.iterations_done == ckpt.iteration == 8 and entry.iterations_planned == 8
    assert entry.recipe["batch_size"] == 32 and entry.recipe["precision"] in ("fp32", "bf16")
    assert entry.data["source"] == SYNTH and entry.data["classes"] == 10
    t = entry.test_error
    assert t["images"] == 128 and t["precision"] == "fp32"
    assert t["wrong"] == round(t["top1"] * 128) and 0 <= t["top1"] <= 1
    assert entry.command and entry.machine.get("cpu") and entry.checkpoint == "last.pt"
    on_disk = json.loads((entry.folder / REGISTRY_FILE).read_text())["entries"]
    assert on_disk == [entry.to_dict()]
    assert read_registry(entry.folder) == [entry]


def test_the_file_rebuilds_model_mean_and_classes_without_unpickling(published):
    entry, checkpoint = published
    ckpt = Checkpoint.load(checkpoint)
    assert entry.path.read_bytes()[8:9] == b"{"  # safetensors: a JSON header, no pickle
    obj = read_file(entry.path)  # the file alone, no registry
    assert torch.equal(obj["preprocess"]["mean"], ckpt.preprocess["mean"])
    assert obj["classes"] == ckpt.classes and obj["config"]["recipe"] == "cifar"
    net, _ = model_from_checkpoint(obj)
    own, _ = model_from_checkpoint(ckpt.to_dict())
    for k, v in own.state_dict().items():
        assert torch.equal(net.state_dict()[k], v), k
    loaded = load_model(entry.path)
    assert loaded.recipe == "cifar" and loaded.classes == ckpt.classes


def test_create_model_by_name_equals_the_checkpoint(registry, published):
    _, checkpoint = published
    own = load_model(checkpoint)
    for weights in ("synth-test", "synth-test:resnet8"):
        model = create_model("resnet8", weights=weights).eval()
        assert model.reslab_weights == registry
        x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        with torch.no_grad():
            got = model(model.reslab_weights.preprocess()(x))
            want = own.model.eval()(own.preprocess(x))
        assert torch.equal(got, want)
    assert torch.equal(load_weights(create_model("resnet8"), "synth-test:resnet8").fc.weight,
                       own.model.fc.weight)
    assert [e.key for e in list_weights("resnet8")] == ["synth-test:resnet8"]
    assert list_weights("resnet20") == []


def test_eval_by_registry_name_gives_the_recorded_error(registry, capsys):
    capsys.readouterr()
    assert main(["eval", "--weights", "synth-test:resnet8", "--data", SYNTH, "--json",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == registry.test_error["images"]
    assert got["top1_error"] == registry.test_error["top1"]
    assert got["top5_error"] == registry.test_error["top5"]


def test_predict_export_and_responses_take_the_name(registry, tmp_path, capsys, monkeypatch):
    image = tmp_path / "x.png"
    write_png(load_image_data(SYNTH, progress=False).test.images[0], str(image))
    assert main(["predict", "--weights", "synth-test:resnet8", str(image), "--device",
                 "cpu"]) == 0
    out = tmp_path / "m.safetensors"
    assert main(["export", "--weights", "synth-test:resnet8", "--format", "safetensors",
                 "--out", str(out)]) == 0
    exported, _ = model_from_checkpoint(out)
    assert torch.equal(exported.state_dict()["fc.weight"],
                       create_model("resnet8", weights="synth-test").state_dict()["fc.weight"])
    monkeypatch.chdir(tmp_path)  # the default output name: no ':' in it
    assert main(["export", "--weights", "synth-test:resnet8", "--format", "safetensors"]) == 0
    assert (tmp_path / "synth-test-resnet8.safetensors").is_file()
    capsys.readouterr()
    assert main(["responses", "--weights", "synth-test:resnet8", "--data", SYNTH,
                 "--device", "cpu", "--json"]) == 0


def test_a_tampered_file_is_refused_in_one_line(registry, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "registry"
    shutil.copytree(registry.folder, copy)
    blob = bytearray((copy / registry.file).read_bytes())
    blob[-1] ^= 1  # one bit of the last weight
    (copy / registry.file).write_bytes(bytes(blob))
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(copy))
    with pytest.raises(ReslabError, match="sha256") as e:
        create_model("resnet8", weights="synth-test")
    assert "\n" not in str(e.value) and "synth-test:resnet8" in str(e.value)
    capsys.readouterr()
    assert main(["eval", "--weights", "synth-test:resnet8", "--data", SYNTH]) == 2
    err = capsys.readouterr().err
    assert err.startswith("reslab eval: error: ") and "sha256" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_names_and_options_that_do_not_fit_are_refused(registry):
    with pytest.raises(ReslabError, match="synth-test:resnet8"):  # lists what there is
        get_weights("nope:resnet8")
    with pytest.raises(ReslabError, match="no weights synth-test:resnet20"):
        create_model("resnet20", weights="synth-test")
    with pytest.raises(ReslabError, match="10 classes"):
        create_model("resnet8", num_classes=5, weights="synth-test")
    with pytest.raises(ReslabError, match="not resnet20"):
        create_model("resnet20", weights="synth-test:resnet8")
    with pytest.raises(ReslabError, match="load_weights"):
        create_model("resnet8", weights="/tmp/some/file.pt")
    assert create_model("resnet8", shortcut="A", weights="synth-test").reslab_spec.shortcut == "A"


def test_publish_refuses_an_existing_entry_and_bad_names(published, tmp_path):
    entry, checkpoint = published
    with pytest.raises(ReslabError, match="--replace"):
        publish(checkpoint, "synth-test", SYNTH, registry=entry.folder)
    with pytest.raises(ReslabError, match="lower-case"):
        publish(checkpoint, "Synth:Test", SYNTH, registry=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing written


def test_reslab_weights_lists_and_publishes(registry, published, tmp_path, capsys, monkeypatch):
    _, checkpoint = published
    capsys.readouterr()
    assert main(["weights"]) == 0
    out = capsys.readouterr().out
    assert "synth-test:resnet8" in out and "8/8" in out
    assert main(["weights", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [registry.to_dict()]
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "none"))
    assert main(["weights"]) == 0 and "no weights published" in capsys.readouterr().out
    assert main(["weights", "publish", str(checkpoint), "--name", "again", "--data", SYNTH,
                 "--registry", str(tmp_path / "r"), "--command", "reslab train ..."]) == 0
    again = read_registry(tmp_path / "r")
    capsys.readouterr()
    assert main(["weights", "publish", str(tmp_path / "no.pt"), "--name", "x"]) == 2
    assert capsys.readouterr().err.startswith("reslab weights: error: checkpoint not found")
    assert [e.key for e in again] == ["again:resnet8"] and again[0].command == "reslab train ..."
    assert again[0].test_error == registry.test_error  # the same weights, the same figure


def test_imagenet_weights_record_their_crop_protocol(tmp_path, capsys, monkeypatch, published):
    root = make_tiny_imagenet(tmp_path / "tiny")
    run = tmp_path / "run"
    assert main(["train", "--model", "resnet18", "--recipe", "imagenet", "--data", str(root),
                 "--batch-size", "8", "--workers", "0", "--device", "cpu", "--no-progress",
                 "--iterations", "2", "--out", str(run), *SMALL]) == 0
    entry = publish(run / "last.pt", "tiny", str(root), registry=tmp_path / "r")
    assert entry.test_error["protocol"].startswith("1-crop 32 of shorter side 36")
    capsys.readouterr()
    assert main(["eval", "--weights", str(entry.path), "--data", str(root), "--json",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["images"] == entry.test_error["images"] == 9
    assert got["top1_error"] == entry.test_error["top1"]
    # Table 2's protocol recorded (issue 23): `reslab eval --crops 10` by name gives it
    ten = publish(run / "last.pt", "tiny", str(root), registry=tmp_path / "r10", crops=10)
    assert ten.test_error["protocol"].startswith("10-crop 32 of shorter side 36")
    assert "--crops 10" in ten.test_error["protocol"]
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "r10"))
    capsys.readouterr()
    assert main(["eval", "--weights", "tiny:resnet18", "--crops", "10", "--data", str(root),
                 "--json", "--device", "cpu", "--precision", "fp32"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert (got["top1_error"], got["images"]) == (ten.test_error["top1"], 9)
    with pytest.raises(ReslabError, match="ImageNet protocol"):
        publish(published[1], "c", SYNTH, registry=tmp_path / "c", crops=10)


def _shipped():
    if not any(e.key == SHIPPED for e in read_registry(PACKAGE_REGISTRY)):
        pytest.skip(f"the package has no {SHIPPED} entry yet")
    if not CIFAR_COPY.is_file():
        pytest.skip(f"no CIFAR copy at {CIFAR_COPY}")


def test_shipped_weights_score_the_registry_figure(monkeypatch):
    """Acceptance (issue 15): the shipped ResNet-20 from create_model scores, on the CIFAR
    copy's test split in fp32, the error its entry records (up to one image of 10,000:
    fp32 convolutions round differently on other CPUs); torch.hub's is the same model
    (same weights, same outputs). `reslab eval` by name is the tiny entry's test above."""
    _shipped()
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    entry = get_weights(SHIPPED)
    sha = entry.test_error.get("data", {}).get("sha256")
    if sha and sha != hashlib.sha256(CIFAR_COPY.read_bytes()).hexdigest():
        pytest.skip(f"{CIFAR_COPY} is another copy than the one {SHIPPED} was measured on")
    data = load_image_data(str(CIFAR_COPY), splits=("test",), progress=False)
    model = create_model("resnet20", weights="cifar10-jpeg75").eval()
    hub = torch.hub.load(str(REPO), "resnet20", source="local", weights="cifar10-jpeg75").eval()
    preprocess = model.reslab_weights.preprocess()
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(data.test), 1000):
            x, y = preprocess(data.test.images[i:i + 1000]), data.test.labels[i:i + 1000]
            logits = model(x)
            wrong += int((logits.argmax(1) != y).sum())
            if i == 0:
                assert torch.equal(hub(hub.reslab_weights.preprocess()(
                    data.test.images[:1000])), logits)
    assert len(data.test) == entry.test_error["images"]
    assert abs(wrong - entry.test_error["wrong"]) <= 1, (wrong, entry.test_error)
