"""Training checkpoints: what is needed to use a model and to resume its run.

A checkpoint is a dict of tensors and plain Python values, written atomically and read
with `torch.load(..., weights_only=True)` (no pickled code is ever executed). Layout in
docs/architecture.md ("Checkpoints").
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from reslab.atomic_write import atomic_torch_save
from reslab.errors import ReslabError

FORMAT = "reslab-checkpoint-v1"


def save_checkpoint(path: str | os.PathLike, **fields: Any) -> Path:
    """Write a checkpoint atomically; `fields` are model_spec, model, preprocess, ..."""
    return atomic_torch_save(path, {"format": FORMAT, **fields})


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a reslab checkpoint safely (weights_only); ReslabError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ReslabError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or one that needs arbitrary unpickling
        raise ReslabError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ReslabError(f"{path} is not a reslab checkpoint (no format {FORMAT!r})")
    return ckpt
