"""Publishing trained weights into the registry: a checkpoint -> a weights file + an entry.

`publish` reads a reslab checkpoint (`Checkpoint.load`), writes its network, training
mean, classes and testing recipe as a safetensors file (`weights.weights_file_bytes`),
measures that very file's test error with reslab's evaluation path (`inference.load_model`,
then the recipe's protocol: CIFAR's single original view, Sec. 4.2, or ImageNet's centre
crop, Sec. 3.4) in fp32, and only then writes the file and its entry into the registry's
folder (`registry.json`, see docs/weights.md). What the checkpoint's run recorded beside it
(`run.json`: command, machine, milestones, precision) fills the rest of the entry.

    reslab weights publish RUN/last.pt --name cifar10-jpeg75 --data PATH
    python -m reslab.models.publish RUN/last.pt --name cifar10-jpeg75 --data PATH
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from reslab.atomic_write import atomic_write_bytes, atomic_write_json
from reslab.errors import ReslabError
from reslab.models.weights import (
    REGISTRY_FILE,
    REGISTRY_FORMAT,
    WeightsEntry,
    check_name,
    read_registry,
    weights_dir,
    weights_file_bytes,
)

#: The training settings an entry's `recipe` records (TrainConfig's names).
RECIPE_KEYS = ("recipe", "batch_size", "lr", "momentum", "weight_decay", "milestones", "gamma",
               "lr_policy", "warmup", "pad", "mean", "scale", "crop", "test_resize",
               "lighting", "val_split", "seed", "precision")


def _run_json(checkpoint: Path) -> dict[str, Any]:
    """The run.json beside the checkpoint ({} if there is none or it cannot be read)."""
    try:
        info = json.loads((checkpoint.parent / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def _file_sha256(path: str) -> str | None:
    if not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source(spec: str) -> dict[str, Any]:
    """A data spec as an entry records it: a file's or folder's name (and a file's sha256),
    not a local path; a name such as cifar10 or synthetic:N:M as it is."""
    sha = _file_sha256(spec)
    path_like = os.sep in spec or "/" in spec or os.path.exists(spec)
    return {"source": os.path.basename(spec.rstrip("/" + os.sep)) if path_like else spec,
            **({"sha256": sha} if sha else {})}


def measure_test_error(weights: str | os.PathLike, data: str, *, data_root: str | None = None,
                       device: str = "cpu", batch_size: int = 500, crops: int = 1
                       ) -> dict[str, Any]:
    """The test error of `weights` on `data`'s test split under their recipe's protocol, in
    fp32 (free of bf16 rounding), as `reslab eval` computes it; ImageNet-recipe weights
    with `crops` 1 (centre crop) or 10 (Table 2's 10-crop testing, Sec. 3.4)."""
    import torch

    from reslab.data import load_image_data
    from reslab.data.image_root import imagenet_root
    from reslab.data.imagenet import ImageFolderDataset
    from reslab.engine import make_engine
    from reslab.inference import check_classes, cifar_scores, errors_of, imagenet_scores, load_model

    loaded = load_model(weights)
    engine = make_engine(device, "fp32")
    if crops not in (1, 10):
        raise ReslabError(f"--crops must be 1 or 10, got {crops}")
    if crops != 1 and loaded.recipe != "imagenet":
        raise ReslabError("--crops 10 is the ImageNet protocol (Sec. 3.4); CIFAR-recipe "
                          "weights are tested on the single original view (Sec. 4.2)")
    if loaded.recipe == "imagenet":
        split = ImageFolderDataset(os.path.join(imagenet_root(data), "val"))
        if set(loaded.classes) < set(split.classes):
            split.restrict(loaded.classes)
        classes, labels = split.classes, torch.tensor(split.targets)
        where = f"the val split of {os.path.basename(data.rstrip('/'))}"
        protocol = (f"{crops}-crop {loaded.crop} of shorter side {loaded.test_resize} "
                    f"(Sec. 3.4{', Table 2' if crops == 10 else ''}; reslab eval --crops "
                    f"{crops})")
        scores = imagenet_scores(loaded, split, engine, crops=crops,
                                 images_per_batch=max(1, batch_size // (20 * crops)))
    else:
        test = load_image_data(data, root=data_root, splits=("test",), progress=False)
        classes, labels, where = test.classes, test.test.labels, f"the test split of {test.name}"
        protocol = "single original view (Sec. 4.2)"
        scores = cifar_scores(loaded, test.test.images, engine, batch_size)
    if list(classes) != list(loaded.classes):
        check_classes(loaded, classes, where)  # a count that differs: ReslabError
        raise ReslabError(f"{data} has other class names than the checkpoint: publish with "
                          "the data it was trained on")
    result = errors_of(scores, labels)
    return {"top1": result.top1_error, "top5": result.top5_error,
            "wrong": round(result.top1_error * result.images), "images": result.images,
            "split": where, "protocol": protocol, "precision": engine.precision,
            "device": str(engine.device), "data": _source(data)}


def publish(checkpoint: str | os.PathLike, name: str, data: str | None = None, *,
            command: str | None = None, notes: str = "", registry: str | os.PathLike | None = None,
            replace: bool = False, data_root: str | None = None, device: str = "cpu",
            batch_size: int = 500, crops: int = 1) -> WeightsEntry:
    """Publish `checkpoint` as the entry `name:MODEL` of the registry in `registry`
    (default: the package's, or $RESLAB_WEIGHTS_DIR). `data` defaults to the run's own;
    `command` to the one its run.json records. An entry of that name is replaced only with
    `replace`. `crops`: 10 records ImageNet-recipe weights' 10-crop error (Table 2's
    protocol) instead of the centre crop's. Returns the entry written."""
    from reslab.engine import machine_info, versions
    from reslab.interop import model_from_checkpoint
    from reslab.train.checkpoint import Checkpoint

    check_name(name)
    checkpoint = Path(checkpoint)
    folder = Path(registry) if registry is not None else weights_dir()
    ckpt = Checkpoint.load(checkpoint)
    model, _ = model_from_checkpoint(ckpt.to_dict())
    spec = model.reslab_spec
    key = f"{name}:{spec.name}"
    entries = read_registry(folder)
    if any(e.key == key for e in entries) and not replace:
        raise ReslabError(f"the registry {folder} has an entry {key} already: pass --replace "
                          "to publish over it")
    run, config = _run_json(checkpoint), dict(ckpt.config or {})
    data = data or config.get("data")
    if not data:
        raise ReslabError(f"{checkpoint} does not record its data: give --data")
    command = command or run.get("command")
    if not command:
        raise ReslabError(f"no run.json with the command beside {checkpoint}: give --command")
    recipe = config.get("recipe") or ("imagenet" if spec.family == "imagenet" else "cifar")
    testing = {"recipe": recipe, "test_resize": config.get("test_resize"),
               "crop": config.get("crop")}
    blob = weights_file_bytes(model, ckpt.preprocess, list(ckpt.classes), name, testing,
                              ckpt.iteration)
    file = f"{spec.name}-{name}.safetensors"
    with tempfile.TemporaryDirectory() as tmp:  # measure the very bytes that ship
        atomic_write_bytes(Path(tmp) / file, blob)
        test_error = measure_test_error(Path(tmp) / file, data, data_root=data_root,
                                        device=device, batch_size=batch_size, crops=crops)
    trained = {k: v for k, v in (ckpt.data or {}).items() if k != "classes"}
    recipe_d = {k: config[k] for k in RECIPE_KEYS if config.get(k) is not None}
    for k in ("milestones", "precision", "world_size", "eval_split"):  # as the run resolved them
        if run.get(k) is not None:
            recipe_d[k] = run[k]
    if len(run.get("precision_history") or ()) > 1:  # e.g. fp32, then bf16 from a resume on
        recipe_d["precision_history"] = run["precision_history"]
    auto = []
    planned = int(run.get("iterations") or config.get("iterations") or 0)
    if ckpt.iteration < planned:
        auto.append(f"The run had not finished: these are the weights at iteration "
                    f"{ckpt.iteration:,} of the {planned:,} planned.")
    if checkpoint.name == "best.pt" and run.get("eval_split") == "test":
        auto.append("best.pt was chosen by its error on this same test split, an optimistic "
                    "figure; last.pt is not.")
    machine = run.get("machine") or {**machine_info(), "recorded": "at publishing"}
    entry = WeightsEntry(
        name=name, model=spec.name, file=file, sha256=hashlib.sha256(blob).hexdigest(),
        bytes=len(blob), data={**trained, **_source(str(config.get("data") or data)),
                                 "classes": len(ckpt.classes)},
        recipe=recipe_d, iterations_done=ckpt.iteration,
        iterations_planned=planned,
        test_error={**test_error, "reslab": versions()["reslab"]}, command=command,
        machine={**machine, **({"started": run["started"]} if run.get("started") else {})},
        date=time.strftime("%Y-%m-%d", time.gmtime()), checkpoint=checkpoint.name,
        notes=" ".join([*auto, notes]).strip(), folder=folder)
    atomic_write_bytes(folder / file, blob)
    kept = [e.to_dict() for e in entries if e.key != key]
    atomic_write_json(folder / REGISTRY_FILE, {"format": REGISTRY_FORMAT,
                                               "entries": [*kept, entry.to_dict()]})
    return entry


def main(argv: list[str] | None = None) -> int:
    """`python -m reslab.models.publish ...`: `reslab weights publish ...`."""
    from reslab.cli import main as cli

    return cli(["weights", "publish", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
