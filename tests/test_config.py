"""The run config: typed and frozen, the recipes applied by the library, the CLI and Python
building the same run, validation before any data is read, resume settings."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from reslab.cli import build_parser
from reslab.cli.train import config_from_args
from reslab.errors import ReslabError
from reslab.train.recipes import TrainConfig
from reslab.train.trainer import train


def cli_config(*flags: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *flags]))


def test_no_untyped_field_and_frozen():
    hints = typing.get_type_hints(TrainConfig)
    assert not [name for name, t in hints.items() if t is dict or typing.get_origin(t) is dict]
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_cli_and_python_build_equal_cifar_runs():
    flags = ["--model", "resnet56", "--data", "synthetic:64:32", "--iterations", "500",
             "--milestones", "250", "400", "--seed", "3", "--out", "runs/x"]
    py = TrainConfig.cifar(model="resnet56", data="synthetic:64:32", iterations=500,
                           milestones=(250, 400), seed=3, out="runs/x")
    assert cli_config(*flags) == py
    assert cli_config() == TrainConfig.cifar() == TrainConfig()
    assert (py.batch_size, py.lr_policy, py.pad) == (128, "step", 4)


def test_cli_and_python_build_equal_imagenet_runs():
    flags = ["--recipe", "imagenet", "--model", "resnet18", "--data", "/im", "--scale", "40",
             "56", "--crop", "32", "--test-resize", "36", "--workers", "0"]
    py = TrainConfig.imagenet(model="resnet18", data="/im", scale=(40, 56), crop=32,
                              test_resize=36, workers=0)
    assert cli_config(*flags) == py
    # The recipe's defaults come from the library, for Python users too.
    assert TrainConfig(recipe="imagenet") == TrainConfig.imagenet()
    assert (py.batch_size, py.iterations, py.lr_policy, py.eval_batch_size) == (
        256, 600_000, "plateau", 100)


@pytest.mark.parametrize("options, flag", [
    ({"lr": float("inf")}, "--lr"), ({"lr": float("nan")}, "--lr"), ({"lr": 0}, "--lr"),
    ({"milestones": (-3, 0)}, "--milestones"), ({"milestones": (10, 5)}, "--milestones"),
    ({"batch_size": 0}, "--batch-size"), ({"crop": 32}, "--recipe imagenet"),
    ({"recipe": "imagenet", "crop": 300}, "--crop"), ({"momentum": 1.0}, "--momentum"),
    ({"epochs": float("inf")}, "--epochs"), ({"recipe": "svhn"}, "--recipe"),
])
def test_bad_values_are_refused_when_built(options, flag):
    with pytest.raises(ReslabError, match=flag.replace("-", r"\-")):
        TrainConfig(**options)


def test_bad_config_is_refused_before_any_data_is_read(tmp_path):
    # The config refuses itself; a bad --out is refused by the run folder before loading.
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReslabError, match="is a file"):
        train(TrainConfig(data=str(tmp_path / "does-not-exist"), out=str(tmp_path / "file")))


def test_round_trip_and_older_layout():
    cfg = TrainConfig.imagenet(scale=(40, 56), crop=32, test_resize=36, milestones=(5, 9))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    old = {**TrainConfig.imagenet().to_dict(), "extra": {"crop": 32, "scale": [40, 56],
                                                          "test_resize": 36}}
    for key in ("crop", "scale", "test_resize"):
        del old[key]
    assert TrainConfig.from_dict(old).crop == 32
    with pytest.raises(ReslabError, match="unknown training options"):
        TrainConfig.from_dict({"colour": "red"})


def test_changes_that_a_resume_refuses():
    a = TrainConfig(model="resnet20", iterations=100)
    assert a.changes_from(dataclasses.replace(a, iterations=200, device="cpu")) == {}
    assert set(a.changes_from(dataclasses.replace(a, lr=0.2, seed=1))) == {"lr", "seed"}
