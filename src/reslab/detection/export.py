"""`reslab export` of a trained detector: TorchScript where torch.jit.script compiles it.

torchvision's FasterRCNN is exported by scripting (its transform and post-processing are
Python control flow over lists of images of any size), not by tracing. The VGG-16
detector scripts; the ResNet detectors do not, because TorchScript cannot compile
reslab's residual blocks (their fp32 residual addition, `models.blocks._combine`): that
is said in one line, and their checkpoint is what to use (`load_detector`). ONNX and
safetensors are not offered for detectors.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from reslab.atomic_write import atomic_write
from reslab.detection.inference import load_detector
from reslab.errors import ReslabError


def export_detector(weights: str | os.PathLike, out: str | os.PathLike, fmt: str) -> Path:
    """Script the detector of a `reslab detect train` checkpoint and save it at `out`
    (atomically); ReslabError in one line when the format or the detector cannot be."""
    if fmt != "torchscript":
        raise ReslabError(f"a detector exports to TorchScript only (--format torchscript), "
                          f"not {fmt}: torchvision's FasterRCNN has no {fmt} export here")
    loaded = load_detector(weights)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript's deprecation warnings
            scripted = torch.jit.script(loaded.model.eval())
    except Exception as e:  # torch.jit.frontend errors have many classes
        first = next((line.strip() for line in str(e).splitlines() if line.strip()),
                     type(e).__name__)
        raise ReslabError(
            f"{loaded.name} cannot be exported to TorchScript: torchvision's FasterRCNN is "
            f"exported by torch.jit.script, which does not compile reslab's residual blocks "
            f"({first[:120]}); use the checkpoint itself (reslab.detection.inference."
            "load_detector), or the vgg16 detector, which scripts") from None

    def save(f) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.save(scripted, f)

    return atomic_write(Path(out), save)
