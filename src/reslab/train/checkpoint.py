"""Training checkpoints: what is needed to use a model and to resume its run.

One dataclass, `Checkpoint`, with `save` and `load`; every reader uses it. On disk it is a
dict of tensors and plain Python values, written atomically and read with
`torch.load(..., weights_only=True)` (no pickled code is ever executed). Layout in
docs/architecture.md ("Checkpoints"); `load` checks every field's type before anything
uses it, so a truncated or hand-made file is one clear error, not a KeyError later.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reslab.atomic_write import atomic_torch_save
from reslab.errors import ReslabError

FORMAT = "reslab-checkpoint-v1"
#: The largest iteration a checkpoint may record: 1,000x the paper's longest schedule
#: (COCO's 320k); a larger one is a crafted or corrupted file, never a run.
MAX_ITERATION = 10**9


@dataclass
class Checkpoint:
    """A model with its preprocessing and classes, and (optionally) its run's state."""

    model_spec: dict[str, Any]  # ModelSpec.to_dict()
    model: dict[str, torch.Tensor]  # state_dict
    preprocess: dict[str, torch.Tensor | None]  # {"mean": Tensor, "std": Tensor | None}
    classes: list[str]
    iteration: int = 0
    config: dict[str, Any] | None = None  # TrainConfig.to_dict()
    optimizer: dict[str, Any] | None = None
    schedule: dict[str, Any] | None = None
    best_error: float | None = None
    interval: list[float] | None = None  # training loss sum, wrong, images since last eval
    world_size: int = 1
    data: dict[str, Any] | None = None  # identity of the training data (DataIdentity)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (the previous file stays intact if the write fails)."""
        return atomic_torch_save(path, {"format": FORMAT, **dataclasses.asdict(self)})

    def run_record(self) -> dict[str, Any]:
        """What identifies the run, keyed as its run.json records it (a resume checks it)."""
        return {"model_spec": self.model_spec, "config": self.config, "data": self.data}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **{f.name: getattr(self, f.name)
                                     for f in dataclasses.fields(self)}}

    @classmethod
    def load(cls, source: str | os.PathLike | dict[str, Any]) -> Checkpoint:
        """Read a checkpoint file safely (weights_only), or check a dict already read."""
        what = "the checkpoint"
        if isinstance(source, dict):
            obj = source
        else:
            path = Path(source)
            what = str(path)
            if not path.is_file():
                raise ReslabError(f"checkpoint not found: {path}")
            if path.stat().st_size == 0:
                raise ReslabError(f"{path} is empty (0 bytes): the write that made it did not "
                                  "finish; use best.pt or start again")
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as e:  # corrupt file, or one that needs arbitrary unpickling
                raise ReslabError(f"cannot read checkpoint {path}: {load_failure(e)}") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ReslabError(f"{what} is not a reslab checkpoint (no format {FORMAT!r})")
        return cls._checked(obj, what)

    @classmethod
    def _checked(cls, obj: dict[str, Any], what: str) -> Checkpoint:
        def need(ok: bool, field: str, expect: str) -> None:
            if not ok:
                raise ReslabError(f"{what} is not a complete reslab checkpoint: {field!r} "
                                  f"{'is missing' if field not in obj else 'is not ' + expect}")

        need(isinstance(obj.get("model_spec"), dict), "model_spec", "a dict")
        need(isinstance(obj.get("model"), dict) and all(
            isinstance(v, torch.Tensor) for v in obj["model"].values()), "model",
            "a state_dict of tensors")
        pre = obj.get("preprocess")
        need(isinstance(pre, dict) and isinstance(pre.get("mean"), torch.Tensor)
             and (pre.get("std") is None or isinstance(pre["std"], torch.Tensor)),
             "preprocess", "{'mean': Tensor, 'std': Tensor | None}")
        classes = obj.get("classes")
        need(isinstance(classes, list) and len(classes) > 0
             and all(isinstance(c, str) for c in classes), "classes", "a list of names")
        iteration = obj.get("iteration", 0)
        need(isinstance(iteration, int) and not isinstance(iteration, bool)
             and 0 <= iteration <= MAX_ITERATION, "iteration",
             f"an integer from 0 to {MAX_ITERATION:,}")
        for field in ("config", "optimizer", "schedule", "data"):
            need(obj.get(field) is None or isinstance(obj[field], dict), field, "a dict")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_failure(e: Exception) -> str:
    """One line for what `torch.load(..., weights_only=True)` raised. A pickle that carries
    code (or objects beyond tensors and plain values) is named by the global it asks for,
    with reslab's refusal; never torch's advice to re-run with weights_only=False, which
    would run that code. Other failures (a corrupt zip, EOF): their first line."""
    text = str(e).strip()
    found = _REFUSED_GLOBAL.search(text)
    if found:
        return (f"it pickles the Python global {found.group(1)}, which reslab will not load: "
                "it never unpickles code or objects, only tensors and plain values")
    if "weights_only" in text or "Weights only load failed" in text:
        return ("it pickles Python objects beyond tensors and plain values, which reslab "
                "will not load: it never unpickles code or objects")
    return (text.splitlines() or [type(e).__name__])[0][:200]


def as_recorded(value: Any) -> Any:
    """`value` as run.json records it (tuples as lists), so that a record read back from
    run.json compares equal to the values it was written from."""
    return json.loads(json.dumps(value))


def check_same_run(recorded: dict | None, data: dict, changes: dict[str, tuple[Any, Any]],
                   out: Path, *, data_flags: str, resume_command: str) -> None:
    """ReslabError unless a resume continues the recorded run: the same data (`data`, the
    identity `recorded` by its checkpoint or run.json) and no `changes` of settings (the
    config's `changes_from` the saved one). One check for every task (classification and
    detection); `data_flags` and `resume_command` name the task's flags in the message."""
    if recorded is not None and as_recorded(recorded) != as_recorded(data):
        diff = ", ".join(f"{k}: {recorded.get(k)!r} there, {data.get(k)!r} now"
                         for k in sorted(set(data) | set(recorded))
                         if recorded.get(k) != data.get(k) and k != "classes")
        raise ReslabError(f"{out} was trained on other data ({diff or 'other classes'}): "
                          f"resume with the same {data_flags}")
    if changes:
        said = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in changes.items())
        raise ReslabError(f"{out} holds a run with other settings ({said}); resume with "
                          f"the same settings (`{resume_command}` reuses them) or choose "
                          "another --out")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint at `path` as a plain dict (`Checkpoint.load(path).to_dict()`)."""
    return Checkpoint.load(path).to_dict()
