"""A tiny checkpoint trained on synthetic data, published into a registry folder of its own:
what the weights-registry and torch.hub tests load by name."""

from __future__ import annotations

from pathlib import Path

from reslab.cli import main
from reslab.models.publish import publish
from reslab.models.weights import WeightsEntry

SYNTH = "synthetic:256:128"


def train_tiny(out: Path, model: str = "resnet8", iterations: int = 8) -> Path:
    """A few iterations of `model` on SYNTH; returns the run's last.pt."""
    assert main(["train", "--model", model, "--data", SYNTH, "--out", str(out),
                 "--iterations", str(iterations), "--batch-size", "32", "--eval-every",
                 str(iterations), "--seed", "0", "--device", "cpu", "--no-progress"]) == 0
    return out / "last.pt"


def publish_tiny(tmp: Path, model: str = "resnet8", name: str = "synth-test",
                 iterations: int = 8) -> WeightsEntry:
    """Train `model` briefly and publish it as `name:model` into `tmp/registry`."""
    checkpoint = train_tiny(tmp / "run", model, iterations)
    return publish(checkpoint, name, SYNTH, registry=tmp / "registry",
                   notes="a test's tiny checkpoint")
