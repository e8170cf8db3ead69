"""Fixtures shared by the trainer's tests."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
import torch

from reslab.train import sources


@pytest.fixture
def sigterm_at_batch(monkeypatch) -> Callable[..., None]:
    """`sigterm_at_batch(i, poison=False)`: the process gets SIGTERM while TensorSource
    fetches batch i (as from `kill` or a scheduler's preemption); with poison the batch
    also turns to NaN, so the loss of that very iteration is not finite.
    `sigterm_at_batch(None)` restores the plain TensorSource."""
    original = sources.TensorSource.batch

    def arm(iteration: int | None, poison: bool = False) -> None:
        if iteration is None:
            monkeypatch.setattr(sources.TensorSource, "batch", original)
            return

        def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, y = original(self, i)
            if i == iteration:
                os.kill(os.getpid(), signal.SIGTERM)
                if poison:
                    x = x * float("nan")
            return x, y

        monkeypatch.setattr(sources.TensorSource, "batch", batch)

    return arm
