"""The training loop of the paper's recipes (Sec. 4.2 CIFAR, Sec. 3.4 ImageNet).

`train(cfg)` reads top to bottom: `start_run` sets everything up (run folder, engine,
data, model, optimizer, schedule, resume), then the loop: lr from the schedule, batch,
step, meter; at each log step one host sync; at each evaluation one call to the run log.
Every random draw is a pure function of (seed, iteration, rank), so a resumed run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reslab.data import ImageData, Preprocess
from reslab.engine import Engine, machine_info, make_engine, precision_reason, versions
from reslab.errors import ReslabError
from reslab.kernels import pick_kernels, set_kernels
from reslab.models.registry import ModelSpec, build, resolve
from reslab.train.checkpoint import Checkpoint, as_recorded, check_same_run
from reslab.train.distributed import World, all_reduce_sum, barrier, init_world
from reslab.train.recipes import TrainConfig, same_data
from reslab.train.run_folder import RunFolder, recorded_run
from reslab.train.runlog import RunLog, is_finite_model, read_metrics
from reslab.train.schedule import PlateauSchedule, StepSchedule, needs_warmup
from reslab.train.sources import data_identity, make_source

__all__ = ["RunResult", "read_metrics", "train"]


@dataclass
class RunResult:
    """What `train` returns: where the run lives and how it ended."""

    out: Path
    iteration: int
    iterations: int
    status: str  # "finished" or "interrupted"
    last: dict | None  # the last metrics record
    best_error: float | None
    wall_seconds: float
    signal: int | None = None  # the SIGINT/SIGTERM that stopped it (this process's)


class Meter:
    """Training loss and error since the last evaluation. Sums stay on the device between
    log steps (no host sync per iteration); `sync` folds them into host totals."""

    def __init__(self, device: torch.device, carried: list[float] | None = None) -> None:
        self.loss_sum = torch.zeros((), device=device)
        self.wrong = torch.zeros((), device=device, dtype=torch.long)
        self.pending = 0
        self.total = list(carried) if carried else [0.0, 0.0, 0.0]  # loss sum, wrong, images
        self.seconds, self.images, self.mark = 0.0, 0, time.perf_counter()

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss_sum += loss.detach() * y.numel()
        self.wrong += (logits.detach().argmax(1) != y).sum()
        self.pending += y.numel()

    def sync(self, world: World, device: torch.device, stop: bool) -> tuple[list[float], bool]:
        """All-reduce the pending sums (and the stop flag) over ranks and fold them into the
        totals; returns ([loss sum, wrong, images] of the window, any rank stopping)."""
        loss, wrong, n, stopping = all_reduce_sum(
            [float(self.loss_sum), float(self.wrong), float(self.pending), float(stop)],
            world, device)
        self.loss_sum.zero_()
        self.wrong.zero_()
        self.pending = 0
        self.total = [self.total[0] + loss, self.total[1] + wrong, self.total[2] + n]
        now = time.perf_counter()
        self.seconds, self.images, self.mark = self.seconds + now - self.mark, self.images + n, now
        return [loss, wrong, n], stopping > 0

    def take(self) -> dict[str, float]:
        """The interval's training figures for a metrics record; starts a new interval."""
        loss, wrong, n = self.total
        out = {"train_loss": loss / max(n, 1), "train_error": wrong / max(n, 1),
               "images_per_sec": self.images / max(self.seconds, 1e-9)}
        self.total, self.seconds, self.images = [0.0, 0.0, 0.0], 0.0, 0
        return out

    def restart_clock(self) -> None:
        """Evaluation time is not training time."""
        self.mark = time.perf_counter()


@contextmanager
def stop_requests():
    """Turn SIGINT/SIGTERM into a flag the loop checks between iterations, so that it can
    save a checkpoint before exiting. A second Ctrl-C interrupts at once."""
    flag = {"signal": None}
    previous = {}

    def handler(signum, frame):
        if flag["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag["signal"] = signum

    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@dataclass
class Run:
    """Everything the loop needs, made by `start_run`."""

    cfg: TrainConfig
    engine: Engine
    world: World
    folder: RunFolder
    source: object  # TensorSource | FolderSource
    spec: ModelSpec
    model: nn.Module
    step_model: nn.Module  # the model as stepped: DDP- and/or compile-wrapped
    optimizer: torch.optim.Optimizer
    schedule: StepSchedule | PlateauSchedule
    iterations: int
    eval_every: int
    start: int
    best_error: float | None
    meter: Meter
    log: RunLog
    started: float

    def checkpoint(self, iteration: int) -> Checkpoint:
        return Checkpoint(
            model_spec=self.spec.to_dict(), model=self.model.state_dict(),
            preprocess=self.source.preprocess.to_dict(), classes=list(self.source.classes),
            iteration=iteration, config=self.cfg.to_dict(),
            optimizer=self.optimizer.state_dict(), schedule=self.schedule.state_dict(),
            best_error=self.best_error, interval=list(self.meter.total),
            world_size=self.world.size, data=data_identity(self.source))


def train(cfg: TrainConfig, data: ImageData | None = None) -> RunResult:
    """Train `cfg.model` on `cfg.data` with the recipe in `cfg`; outputs go to `cfg.out`.

    `data` may be a pre-loaded `reslab.data.ImageData` (experiments share one load).
    Launched by `torchrun`, every process runs this; rank 0 writes the outputs.
    """
    run = start_run(cfg, data)
    it, meter, log, world = run.start, run.meter, run.log, run.world
    device, stopping = run.engine.device, False
    try:
        run.model.train()
        with stop_requests() as stop:
            while it < run.iterations and not stopping:
                lr = run.schedule.lr(it)
                for group in run.optimizer.param_groups:
                    group["lr"] = lr
                x, y = run.source.batch(it)
                logits = run.engine(run.step_model, x)
                loss = F.cross_entropy(logits.float(), y)
                run.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                run.optimizer.step()
                meter.add(loss, logits, y)
                it += 1
                # One stop path: a world of one stops at once; under DDP the ranks agree at
                # the next log step, so that none is left waiting in a collective.
                stopping = stop["signal"] is not None and not world.distributed
                evaluate_now = it % run.eval_every == 0 or it == run.iterations
                warm = run.schedule.warming_up and it % 10 == 0
                if not (evaluate_now or warm or it % cfg.log_every == 0):
                    continue
                (loss_sum, wrong, n), agreed = meter.sync(world, device,
                                                          stop["signal"] is not None)
                stopping = stopping or agreed
                if not math.isfinite(loss_sum):
                    raise log.diverged(f"training loss became {loss_sum}", it)
                if run.schedule.observe_train_error(wrong / n):
                    log.write(f"warm-up ended at iteration {it} (training error "
                              f"{100 * wrong / n:.1f}% < {100 * cfg.warmup_until_error:.0f}%)")
                log.on_log(it, loss_sum / n, wrong / n, lr, n / max(meter.seconds, 1e-9))
                if evaluate_now:
                    evaluate_and_record(run, it, lr)
            status = "finished" if it >= run.iterations else "interrupted"
            if status == "interrupted" and log.last_saved != it:
                meter.sync(world, device, True)  # the pending loss belongs to the checkpoint
                if not is_finite_model(run.model):
                    raise log.diverged("the weights became non-finite", it)
                log.save_last(run.checkpoint(it))
    finally:
        run.source.close()
        run.folder.close()
    wall = time.time() - run.started
    log.close(status, it, wall, run.best_error)
    barrier(world)
    last = log.records[-1] if log.records else None
    return RunResult(Path(cfg.out), it, run.iterations, status, last, run.best_error, wall,
                     stop["signal"])


def evaluate_and_record(run: Run, it: int, lr: float) -> None:
    """Evaluate on this rank's shard, sum over ranks, and hand the record and checkpoint to
    the run log; a non-finite evaluation or model is never saved."""
    run.model.eval()
    loss, top1, top5, n = all_reduce_sum(run.source.evaluate(run.model), run.world,
                                         run.engine.device)
    run.model.train()
    if not (math.isfinite(loss) and is_finite_model(run.model)):
        raise run.log.diverged(f"the evaluation loss became {loss / n}", it)
    record = {"iteration": it, **run.meter.take(), "test_loss": loss / n,
              "test_error": top1 / n, "test_top5_error": top5 / n, "lr": lr,
              "elapsed": time.time() - run.started, "eval_split": run.source.eval_name,
              "eval_images": int(n)}
    run.schedule.after_eval(record["test_error"])
    improved = run.best_error is None or record["test_error"] < run.best_error
    if improved:  # on every rank: the record is the same all-reduced one
        run.best_error = record["test_error"]
    run.log.on_eval(record, run.checkpoint(it), improved)
    barrier(run.world)
    run.meter.restart_clock()


def start_run(cfg: TrainConfig, data: ImageData | None = None) -> Run:
    """Set a run up: lock and check the folder (before any data is read), the engine, the
    data, the model, optimizer and schedule, and the resumed state."""
    started = time.time()
    engine = make_engine(cfg.device, cfg.precision, cfg.channels_last)
    world = init_world(engine.device.type)
    if world.distributed and engine.device.type == "cuda":
        engine = Engine(torch.device("cuda", world.local_rank), engine.dtype,
                        engine.channels_last)
        torch.cuda.set_device(engine.device)
    out = Path(cfg.out)
    folder = RunFolder(out)
    if world.is_main:
        folder.open(cfg.resume)
    try:
        ckpt = resumed_checkpoint(cfg, out)
        recorded = recorded_run(out) if cfg.resume else None  # stopped before a checkpoint
        preprocess = Preprocess.from_dict(ckpt.preprocess) if ckpt else None
        source = make_source(cfg, engine, world, data, preprocess)
        spec = resolve(cfg.model, len(source.classes), cfg.shortcut)
        if ckpt is not None or recorded is not None:
            check_resumable(ckpt.run_record() if ckpt else recorded, cfg, spec,
                            data_identity(source), out)
        if ckpt is not None:
            warn_precision_change(out, engine)
            cfg = kernels_of_resumed(cfg, ckpt)
        return build_run(cfg, engine, world, folder, source, spec, ckpt, started)
    except BaseException:
        folder.close()
        raise


def resumed_checkpoint(cfg: TrainConfig, out: Path) -> Checkpoint | None:
    """The run's last.pt when resuming (None for a fresh run)."""
    last = out / "last.pt"
    return Checkpoint.load(last) if cfg.resume and last.exists() else None


def kernels_of_resumed(cfg: TrainConfig, ckpt: Checkpoint) -> TrainConfig:
    """`cfg` with kernels "eager" where it says "auto" and resumes a run made before the
    `kernels` option (its checkpoint's config has no such field): such a run continues on
    the eager ops it ran, bit-identically, and its later checkpoints say so."""
    if cfg.kernels == "auto" and "kernels" not in (ckpt.config or {}):
        return dataclasses.replace(cfg, kernels="eager")
    return cfg


def warn_precision_change(out: Path, engine: Engine) -> None:
    """A resume may change the precision (another machine, or `--precision auto` choosing
    differently since), but not silently."""
    try:
        before = json.loads((out / "run.json").read_text()).get("precision")
    except (OSError, ValueError, AttributeError):
        return
    if before in ("fp32", "bf16") and before != engine.precision:
        warnings.warn(f"{out} was trained in {before} so far and continues in "
                      f"{engine.precision}; pass --precision {before} to keep it",
                      stacklevel=2)


def check_resumable(record: dict, cfg: TrainConfig, spec: ModelSpec, data: dict,
                    out: Path) -> None:
    """ReslabError unless `cfg` continues the `record`ed run (same net, data and recipe):
    its checkpoint's `run_record()`, or the run.json of a run stopped before its first
    checkpoint."""
    def describe(s: dict) -> str:
        return s["name"] + (f" (shortcut {s['shortcut']})" if s.get("shortcut") else "")

    saved_spec = record.get("model_spec")
    if isinstance(saved_spec, dict) and as_recorded(saved_spec) != as_recorded(spec.to_dict()):
        where = out / ("last.pt" if (out / "last.pt").exists() else "run.json")
        raise ReslabError(f"{where} is a {describe(saved_spec)} run, not "
                          f"{describe(spec.to_dict())}: resume with the same --model and "
                          "--shortcut")
    config = record.get("config")
    changes = cfg.changes_from(TrainConfig.from_dict(config)) if config is not None else {}
    identity = record.get("data")
    recorded = (identity or {}).get("name")
    if isinstance(recorded, str) and recorded != data.get("name") and same_data(
            recorded, data.get("name")):
        # An image folder's identity is named by its path as --data spelled it; runs made
        # before --data was recorded absolute spell it relative: the same folder.
        data = {**data, "name": recorded}
    check_same_run(identity, data, changes, out, data_flags="--data and --val-split",
                   resume_command="reslab train --resume --out DIR")


def build_run(cfg: TrainConfig, engine: Engine, world: World, folder: RunFolder, source,
              spec: ModelSpec, ckpt: Checkpoint | None, started: float) -> Run:
    """Model, optimizer, schedule and the run log, from scratch or from `ckpt`."""
    iterations = cfg.iterations_for(source.train_size)
    torch.manual_seed(cfg.seed)
    model = engine.prepare(build(spec))
    kernels, kernels_choice = pick_kernels(cfg.kernels, engine.device, engine.channels_last,
                                           cfg.compile)
    set_kernels(model, kernels)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    warmup = needs_warmup(spec.depth) if cfg.warmup is None else cfg.warmup
    if cfg.lr_policy == "plateau":
        schedule = PlateauSchedule(optimizer, cfg.plateau_patience, cfg.plateau_threshold,
                                   cfg.gamma)
    else:
        schedule = StepSchedule(cfg.lr, cfg.milestones_for(iterations), cfg.gamma,
                                cfg.warmup_lr if warmup else None, cfg.warmup_until_error)
    start, best_error, carried, records = 0, None, None, []
    out = Path(cfg.out)
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.optimizer)
        schedule.load_state_dict(ckpt.schedule)
        start, best_error, carried = ckpt.iteration, ckpt.best_error, ckpt.interval
        records = read_metrics(out / "metrics.jsonl", upto=start)
    step_model: nn.Module = model
    if world.distributed:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[engine.device.index] if engine.device.type == "cuda" else None)
    if cfg.compile:
        step_model = torch.compile(step_model, mode=cfg.compile_mode)
    eval_every = cfg.eval_every_for(iterations)
    info = {
        "config": cfg.to_dict(), "model_spec": spec.to_dict(), "iterations": iterations,
        "milestones": list(schedule.milestones) if cfg.lr_policy == "step" else None,
        "eval_every": eval_every, "warmup": warmup, "precision": engine.precision,
        "precision_choice": precision_reason(cfg.precision, engine.device),
        "channels_last": engine.channels_last, "kernels": kernels,
        "kernels_choice": kernels_choice, "world_size": world.size,
        "eval_split": source.eval_name, "data": data_identity(source),
        "versions": versions(), "machine": machine_info(engine.device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from": start,
        "command": " ".join(sys.argv),
    }
    log = RunLog(out, info, records, f"{spec.name} on {source.name}", iterations, start,
                 main=world.is_main, progress=cfg.progress, tensorboard=cfg.tensorboard)
    if ckpt is not None:
        log.last_saved = start
    return Run(cfg, engine, world, folder, source, spec, model, step_model, optimizer,
               schedule, iterations, eval_every, start, best_error,
               Meter(engine.device, carried), log, started)
