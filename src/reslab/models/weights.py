"""Weights that reslab trained, by name, in torchvision's manner (docs/weights.md).

An entry is named `NAME:MODEL`, e.g. "cifar10-jpeg75:resnet20": the data it was trained
on and the network. `registry.json` in the weights folder (the package's `weights/`, or
$RESLAB_WEIGHTS_DIR) lists the entries with what they are (data, recipe, iterations done
of those planned, test error measured on the data's test split, command, machine, date);
each entry's file is a safetensors file in the same folder whose sha256 the entry records
and which is checked before anything is read from it. The file alone rebuilds the model
and its preprocessing: the state_dict, the per-pixel training mean (tensor
`preprocess.mean`, Sec. 4.2) and, as metadata strings, the model spec, the class names and
the testing recipe. Nothing is ever unpickled.

`reslab.create_model("resnet20", weights="cifar10-jpeg75")` builds a network with an
entry's weights; `reslab.inference.load_model("cifar10-jpeg75:resnet20")` (and every
`--weights` of the CLI) gives it with its preprocessing and classes. Entries are made by
`reslab weights publish` (`reslab.models.publish`): a file and a line of JSON, no code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reslab.errors import ReslabError
from reslab.models.registry import ModelSpec, build, resolve, spec_from_dict
from reslab.train.checkpoint import MAX_ITERATION

#: `format` metadata of a weights file, and of the registry's JSON.
WEIGHTS_FORMAT = "reslab-weights-v1"
REGISTRY_FORMAT = "reslab-weights-registry-v1"
REGISTRY_FILE = "registry.json"
#: A folder used instead of the package's (tests, private registries).
WEIGHTS_DIR_ENV = "RESLAB_WEIGHTS_DIR"
#: Tensors of a weights file that are not the network's.
MEAN_KEY, STD_KEY = "preprocess.mean", "preprocess.std"
CHECKPOINT_FORMAT = "reslab-checkpoint-v1"  # what `read` gives: a checkpoint's layout

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_KEY = re.compile(r"^([a-z0-9][a-z0-9-]*):((?:cifar_)?(?:resnet|plain)\d+)$", re.IGNORECASE)


def weights_dir() -> Path:
    """Where the registry lives: $RESLAB_WEIGHTS_DIR if set, else the package's weights/."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "weights"


def check_name(name: str) -> str:
    """A weights name: lower-case letters, digits and dashes (e.g. cifar10-jpeg75)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ReslabError(f"weights name {name!r} must be lower-case letters, digits and "
                          "dashes, e.g. cifar10-jpeg75")
    return name


def is_weights_name(text: str | os.PathLike) -> bool:
    """True for a registry name `NAME:MODEL` (e.g. cifar10-jpeg75:resnet20)."""
    return isinstance(text, str) and _KEY.match(text) is not None


@dataclass(frozen=True)
class WeightsEntry:
    """One entry of the registry: what the weights are and how they were made."""

    name: str  # the data and recipe, e.g. "cifar10-jpeg75"
    model: str  # canonical network name, e.g. "resnet20"
    file: str  # in the registry's folder
    sha256: str
    bytes: int
    data: dict[str, Any]  # what it was trained on
    recipe: dict[str, Any]  # how (batch, lr, milestones, precision, ...)
    iterations_done: int
    iterations_planned: int
    test_error: dict[str, Any]  # top1, top5, wrong, images, split, protocol, precision
    command: str
    machine: dict[str, Any]
    date: str  # of publishing (UTC)
    checkpoint: str = ""  # which file of the run (last.pt, best.pt, ...)
    notes: str = ""
    folder: Path = field(default=Path("."), compare=False, repr=False)

    @property
    def key(self) -> str:
        return f"{self.name}:{self.model}"

    @property
    def path(self) -> Path:
        return self.folder / self.file

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["folder"]
        return d

    @classmethod
    def from_dict(cls, d: Any, folder: Path, where: str) -> WeightsEntry:
        """An entry read from registry.json, its fields' types checked."""
        if not isinstance(d, dict):
            raise ReslabError(f"{where} is not an object")
        types = {"name": str, "model": str, "file": str, "sha256": str, "bytes": int,
                 "data": dict, "recipe": dict, "iterations_done": int,
                 "iterations_planned": int, "test_error": dict, "command": str,
                 "machine": dict, "date": str, "checkpoint": str, "notes": str}
        optional = {"checkpoint", "notes"}
        for k, t in types.items():
            if (k in d or k not in optional) and not isinstance(d.get(k), t):
                why = "is missing" if k not in d else f"is not a {t.__name__}"
                raise ReslabError(f"{where}: {k!r} {why}")
        for k in ("iterations_done", "iterations_planned"):
            if not 0 <= d[k] <= MAX_ITERATION:
                raise ReslabError(f"{where}: {k!r} must be from 0 to {MAX_ITERATION:,}, got "
                                  f"{d[k]:.3g}")
        if Path(d["file"]).name != d["file"]:
            raise ReslabError(f"{where}: 'file' must be a file name in the registry's folder, "
                              f"got {d['file']!r}")
        return cls(**{k: d[k] for k in types if k in d}, folder=folder)

    def verified_bytes(self) -> bytes:
        """The file's bytes, after checking them against the recorded sha256."""
        try:
            data = self.path.read_bytes()
        except OSError as e:
            raise ReslabError(f"weights {self.key}: cannot read {self.path} "
                              f"({e.strerror or type(e).__name__}); reinstall reslab or "
                              "republish the entry") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.sha256:
            raise ReslabError(f"weights {self.key}: {self.path} has sha256 {digest[:16]}..., "
                              f"the registry records {self.sha256[:16]}...: the file is "
                              "corrupt or was changed; reinstall reslab or republish it")
        return data

    def read(self) -> dict[str, Any]:
        """The verified file as a checkpoint-layout dict (see `as_checkpoint`)."""
        tensors, meta = parse_weights_file(self.verified_bytes(), self.path)
        ckpt = as_checkpoint(tensors, meta, self.path)
        if meta.get("name") != self.name or ckpt["model_spec"].get("name") != self.model:
            raise ReslabError(f"weights {self.key}: {self.path} holds "
                              f"{meta.get('name')}:{ckpt['model_spec'].get('name')}, not "
                              f"{self.key}; republish the entry")
        return ckpt

    def preprocess(self):  # -> reslab.data.Preprocess (imported here: data is heavier)
        """The preprocessing the weights expect (the training set's per-pixel mean)."""
        from reslab.data import Preprocess

        return Preprocess.from_dict(self.read()["preprocess"])


# ----------------------------------------------------------------------------- registry


def read_registry(folder: str | os.PathLike | None = None) -> list[WeightsEntry]:
    """The entries of the registry in `folder` (default `weights_dir()`); [] if it has none."""
    folder = Path(folder) if folder is not None else weights_dir()
    path = folder / REGISTRY_FILE
    if not path.is_file():
        return []
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReslabError(f"cannot read the weights registry {path}: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != REGISTRY_FORMAT or not isinstance(
            obj.get("entries"), list):
        raise ReslabError(f"{path} is not a reslab weights registry (format "
                          f"{REGISTRY_FORMAT!r} with a list of entries)")
    return [WeightsEntry.from_dict(d, folder, f"{path} entry {i}")
            for i, d in enumerate(obj["entries"])]


def list_weights(model: str | None = None) -> list[WeightsEntry]:
    """The registry's entries, those of `model` only when given."""
    entries = read_registry()
    if model is None:
        return entries
    name = resolve(model).name
    return [e for e in entries if e.model == name]


def get_weights(weights: str, model: str | None = None) -> WeightsEntry:
    """The entry `NAME:MODEL`, or `NAME` for `model`; ReslabError naming those there are."""
    if not isinstance(weights, str):
        raise ReslabError(f"weights must be a registry name such as 'cifar10-jpeg75', got "
                          f"{type(weights).__name__}; for a file use reslab.load_weights("
                          "model, path)")
    m = _KEY.match(weights.strip())
    name, in_key = (m.group(1), m.group(2)) if m else (weights.strip(), None)
    model_name = resolve(in_key or model).name if (in_key or model) else None
    if in_key and model and resolve(model).name != model_name:
        raise ReslabError(f"weights {weights!r} are for {model_name}, not {resolve(model).name}")
    if model_name is None:
        raise ReslabError(f"weights {weights!r}: name the network too, e.g. {weights}:resnet20")
    if not _NAME.match(name.lower()):
        raise ReslabError(f"weights {weights!r} is not a registry name (NAME or NAME:MODEL, e.g. "
                          "cifar10-jpeg75); for a file use reslab.load_weights(model, path)")
    entries = read_registry()
    for e in entries:
        if e.name == name.lower() and e.model == model_name:
            return e
    have = ", ".join(e.key for e in entries) or "none yet"
    raise ReslabError(f"no weights {name.lower()}:{model_name} in the registry "
                      f"{weights_dir()} (it has: {have}); `reslab weights` lists them")


# ----------------------------------------------------------------------------- the files


def parse_weights_file(data: bytes, where: str | os.PathLike) -> tuple[dict[str, torch.Tensor],
                                                                        dict[str, str]]:
    """(tensors, metadata strings) of safetensors bytes; ReslabError if they are not."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        tensors = dict(load(data))
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ReslabError(f"cannot read {where} as safetensors: {e}") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return tensors, dict(meta) if isinstance(meta, dict) else {}


def _json_meta(meta: dict[str, str], key: str, where: str | os.PathLike) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise ReslabError(f"{where} is a reslab weights file without a valid {key!r} "
                          "metadata string: it is damaged") from None


def as_checkpoint(tensors: dict[str, torch.Tensor], meta: dict[str, str],
                  where: str | os.PathLike) -> dict[str, Any]:
    """A weights file's contents in a reslab checkpoint's layout (model_spec, model,
    preprocess, classes, iteration, config with the testing recipe), so every reader of
    checkpoints (`load_model`, `model_from_checkpoint`, `load_weights`) takes it as it is."""
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ReslabError(f"{where} is not a reslab weights file (format {WEIGHTS_FORMAT!r})")
    spec = _json_meta(meta, "model_spec", where)
    classes = _json_meta(meta, "classes", where)
    config = _json_meta(meta, "recipe", where)
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise ReslabError(f"{where}: its 'classes' metadata is not a list of names")
    if not isinstance(config, dict) or not isinstance(spec, dict):
        raise ReslabError(f"{where}: its 'model_spec' and 'recipe' metadata must be objects")
    mean = tensors.get(MEAN_KEY)
    if mean is None or not mean.is_floating_point():
        raise ReslabError(f"{where} has no float tensor {MEAN_KEY!r} (the training mean)")
    iteration = meta.get("iteration", "0")
    return {"format": CHECKPOINT_FORMAT, "model_spec": spec,
            "model": {k: v for k, v in tensors.items() if k not in (MEAN_KEY, STD_KEY)},
            "preprocess": {"mean": mean, "std": tensors.get(STD_KEY)}, "classes": classes,
            "iteration": int(iteration) if iteration.isdigit() else 0, "config": config}


def weights_file_bytes(model: nn.Module, preprocess: dict[str, torch.Tensor | None],
                       classes: list[str], name: str, recipe: dict[str, Any],
                       iteration: int) -> bytes:
    """The safetensors file of a trained `model` (one with `reslab_spec`): its state_dict,
    the mean (and std, if any) as tensors, spec, classes, testing recipe and the weights'
    name as metadata."""
    from safetensors.torch import save

    spec: ModelSpec = model.reslab_spec
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors[MEAN_KEY] = preprocess["mean"].detach().float().cpu().contiguous()
    if preprocess.get("std") is not None:
        tensors[STD_KEY] = preprocess["std"].detach().float().cpu().contiguous()
    meta = {"format": WEIGHTS_FORMAT, "name": check_name(name),
            "model_spec": json.dumps(spec.to_dict()), "classes": json.dumps(list(classes)),
            "recipe": json.dumps(recipe), "iteration": str(int(iteration))}
    return canonical_safetensors(save(tensors, metadata=meta))


def canonical_safetensors(blob: bytes) -> bytes:
    """`blob` (a safetensors file) with its JSON header's keys sorted: safetensors writes
    the metadata in a hash map's order, which differs from one call to the next, so the
    same weights would get another sha256 each time they are published. The tensors'
    bytes and offsets stay; the header is padded with spaces to 8 bytes, as safetensors
    pads it."""
    n = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8 : 8 + n]), sort_keys=True,
                        separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + blob[8 + n :]


# ----------------------------------------------------------------------------- models


def _describe(spec: ModelSpec) -> str:
    shortcut = f", shortcut {spec.shortcut}" if spec.residual else ""
    stride = "" if spec.stride_in_1x1 else ", torchvision stride"
    return f"{spec.name} ({spec.num_classes} classes{shortcut}{stride})"


def model_with_weights(name: str, weights: str, num_classes: int | None = None,
                       shortcut: str | None = None, stride_in_1x1: bool | None = None
                       ) -> nn.Module:
    """`create_model(name, ..., weights=...)`: the network with a registry entry's weights
    (checked by sha256); options given must agree with the entry's. The entry is kept as
    `model.reslab_weights` (its `preprocess()` gives the input normalisation)."""
    from reslab.interop import load_weights  # interop reads registry names through us

    entry = get_weights(weights, name)
    ckpt = entry.read()
    try:
        saved = spec_from_dict(ckpt["model_spec"])
    except ReslabError as e:
        raise ReslabError(f"weights {entry.key}: invalid model_spec: {e}") from None
    asked = resolve(name, saved.num_classes if num_classes is None else num_classes,
                    saved.shortcut if shortcut is None else shortcut,
                    saved.stride_in_1x1 if stride_in_1x1 is None else stride_in_1x1)
    if asked != saved:
        raise ReslabError(f"weights {entry.key} hold a {_describe(saved)}, not a "
                          f"{_describe(asked)}: drop the options that differ")
    model = load_weights(build(saved), ckpt)
    model.reslab_weights = entry
    return model
