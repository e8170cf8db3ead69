"""The paper's CIFAR-10 experiments, one command each (`reslab reproduce`).

An experiment is a module with `DESCRIPTION`, `plan(settings) -> [RunSpec]` (the training
runs) and `report(settings, outcomes, data) -> Report` (figures, tables, findings);
`reproduce` loads the data once, runs the sweep (skipping finished runs, resuming
unfinished ones) and writes results.json and report.md into the output folder.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path

from reslab.data import load_image_data
from reslab.errors import ReslabError
from reslab.experiments.report import write_outputs
from reslab.experiments.sweep import Settings, SweepInterrupted, run_sweep
from reslab.models.registry import resolve

#: experiment name -> module under reslab.experiments.
EXPERIMENTS = ("figure1", "figure6", "table6", "figure7", "shortcuts")

__all__ = ["EXPERIMENTS", "Outcome", "Settings", "describe", "reproduce"]


@dataclass
class Outcome:
    """How `reproduce` ended: "finished" (report written) or "interrupted"."""

    status: str
    report: Path | None = None
    message: str = ""


def _module(name: str):
    if name not in EXPERIMENTS:
        raise ReslabError(f"unknown experiment {name!r}: one of {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"reslab.experiments.{name}")


def describe(name: str) -> str:
    return _module(name).DESCRIPTION


def reproduce(name: str, s: Settings) -> Outcome:
    """Run experiment `name` with settings `s` and write its outputs into `s.out`."""
    module = _module(name)
    s.validate()
    for m in s.models or []:
        if resolve(m).family != "cifar":
            raise ReslabError(f"--models: {m} is an ImageNet net; the experiments use CIFAR "
                              "nets (resnetN / plainN with N = 6n+2)")
    started = time.time()
    runs = module.plan(s)
    data = load_image_data(s.data, root=s.data_root, progress=s.progress)
    try:
        outcomes = run_sweep(runs, data, jobs=s.jobs)
    except SweepInterrupted as e:
        return Outcome("interrupted", None, f"{e}; its checkpoint is saved. Re-run the same "
                       "command to continue (finished runs are reused).")
    report = module.report(s, outcomes, data)
    path = write_outputs(name, s, outcomes, data, report, started)
    return Outcome("finished", path)
