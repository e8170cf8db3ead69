"""Training a detector (Tables 7-8, Appendix A) in the classifiers' house.

`train_detector(cfg)` has the shape of `reslab.train.trainer.train`: `start_detection_run`
sets everything up (run folder checked and locked before any data is read, engine, data,
detector, optimizer, schedule, resume), then the loop: lr from the schedule, batch, step,
meter; at each log step one host sync; at each evaluation one call to the run log.

It reuses the house's pieces rather than the classification loop itself, whose batch is
one tensor and whose loss is a cross-entropy with top-k errors (sharing that loop would
need it rebuilt around a task object): `RunFolder`, `RunLog` (with the detection
record's scalars, summary line and curves), `Checkpoint` (a detector's model_spec; the
same last.pt/best.pt), the `Engine`'s autocast (bf16 on CUDA and on CPUs with native
bf16, else fp32), `StepSchedule`, `stop_requests` (Ctrl-C/SIGTERM save a checkpoint) and
the torchrun world (DDP; each rank takes every W-th image of the global mini-batch).

A resumed run ends with the same weights as an uninterrupted one: every random draw is a
function of (seed, iteration, rank): the epoch's image order, the flips, and torch's
global generator (the RPN and RoI samplers' randperm, VGG-16's dropout), seeded before
each step.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from reslab.analysis.curves import plot_detection_curves
from reslab.detection.config import DetectConfig, recorded_data_spelling
from reslab.detection.data import hflip
from reslab.detection.evaluate import evaluate_detections
from reslab.detection.inference import as_model_input, detect_dataset
from reslab.detection.models import (
    create_detector,
    detector_from_spec,
    is_detector_spec,
    weights_origin,
)
from reslab.detection.open_data import open_detection_data
from reslab.engine import Engine, machine_info, make_engine, precision_reason, versions
from reslab.errors import ReslabError
from reslab.train.checkpoint import Checkpoint, check_same_run
from reslab.train.distributed import World, all_reduce_sum, barrier, init_world
from reslab.train.run_folder import RunFolder, recorded_run
from reslab.train.runlog import RunLog, is_finite_model, read_metrics
from reslab.train.schedule import StepSchedule
from reslab.train.trainer import stop_requests, warn_precision_change

__all__ = ["DetectRunResult", "train_detector"]

#: torchvision FasterRCNN's losses: the detector's (Fast R-CNN) and the RPN's.
LOSS_KEYS = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")
#: The evaluation's numbers kept in each metrics record (evaluate_detections' keys).
METRIC_KEYS = ("map50", "map", "voc07_map50", "voc_map50", "map_small", "map_medium",
               "map_large")


@dataclass
class DetectRunResult:
    """What `train_detector` returns: where the run lives and how it ended. `best_map50` is
    the best evaluation's mAP@.5 (best.pt); `best_error` is 1 - best_map50, the value the
    checkpoint's `best_error` field holds for a detector."""

    out: Path
    iteration: int
    iterations: int
    status: str  # "finished" or "interrupted"
    last: dict | None
    best_map50: float | None
    wall_seconds: float
    signal: int | None = None  # the SIGINT/SIGTERM that stopped it (this process's)

    @property
    def best_error(self) -> float | None:
        return None if self.best_map50 is None else 1 - self.best_map50


def step_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """The seed of iteration `iteration` on `rank` (flips, samplers)."""
    return ((seed * 1_000_003 + iteration) * 64 + rank) % (2**63)


class DetectionSource:
    """Training mini-batches and the evaluation split of a detection run.

    Training uses the images with at least one (non-difficult) object, as Faster R-CNN.
    Each epoch is a permutation seeded by (seed, epoch); the mini-batch of `iteration` and
    its flips are a pure function of (seed, iteration); in a world of W ranks each rank
    takes every W-th image of the global mini-batch. Difficult (VOC) and crowd (COCO)
    boxes are left out of the training targets. With `workers` > 0 a DataLoader decodes
    the mini-batches of the coming iterations in other processes. `spelled`: the roots of
    `cfg.data` as a resumed run's data identity spells them (`recorded_data_spelling`),
    opened that way so that the splits' names and image paths, which their fingerprints
    hash, are the run's.
    """

    def __init__(self, cfg: DetectConfig, engine: Engine, world: World,
                 spelled: str | None = None) -> None:
        data = spelled or cfg.data
        self.train = open_detection_data(data, cfg.train_split, skip_bad=cfg.skip_bad)
        self.val = open_detection_data(data, cfg.val_split, skip_bad=cfg.skip_bad)
        if list(self.val.classes) != list(self.train.classes):
            raise ReslabError(f"--val-split {cfg.val_split} has other classes than "
                              f"--train-split {cfg.train_split} ({len(self.val.classes)} vs "
                              f"{len(self.train.classes)}): use splits of one data set")
        self.classes = list(self.train.classes)
        self.indices = self.train.indices_with_objects()
        if len(self.indices) < cfg.batch_size:
            raise ReslabError(f"--batch-size {cfg.batch_size} is larger than the training split "
                              f"{cfg.train_split} ({len(self.indices)} images with objects)")
        if cfg.batch_size % world.size:
            raise ReslabError(f"--batch-size {cfg.batch_size} must divide by the {world.size} "
                              "ranks")
        self.batch_size, self.seed, self.flip = cfg.batch_size, cfg.seed, cfg.flip
        self.steps_per_epoch = len(self.indices) // cfg.batch_size
        self.engine, self.world, self.workers = engine, world, cfg.workers
        self.name, self.eval_name = self.train.name, cfg.val_split
        self._epoch, self._perm = -1, torch.zeros(0, dtype=torch.long)

    def identity(self) -> dict:
        """What the run is trained on (checkpoints, run.json; compared on --resume)."""
        return {"name": self.train.name, "classes": list(self.classes),
                "train": len(self.train), "eval": len(self.val),
                "fingerprint": self.train.fingerprint(), "eval_fingerprint": self.val.fingerprint()}

    def load(self, iteration: int) -> list[tuple[torch.Tensor, dict]]:
        """This rank's images (uint8) and training targets of mini-batch `iteration`."""
        epoch, step = divmod(iteration, self.steps_per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(len(self.indices), generator=g)
            self._epoch = epoch
        picks = self._perm[step * self.batch_size : (step + 1) * self.batch_size].tolist()
        g = torch.Generator().manual_seed(step_seed(self.seed, iteration))
        flips = (torch.rand(len(picks), generator=g) < 0.5).tolist()
        out = []
        for k in range(self.world.rank, len(picks), self.world.size):
            image, target = self._readable(picks[k])
            keep = ~target["difficult"]
            target = {"boxes": target["boxes"][keep], "labels": target["labels"][keep]}
            if self.flip and flips[k]:
                image, target = hflip(image, target)
            out.append((image, target))
        return out

    def _readable(self, pick: int) -> tuple[torch.Tensor, dict]:
        """Training image `pick` (a position in `indices`) and its target; with skip_bad an
        unreadable one is warned about once and the next readable image stands in."""
        n = len(self.indices)
        for step in range(n):
            i = self.indices[(pick + step) % n]
            known_bad = i in self.train.unreadable
            image = None if known_bad else self.train.readable_image(i)
            if image is not None:
                return image, self.train.target(i)
            if not known_bad:
                warnings.warn(f"skipping unreadable training image (skip_bad): "
                              f"{self.train.unreadable[i]}; the next readable image stands in",
                              stacklevel=2)
        raise ReslabError(f"{self.name}: no training image can be read (skip_bad skipped "
                          f"all {n})")

    def batches(self, start: int, stop: int) -> Iterator[list[tuple[torch.Tensor, dict]]]:
        """The mini-batches of iterations start..stop-1, in order."""
        if self.workers == 0:
            return (self.load(i) for i in range(start, stop))
        loader = torch.utils.data.DataLoader(
            _IterationBatches(self, start, stop), batch_size=None, shuffle=False,
            num_workers=self.workers, collate_fn=_as_is, prefetch_factor=2)
        return iter(loader)

    def to_device(self, batch: list[tuple[torch.Tensor, dict]]
                  ) -> tuple[list[torch.Tensor], list[dict]]:
        device = self.engine.device
        images = as_model_input([image for image, _ in batch], device)
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for _, t in batch]
        return images, targets


class _IterationBatches(torch.utils.data.Dataset):
    """Item k: the mini-batch of iteration start + k (for DataLoader workers)."""

    def __init__(self, source: DetectionSource, start: int, stop: int) -> None:
        self.source, self.start, self.stop = source, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> list[tuple[torch.Tensor, dict]]:
        return self.source.load(self.start + k)


def _as_is(batch):  # DataLoader collate_fn: the mini-batch is already made
    return batch


class DetectionMeter:
    """Training losses since the last evaluation: sums stay on the device between log
    steps; `sync` folds them into host totals [loss, four parts, images]."""

    def __init__(self, device: torch.device, carried: list[float] | None = None) -> None:
        self.sums = torch.zeros(1 + len(LOSS_KEYS), device=device, dtype=torch.float64)
        self.pending = 0
        self.total = list(carried) if carried else [0.0] * (2 + len(LOSS_KEYS))
        self.seconds, self.images, self.mark = 0.0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor], n: int) -> None:
        values = torch.stack([loss.detach()] + [parts[k].detach() for k in LOSS_KEYS])
        self.sums += values.double() * n
        self.pending += n

    def sync(self, world: World, device: torch.device, stop: bool) -> tuple[list[float], bool]:
        """All-reduce the pending sums and the stop flag; returns ([loss sum, part sums...,
        images] of the window, any rank stopping)."""
        *sums, n, stopping = all_reduce_sum(
            [*self.sums.tolist(), float(self.pending), float(stop)], world, device)
        self.sums.zero_()
        self.pending = 0
        window = [*sums, n]
        self.total = [a + b for a, b in zip(self.total, window, strict=True)]
        now = time.perf_counter()
        self.seconds, self.images, self.mark = self.seconds + now - self.mark, self.images + n, now
        return window, stopping > 0

    def take(self) -> dict[str, float]:
        """The interval's training figures for a metrics record; starts a new interval."""
        n = max(self.total[-1], 1)
        out = {"train_loss": self.total[0] / n}
        out.update({k: v / n for k, v in zip(LOSS_KEYS, self.total[1:-1], strict=True)})
        out["images_per_sec"] = self.images / max(self.seconds, 1e-9)
        self.total, self.seconds, self.images = [0.0] * len(self.total), 0.0, 0
        return out

    def restart_clock(self) -> None:
        self.mark = time.perf_counter()


class DetectionRunLog(RunLog):
    """The run log with a detection record: losses and mAPs instead of errors."""

    scalars = ("train_loss", *LOSS_KEYS, "map50", "map", "voc07_map50", "lr", "images_per_sec")
    #: `reslab detect train` has no warm-up flag (Appendix A's recipe has no warm-up)
    divergence_hint = "Try a lower --lr (the paper's is 0.001)."

    def on_log(self, iteration: int, loss: float, error: float | None, lr: float,
               ips: float) -> None:
        if self.bar is not None:
            self.bar.update(iteration - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:g}", ips=f"{ips:.1f}")

    def plot_curves(self) -> None:
        plot_detection_curves(self.records, self.out / "curves.png", title=self.title)

    def summary(self, record: dict) -> str:
        return (f"iter {record['iteration']}: train loss {record['train_loss']:.3f} | "
                f"{record['eval_split']} mAP@.5 {_pct(record['map50'])} "
                f"mAP@[.5:.95] {_pct(record['map'])} | "
                f"{record['images_per_sec']:.1f} img/s")


def _pct(x: float | None) -> str:
    """A mAP as a percentage; n/a when the split has no object to score."""
    return "n/a" if x is None else f"{100 * x:.1f}%"


@dataclass
class DetectionRun:
    """Everything the loop needs, made by `start_detection_run`."""

    cfg: DetectConfig
    engine: Engine
    world: World
    folder: RunFolder
    source: DetectionSource
    spec: dict
    model: nn.Module
    step_model: nn.Module  # DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    schedule: StepSchedule
    iterations: int
    eval_every: int
    start: int
    best_map50: float | None
    meter: DetectionMeter
    log: DetectionRunLog
    started: float

    def checkpoint(self, iteration: int) -> Checkpoint:
        spec = self.model.reslab_spec
        return Checkpoint(
            model_spec=self.spec, model=self.model.state_dict(),
            preprocess={"mean": torch.tensor(spec.image_mean).view(3, 1, 1),
                        "std": torch.tensor(spec.image_std).view(3, 1, 1)},
            classes=list(self.source.classes), iteration=iteration, config=self.cfg.to_dict(),
            optimizer=self.optimizer.state_dict(), schedule=self.schedule.state_dict(),
            best_error=None if self.best_map50 is None else 1 - self.best_map50,
            interval=list(self.meter.total), world_size=self.world.size,
            data=self.source.identity())


def train_detector(cfg: DetectConfig) -> DetectRunResult:
    """Train the detector `cfg` describes on `cfg.data`; outputs go to `cfg.out`.

    Launched by `torchrun`, every process runs this; rank 0 writes the outputs.
    """
    run = start_detection_run(cfg)
    it, meter, log, world = run.start, run.meter, run.log, run.world
    device, stopping, status = run.engine.device, False, "interrupted"
    batches = run.source.batches(run.start, run.iterations)
    try:
        run.model.train()
        with stop_requests() as stop:
            # A world of one stops an evaluation at its next batch (the checkpoint is saved
            # without it; the resume evaluates first); under DDP ranks finish it together.
            def stopped() -> bool:
                return stop["signal"] is not None and not world.distributed

            if evaluation_pending(run):  # stopped during the evaluation at run.start
                stopping = not evaluate_and_record(run, it, run.schedule.lr(it - 1), stopped)
            while it < run.iterations and not stopping:
                lr = run.schedule.lr(it)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                images, targets = run.source.to_device(next(batches))
                torch.manual_seed(step_seed(cfg.seed, it, world.rank))  # RPN/RoI samplers
                with run.engine.autocast():
                    parts = run.step_model(images, targets)
                parts = {k: v.float() for k, v in parts.items()}
                loss = sum(parts[k] for k in LOSS_KEYS)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.optimizer.step()
                meter.add(loss, parts, len(images))
                it += 1
                # One stop path, as the classification loop's: a world of one stops at once;
                # under DDP the ranks agree at the next log step.
                stopping = stop["signal"] is not None and not world.distributed
                evaluate_now = it % run.eval_every == 0 or it == run.iterations
                if not (evaluate_now or it % cfg.log_every == 0):
                    continue
                window, agreed = meter.sync(world, device, stop["signal"] is not None)
                stopping = stopping or agreed
                loss_sum, n = window[0], window[-1]
                if not math.isfinite(loss_sum):
                    raise log.diverged(f"training loss became {loss_sum}", it)
                log.on_log(it, loss_sum / n, None, lr, n / max(meter.seconds, 1e-9))
                if evaluate_now:
                    stopping = not evaluate_and_record(run, it, lr, stopped) or stopping
            status = "finished" if it >= run.iterations and not stopping else "interrupted"
            if status == "interrupted" and log.last_saved != it:
                window, _ = meter.sync(world, device, True)  # the pending loss belongs to it
                if not (math.isfinite(window[0]) and is_finite_model(run.model)):
                    raise log.diverged("the weights or loss became non-finite", it)
                log.save_last(run.checkpoint(it))
    finally:
        del batches  # ends DataLoader workers
        run.folder.close()
    wall = time.time() - run.started
    log.close(status, it, wall, None if run.best_map50 is None else 1 - run.best_map50)
    barrier(world)
    last = log.records[-1] if log.records else None
    return DetectRunResult(Path(cfg.out), it, run.iterations, status, last, run.best_map50,
                           wall, stop["signal"])


def evaluation_pending(run: DetectionRun) -> bool:
    """Whether the resumed checkpoint is of an evaluation point whose evaluation a stop cut
    short (metrics.jsonl has no record of it): the resume makes it before training on."""
    start = run.start
    due = start > 0 and (start % run.eval_every == 0 or start == run.iterations)
    return due and not any(r["iteration"] == start for r in run.log.records)


def evaluate_and_record(run: DetectionRun, it: int, lr: float,
                        stopped: Callable[[], bool] | None = None) -> bool:
    """Detect every image of the evaluation split (ranks share it), score the detections
    (COCO metrics by pycocotools, VOC AP) and hand the record and checkpoint to the run
    log; non-finite weights are never saved. False, with nothing recorded, when `stopped()`
    turned true between two batches of images."""
    val = run.source.val
    detections = detect_dataset(run.model, val, run.engine, run.cfg.eval_batch_size, run.world,
                                stop=stopped)
    run.model.train()
    if detections is None:
        return False
    if not is_finite_model(run.model):
        raise run.log.diverged("the weights became non-finite", it)
    metrics = evaluate_detections(val, detections)
    record = {"iteration": it, **run.meter.take(),
              **{k: metrics.get(k) for k in METRIC_KEYS}, "lr": lr,
              "elapsed": time.time() - run.started, "eval_split": run.source.eval_name,
              "eval_images": metrics["images"], "per_class": metrics.get("per_class")}
    improved = run.best_map50 is None or record["map50"] > run.best_map50
    if improved:
        run.best_map50 = record["map50"]
    run.log.on_eval(record, run.checkpoint(it), improved)
    barrier(run.world)
    run.meter.restart_clock()
    return True


def start_detection_run(cfg: DetectConfig) -> DetectionRun:
    """Set a run up: lock and check the folder (before any data is read), the engine, the
    data, the detector, optimizer and schedule, and the resumed state."""
    started = time.time()
    engine = make_engine(cfg.device, cfg.precision, channels_last=False)
    world = init_world(engine.device.type)
    if world.distributed and engine.device.type == "cuda":
        engine = Engine(torch.device("cuda", world.local_rank), engine.dtype, False)
        torch.cuda.set_device(engine.device)
    out = Path(cfg.out)
    folder = RunFolder(out)
    if world.is_main:
        folder.open(cfg.resume)
    try:
        last = out / "last.pt"
        ckpt = Checkpoint.load(last) if cfg.resume and last.exists() else None
        if ckpt is not None and not is_detector_spec(ckpt.model_spec):
            raise ReslabError(f"{last} is a classifier's run ({ckpt.model_spec.get('name')}): "
                              "resume it with `reslab train --resume`, or choose another --out")
        recorded = recorded_run(out) if cfg.resume else None  # stopped before a checkpoint
        identity = ckpt.data if ckpt is not None else (recorded or {}).get("data")
        spelled = recorded_data_spelling(identity, cfg, last) if identity else None
        source = DetectionSource(cfg, engine, world, spelled)
        if ckpt is not None or recorded is not None:
            check_resumable(ckpt.run_record() if ckpt else recorded, cfg, source.identity(), out)
        if ckpt is not None:
            warn_precision_change(out, engine)
        return build_detection_run(cfg, engine, world, folder, source, ckpt, started)
    except BaseException:
        folder.close()
        raise


def check_resumable(recorded: dict, cfg: DetectConfig, data: dict, out: Path) -> None:
    """ReslabError unless `cfg` continues the `recorded` run (its checkpoint's
    `run_record()`, or the run.json of a run stopped before its first checkpoint): same
    recipe and data."""
    config = recorded.get("config")
    changes = cfg.changes_from(DetectConfig.from_dict(config)) if config is not None else {}
    check_same_run(recorded.get("data"), data, changes, out, data_flags="--data and splits",
                   resume_command="reslab detect train --resume --out DIR")


def _init_note(cfg: DetectConfig, model: nn.Module) -> str:
    """How the backbone starts, for run.json (Appendix A: ImageNet weights, BN frozen)."""
    spec = model.reslab_spec
    bn = ("no BN" if spec.backbone == "vgg16" else
          "BN frozen (FrozenBatchNorm2d, Appendix A)" if spec.frozen_bn else "BN trainable")
    if cfg.weights is None:
        return f"from scratch: no pre-trained backbone weights; {bn}"
    origin = weights_origin(cfg.weights) or {}
    what = (f"the registry entry {origin['entry']} ({origin['recipe']} recipe, sha256 "
            f"{origin['sha256'][:12]})" if "sha256" in origin else cfg.weights)
    return (f"backbone weights {what}; {bn}; top {spec.trainable_layers} stages "
            "trainable")


def build_detection_run(cfg: DetectConfig, engine: Engine, world: World, folder: RunFolder,
                        source: DetectionSource, ckpt: Checkpoint | None,
                        started: float) -> DetectionRun:
    """Detector, optimizer, schedule and the run log, from scratch or from `ckpt`."""
    iterations = cfg.iterations
    torch.manual_seed(cfg.seed)
    if ckpt is not None:  # the checkpoint holds every weight: no backbone file is read
        model = detector_from_spec(ckpt.model_spec, str(Path(cfg.out) / "last.pt"))
        model.load_state_dict(ckpt.model)
    else:
        model = create_detector(
            cfg.backbone, cfg.head, len(source.classes) + 1, cfg.weights, cfg.trainable_layers,
            cfg.min_size, cfg.max_size, anchor_sizes=cfg.anchor_sizes,
            aspect_ratios=cfg.aspect_ratios, shortcut=cfg.shortcut,
            stride_in_1x1=cfg.stride_in_1x1, **cfg.model_options())
    spec = model.reslab_spec.to_dict()
    model = engine.prepare(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    schedule = StepSchedule(cfg.lr, cfg.milestones_for(iterations), cfg.gamma)
    start, best, carried, records = 0, None, None, []
    out = Path(cfg.out)
    if ckpt is not None:
        optimizer.load_state_dict(ckpt.optimizer)
        schedule.load_state_dict(ckpt.schedule)
        start, carried = ckpt.iteration, ckpt.interval
        best = None if ckpt.best_error is None else 1 - ckpt.best_error
        records = read_metrics(out / "metrics.jsonl", upto=start)
    step_model: nn.Module = model
    if world.distributed:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[engine.device.index] if engine.device.type == "cuda" else None)
    eval_every = cfg.eval_every_for(iterations)
    info = {
        "task": "detection", "config": cfg.to_dict(), "model_spec": spec,
        "iterations": iterations, "milestones": list(schedule.milestones),
        "eval_every": eval_every, "init": _init_note(cfg, model),
        "backbone_weights": weights_origin(cfg.weights),
        "precision": engine.precision,
        "precision_choice": precision_reason(cfg.precision, engine.device),
        "world_size": world.size, "eval_split": source.eval_name, "data": source.identity(),
        "train_images_used": len(source.indices), "versions": versions(),
        "machine": machine_info(engine.device), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from": start, "command": " ".join(sys.argv),
    }
    log = DetectionRunLog(out, info, records, f"{spec['name']} on {source.name}", iterations,
                          start, main=world.is_main, progress=cfg.progress,
                          tensorboard=cfg.tensorboard)
    if ckpt is not None:
        log.last_saved = start
    return DetectionRun(cfg, engine, world, folder, source, spec, model, step_model, optimizer,
                        schedule, iterations, eval_every, start, best,
                        DetectionMeter(engine.device, carried), log, started)

