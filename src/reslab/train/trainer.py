"""The training loop: the paper's recipe (Sec. 4.2) on uint8 tensors kept on the device.

Read top to bottom: set up (device, data, model, optimizer, resume), then the loop
(lr from the schedule, batch, step, metrics), with an evaluation, a metrics record, a
checkpoint and a curves.png every `eval_every` iterations. Everything is a pure function
of (seed, iteration, rank), so a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reslab.analysis.curves import plot_error_curves
from reslab.atomic_write import atomic_write_json, atomic_write_text
from reslab.errors import ReslabError
from reslab.models.registry import build, resolve
from reslab.train.checkpoint import load_checkpoint, save_checkpoint
from reslab.train.distributed import World, all_reduce_sum, barrier, init_world
from reslab.train.recipes import TrainConfig, resolved_milestones
from reslab.train.schedule import PlateauStepSchedule, StepSchedule, needs_warmup


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


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda, else mps, else cpu; an unavailable device is a ReslabError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ReslabError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReslabError("--device cuda asked for, but no CUDA GPU is available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ReslabError("--device mps asked for, but MPS is not available")
    return dev


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 in hardware (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for fp32.

    auto: bf16 on CUDA GPUs that support it; fp32 elsewhere. On a CPU with native bf16,
    `--precision bf16` trains about 1.5x faster (benchmarks/train_throughput.py) but it
    slowed ResNet-56's early training measurably (docs/results.md), so it is opt-in there.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def precision_name(precision: str, device: torch.device) -> str:
    """"bf16" or "fp32": what `precision` (possibly "auto") resolves to on `device`."""
    return "bf16" if pick_precision(precision, device) is not None else "fp32"


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


def machine_info(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device)}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def versions() -> dict:
    import torchvision

    from reslab import __version__

    return {"reslab": __version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__}


def read_metrics(path: Path, upto: int | None = None) -> list[dict]:
    """metrics.jsonl records (those with iteration <= upto, if given)."""
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if upto is None or r["iteration"] <= upto]


def _write_metrics(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _run_model(autocast_dtype: torch.dtype | None, channels_last: bool, device: torch.device):
    def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            return model(x)

    return run


def _make_source(cfg: TrainConfig, data, device: torch.device, world: World, ckpt: dict | None):
    """The batch source of the recipe: device tensors (CIFAR) or an image folder (ImageNet)."""
    from reslab.train.sources import FolderSource, TensorSource

    if cfg.recipe == "imagenet":
        from reslab.train.imagenet_recipe import recipe_with

        sizes = dict(cfg.extra)
        mean = None
        if ckpt is not None:  # resume at the checkpoint's input sizes unless told otherwise
            old = (ckpt.get("config") or {}).get("extra") or {}
            sizes = {**{k: old[k] for k in ("scale", "crop", "test_resize") if k in old},
                     **sizes}
            mean = ckpt["preprocess"]["mean"]
        recipe = recipe_with(sizes)
        if mean is not None and mean.shape[1:] != (1, 1) and tuple(mean.shape[1:]) != (
                recipe.crop, recipe.crop):
            raise ReslabError(f"the checkpoint's per-pixel mean is {tuple(mean.shape[1:])} but "
                              f"the crop is {recipe.crop}: resume with --crop {mean.shape[-1]}")
        cfg.extra.update({k: sizes[k] for k in ("scale", "crop", "test_resize") if k in sizes})
        return FolderSource(cfg.data, cfg.batch_size, device, cfg.seed, world,
                            int(cfg.extra.get("workers", min(8, os.cpu_count() or 1))), mean,
                            cfg.mean, recipe)
    from reslab.data import Preprocess, load_image_data, per_channel_mean_std, per_pixel_mean

    if data is None:
        data = load_image_data(cfg.data, root=cfg.data_root, val_split=cfg.val_split,
                               seed=cfg.seed, skip_corrupt=cfg.skip_corrupt,
                               progress=cfg.progress and world.is_main)
    if cfg.mean == "per-channel":
        preprocess = Preprocess(per_channel_mean_std(data.train.images)[0])
    else:  # the paper: per-pixel mean of the training images
        preprocess = Preprocess(per_pixel_mean(data.train.images))
    return TensorSource(data, preprocess, cfg.batch_size, device, cfg.seed, cfg.pad, world)


def train(cfg: TrainConfig, data=None) -> RunResult:
    """Train `cfg.model` on `cfg.data` with the recipe in `cfg`; outputs go to `cfg.out`.

    `data` may be a pre-loaded `reslab.data.ImageData` (experiments share one load).
    Launched by `torchrun`, every process runs this; rank 0 writes the outputs.
    """
    cfg.validate()
    t_start = time.time()
    device = pick_device(cfg.device)
    world = init_world(device.type)
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    autocast_dtype = pick_precision(cfg.precision, device)
    channels_last = cfg.channels_last
    if channels_last is None:  # faster for oneDNN (CPU) and cuDNN convolutions
        channels_last = device.type in ("cuda", "cpu")
    run_model = _run_model(autocast_dtype, channels_last, device)
    out = Path(cfg.out)
    metrics_path, last_path = out / "metrics.jsonl", out / "last.pt"
    if last_path.exists() and not cfg.resume:
        raise ReslabError(f"{out} already holds a run (last.pt): pass --resume to continue it, "
                          "or choose another --out")
    ckpt = load_checkpoint(last_path) if cfg.resume and last_path.exists() else None

    # ---- data ------------------------------------------------------------------------------
    source = _make_source(cfg, data, device, world, ckpt)
    iterations = cfg.iterations
    if cfg.epochs is not None:
        iterations = max(1, math.ceil(cfg.epochs * source.train_size / cfg.batch_size))
    milestones = resolved_milestones(cfg, iterations)
    eval_every = cfg.eval_every or max(1, min(1000, iterations // 20))

    # ---- model, optimizer, schedule ----------------------------------------------------------
    spec = resolve(cfg.model, len(source.classes), cfg.shortcut)
    torch.manual_seed(cfg.seed)
    model = build(spec).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    warmup = needs_warmup(spec.depth) if cfg.warmup is None else cfg.warmup
    if cfg.lr_policy == "plateau":
        schedule = PlateauStepSchedule(optimizer, cfg.plateau_patience, cfg.plateau_threshold,
                                       cfg.gamma)
    else:
        schedule = StepSchedule(cfg.lr, milestones, cfg.gamma,
                                cfg.warmup_lr if warmup else None, cfg.warmup_until_error)

    # ---- resume ------------------------------------------------------------------------------
    start, best_error, acc = 0, None, [0.0, 0.0, 0.0]  # acc: loss sum, wrong, images
    records: list[dict] = []
    if ckpt is not None:
        if ckpt["model_spec"] != spec.to_dict():
            raise ReslabError(f"{last_path} is a {ckpt['model_spec']['name']} run, not "
                              f"{spec.name}: resume with the same --model and data")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        start = int(ckpt["iteration"])
        best_error = ckpt.get("best_error")
        acc = list(ckpt.get("interval", acc))
        records = read_metrics(metrics_path, upto=start)

    train_model: nn.Module = model
    if world.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)

    run_info = {
        "config": cfg.to_dict(), "model_spec": spec.to_dict(), "iterations": iterations,
        "milestones": list(milestones) if cfg.lr_policy == "step" else None,
        "eval_every": eval_every, "warmup": warmup,
        "precision": "bf16" if autocast_dtype else "fp32", "channels_last": channels_last,
        "world_size": world.size, "eval_split": source.eval_name,
        "data": {"name": source.name, "classes": source.classes, "train": source.train_size,
                 "eval": source.eval_size},
        "versions": versions(), "machine": machine_info(device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed_from": start,
        "command": " ".join(sys.argv),
    }
    writer = None
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "run.json", run_info)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(log_dir=str(out))
            except ImportError:
                writer = None

    def checkpoint(path: Path, iteration: int) -> None:
        save_checkpoint(
            path, model_spec=spec.to_dict(), model=model.state_dict(),
            preprocess=source.preprocess.to_dict(), classes=source.classes,
            iteration=iteration, optimizer=optimizer.state_dict(),
            schedule=schedule.state_dict(), best_error=best_error, interval=list(acc),
            config=cfg.to_dict(), world_size=world.size,
        )

    progress = None
    if cfg.progress and world.is_main:
        from tqdm import tqdm

        progress = tqdm(total=iterations, initial=start, desc=spec.name, unit="it",
                        dynamic_ncols=True, file=sys.stderr)

    # ---- the loop ----------------------------------------------------------------------------
    it = start
    status = "finished"
    dev_loss = torch.zeros((), device=device)
    dev_wrong = torch.zeros((), device=device, dtype=torch.long)
    dev_n = 0
    train_time, interval_images, t_mark = 0.0, 0, time.perf_counter()
    model.train()
    with stop_requests() as stop:
        while it < iterations:
            # Under DDP the ranks agree on stopping at a log step (below), so that they all
            # stop at the same iteration instead of leaving the others in a collective.
            if stop["signal"] is not None and not world.distributed:
                status = "interrupted"
                break
            lr = schedule.lr(it)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = source.batch(it)
            logits = run_model(train_model, x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            dev_loss += loss.detach() * y.numel()
            dev_wrong += (logits.detach().argmax(1) != y).sum()
            dev_n += y.numel()
            it += 1
            evaluate_now = it % eval_every == 0 or it == iterations
            if it % cfg.log_every == 0 or evaluate_now or (schedule.warming_up and it % 10 == 0):
                # One host sync per log interval, not per iteration (keeps GPUs busy).
                loss_sum, wrong, n, stopping = all_reduce_sum(
                    [float(dev_loss), float(dev_wrong), float(dev_n),
                     float(stop["signal"] is not None)], world, device)
                if not math.isfinite(loss_sum):
                    raise ReslabError(
                        f"training loss became {loss_sum} before iteration {it}; stopped. "
                        f"The last good checkpoint is {last_path if last_path.exists() else 'none'}"
                        ". Try a lower --lr (or warm-up)."
                    )
                acc = [acc[0] + loss_sum, acc[1] + wrong, acc[2] + n]
                now = time.perf_counter()
                train_time += now - t_mark
                interval_images += n
                if schedule.observe_train_error(wrong / n) and progress is not None:
                    progress.write(f"warm-up ended at iteration {it} "
                                   f"(training error {100 * wrong / n:.1f}% < "
                                   f"{100 * cfg.warmup_until_error:.0f}%)")
                if progress is not None:
                    progress.update(it - progress.n)
                    progress.set_postfix(loss=f"{loss_sum / n:.3f}", err=f"{100 * wrong / n:.1f}%",
                                         lr=f"{lr:g}", ips=f"{n / max(now - t_mark, 1e-9):.0f}")
                dev_loss.zero_()
                dev_wrong.zero_()
                dev_n = 0
                t_mark = time.perf_counter()
                if stopping and world.distributed:
                    status = "interrupted"
                    break
            if evaluate_now:
                was_training = model.training
                model.eval()
                sums = all_reduce_sum(source.evaluate(model, cfg.eval_batch_size, run_model),
                                      world, device)
                model.train(was_training)
                record = {
                    "iteration": it,
                    "train_loss": acc[0] / max(acc[2], 1),
                    "train_error": acc[1] / max(acc[2], 1),
                    "test_loss": sums[0] / sums[3],
                    "test_error": sums[1] / sums[3],
                    "test_top5_error": sums[2] / sums[3],
                    "lr": lr,
                    "images_per_sec": interval_images / max(train_time, 1e-9),
                    "elapsed": time.time() - t_start,
                    "eval_split": source.eval_name,
                    "eval_images": int(sums[3]),
                }
                records.append(record)
                schedule.after_eval(record["test_error"])
                acc, train_time, interval_images = [0.0, 0.0, 0.0], 0.0, 0
                improved = best_error is None or record["test_error"] < best_error
                if improved:  # on every rank: the record is the same all-reduced one
                    best_error = record["test_error"]
                if world.is_main:
                    _write_metrics(metrics_path, records)
                    if improved:
                        checkpoint(out / "best.pt", it)
                    checkpoint(last_path, it)
                    if writer is not None:
                        for key in ("train_loss", "train_error", "test_loss", "test_error",
                                    "test_top5_error", "lr", "images_per_sec"):
                            writer.add_scalar(key, record[key], it)
                        writer.flush()
                    plot_error_curves({spec.name: records}, out / "curves.png",
                                      title=f"{spec.name} on {source.name}")
                    if progress is not None:
                        progress.write(
                            f"iter {it}: train err {100 * record['train_error']:.2f}% "
                            f"loss {record['train_loss']:.3f} | {source.eval_name} err "
                            f"{100 * record['test_error']:.2f}% loss {record['test_loss']:.3f}"
                            f" | {record['images_per_sec']:.0f} img/s")
                barrier(world)
                t_mark = time.perf_counter()  # evaluation time is not training time
        if status == "interrupted" and world.is_main:
            checkpoint(last_path, it)
    source.close()
    if progress is not None:
        progress.close()
    if writer is not None:
        writer.close()
    wall = time.time() - t_start
    if world.is_main:
        run_info.update({"status": status, "finished_iteration": it, "wall_seconds": wall,
                         "final": records[-1] if records else None, "best_error": best_error})
        atomic_write_json(out / "run.json", run_info)
    barrier(world)
    return RunResult(out, it, iterations, status, records[-1] if records else None, best_error,
                     wall)
