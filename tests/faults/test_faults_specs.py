"""Model specs read from files are checked before anything is built (issue 9): an
absurd `num_classes` in a checkpoint would otherwise allocate terabytes."""

from __future__ import annotations

import json

import pytest

import reslab.interop as interop
from reslab import create_model
from reslab.errors import ReslabError
from reslab.interop import CHECKPOINT_FORMAT, model_from_checkpoint


def _checkpoint(**spec_changes):
    model = create_model("resnet8")
    spec = {**model.reslab_spec.to_dict(), **spec_changes}
    return {"format": CHECKPOINT_FORMAT, "model_spec": spec, "model": model.state_dict()}


BAD_SPECS = [
    ({"num_classes": 10**12}, "num_classes must be an integer from 1 to 100,000, got 10000000"),
    ({"num_classes": 0}, "num_classes must be an integer"),
    ({"num_classes": True}, "num_classes must be an integer"),
    ({"num_classes": "10"}, "num_classes must be an integer"),
    ({"num_classes": 10.0}, "num_classes must be an integer"),
    ({"name": "resnet7"}, "unknown model 'resnet7'"),
    ({"name": None}, "no model name"),
    ({"name": ["resnet8"]}, "no model name"),
    ({"shortcut": "D"}, "shortcut must be A, B, C or null"),
    ({"shortcut": 1}, "shortcut must be A, B, C or null"),
    ({"residual": "false"}, "residual must be true or false"),
    ({"stride_in_1x1": 1}, "stride_in_1x1 must be true or false"),
    ({"depth": 20}, "inconsistent: resnet8 has depth 8"),
    ({"depth": 8.0}, "inconsistent: resnet8 has depth 8"),
    ({"family": "imagenet"}, "inconsistent: resnet8 has family 'cifar'"),
    ({"residual": False}, "inconsistent: resnet8 has residual True"),
]


@pytest.mark.parametrize("change, message", BAD_SPECS, ids=[str(c) for c, _ in BAD_SPECS])
def test_bad_spec_refused_before_building(monkeypatch, change, message):
    def never(spec):
        raise AssertionError(f"built a model from a bad spec: {spec}")

    monkeypatch.setattr(interop, "build", never, raising=False)
    with pytest.raises(ReslabError) as err:
        model_from_checkpoint(_checkpoint(**change))
    msg = str(err.value)
    assert msg.startswith("the checkpoint has an invalid model_spec: ") and message in msg
    assert "\n" not in msg


def test_bad_spec_in_safetensors_metadata():
    spec = {**create_model("resnet8").reslab_spec.to_dict(), "num_classes": 10**12}
    obj = {"__metadata__": {"model_spec": json.dumps(spec)}}
    with pytest.raises(ReslabError, match="num_classes must be an integer from 1 to 100,000"):
        model_from_checkpoint(obj)
    obj["__metadata__"]["model_spec"] = json.dumps(["resnet8"])
    with pytest.raises(ReslabError, match="must be a dict, got list"):
        model_from_checkpoint(obj)


def test_absurd_num_classes_by_name():
    with pytest.raises(ReslabError, match="num_classes must be an integer from 1 to 100,000"):
        create_model("resnet20", num_classes=10**12)


def test_good_spec_still_loads():
    model, ckpt = model_from_checkpoint(_checkpoint())
    assert model.reslab_spec.name == "resnet8" and model.reslab_spec.num_classes == 10
    plain = create_model("plain20", num_classes=7)
    spec = plain.reslab_spec.to_dict()
    assert spec["shortcut"] is None and spec["residual"] is False
    model, _ = model_from_checkpoint(
        {"format": CHECKPOINT_FORMAT, "model_spec": spec, "model": plain.state_dict()})
    assert model.reslab_spec == plain.reslab_spec
