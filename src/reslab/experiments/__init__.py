"""The paper's experiments, one command each (`reslab reproduce`): CIFAR-10 (Figures 1,
6, 7, Table 6, the shortcut options), ImageNet (Tables 2-5, Figure 4) and detection
(Tables 7-8).

An experiment is a module with `DESCRIPTION`, `plan(settings) -> [RunSpec]` (the training
runs), `report(settings, outcomes, data) -> Report` (figures, tables, findings) and, for
ImageNet, `RECIPE = "imagenet"`; a detection table (`RECIPE = "detection"`) also has
`data_info(settings)` and its own `write_outputs`. `reproduce` loads a CIFAR data set once
(an ImageNet folder or detection data is read by each run), runs the sweep (skipping
finished runs, resuming unfinished ones) and writes results.json and report.md into the
output folder.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from reslab.data import load_image_data
from reslab.errors import ReslabError
from reslab.experiments.imagenet import folder_info
from reslab.experiments.report import write_outputs
from reslab.experiments.sweep import Settings, SweepInterrupted, is_main_process, run_sweep
from reslab.models.registry import resolve

#: experiment name -> module under reslab.experiments.
EXPERIMENTS = ("figure1", "figure6", "table6", "figure7", "shortcuts", "precision", "table2",
               "figure4", "table3", "table4", "table5", "table7", "table8")
IMAGENET_EXPERIMENTS = ("table2", "figure4", "table3", "table4", "table5")
DETECTION_EXPERIMENTS = ("table7", "table8")

__all__ = ["DETECTION_EXPERIMENTS", "EXPERIMENTS", "IMAGENET_EXPERIMENTS", "Outcome", "Settings",
           "describe", "reproduce"]


@dataclass
class Outcome:
    """How `reproduce` ended: "finished" (report written) or "interrupted"."""

    status: str
    report: Path | None = None
    message: str = ""
    signal: int | None = None  # the stop signal of an interrupted sweep (SIGINT, SIGTERM)


def _module(name: str):
    if name not in EXPERIMENTS:
        raise ReslabError(f"unknown experiment {name!r}: one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"reslab.experiments.{name}")


def describe(name: str) -> str:
    return _module(name).DESCRIPTION


def reproduce(name: str, s: Settings) -> Outcome:
    """Run experiment `name` with settings `s` and write its outputs into `s.out`."""
    module = _module(name)
    s.recipe = getattr(module, "RECIPE", "cifar")
    s.validate()
    for m in s.models or [] if s.recipe == "cifar" else []:
        if resolve(m).family != "cifar":
            raise ReslabError(f"--models: {m} is an ImageNet net; the CIFAR experiments use "
                              "CIFAR nets (resnetN / plainN with N = 6n+2)")
    started = time.time()
    runs = module.plan(s)
    if not runs:
        raise ReslabError(f"--models {','.join(s.models or [])} names none of {name}'s runs")
    if s.recipe == "imagenet":
        data = folder_info(s)
    elif s.recipe == "detection":  # Tables 7-8: each run opens its splits
        data = module.data_info(s)
    else:
        data = load_image_data(s.data, root=s.data_root, progress=s.progress,
                               skip_corrupt=s.skip_corrupt)
    try:
        outcomes = run_sweep(runs, data if s.recipe == "cifar" else None, jobs=s.jobs)
    except SweepInterrupted as e:
        return Outcome("interrupted", None, f"{e}. Re-run the same command to continue "
                       "(finished runs are reused)", e.signum)
    if not is_main_process():  # under torchrun, rank 0 evaluates and reports
        return Outcome("finished", None)
    report = module.report(s, outcomes, data)
    path = getattr(module, "write_outputs", write_outputs)(name, s, outcomes, data, report,
                                                           started)
    return Outcome("finished", path)
